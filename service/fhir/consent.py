"""Treatment Consent (DOMAIN.md §8.4).

``policy.uri`` is the organisation's consent policy ({identifier_system}/consent-policy/treatment) and
``policyRule`` a text-only concept: either satisfies ppc-1 without guessing policy codes. The signed form is a
``sourceAttachment`` by URL ({base_url}/api/procedures/{id}/consent.pdf) with its size and SHA-1, never the bytes.
Off-label disclosure has no FHIR element: our complex extension ``off-label-disclosure`` (``disclosed`` boolean,
one ``reason`` string per reason the coding engine found), present whenever a product is off-label or the report
states a disclosure. ``provision.actor`` is left out: its role code (v3 ParticipationType) is UNVERIFIED (§8.4).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Any

from service.fhir.clinical import drug_concept, procedure_code
from service.fhir.record import LOINC, ProcedureRecord, coding, concept, fhir_datetime, prune
from service.fhir.terminology import CONSENT_METHOD_EXT, OFF_LABEL_EXT


def _document(record: ProcedureRecord) -> dict[str, Any] | None:
    doc = record.part("consent").get("document")
    if not isinstance(doc, dict) or not doc.get("data"):
        return None
    try:
        raw = base64.b64decode("".join(str(doc["data"]).split()), validate=True)
    except (binascii.Error, ValueError):
        raw = None
    return prune(
        {
            "contentType": doc.get("content_type") or "application/pdf",
            "url": f"{record.api}/api/procedures/{record.procedure_id}/consent.pdf",
            # Size and hash let a receiver check what it fetches (R4: hash is the base64 SHA-1).
            "size": len(raw) if raw is not None else None,
            "hash": base64.b64encode(hashlib.sha1(raw).digest()).decode("ascii") if raw is not None else None,
            "title": doc.get("title") or "Signed consent form",
        }
    )


def _off_label(record: ProcedureRecord) -> dict[str, Any] | None:
    found = record.coding_dict.get("off_label") or {}
    disclosed = record.part("consent").get("off_label_disclosed")
    if not found.get("off_label") and disclosed is None:
        return None
    if not found.get("off_label") and not disclosed:
        return None  # nothing off-label and nothing disclosed: nothing to say
    subs: list[dict[str, Any]] = [{"url": "disclosed", "valueBoolean": bool(disclosed)}]
    subs += [{"url": "reason", "valueString": str(r)} for r in found.get("reasons") or ()]
    return {"url": record.canonical("StructureDefinition", OFF_LABEL_EXT), "extension": subs}


def consent(record: ProcedureRecord) -> dict[str, Any] | None:
    c = record.part("consent")
    if "obtained" not in c:
        return None
    if c.get("signer") == "representative" and c.get("representative_name"):
        performer = record.ref("RelatedPerson", "representative", c["representative_name"])
    else:
        performer = record.ref("Patient", "patient")
    method = c.get("method")
    method_ext = (
        {"url": record.canonical("StructureDefinition", CONSENT_METHOD_EXT), "valueCode": method} if method else None
    )
    products = [drug_concept(record, i) for i in record.items("injectates")]
    return prune(
        {
            "resourceType": "Consent",
            "id": record.rid("consent"),
            "meta": record.meta(),
            "extension": [method_ext, _off_label(record)],
            "identifier": [record.ident("consent", record.procedure_id)],
            "status": "active" if c.get("obtained") else "rejected",
            "scope": concept(coding("http://terminology.hl7.org/CodeSystem/consentscope", "treatment", "Treatment")),
            "category": [concept(coding(LOINC, "59284-0", "Patient Consent"))],
            "patient": record.ref("Patient", "patient"),
            "dateTime": fhir_datetime(c.get("obtained_at")),
            "performer": [performer],
            "organization": [record.ref("Organization", "organization")]
            if record.part("performing_organization").get("name")
            else None,
            "sourceAttachment": _document(record),
            "policy": [{"uri": f"{record.system_base}/consent-policy/treatment"}],
            "policyRule": concept(text="Informed consent to treatment"),
            "provision": {
                "type": "permit" if c.get("obtained") else "deny",
                "code": [procedure_code(record), *products],
                "data": [{"meaning": "related", "reference": record.ref("Procedure", "procedure")}],
            },
        }
    )
