"""Reads of a procedure's images and signatures, shared by the service, publishing and the report PDF."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.images import image_view, latest_ids
from service.models import Instance, ProcedureSignature


def linked_images(s: Session, procedure_id: str) -> list[dict[str, Any]]:
    """The latest version of each image linked to the procedure, oldest first."""
    latest = latest_ids(Instance.procedure_id == procedure_id)
    return [image_view(r) for r in s.scalars(select(Instance).where(Instance.id.in_(latest)).order_by(Instance.id))]


def live_signatures(s: Session, procedure_id: str, version: int | None = None) -> list[ProcedureSignature]:
    """Signatures not voided by a later edit, oldest first; only those of ``version`` when given."""
    q = select(ProcedureSignature).where(
        ProcedureSignature.procedure_id == procedure_id, ProcedureSignature.voided_at.is_(None)
    )
    if version is not None:
        q = q.where(ProcedureSignature.version == version)
    return list(s.scalars(q.order_by(ProcedureSignature.id)))


def signature_view(sig: ProcedureSignature) -> dict[str, Any]:
    return {
        "capacity": sig.capacity,
        "signer": sig.signer,
        "token_id": sig.token_id,
        "version": sig.version,
        "statement": sig.statement,
        "signed_at": sig.signed_at,
        "voided_at": sig.voided_at,
    }
