"""The professional Claim (DOMAIN.md §8.1) from the coding engine's lines; none for a teaching case or no lines.

Only the US rule set (CPT/HCPCS) makes a Claim: OPCS-4 lines (uk-nhs) are not claimed. Modifiers: numeric ones
(50, 59, 25, 26) are CPT modifiers, the letters (RT, LT, XS, TC, JW, JZ, F1, TA, GA) HCPCS Level II (§8.1). The NDC
of a drug line goes into ``item.detail`` (productOrService = NDC). Guidance evidence is ``supportingInfo``: category
``attachment`` with ``valueReference`` to the report DocumentReference and each ImagingStudy, and category ``info``
facts from our ``claim-information`` CodeSystem (pre/post image retained, why guidance was needed); every
procedure (CPT) line points at all of them through ``informationSequence``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from service.fhir.record import CPT, HCPCS, ICD10CM, NDC, UCUM, ProcedureRecord, coding, concept, prune
from service.fhir.terminology import CLAIM_INFO, local_coding

_SYSTEMS = {"CPT": CPT, "HCPCS": HCPCS}
_INFO_CATEGORY = "http://terminology.hl7.org/CodeSystem/claiminformationcategory"
POS_SYSTEM = "https://www.cms.gov/Medicare/Coding/place-of-service-codes/Place_of_Service_Code_Set"


def _modifier(code: str) -> dict[str, Any]:
    return concept(coding(CPT if code.isdigit() else HCPCS, code))


def _supporting_info(record: ProcedureRecord, has_document: bool, study_roles: Sequence[str]) -> list[dict[str, Any]]:
    attachment = concept(coding(_INFO_CATEGORY, "attachment", "Attachment"))
    info = concept(coding(_INFO_CATEGORY, "info", "Information"))
    out: list[dict[str, Any]] = []
    if has_document:
        out.append({"category": attachment, "valueReference": record.ref("DocumentReference", "report")})
    out += [{"category": attachment, "valueReference": record.ref("ImagingStudy", r)} for r in study_roles]
    roles = {i.get("image_role") for i in record.images}
    for code, role in (("pre-image-retained", "pre"), ("post-image-retained", "post")):
        out.append(
            {
                "category": info,
                "code": concept(local_coding(record, "claim-information", code, CLAIM_INFO)),
                "valueBoolean": role in roles,
            }
        )
    reasons = [str(r) for r in record.part("guidance").get("reasons") or ()]
    if reasons:
        out.append(
            {
                "category": info,
                "code": concept(local_coding(record, "claim-information", "guidance-necessity", CLAIM_INFO)),
                "valueString": "; ".join(reasons),
            }
        )
    return [{"sequence": n, **item} for n, item in enumerate(out, 1)]


def _item(
    record: ProcedureRecord,
    sequence: int,
    line: Mapping[str, Any],
    info_sequences: list[int],
    care_team: list[int],
) -> dict[str, Any]:
    is_procedure = line.get("system") == "CPT"
    injectate = next((i for i in record.items("injectates") if i.get("drug") == line.get("drug")), {})
    detail = None
    if line.get("ndc"):
        qty = None
        if injectate.get("dose") is not None:
            unit = injectate.get("dose_unit")
            qty = prune({"value": injectate["dose"], "unit": unit, "system": UCUM if unit else None, "code": unit})
        detail = [{"sequence": 1, "productOrService": concept(coding(NDC, line["ndc"])), "quantity": qty}]
    pos = record.report.get("place_of_service")
    when = record.coding_dict.get("date_of_service")
    return prune(
        {
            "sequence": sequence,
            "careTeamSequence": care_team,
            "diagnosisSequence": list(line.get("diagnosis_pointers") or ()),
            "procedureSequence": [1] if is_procedure else None,
            "informationSequence": info_sequences if is_procedure else None,
            "productOrService": concept(coding(_SYSTEMS[line["system"]], line["code"])),
            "modifier": [_modifier(str(m)) for m in line.get("modifiers") or ()],
            "servicedDate": str(when) if when else None,
            "locationCodeableConcept": concept(coding(POS_SYSTEM, str(pos))) if pos else None,
            "quantity": {"value": int(line.get("units") or 1)},
            "detail": detail,
        }
    )


def claim(record: ProcedureRecord, has_document: bool, study_roles: Sequence[str]) -> dict[str, Any] | None:
    result = record.coding_dict
    lines = [line for line in result.get("lines") or () if line.get("system") in _SYSTEMS]
    if record.report.get("educational") or result.get("educational") or not lines:
        return None
    if not record.part("coverage").get("kind") or not record.part("performing_organization").get("name"):
        return None  # Claim needs insurance and provider; a report without them cannot be claimed
    care_team = []
    trainee = bool(record.part("performer").get("in_training")) and bool(record.part("supervisor").get("name"))
    if trainee:
        # A trainee is not the rendering provider: the supervising (teaching) clinician answers for the claim.
        care_team.append(("supervisor", "primary", "Primary provider"))
    if record.part("performer").get("name"):
        care_team.append(
            ("performer", "assist", "Assisting Provider") if trainee else ("performer", "primary", "Primary provider")
        )
    if record.part("supervisor").get("name") and not trainee:
        care_team.append(("supervisor", "supervisor", "Supervising Provider"))
    info = _supporting_info(record, has_document, study_roles)
    procedure_team = [1] if care_team else []
    created = record.coding_dict.get("date_of_service")
    signed = sorted(str(s.get("signed_at"))[:10] for s in record.live_signatures())
    return prune(
        {
            "resourceType": "Claim",
            "id": record.rid("claim"),
            "meta": record.meta(),
            "identifier": [record.ident("claim", record.procedure_id)],
            "status": "active",
            "type": concept(coding("http://terminology.hl7.org/CodeSystem/claim-type", "professional", "Professional")),
            "use": "claim",
            "patient": record.ref("Patient", "patient"),
            "billablePeriod": prune({"start": record.time("started_at"), "end": record.time("ended_at")}),
            # A pure mapping has no clock: the claim is dated by the last signature, else the date of service.
            "created": signed[-1] if signed else str(created) if created else None,
            "provider": record.ref("Organization", "organization"),
            "priority": concept(coding("http://terminology.hl7.org/CodeSystem/processpriority", "normal", "Normal")),
            "careTeam": [
                {
                    "sequence": n,
                    "provider": record.ref("Practitioner", who),
                    "responsible": True if role == "primary" else None,
                    "role": concept(coding("http://terminology.hl7.org/CodeSystem/claimcareteamrole", role, display)),
                }
                for n, (who, role, display) in enumerate(care_team, 1)
            ],
            "supportingInfo": info,
            "diagnosis": [
                {"sequence": n, "diagnosisCodeableConcept": concept(coding(ICD10CM, code))}
                for n, code in enumerate(result.get("diagnoses") or (), 1)
            ],
            "procedure": [{"sequence": 1, "procedureReference": record.ref("Procedure", "procedure")}],
            "insurance": [{"sequence": 1, "focal": True, "coverage": record.ref("Coverage", "coverage")}],
            "item": [
                _item(record, n, line, [i["sequence"] for i in info], procedure_team) for n, line in enumerate(lines, 1)
            ],
        }
    )
