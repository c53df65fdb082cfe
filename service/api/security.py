"""Deny by default: every endpoint declares the roles it admits; anything undeclared is refused.

A route that forgot its declaration is closed, not open (STYLE.md: per-view decorators are the anti-pattern;
here the check runs in one ``before_request`` for the whole app and the decorator only declares).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask, current_app, g, request

from service.auth import Principal, Role, authenticate

F = TypeVar("F", bound=Callable[..., Any])

PUBLIC_ENDPOINTS = frozenset({"health.healthz"})
ANY_ROLE = frozenset(Role)


class Unauthorized(Exception):
    pass


class Forbidden(Exception):
    pass


def roles(*allowed: Role) -> Callable[[F], F]:
    """Declare which roles may call a view."""

    def mark(view: F) -> F:
        view._usgi_roles = frozenset(allowed)  # type: ignore[attr-defined]
        return view

    return mark


def allowed_roles(app: Flask, endpoint: str) -> frozenset[Role] | None:
    view = app.view_functions.get(endpoint)
    declared = getattr(view, "_usgi_roles", None)
    if declared is None:
        declared = app.extensions.get("usgi_endpoint_roles", {}).get(endpoint)
    return declared


def current_principal() -> Principal:
    return g.principal  # type: ignore[no-any-return]


def init_app(app: Flask) -> None:
    @app.before_request
    def _check_token() -> None:
        endpoint = request.endpoint
        if endpoint in PUBLIC_ENDPOINTS:
            return
        if endpoint is None:
            return  # 404/405: Flask answers without running any view
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        principal = authenticate(current_app.extensions["usgi"], token.strip()) if scheme.lower() == "bearer" else None
        if principal is None:
            raise Unauthorized()
        admitted = allowed_roles(current_app, endpoint)
        if not admitted or principal.role not in admitted:
            raise Forbidden()
        g.principal = principal
