"""The audit trail: every change and every read of patient data, with who, when and from where."""

from __future__ import annotations

from typing import Any

from service.bootstrap import Services
from service.db import unit_of_work
from service.models import AuditEvent


def record(
    services: Services,
    actor: str,
    role: str | None,
    action: str,
    entity_type: str,
    entity_id: str | None = None,
    source: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    with unit_of_work(services.session_factory) as s:
        s.add(
            AuditEvent(
                at=services.clock(),
                actor=actor,
                role=role,
                action=action,
                entity_type=entity_type,
                entity_id=entity_id,
                source=source,
                detail=detail,
            )
        )
