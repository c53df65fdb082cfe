"""Who: Patient, Practitioner (performer, supervisor), Organization, Coverage and, for a proxy consent, RelatedPerson.

Coverage for self-pay: R4's own pattern, ``type`` = coverage-selfpay#pay and the patient as ``payor``, so the Claim
still has the Coverage its ``insurance`` requires. Other payers are named in ``payor.display`` (and the payer id as
an identifier): the report carries no payer resource. Coverage ``type`` is text only for the other kinds (the
Source of Payment Typology codes are not checked here).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.fhir.record import NPI, ProcedureRecord, coding, concept, fhir_date, prune

US_CORE_PATIENT = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"
SELF_PAY = ("http://terminology.hl7.org/CodeSystem/coverage-selfpay", "pay", "PAY")
COVERAGE_TEXT = {
    "medicare": "Medicare",
    "medicare_advantage": "Medicare Advantage",
    "medicaid": "Medicaid",
    "commercial": "Commercial insurance",
    "nhs": "NHS",
    "other": "Other payer",
}


def patient(record: ProcedureRecord) -> dict[str, Any]:
    p = record.part("patient")
    ident = p.get("identifier") or {}
    name = p.get("name") or {}
    # Claim US Core Patient only when its mandatory elements (identifier, name, gender) are all there.
    profiled = bool(ident.get("value") and name.get("family") and p.get("sex"))
    meta = record.meta() | ({"profile": [US_CORE_PATIENT]} if profiled else {})
    return prune(
        {
            "resourceType": "Patient",
            "id": record.rid("patient"),
            "meta": meta,
            "identifier": [
                {"use": "usual", "system": ident.get("system"), "value": ident.get("value")}
                if ident.get("value")
                else record.ident("patient", record.rid("patient"))
            ],
            "name": [{"use": "official", "family": name.get("family"), "given": list(name.get("given") or ())}],
            "gender": p.get("sex"),
            "birthDate": fhir_date(p.get("birth_date")),
        }
    )


def _practitioner_identifiers(record: ProcedureRecord, who: Mapping[str, Any], role: str) -> list[dict[str, Any]]:
    out = []
    if who.get("npi"):
        out.append({"system": NPI, "value": who["npi"]})
    if who.get("local_id"):
        out.append(record.ident("practitioner", who["local_id"]))
    # Nothing else identifies this person: one of ours, so the EHR can still match repeated deliveries.
    return out or [record.ident("practitioner", record.rid(role))]


def practitioner(record: ProcedureRecord, role: str) -> dict[str, Any] | None:
    """``role`` is ``performer`` or ``supervisor`` (the report part and the id suffix)."""
    who = record.part(role)
    if not who.get("name"):
        return None
    qualification = []
    if who.get("credentials"):
        qualification.append({"code": concept(text=who["credentials"])})
    if who.get("in_training"):
        # No R4 element says "trainee"; a qualification text keeps it visible (the Procedure names the supervisor).
        qualification.append({"code": concept(text="In training")})
    return prune(
        {
            "resourceType": "Practitioner",
            "id": record.rid(role),
            "meta": record.meta(),
            "identifier": _practitioner_identifiers(record, who, role),
            "active": True,
            # One free-text name in the report: not split into family/given (that would be a guess).
            "name": [{"text": who["name"]}],
            "qualification": qualification,
        }
    )


def organization(record: ProcedureRecord) -> dict[str, Any] | None:
    org = record.part("performing_organization")
    if not org.get("name"):
        return None
    identifiers = []
    if org.get("npi"):
        identifiers.append({"system": NPI, "value": org["npi"]})
    if (org.get("identifier") or {}).get("value"):
        identifiers.append({"system": org["identifier"].get("system"), "value": org["identifier"]["value"]})
    if not identifiers:
        identifiers.append(record.ident("organization", record.rid("organization")))
    return prune(
        {
            "resourceType": "Organization",
            "id": record.rid("organization"),
            "meta": record.meta(),
            "identifier": identifiers,
            "active": True,
            "type": [
                concept(
                    coding("http://terminology.hl7.org/CodeSystem/organization-type", "prov", "Healthcare Provider")
                )
            ],
            "name": org["name"],
        }
    )


def coverage(record: ProcedureRecord) -> dict[str, Any] | None:
    cov = record.part("coverage")
    kind = cov.get("kind")
    if not kind:
        return None
    patient_ref = record.ref("Patient", "patient")
    if kind == "self_pay":
        kind_type = concept(coding(*SELF_PAY), text="Self-pay")
        payor = [patient_ref]
    else:
        kind_type = concept(text=COVERAGE_TEXT.get(kind, kind))
        payer_ident = record.ident("payer", cov["payer_id"]) if cov.get("payer_id") else None
        payor = [prune({"display": cov.get("payer") or COVERAGE_TEXT.get(kind, kind), "identifier": payer_ident})]
    return prune(
        {
            "resourceType": "Coverage",
            "id": record.rid("coverage"),
            "meta": record.meta(),
            # The coverage as this report recorded it (the EHR's own Coverage is not known here).
            "identifier": [record.ident("coverage", record.rid("coverage"))],
            "status": "active",
            "type": kind_type,
            "subscriberId": cov.get("member_id"),
            "beneficiary": patient_ref,
            "relationship": concept(
                coding("http://terminology.hl7.org/CodeSystem/subscriber-relationship", "self", "Self")
            ),
            "payor": payor,
        }
    )


def related_person(record: ProcedureRecord) -> dict[str, Any] | None:
    """The representative who consented for the patient (DOMAIN.md §8.4 performer); relationship as text only."""
    consent = record.part("consent")
    if consent.get("signer") != "representative" or not consent.get("representative_name"):
        return None
    relationship = consent.get("representative_relationship")
    return prune(
        {
            "resourceType": "RelatedPerson",
            "id": record.rid("representative"),
            "meta": record.meta(),
            "identifier": [record.ident("related-person", record.rid("representative"))],
            "active": True,
            "patient": record.ref("Patient", "patient"),
            "relationship": [concept(text=relationship)] if relationship else None,
            "name": [{"text": consent["representative_name"]}],
        }
    )
