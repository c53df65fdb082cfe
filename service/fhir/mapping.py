"""``map_procedure``: one procedure record in, its FHIR R4 resources out (fhir.resources R4B models; pure).

fhir.resources 8 ships R5 by default; its R4B models have the R4 shapes of every resource emitted here, and the
independent Node validator (tests/fhirvalidate.py) proves the output against R4 4.0.1. Each mapper builds plain
FHIR JSON, so the model validates it at construction (a mapping bug fails loudly, not on the wire).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.resource import Resource

from service.fhir.claim import claim
from service.fhir.clinical import medication_administration, procedure
from service.fhir.consent import consent
from service.fhir.imaging import document_reference, imaging_studies
from service.fhir.parties import coverage, organization, patient, practitioner, related_person
from service.fhir.record import ProcedureRecord
from service.fhir.terminology import code_systems


def model_class(resource_type: str) -> type[Resource]:
    """The R4B model class of a resource type (``Procedure`` -> fhir.resources.R4B.procedure.Procedure)."""
    module = importlib.import_module(f"fhir.resources.R4B.{resource_type.lower()}")
    cls: type[Resource] = getattr(module, resource_type)
    return cls


def to_model(data: Mapping[str, Any]) -> Resource:
    return model_class(str(data["resourceType"])).model_validate(dict(data))


def to_json(resource: Resource) -> dict[str, Any]:
    """The resource as FHIR JSON (no empty elements)."""
    out: dict[str, Any] = json.loads(resource.model_dump_json())
    return out


def map_json(record: ProcedureRecord) -> list[dict[str, Any]]:
    """The resources as FHIR JSON dicts, in dependency order (referenced resources first)."""
    has_document = record.status in ("final", "amended")
    studies = imaging_studies(record)
    study_roles = [s["id"].removeprefix(f"{record.procedure_id}-") for s in studies]
    parts: list[dict[str, Any] | None] = [
        *code_systems(record),
        patient(record),
        related_person(record),
        practitioner(record, "performer"),
        practitioner(record, "supervisor"),
        organization(record),
        coverage(record),
        procedure(record, has_document),
        *(medication_administration(record, n, i) for n, i in enumerate(record.items("injectates"), 1)),
        *studies,
        document_reference(record, study_roles) if has_document else None,
        consent(record),
        claim(record, has_document, study_roles),
    ]
    return [p for p in parts if p is not None]


def map_procedure(record: ProcedureRecord) -> list[Resource]:
    """The procedure's FHIR resources as validated fhir.resources R4B models.

    A draft (not final/amended) has no report DocumentReference; an educational procedure has no Claim.
    """
    return [to_model(data) for data in map_json(record)]


def to_bundle(resources: Iterable[Resource], base_url: str | None = None) -> Bundle:
    """The resources in a collection Bundle, ``fullUrl`` = ``{base_url}/fhir/{Type}/{id}`` (R4 wants it absolute).

    What goes to the EHR is another Bundle: :func:`service.fhir.transaction.ehr_transaction`.
    """
    base = (base_url or "http://localhost").rstrip("/") + "/fhir"
    entries = []
    for resource in resources:
        data = to_json(resource)
        entries.append({"fullUrl": f"{base}/{data['resourceType']}/{data['id']}", "resource": data})
    return Bundle.model_validate({"resourceType": "Bundle", "type": "collection", "entry": entries})
