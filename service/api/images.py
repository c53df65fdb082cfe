"""Images received over DICOM: search, metadata, the stored object and rendered previews."""

from __future__ import annotations

from flask import Response, current_app, request, send_file
from marshmallow import RAISE

from schemas.images import (
    ImagePageSchema,
    ImageQueryArgs,
    ImageSchema,
    PerformedStepArgs,
    PerformedStepSchema,
    PreviewArgs,
    VersionArgs,
)
from service import audit_trail, images, modality
from service.api.blueprint import Blueprint
from service.api.security import current_principal, roles
from service.auth import Role
from service.bootstrap import Services
from service.errors import Rejected

blp = Blueprint("images", __name__, url_prefix="/api", description="Images received from ultrasound machines")

READERS = (Role.CLINICIAN, Role.AUDITOR)


def _services() -> Services:
    return current_app.extensions["usgi"]  # type: ignore[no-any-return]


def _audit(action: str, entity_id: str | None, detail: dict | None = None) -> None:
    p = current_principal()
    audit_trail.record(_services(), p.name, p.role.value, action, "image", entity_id, request.remote_addr, detail)


@blp.route("/images")
@roles(*READERS)
@blp.arguments(ImageQueryArgs, location="query", unknown=RAISE)
@blp.response(200, ImagePageSchema)
def list_images(args: dict) -> dict:
    """Search the index (latest version of each instance); `linked=false` is the unlinked queue."""
    page, per_page = args.pop("page"), args.pop("per_page")
    items, total = images.search_images(_services(), images.ImageFilter(**args), page, per_page)
    _audit("search", None, {k: str(v) for k, v in args.items()} | {"returned": len(items)})
    return {"items": items, "meta": {"page": page, "per_page": per_page, "total": total}}


@blp.route("/images/<string:sop_instance_uid>")
@roles(*READERS)
@blp.arguments(VersionArgs, location="query", unknown=RAISE)
@blp.response(200, ImageSchema)
def get_image(args: dict, sop_instance_uid: str) -> dict:
    """Metadata of one instance, with every stored version when its content was sent differently."""
    row, versions = images.get_image(_services(), sop_instance_uid, args.get("version"))
    _audit("read", sop_instance_uid)
    return images.image_view(row, versions)


@blp.route("/images/<string:sop_instance_uid>/dicom")
@roles(*READERS)
@blp.arguments(VersionArgs, location="query", unknown=RAISE)
@blp.response(200, description="application/dicom: the object exactly as received, with its file meta")
def get_dicom(args: dict, sop_instance_uid: str) -> Response:
    row, _ = images.get_image(_services(), sop_instance_uid, args.get("version"))
    _audit("export", sop_instance_uid, {"sha256": row.sha256})
    resp = send_file(
        images.stored_path(_services(), row),
        mimetype="application/dicom",
        conditional=True,
        download_name=f"{sop_instance_uid}.dcm",
        etag=row.sha256,
    )
    return resp


@blp.route("/images/<string:sop_instance_uid>/preview.png")
@roles(*READERS)
@blp.arguments(PreviewArgs, location="query", unknown=RAISE)
@blp.response(200, description="image/png: one rendered frame")
def get_preview(args: dict, sop_instance_uid: str) -> Response:
    row, _ = images.get_image(_services(), sop_instance_uid, args.get("version"))
    if not row.is_image:
        raise Rejected("this object is not an image")
    # Imported here: numpy and the decoders are only needed by this view.
    from service.imaging.preview import PreviewError, render_preview

    try:
        png = render_preview(images.stored_path(_services(), row), args["frame"], args.get("size"))
    except PreviewError as exc:
        raise Rejected(f"cannot render: {exc.reason}") from exc
    _audit("view", sop_instance_uid, {"frame": args["frame"]})
    resp = Response(png, mimetype="image/png")
    resp.headers["Cache-Control"] = "private, max-age=3600"
    return resp


@blp.route("/performed-procedure-steps")
@roles(*READERS)
@blp.arguments(PerformedStepArgs, location="query", unknown=RAISE)
@blp.response(200, PerformedStepSchema(many=True))
def list_performed_steps(args: dict) -> list:
    """Modality Performed Procedure Steps received (MPPS); COMPLETED means acquisition has ended."""
    steps = modality.list_steps(_services(), args.get("study_instance_uid"))
    _audit("search", None, {"type": "mpps", "returned": len(steps)})
    return steps
