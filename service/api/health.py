from __future__ import annotations

from flask import current_app
from sqlalchemy import text

from schemas.admin import HealthSchema
from service.api.blueprint import Blueprint
from service.api.security import ANY_ROLE, roles

blp = Blueprint("health", __name__, description="Liveness and readiness")


@blp.route("/healthz")
@blp.doc(security=[])
@blp.response(200, HealthSchema)
def healthz() -> dict:
    """Liveness: the process answers (no token needed)."""
    return {"status": "ok", "checks": {}}


@blp.route("/readyz")
@roles(*ANY_ROLE)
@blp.response(200, HealthSchema)
@blp.alt_response(503, schema=HealthSchema)
def readyz() -> tuple[dict, int]:
    """Readiness: the database and the image store are reachable."""
    services = current_app.extensions["usgi"]
    checks = {}
    try:
        with services.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["database"] = f"error: {type(exc).__name__}"
    checks["image_store"] = "ok" if services.store.ready() else "error: not writable"
    ok = all(v == "ok" for v in checks.values())
    return {"status": "ok" if ok else "unavailable", "checks": checks}, 200 if ok else 503
