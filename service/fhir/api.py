"""The read-only FHIR R4 REST API under ``/fhir``: metadata, read, vread, instance history and search.

A plain Flask blueprint (FHIR is not part of the OpenAPI document); thin: it adapts HTTP to
:mod:`service.fhir.search` and answers every error, the auth gate's 401/403 included, as an OperationOutcome.
Roles: ``ehr`` (the reader DESIGN.md §3 names) and ``auditor`` (reads everything). Clinicians read reports through
``/api``; keeping them off ``/fhir`` keeps the bulk search surface to the two roles that need it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import format_datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Flask, Response, current_app, request

from service import audit_trail
from service.api.security import current_principal, roles
from service.auth import Role
from service.bootstrap import Services
from service.db import stored_utc, unit_of_work
from service.fhir import search
from service.fhir.capability import capability_statement
from service.fhir.outcomes import FhirError, issue_code, operation_outcome
from service.models import FhirResource

blp = Blueprint("fhir", __name__, url_prefix="/fhir")

READERS = (Role.EHR, Role.AUDITOR)
FHIR_JSON = "application/fhir+json"
# _format values and Accept types answered with JSON (application/json+fhir is the pre-R4 name, still sent).
JSON_FORMATS = frozenset({"json", "application/json", FHIR_JSON, "application/json+fhir"})


def init_app(app: Flask) -> None:
    app.register_blueprint(blp)
    # service/api/errors.py answers the auth gate, routing (404/405) and 500s; under /fhir in FHIR's shape.
    app.extensions.setdefault("usgi_error_renderers", {})["/fhir"] = error_outcome


def _services() -> Services:
    return current_app.extensions["usgi"]  # type: ignore[no-any-return]


def _base() -> str:
    return _services().settings.public_url.rstrip("/")


def _respond(body: Mapping[str, Any], status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    resp = current_app.response_class(
        json.dumps(body, ensure_ascii=False), status=status, content_type=f"{FHIR_JSON}; charset=utf-8"
    )
    resp.headers.update(headers or {})
    return resp


def error_outcome(status: int, code: str, message: str, errors: Mapping[str, Any] | None = None) -> Response:
    """The JSON error of service/api/errors.py as an OperationOutcome (``code`` is that module's own word)."""
    headers = {"WWW-Authenticate": 'Bearer realm="usgi"'} if status == 401 else {}
    detail = f"{message}: {json.dumps(errors)}" if errors else message
    return _respond(operation_outcome(issue_code(status), detail), status, headers)


@blp.errorhandler(FhirError)
def _fhir_error(exc: FhirError) -> Response:
    return _respond(exc.outcome(), exc.status)


@blp.before_request
def _negotiate() -> None:
    """JSON only: ``_format`` or an Accept header that rules it out is a 406 (R4 http.html §3.1.0.1.7)."""
    fmt = request.args.get("_format")
    if fmt is not None and fmt.replace(" ", "+") not in JSON_FORMATS:
        raise FhirError(406, f"_format={fmt!r}: this server answers JSON only", expression="_format")
    if request.accept_mimetypes and request.accept_mimetypes.best_match(sorted(JSON_FORMATS - {"json"})) is None:
        raise FhirError(406, f"Accept: {request.headers.get('Accept')!r}: this server answers {FHIR_JSON} only")


def _audit(action: str, entity_id: str, detail: dict[str, Any]) -> None:
    p = current_principal()
    audit_trail.record(_services(), p.name, p.role.value, action, "fhir", entity_id, request.remote_addr, detail)


def _instant(when: datetime) -> datetime:
    return stored_utc(when).astimezone(UTC)


def _version_headers(row: FhirResource) -> dict[str, str]:
    return {"ETag": f'W/"{row.version_id}"', "Last-Modified": format_datetime(_instant(row.last_updated), usegmt=True)}


@blp.get("/metadata")
@roles(*Role)  # no patient data: any valid token may learn what the server does
def metadata() -> Response:
    try:
        software = version("usgi-docs")
    except PackageNotFoundError:  # running from a source tree that was never installed
        software = "unknown"
    now = _instant(_services().clock()).isoformat(timespec="seconds").replace("+00:00", "Z")
    return _respond(capability_statement(_base(), now, software))


@blp.get("/<string:resource_type>/<string:resource_id>")
@roles(*READERS)
def read(resource_type: str, resource_id: str) -> Response:
    with unit_of_work(_services().session_factory) as s:
        row = search.read(s, resource_type, resource_id)
    _audit("read", f"{resource_type}/{resource_id}", {"version": row.version_id})
    return _respond(row.body, headers=_version_headers(row))


@blp.get("/<string:resource_type>/<string:resource_id>/_history/<string:version_id>")
@roles(*READERS)
def vread(resource_type: str, resource_id: str, version_id: str) -> Response:
    if not version_id.isdigit():
        search.check_type(resource_type)
        raise FhirError(404, f"{resource_type}/{resource_id}/_history/{version_id} is not known")
    with unit_of_work(_services().session_factory) as s:
        row = search.read(s, resource_type, resource_id, int(version_id))
    _audit("vread", f"{resource_type}/{resource_id}", {"version": row.version_id})
    return _respond(row.body, headers=_version_headers(row))


@blp.get("/<string:resource_type>/<string:resource_id>/_history")
@roles(*READERS)
def history(resource_type: str, resource_id: str) -> Response:
    with unit_of_work(_services().session_factory) as s:
        rows = search.history(s, resource_type, resource_id)
    base = _base()
    url = f"{resource_type}/{resource_id}"
    entries = [
        {
            "fullUrl": f"{base}/fhir/{url}",
            "resource": row.body,
            # R4 bdl-3/bdl-4: a history entry says which interaction made the version and how it was answered.
            "request": {"method": "POST", "url": resource_type}
            if row.version_id == 1
            else {"method": "PUT", "url": url},
            "response": {
                "status": "201 Created" if row.version_id == 1 else "200 OK",
                "etag": f'W/"{row.version_id}"',
                "lastModified": _instant(row.last_updated).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            },
        }
        for row in rows
    ]
    _audit("history", url, {"versions": len(rows)})
    bundle = {
        "resourceType": "Bundle",
        "type": "history",
        "total": len(rows),
        "link": [{"relation": "self", "url": f"{base}/fhir/{url}/_history"}],
        "entry": entries,
    }
    return _respond(bundle)


@blp.get("/<string:resource_type>")
@roles(*READERS)
def search_type(resource_type: str) -> Response:
    settings = _services().settings
    local = settings.local_zone or datetime.now().astimezone().tzinfo or UTC
    query = search.parse_search(
        resource_type, request.args.items(multi=True), strict=_strict(), local=local, base=_base()
    )
    with unit_of_work(_services().session_factory) as s:
        result = search.search(s, query, _base())
    # Parameter names only: their values (a patient's id, a date) stay out of the audit detail.
    _audit(
        "search",
        resource_type,
        {
            "params": sorted({k for k, _ in query.used}),
            "total": result.total,
            "returned": len(result.matches),
            "included": len(result.included),
        },
    )
    return _respond(_searchset(query, result))


def _strict() -> bool:
    """``Prefer: handling=strict`` (R4 search.html §3.1.1.3.1); lenient is the default."""
    prefs = [p.replace(" ", "") for part in request.headers.getlist("Prefer") for p in re.split(r"[,;]", part)]
    return "handling=strict" in prefs


def _searchset(query: search.SearchQuery, result: search.SearchResult) -> dict[str, Any]:
    base = _base()

    def page_url(offset: int) -> str:
        params = [*query.used, ("_count", str(query.count)), ("_offset", str(offset))]
        return f"{base}/fhir/{query.resource_type}?{urlencode(params)}"

    links = [{"relation": "self", "url": page_url(query.offset)}]
    if query.count and query.offset + query.count < result.total:
        links.append({"relation": "next", "url": page_url(query.offset + query.count)})
    if query.offset > 0:
        links.append({"relation": "previous", "url": page_url(max(0, query.offset - max(query.count, 1)))})

    def entry(body: Mapping[str, Any], mode: str) -> dict[str, Any]:
        url = f"{base}/fhir/{body['resourceType']}/{body['id']}"
        return {"fullUrl": url, "resource": body, "search": {"mode": mode}}

    entries = [entry(b, "match") for b in result.matches] + [entry(b, "include") for b in result.included]
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": result.total, "link": links}
    if entries:
        bundle["entry"] = entries
    return bundle
