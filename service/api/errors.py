"""Domain and HTTP errors -> one JSON error shape {code, status, message, errors} for every route."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, current_app, has_request_context, jsonify, request
from werkzeug.exceptions import HTTPException

from service.api.security import Forbidden, Unauthorized
from service.errors import Conflict, DomainError, NotFound, Rejected
from service.procedures.service import Invalid, PreconditionFailed, PreconditionRequired

log = logging.getLogger(__name__)


def error_response(status: int, code: str, message: str, errors: dict[str, Any] | None = None) -> Response:
    render = _renderer_for_path()
    if render is not None:
        return render(status, code, message, errors)
    body: dict[str, Any] = {"code": code, "status": status, "message": message}
    if errors:
        body["errors"] = errors
    resp = jsonify(body)
    resp.status_code = status
    if status == 401:
        resp.headers["WWW-Authenticate"] = 'Bearer realm="usgi"'
    return resp


def _renderer_for_path() -> Callable[..., Response] | None:
    """An API under its own path prefix may answer errors in its own shape (``/fhir``: OperationOutcome); it
    registers ``app.extensions["usgi_error_renderers"][prefix] = render(status, code, message, errors)``."""
    if not has_request_context():
        return None
    for prefix, render in current_app.extensions.get("usgi_error_renderers", {}).items():
        if request.path == prefix or request.path.startswith(prefix + "/"):
            return render  # type: ignore[no-any-return]
    return None


_DOMAIN_STATUS: dict[type[DomainError], int] = {
    NotFound: 404,
    Conflict: 409,
    Rejected: 422,
    PreconditionFailed: 412,
    PreconditionRequired: 428,
    Invalid: 400,
}


def init_app(app: Flask) -> None:
    @app.errorhandler(Unauthorized)
    def _unauthorized(_: Unauthorized) -> Response:
        return error_response(401, "unauthorized", "a valid bearer token is required")

    @app.errorhandler(Forbidden)
    def _forbidden(_: Forbidden) -> Response:
        return error_response(403, "forbidden", "this token's role may not use this endpoint")

    @app.errorhandler(DomainError)
    def _domain(exc: DomainError) -> Response:
        status = next((v for k, v in _DOMAIN_STATUS.items() if isinstance(exc, k)), 400)
        return error_response(status, exc.code, str(exc), getattr(exc, "errors", None))

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        # flask-smorest puts marshmallow's per-field messages in exc.data["messages"], keyed by location.
        data = getattr(exc, "data", None) or {}
        messages = data.get("messages") if isinstance(data, dict) else None
        errors: dict[str, Any] | None = None
        if isinstance(messages, dict):
            errors = {}
            for _location, fields in messages.items():
                errors.update(fields if isinstance(fields, dict) else {"_": fields})
        code = (exc.name or "error").lower().replace(" ", "_")
        return error_response(exc.code or 500, code, exc.description or exc.name or "error", errors)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return error_response(500, "internal_error", "internal error")
