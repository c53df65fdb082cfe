"""Administration: the DICOM peers allowed to send; the FHIR outbox to the EHR."""

from __future__ import annotations

from flask import current_app
from marshmallow import RAISE

from schemas.admin import PeerSchema
from schemas.outbox import OutboxMessageSchema, OutboxQuerySchema
from service import audit_trail, peers
from service.api.blueprint import Blueprint
from service.api.security import current_principal, roles
from service.auth import Role
from service.errors import Rejected
from service.fhir import push

blp = Blueprint("admin", __name__, url_prefix="/api", description="DICOM peers and the FHIR outbox (admin)")


def _audit(action: str, ae_title: str, entity_type: str = "dicom_peer") -> None:
    p = current_principal()
    audit_trail.record(current_app.extensions["usgi"], p.name, p.role.value, action, entity_type, ae_title)


@blp.route("/peers")
@roles(Role.ADMIN)
@blp.response(200, PeerSchema(many=True))
def list_peers() -> list:
    return peers.list_peers(current_app.extensions["usgi"])


@blp.route("/peers", methods=["POST"])
@roles(Role.ADMIN)
@blp.arguments(PeerSchema)
@blp.response(201, PeerSchema)
def add_peer(data: dict) -> object:
    try:
        peer = peers.add_peer(
            current_app.extensions["usgi"], data["ae_title"], data["host"], data["port"], data["description"]
        )
    except ValueError as exc:
        raise Rejected(str(exc)) from exc
    _audit("create", peer.ae_title)
    return peer


@blp.route("/peers/<string:ae_title>", methods=["DELETE"])
@roles(Role.ADMIN)
@blp.response(204)
def remove_peer(ae_title: str) -> None:
    peers.remove_peer(current_app.extensions["usgi"], ae_title)
    _audit("delete", ae_title)


@blp.route("/outbox")
@roles(Role.ADMIN)
@blp.arguments(OutboxQuerySchema, location="query", unknown=RAISE)
@blp.response(200, OutboxMessageSchema(many=True))
def list_outbox(args: dict) -> list:
    """Deliveries to the EHR, newest first (``?status=failed`` for those waiting for an administrator)."""
    return push.list_messages(current_app.extensions["usgi"], args["status"])


@blp.route("/outbox/<int:message_id>/retry", methods=["POST"])
@roles(Role.ADMIN)
@blp.response(200, OutboxMessageSchema)
def retry_outbox(message_id: int) -> dict:
    """Queue a failed delivery again (after the cause was fixed at the EHR or here)."""
    message = push.retry(current_app.extensions["usgi"], message_id)
    _audit("retry", str(message_id), "fhir_outbox")
    return message
