"""The procedure itself (US Core Procedure shape, DOMAIN.md §8.2) and one MedicationAdministration per injectate.

Guidance facts (approach, probe, needle, real-time guidance, tip seen, spread, hydrodissection) have no R4 element:
they travel in one complex extension ``{identifier_system}/fhir/StructureDefinition/us-guidance`` whose ``approach``
is a Coding of our ``needle-approach`` CodeSystem (emitted too). Lot and expiry: R4 MedicationAdministration has
no lot, so an injectate with a lot or expiry gets a contained Medication (``batch``) referenced from
``medicationReference``; one without keeps ``medicationCodeableConcept``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.fhir.record import (
    CPT,
    ICD10CM,
    NDC,
    SNOMED,
    UCUM,
    V3_PARTICIPATION,
    ProcedureRecord,
    coding,
    concept,
    fhir_date,
    prune,
)
from service.fhir.terminology import (
    APPROACH,
    GUIDANCE_EXT,
    STEROID_INTO_JOINT,
    UCUM_UNITS,
    body_site,
    is_joint,
    local_coding,
    route,
)

US_CORE_PROCEDURE = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-procedure"
GUIDANCE_CODES = frozenset({"76942", "77002", "77012", "77021"})  # image guidance lines, not the procedure
STATUS = {"final": "completed", "amended": "completed", "cancelled": "not-done"}


def procedure_line(record: ProcedureRecord) -> Mapping[str, Any] | None:
    """The coding result's procedure line: its first CPT line that is not an image-guidance add-on."""
    for line in record.coding_dict.get("lines") or ():
        if line.get("system") == "CPT" and line.get("code") not in GUIDANCE_CODES:
            return line
    return None


def drug_concept(record: ProcedureRecord, injectate: Mapping[str, Any]) -> dict[str, Any]:
    drug = record.catalog.drugs.get(injectate.get("drug") or "")
    label = drug.label if drug else str(injectate.get("drug"))
    ndc = coding(NDC, injectate["ndc"]) if injectate.get("ndc") else None
    return concept(ndc, text=label)


def procedure_code(record: ProcedureRecord) -> dict[str, Any]:
    """CPT from the coding result and SNOMED 231274008 when a corticosteroid goes into a joint (§6.1)."""
    site = record.catalog.sites.get(record.report.get("site") or "")
    line = procedure_line(record)
    cpt = coding(CPT, line["code"]) if line else None
    steroid = any(
        (d := record.catalog.drugs.get(i.get("drug") or "")) is not None and d.kind == "corticosteroid"
        for i in record.items("injectates")
    )
    snomed = coding(SNOMED, *STEROID_INTO_JOINT) if steroid and is_joint(site) else None
    kind = str(record.report.get("kind") or "injection").replace("_", " ")
    guided = (record.part("guidance").get("modality") or "") == "ultrasound"
    where = f" of {site.label[0].lower()}{site.label[1:]}" if site else ""
    side = record.report.get("laterality")
    side_text = f", {side}" if side in ("left", "right", "bilateral") else ""
    text = f"{'Ultrasound-guided ' if guided else ''}{kind}{where}{side_text}"
    return concept(cpt, snomed, text=text[0].upper() + text[1:])


def guidance_extension(record: ProcedureRecord) -> dict[str, Any] | None:
    g = record.part("guidance")
    if not g:
        return None
    subs: list[dict[str, Any]] = []

    def add(url: str, key: str, value: Any) -> None:
        if value is not None:
            subs.append({"url": url, key: value})

    if g.get("modality"):
        add("modality", "valueCode", g["modality"])
    if g.get("approach"):
        add("approach", "valueCoding", local_coding(record, "needle-approach", g["approach"], APPROACH))
    add("probeType", "valueCode", g.get("probe_type"))
    if g.get("probe_frequency_mhz") is not None:
        add("probeFrequency", "valueQuantity", _quantity(g["probe_frequency_mhz"], "MHz"))
    add("needleGauge", "valueInteger", g.get("needle_gauge"))
    if g.get("needle_length_mm") is not None:
        add("needleLength", "valueQuantity", _quantity(g["needle_length_mm"], "mm"))
    for url, key in (
        ("realtimeNeedleGuidance", "realtime_needle_guidance"),
        ("needleTipVisualised", "needle_tip_visualised"),
        ("injectateSpreadObserved", "injectate_spread_observed"),
        ("hydrodissection", "hydrodissection"),
    ):
        add(url, "valueBoolean", g.get(key))
    if not subs:
        return None
    return {"url": record.canonical("StructureDefinition", GUIDANCE_EXT), "extension": subs}


def _quantity(value: float, unit: str) -> dict[str, Any]:
    number: float | int = int(value) if float(value).is_integer() else value
    return {"value": number, "unit": unit, "system": UCUM, "code": unit}


def _performers(record: ProcedureRecord) -> list[dict[str, Any]]:
    org = record.ref("Organization", "organization") if record.part("performing_organization") else None
    out = []
    if record.part("performer").get("name"):
        function = concept(coding(V3_PARTICIPATION, "PPRF", "primary performer"))
        out.append({"function": function, "actor": record.ref("Practitioner", "performer"), "onBehalfOf": org})
    if record.part("supervisor").get("name"):
        # RESP (responsible party): the supervisor answers for a trainee's procedure without performing it.
        function = concept(coding(V3_PARTICIPATION, "RESP", "responsible party"), text="Supervising clinician")
        out.append({"function": function, "actor": record.ref("Practitioner", "supervisor"), "onBehalfOf": org})
    return out


def encounter_ref(record: ProcedureRecord) -> dict[str, Any] | None:
    """The visit as a logical reference (we hold no Encounter resource, only its identifier)."""
    enc = record.part("encounter_identifier")
    if not enc.get("value"):
        return None
    ident = (
        {"system": enc["system"], "value": enc["value"]}
        if enc.get("system")
        else record.ident("encounter", enc["value"])
    )
    return {"type": "Encounter", "identifier": ident}


def procedure(record: ProcedureRecord, has_document: bool) -> dict[str, Any]:
    start, end = record.time("started_at"), record.time("ended_at")
    performed: dict[str, Any] = {}
    if start:
        performed["performedPeriod"] = prune({"start": start, "end": end})
    elif record.time("injected_at") or end:
        performed["performedDateTime"] = record.time("injected_at") or end
    notes = [
        record.part("guidance").get("description"),
        record.report.get("complication_details"),
        record.report.get("post_procedure_instructions"),
    ]
    complications = [concept(text=str(c).replace("_", " ")) for c in record.report.get("complications") or ()]
    site = body_site(record)
    return prune(
        {
            "resourceType": "Procedure",
            "id": record.rid("procedure"),
            "meta": record.meta() | {"profile": [US_CORE_PROCEDURE]},
            "extension": [guidance_extension(record)],
            "identifier": [record.ident("procedure", record.procedure_id)],
            "status": STATUS.get(record.status, "in-progress"),
            "code": procedure_code(record),
            "subject": record.ref("Patient", "patient"),
            "encounter": encounter_ref(record),
            **performed,
            "performer": _performers(record),
            "reasonCode": [
                concept(coding(ICD10CM, i["code"], i.get("description")), text=i.get("description"))
                for i in record.items("indications")
                if i.get("code")
            ],
            "bodySite": [site] if site else None,
            "report": [record.ref("DocumentReference", "report")] if has_document else None,
            "complication": complications,
            "note": [{"text": n} for n in notes if n],
        }
    )


def _dose(injectate: Mapping[str, Any]) -> dict[str, Any] | None:
    unit = injectate.get("dose_unit")
    if injectate.get("dose") is None or unit not in UCUM_UNITS:
        return None
    return _quantity(injectate["dose"], UCUM_UNITS[unit])


def medication_administration(record: ProcedureRecord, index: int, injectate: Mapping[str, Any]) -> dict[str, Any]:
    med = drug_concept(record, injectate)
    when = record.time("injected_at") or record.time("started_at") or record.time("ended_at")
    medication: dict[str, Any]
    contained = None
    if injectate.get("lot_number") or injectate.get("expiry_date"):
        batch = prune(
            {"lotNumber": injectate.get("lot_number"), "expirationDate": fhir_date(injectate.get("expiry_date"))}
        )
        contained = [{"resourceType": "Medication", "id": "med", "code": med, "batch": batch}]
        medication = {"medicationReference": {"reference": "#med", "display": med.get("text")}}
    else:
        medication = {"medicationCodeableConcept": med}
    dosage_text = None
    if injectate.get("volume_ml") is not None and injectate.get("concentration_mg_per_ml") is not None:
        dosage_text = f"{injectate['volume_ml']:g} mL of {injectate['concentration_mg_per_ml']:g} mg/mL"
    return prune(
        {
            "resourceType": "MedicationAdministration",
            "id": record.rid(f"medadmin-{index}"),
            "meta": record.meta(),
            "contained": contained,
            "identifier": [record.ident("medication-administration", record.rid(f"medadmin-{index}"))],
            "status": "completed",
            **medication,
            "subject": record.ref("Patient", "patient"),
            "context": encounter_ref(record),
            "partOf": [record.ref("Procedure", "procedure")],
            "effectiveDateTime": when,
            "performer": [{"actor": record.ref("Practitioner", "performer")}] if record.part("performer") else None,
            "reasonCode": [
                concept(coding(ICD10CM, i["code"]), text=i.get("description")) for i in record.items("indications")
            ],
            "dosage": {
                "text": dosage_text,
                "site": body_site(record),
                "route": route(record),
                "dose": _dose(injectate),
            },
        }
    )
