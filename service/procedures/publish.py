"""Publishing a final (or amended) report: code it, map it to FHIR, keep each resource's new version, and queue
the delivery to the EHR, all in the transaction that finalised it (DESIGN.md §1: finalize → coding → FHIR + outbox).

A resource whose content did not change keeps its version; one that did gets the next version, so ``_history``
of a resource is the list of its real changes. When anything the EHR receives changed, the outbox row holds the
procedure's whole resource set as one transaction Bundle, conditional on business identifiers
(:mod:`service.fhir.transaction`), so each delivery stands alone and a repeated one changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from schemas.procedures import current_catalog
from service.bootstrap import Services
from service.coding.result import coding_input
from service.coding.rules import code_procedure
from service.db import stored_utc
from service.fhir.mapping import map_json
from service.fhir.record import ProcedureRecord
from service.fhir.transaction import NOT_PUSHED, ehr_transaction
from service.models import FhirResource, OutboxMessage, Procedure, ProcedureVersion
from service.procedures.reads import linked_images, live_signatures, signature_view


def publish(s: Session, services: Services, proc: Procedure, loaded: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Code and map ``proc`` at its current version (``loaded``: its report as the schema loads it, which the
    caller has at hand); returns the resources whose content changed."""
    settings = services.settings
    images = linked_images(s, proc.id)
    roles = {i.get("image_role") for i in images}
    coding = code_procedure(
        coding_input(loaded, len(images), "pre" in roles, "post" in roles), current_catalog(), settings.payer_rules
    )
    this = (ProcedureVersion.procedure_id == proc.id) & (ProcedureVersion.version == proc.version)
    version = s.scalars(select(ProcedureVersion).where(this)).one()
    version.coding = coding.to_dict()
    record = ProcedureRecord(
        procedure_id=proc.id,
        version=proc.version,
        status=proc.status,
        report=proc.report,
        coding=coding,
        base_url=settings.public_url,
        identifier_system=settings.identifier_system,
        signatures=[signature_view(g) for g in live_signatures(s, proc.id)],
        images=images,
    )
    resources = map_json(record)
    changed = _store(s, services, proc.id, resources)
    if settings.ehr_fhir_base and any(r["resourceType"] not in NOT_PUSHED for r in changed):
        now = services.clock()
        s.add(
            OutboxMessage(
                procedure_id=proc.id,
                version=proc.version,
                bundle=ehr_transaction(resources, record.system_base),
                status="pending",
                attempts=0,
                next_attempt_at=now,
                created_at=now,
            )
        )
    return changed


def _content(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "meta"}


def _store(
    s: Session, services: Services, procedure_id: str, resources: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    now = services.clock()
    changed = []
    for data in resources:
        rtype, rid = data["resourceType"], data["id"]
        current = s.scalars(
            select(FhirResource).where(
                FhirResource.resource_type == rtype, FhirResource.resource_id == rid, FhirResource.current.is_(True)
            )
        ).one_or_none()
        if current is not None and _content(current.body) == _content(data):
            continue
        number = (current.version_id if current is not None else 0) + 1
        if current is not None:
            current.current = False
            s.flush()
        # Our version and time, not the mapper's: versionId counts this resource's own changes (vread, _history).
        body = {**data, "meta": {**data.get("meta", {}), "versionId": str(number), "lastUpdated": _instant(now)}}
        shared = not rid.startswith(f"{procedure_id}-")
        s.add(
            FhirResource(
                resource_type=rtype,
                resource_id=rid,
                version_id=number,
                procedure_id=None if shared else procedure_id,
                current=True,
                last_updated=now,
                body=body,
            )
        )
        changed.append(body)
    s.flush()
    return changed


def _instant(when: datetime) -> str:
    """A FHIR instant: milliseconds and a zone (naive times, as SQLite gives them back, are UTC)."""
    return stored_utc(when).astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
