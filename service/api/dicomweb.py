"""DICOMweb WADO-RS retrieve (PS3.18 §10.4): a study, a series or one instance as
``multipart/related; type="application/dicom"``, each part the stored Part 10 file exactly as received.

The base URL ``{public_url}/dicomweb`` is the address of the ImagingStudy's Endpoint (service/fhir/imaging.py).
Objects are served in the transfer syntax they were received in; this server does not transcode, so an Accept
asking for another transfer syntax, or for another media type (metadata as ``application/dicom+json``, bulk
data, rendered images), is answered 406. Each instance is served in its current (latest) version, as
``/api/images/{uid}/dicom`` does by default.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

from flask import Response, current_app, request
from werkzeug.exceptions import NotAcceptable

from service import audit_trail, images
from service.api.blueprint import Blueprint
from service.api.security import current_principal, roles
from service.auth import Role
from service.bootstrap import Services
from service.errors import NotFound
from service.models import Instance

blp = Blueprint(
    "dicomweb", __name__, url_prefix="/dicomweb", description="DICOMweb WADO-RS retrieve of the stored images"
)

# The EHR fetches the images its ImagingStudy names; clinicians and auditors read them as under /api/images.
RETRIEVERS = (Role.CLINICIAN, Role.AUDITOR, Role.EHR)
DICOM = "application/dicom"
_CHUNK = 1 << 16  # parts are streamed from disk in chunks: a cine study never sits in memory whole
_DOC = 'multipart/related; type="application/dicom": every instance asked for, each part the stored object'


def _services() -> Services:
    return current_app.extensions["usgi"]  # type: ignore[no-any-return]


def _served(rows: list[Instance]) -> list[dict[str, str]]:
    # Which version of each instance went out: UIDs and hashes only, no patient data.
    return [{"sop_instance_uid": r.sop_instance_uid, "sha256": r.sha256} for r in rows]


def _audit(entity_type: str, entity_id: str, detail: dict) -> None:
    p = current_principal()
    audit_trail.record(
        _services(), p.name, p.role.value, "retrieve", entity_type, entity_id, request.remote_addr, detail
    )


def _accepted_syntaxes() -> set[str] | None:
    """The transfer syntaxes the Accept header admits (None: any, i.e. as stored); 406 if it admits no
    multipart DICOM at all."""
    header = request.headers.get("Accept", "").strip()
    if not header:
        return None
    wanted: set[str] = set()
    # No media type or transfer syntax UID contains a comma, so splitting on commas is safe here.
    for item in header.split(","):
        mimetype, params = _media_range(item)
        if _quality(params) <= 0:
            continue  # q=0 means "not this one"
        if mimetype in ("*/*", "multipart/*"):
            return None
        # A multipart/related without a type can only mean the one multipart this endpoint has.
        if mimetype == "multipart/related" and params.get("type", DICOM).lower() == DICOM:
            syntax = params.get("transfer-syntax", "*").strip()
            if syntax == "*":
                return None
            wanted.add(syntax)
    if not wanted:
        raise NotAcceptable(
            f'Accept: {header!r}: this endpoint serves only multipart/related; type="{DICOM}" '
            "(no metadata, bulk data or rendered media types)"
        )
    return wanted


def _media_range(item: str) -> tuple[str, dict[str, str]]:
    """``type/subtype; k=v; ...`` -> (lower-cased type, {lower-cased k: v unquoted}). Hand-rolled, not werkzeug's
    parse_options_header: that one cuts an unquoted ``type=application/dicom`` at the slash, which clients send."""
    mimetype, *pairs = item.split(";")
    params = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        params[key.strip().lower()] = value.strip().strip('"')
    return mimetype.strip().lower(), params


def _quality(params: dict[str, str]) -> float:
    try:
        return float(params.get("q", "1"))
    except ValueError:
        return 1.0  # a malformed q is ignored rather than refused


def _check_syntaxes(rows: list[Instance], wanted: set[str] | None) -> None:
    if wanted is None:
        return
    stored = {r.transfer_syntax_uid for r in rows}
    if not stored <= wanted:
        raise NotAcceptable(
            f"the objects asked for are stored in transfer syntax {', '.join(sorted(stored))} and this server "
            "does not transcode: accept transfer-syntax=* or the stored transfer syntax"
        )


def _multipart(rows: list[Instance]) -> Response:
    # Resolve every path first: a missing file is a 404 before the 200 status line goes out.
    parts = [(images.stored_path(_services(), r), r.transfer_syntax_uid) for r in rows]
    boundary = uuid.uuid4().hex

    def body() -> Iterator[bytes]:
        for path, syntax in parts:
            yield from _part(path, syntax, boundary)
        yield f"--{boundary}--\r\n".encode()

    resp = Response(body(), status=200)
    resp.headers["Content-Type"] = f'multipart/related; type="{DICOM}"; boundary={boundary}'
    return resp


def _part(path: Path, syntax: str, boundary: str) -> Iterator[bytes]:
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        yield (
            f"--{boundary}\r\nContent-Type: {DICOM}; transfer-syntax={syntax}\r\nContent-Length: {size}\r\n\r\n"
        ).encode()
        while chunk := f.read(_CHUNK):
            yield chunk
    yield b"\r\n"


@blp.route("/studies/<string:study_uid>")
@roles(*RETRIEVERS)
@blp.response(200, description=_DOC)
def retrieve_study(study_uid: str) -> Response:
    """WADO-RS RetrieveStudy: every instance of the study."""
    wanted = _accepted_syntaxes()
    rows = images.latest_in_study(_services(), study_uid)
    _check_syntaxes(rows, wanted)
    resp = _multipart(rows)
    _audit("study", study_uid, {"instances": _served(rows)})
    return resp


@blp.route("/studies/<string:study_uid>/series/<string:series_uid>")
@roles(*RETRIEVERS)
@blp.response(200, description=_DOC)
def retrieve_series(study_uid: str, series_uid: str) -> Response:
    """WADO-RS RetrieveSeries: every instance of the series."""
    wanted = _accepted_syntaxes()
    rows = images.latest_in_study(_services(), study_uid, series_uid)
    _check_syntaxes(rows, wanted)
    resp = _multipart(rows)
    _audit("series", series_uid, {"study_instance_uid": study_uid, "instances": _served(rows)})
    return resp


@blp.route("/studies/<string:study_uid>/series/<string:series_uid>/instances/<string:sop_uid>")
@roles(*RETRIEVERS)
@blp.response(200, description=_DOC)
def retrieve_instance(study_uid: str, series_uid: str, sop_uid: str) -> Response:
    """WADO-RS RetrieveInstance: one instance, in a multipart body like the others."""
    wanted = _accepted_syntaxes()
    row, _ = images.get_image(_services(), sop_uid)
    # The UIDs above it must be this instance's own: a retrieve names one place in the study tree.
    if (row.study_instance_uid, row.series_instance_uid) != (study_uid, series_uid):
        raise NotFound("no instance with this SOP Instance UID in this series")
    _check_syntaxes([row], wanted)
    resp = _multipart([row])
    _audit("image", sop_uid, {"study_instance_uid": study_uid, "series_instance_uid": series_uid, "sha256": row.sha256})
    return resp
