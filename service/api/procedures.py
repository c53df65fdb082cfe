"""Procedure reports: create, read, change (with If-Match), sign, amend, cancel; their images."""

from __future__ import annotations

from typing import Any

from flask import Response, current_app, request
from marshmallow import RAISE

from schemas.images import ImageSchema
from schemas.procedure_api import (
    AmendSchema,
    CancelSchema,
    ImageLinkSchema,
    ProcedurePageSchema,
    ProcedureQueryArgs,
    ProcedureSchema,
    ProcedureVersionSchema,
)
from schemas.procedures import ProcedureCreateSchema, ProcedurePatchSchema
from service.api.blueprint import Blueprint
from service.api.security import current_principal, roles
from service.auth import Role
from service.bootstrap import Services
from service.procedures import service as procedures
from service.procedures.service import Actor

blp = Blueprint("procedures", __name__, url_prefix="/api", description="Procedure reports")

WRITERS = (Role.CLINICIAN, Role.EHR)
READERS = (Role.CLINICIAN, Role.AUDITOR, Role.EHR)
_PRECONDITION = {
    "parameters": [
        {
            "in": "header",
            "name": "If-Match",
            "schema": {"type": "string"},
            "description": 'the ETag of the version the change is based on, e.g. "3"',
        }
    ]
}


def _services() -> Services:
    return current_app.extensions["usgi"]  # type: ignore[no-any-return]


def _actor() -> Actor:
    p = current_principal()
    return Actor(p.name, p.role.value, p.token_id, request.remote_addr)


def _with_etag(result: tuple[dict[str, Any], str]) -> tuple[dict[str, Any], int, dict[str, str]]:
    body, tag = result
    return body, 200, {"ETag": tag}


@blp.route("/procedures", methods=["POST"])
@roles(*WRITERS)
@blp.arguments(ProcedureCreateSchema)
@blp.response(201, ProcedureSchema, headers={"ETag": {"schema": {"type": "string"}}})
def create_procedure(data: dict) -> tuple[dict[str, Any], int, dict[str, str]]:
    """File a procedure: a scheduled one (it goes on the worklist) or a draft report."""
    body, tag = procedures.create(_services(), data, _actor())
    return body, 201, {"ETag": tag, "Location": f"/api/procedures/{body['id']}"}


@blp.route("/procedures", methods=["GET"])
@roles(*READERS)
@blp.arguments(ProcedureQueryArgs, location="query", unknown=RAISE)
@blp.response(200, ProcedurePageSchema)
def list_procedures(args: dict) -> dict:
    page, per_page = args.pop("page"), args.pop("per_page")
    status = args.pop("status", None)
    f = procedures.ProcedureFilter(status=status.value if status else None, **args)
    items, total = procedures.search(_services(), f, page, per_page, _actor())
    return {"items": items, "meta": {"page": page, "per_page": per_page, "total": total}}


@blp.route("/procedures/<string:procedure_id>", methods=["GET"])
@roles(*READERS)
@blp.response(200, ProcedureSchema, headers={"ETag": {"schema": {"type": "string"}}})
def get_procedure(procedure_id: str) -> tuple[dict[str, Any], int, dict[str, str]]:
    return _with_etag(procedures.get(_services(), procedure_id, _actor()))


@blp.route("/procedures/<string:procedure_id>", methods=["PATCH"])
@roles(*WRITERS)
@blp.arguments(ProcedurePatchSchema)
@blp.response(200, ProcedureSchema)
@blp.doc(**_PRECONDITION)
def patch_procedure(changes: dict, procedure_id: str) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Change a draft: each top-level field given replaces that part. Needs If-Match (428 without, 412 stale)."""
    return _with_etag(procedures.update(_services(), procedure_id, changes, request.headers.get("If-Match"), _actor()))


@blp.route("/procedures/<string:procedure_id>/finalize", methods=["POST"])
@roles(Role.CLINICIAN)
@blp.response(200, ProcedureSchema)
@blp.doc(**_PRECONDITION)
def finalize_procedure(procedure_id: str) -> tuple[dict[str, Any], int, dict[str, str]]:
    """The performer signs; the report is final, or waits for the supervisor when the performer is in training."""
    return _with_etag(procedures.finalize(_services(), procedure_id, request.headers.get("If-Match"), _actor()))


@blp.route("/procedures/<string:procedure_id>/cosign", methods=["POST"])
@roles(Role.CLINICIAN)
@blp.response(200, ProcedureSchema)
@blp.doc(**_PRECONDITION)
def cosign_procedure(procedure_id: str) -> tuple[dict[str, Any], int, dict[str, str]]:
    """The supervisor co-signs a trainee's signed report; it becomes final."""
    return _with_etag(procedures.cosign(_services(), procedure_id, request.headers.get("If-Match"), _actor()))


@blp.route("/procedures/<string:procedure_id>/amend", methods=["POST"])
@roles(Role.CLINICIAN)
@blp.arguments(AmendSchema)
@blp.response(200, ProcedureSchema)
@blp.doc(**_PRECONDITION)
def amend_procedure(body: dict, procedure_id: str) -> tuple[dict[str, Any], int, dict[str, str]]:
    """A new version of a final report, with a reason; needs If-Match. Earlier versions stay readable."""
    return _with_etag(
        procedures.amend(
            _services(), procedure_id, body["reason"], body["changes"], request.headers.get("If-Match"), _actor()
        )
    )


@blp.route("/procedures/<string:procedure_id>/cancel", methods=["POST"])
@roles(*WRITERS)
@blp.arguments(CancelSchema)
@blp.response(200, ProcedureSchema)
@blp.doc(**_PRECONDITION)
def cancel_procedure(body: dict, procedure_id: str) -> tuple[dict[str, Any], int, dict[str, str]]:
    """Not performed or entered in error (before it is final): off the worklist; its images are released."""
    return _with_etag(
        procedures.cancel(_services(), procedure_id, body["reason"], request.headers.get("If-Match"), _actor())
    )


@blp.route("/procedures/<string:procedure_id>/versions", methods=["GET"])
@roles(*READERS)
@blp.response(200, ProcedureVersionSchema(many=True))
def list_versions(procedure_id: str) -> list[dict[str, Any]]:
    """Every stored version, oldest first."""
    return procedures.versions(_services(), procedure_id, _actor())


@blp.route("/procedures/<string:procedure_id>/images", methods=["GET"])
@roles(Role.CLINICIAN, Role.AUDITOR)
@blp.response(200, ImageSchema(many=True))
def list_procedure_images(procedure_id: str) -> list[dict[str, Any]]:
    """The images linked to the procedure, each with its role (pre, post, other) and why."""
    return procedures.images(_services(), procedure_id, _actor())


@blp.route("/procedures/<string:procedure_id>/images/<string:sop_instance_uid>", methods=["PUT"])
@roles(Role.CLINICIAN)
@blp.arguments(ImageLinkSchema)
@blp.response(200, ImageSchema)
def link_image(body: dict, procedure_id: str, sop_instance_uid: str) -> dict[str, Any]:
    """Link an image by hand (from the unlinked queue, or moved from another procedure), or override its role."""
    return procedures.link_image(
        _services(), procedure_id, sop_instance_uid, body.get("role"), body["accept_contradiction"], _actor()
    )


@blp.route("/procedures/<string:procedure_id>/images/<string:sop_instance_uid>", methods=["DELETE"])
@roles(Role.CLINICIAN)
@blp.response(204)
def unlink_image(procedure_id: str, sop_instance_uid: str) -> Response:
    """Take an image off the procedure: it goes to the unlinked queue and the linker leaves it there."""
    procedures.unlink_image(_services(), procedure_id, sop_instance_uid, _actor())
    return Response(status=204)


@blp.route("/procedures/<string:procedure_id>/report.pdf", methods=["GET"])
@roles(*READERS)
@blp.response(200, description="application/pdf: the guidance report with its pre and post images")
def report_pdf(procedure_id: str) -> Response:
    """The guidance report of the current version (the FHIR DocumentReference's attachment)."""
    pdf, tag = procedures.report_pdf(_services(), procedure_id, _actor())
    resp = Response(pdf, mimetype="application/pdf")
    resp.headers["ETag"] = tag
    resp.headers["Content-Disposition"] = f'inline; filename="guidance-report-{procedure_id}.pdf"'
    resp.headers["Cache-Control"] = "private, no-cache"
    return resp


@blp.route("/procedures/<string:procedure_id>/consent.pdf", methods=["GET"])
@roles(*READERS)
@blp.response(200, description="application/pdf: the signed consent form, as uploaded")
def consent_pdf(procedure_id: str) -> Response:
    resp = Response(procedures.consent_document(_services(), procedure_id, _actor()), mimetype="application/pdf")
    resp.headers["Content-Disposition"] = f'inline; filename="consent-{procedure_id}.pdf"'
    resp.headers["Cache-Control"] = "private, no-cache"
    return resp
