"""create_app(settings): configuration, then extensions, then blueprints, then error handlers."""

from __future__ import annotations

from flask import Flask
from flask_smorest import Api

from service.api import admin, dicomweb, errors, health, images, procedures, security
from service.auth import Role
from service.bootstrap import Services, build_services
from service.config import Settings
from service.fhir import api as fhir_api


def create_app(settings: Settings, services: Services | None = None) -> Flask:
    app = Flask("usgi", static_folder=None)
    app.config.update(
        API_TITLE="usgi-docs",
        API_VERSION="1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        JSON_SORT_KEYS=False,
    )
    app.extensions["usgi"] = services or build_services(settings)
    api = Api(app, spec_kwargs={"security": [{"bearerAuth": []}]})
    api.spec.components.security_scheme("bearerAuth", {"type": "http", "scheme": "bearer"})
    for blp in (health.blp, images.blp, dicomweb.blp, procedures.blp, admin.blp):
        api.register_blueprint(blp)
    fhir_api.init_app(app)  # a plain blueprint: FHIR is not in the OpenAPI document
    # Endpoints registered by libraries declare their roles here (the OpenAPI document).
    app.extensions["usgi_endpoint_roles"] = {"api-docs.openapi_json": frozenset(Role)}
    security.init_app(app)
    errors.init_app(app)
    return app
