"""Deny by default, proven over every route the app has: no token -> 401, bad or revoked token -> 401,
a role the route does not admit -> 403. A new route fails here until it declares its roles and is listed."""

from __future__ import annotations

from flask import Flask

from service.api.security import ANY_ROLE, PUBLIC_ENDPOINTS, allowed_roles
from service.auth import TOKEN_PREFIX, Role, authenticate, create_token, revoke_token

# Every (rule, method) the app serves, with the roles it admits (None: public). Adding a route means adding it here.
EXPECTED_ROUTES: dict[tuple[str, str], frozenset[Role] | None] = {
    ("/healthz", "GET"): None,
    ("/readyz", "GET"): ANY_ROLE,
    ("/openapi.json", "GET"): ANY_ROLE,
    ("/fhir/metadata", "GET"): ANY_ROLE,
    ("/fhir/<string:resource_type>", "GET"): frozenset({Role.EHR, Role.AUDITOR}),
    ("/fhir/<string:resource_type>/<string:resource_id>", "GET"): frozenset({Role.EHR, Role.AUDITOR}),
    ("/fhir/<string:resource_type>/<string:resource_id>/_history", "GET"): frozenset({Role.EHR, Role.AUDITOR}),
    ("/fhir/<string:resource_type>/<string:resource_id>/_history/<string:version_id>", "GET"): frozenset(
        {Role.EHR, Role.AUDITOR}
    ),
    ("/api/images", "GET"): frozenset({Role.CLINICIAN, Role.AUDITOR}),
    ("/api/images/<string:sop_instance_uid>", "GET"): frozenset({Role.CLINICIAN, Role.AUDITOR}),
    ("/api/images/<string:sop_instance_uid>/dicom", "GET"): frozenset({Role.CLINICIAN, Role.AUDITOR}),
    ("/api/images/<string:sop_instance_uid>/preview.png", "GET"): frozenset({Role.CLINICIAN, Role.AUDITOR}),
    ("/api/performed-procedure-steps", "GET"): frozenset({Role.CLINICIAN, Role.AUDITOR}),
    ("/dicomweb/studies/<string:study_uid>", "GET"): frozenset({Role.CLINICIAN, Role.AUDITOR, Role.EHR}),
    ("/dicomweb/studies/<string:study_uid>/series/<string:series_uid>", "GET"): frozenset(
        {Role.CLINICIAN, Role.AUDITOR, Role.EHR}
    ),
    ("/dicomweb/studies/<string:study_uid>/series/<string:series_uid>/instances/<string:sop_uid>", "GET"): frozenset(
        {Role.CLINICIAN, Role.AUDITOR, Role.EHR}
    ),
    ("/api/procedures", "POST"): frozenset({Role.CLINICIAN, Role.EHR}),
    ("/api/procedures", "GET"): frozenset({Role.CLINICIAN, Role.AUDITOR, Role.EHR}),
    ("/api/procedures/<string:procedure_id>", "GET"): frozenset({Role.CLINICIAN, Role.AUDITOR, Role.EHR}),
    ("/api/procedures/<string:procedure_id>", "PATCH"): frozenset({Role.CLINICIAN, Role.EHR}),
    ("/api/procedures/<string:procedure_id>/finalize", "POST"): frozenset({Role.CLINICIAN}),
    ("/api/procedures/<string:procedure_id>/cosign", "POST"): frozenset({Role.CLINICIAN}),
    ("/api/procedures/<string:procedure_id>/amend", "POST"): frozenset({Role.CLINICIAN}),
    ("/api/procedures/<string:procedure_id>/cancel", "POST"): frozenset({Role.CLINICIAN, Role.EHR}),
    ("/api/procedures/<string:procedure_id>/versions", "GET"): frozenset({Role.CLINICIAN, Role.AUDITOR, Role.EHR}),
    ("/api/procedures/<string:procedure_id>/report.pdf", "GET"): frozenset({Role.CLINICIAN, Role.AUDITOR, Role.EHR}),
    ("/api/procedures/<string:procedure_id>/consent.pdf", "GET"): frozenset({Role.CLINICIAN, Role.AUDITOR, Role.EHR}),
    ("/api/procedures/<string:procedure_id>/images", "GET"): frozenset({Role.CLINICIAN, Role.AUDITOR}),
    ("/api/procedures/<string:procedure_id>/images/<string:sop_instance_uid>", "PUT"): frozenset({Role.CLINICIAN}),
    ("/api/procedures/<string:procedure_id>/images/<string:sop_instance_uid>", "DELETE"): frozenset({Role.CLINICIAN}),
    ("/api/peers", "GET"): frozenset({Role.ADMIN}),
    ("/api/peers", "POST"): frozenset({Role.ADMIN}),
    ("/api/peers/<string:ae_title>", "DELETE"): frozenset({Role.ADMIN}),
    ("/api/outbox", "GET"): frozenset({Role.ADMIN}),
    ("/api/outbox/<int:message_id>/retry", "POST"): frozenset({Role.ADMIN}),
}
PUBLIC_RULES = {"/healthz"}
# Only these may admit every role (they expose no patient data).
OPEN_TO_ALL_ROLES = {"/readyz", "/openapi.json", "/fhir/metadata"}
# A plausible value for every URL variable the app uses (a new variable name must be added here).
URL_VALUES = {
    "sop_instance_uid": "1.2.826.0.1.3680043.8.498.12345",
    "study_uid": "1.2.826.0.1.3680043.8.498.1",
    "series_uid": "1.2.826.0.1.3680043.8.498.12",
    "sop_uid": "1.2.826.0.1.3680043.8.498.12345",
    "resource_type": "Procedure",
    "resource_id": "0123456789abcdef-procedure",
    "version_id": "1",
    "ae_title": "NOSUCHAE",
    "procedure_id": "0123456789abcdef",
    "message_id": 987654321,
}


def _routes(app: Flask) -> list[tuple[str, str, str, str]]:
    """(rule, method, endpoint, url) for every rule and method but HEAD/OPTIONS."""
    adapter = app.url_map.bind("localhost")
    out = []
    for rule in app.url_map.iter_rules():
        missing = set(rule.arguments) - set(URL_VALUES)
        assert not missing, f"{rule.rule}: no test value for URL variable(s) {missing}"
        values = {name: URL_VALUES[name] for name in rule.arguments}
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            url = adapter.build(rule.endpoint, values, method=method)
            out.append((rule.rule, method, rule.endpoint, url))
    return out


def _call(client, method: str, url: str, headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    kwargs: dict = {"headers": headers or {}}
    if method in ("POST", "PUT", "PATCH"):
        kwargs["json"] = {}
    return client.open(url, method=method, **kwargs)


def _assert_401(resp, where: str) -> None:  # type: ignore[no-untyped-def]
    assert resp.status_code == 401, f"{where}: {resp.status_code} {resp.get_data(as_text=True)[:200]}"
    assert resp.is_json, where
    body = resp.get_json()
    if resp.request.path.startswith("/fhir/"):  # FHIR errors are OperationOutcomes (service/fhir/api.py)
        assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["code"] == "login", where
    else:
        assert body["code"] == "unauthorized" and body["status"] == 401 and body["message"], where
    assert resp.headers.get("WWW-Authenticate", "").startswith("Bearer"), where


def test_the_route_table_is_the_expected_one(app):
    routes = _routes(app)
    assert len(routes) >= 8
    assert len({(r, m) for r, m, _, _ in routes}) == len(routes)
    assert {(r, m) for r, m, _, _ in routes} == set(EXPECTED_ROUTES), "a route was added or removed: update this test"
    for rule, method, endpoint, _ in routes:
        assert allowed_roles(app, endpoint) == EXPECTED_ROUTES[(rule, method)], f"{method} {rule}"


def test_the_public_allow_list_is_exactly_healthz(app, client):
    public = {r for r, _, endpoint, _ in _routes(app) if endpoint in PUBLIC_ENDPOINTS}
    assert public == PUBLIC_RULES
    resp = client.get("/healthz")
    assert resp.status_code == 200 and resp.get_json()["status"] == "ok"


def test_every_protected_route_declares_roles_and_few_admit_everyone(app):
    for rule, method, endpoint, _ in _routes(app):
        if rule in PUBLIC_RULES:
            continue
        admitted = allowed_roles(app, endpoint)
        assert admitted, f"{method} {rule} ({endpoint}) declares no role: it would be closed to everyone"
        assert admitted <= set(Role), f"{method} {rule}"
        if rule in OPEN_TO_ALL_ROLES:
            assert admitted == ANY_ROLE, f"{method} {rule}"
        else:
            assert admitted != ANY_ROLE, f"{method} {rule} admits every role"


def test_no_token_is_401_on_every_route_but_the_public_one(app, client):
    checked = 0
    for rule, method, _, url in _routes(app):
        resp = _call(client, method, url)
        if rule in PUBLIC_RULES:
            assert resp.status_code == 200, f"{method} {rule}"
            continue
        _assert_401(resp, f"{method} {url} without a token")
        checked += 1
    assert checked >= 8


MALFORMED_HEADERS = [
    "",
    "Bearer",
    "Bearer ",
    "Bearer not-a-token",
    f"Bearer {TOKEN_PREFIX}unknown-but-well-formed",
    f"Bearer {TOKEN_PREFIX}{'x' * 300}",
    "Basic dXNlcjpwYXNz",
    "Token usgi_abc",
]


def test_a_malformed_or_unknown_token_is_401_everywhere(app, client, tokens):
    # A real token in the wrong scheme, or without one, is malformed too.
    headers = [*MALFORMED_HEADERS, f"Basic {tokens['admin']}", tokens["admin"], f"Bearer{tokens['admin']}"]
    for rule, method, _, url in _routes(app):
        if rule in PUBLIC_RULES:
            continue
        for header in headers:
            _assert_401(_call(client, method, url, {"Authorization": header}), f"{method} {url} with {header!r}")


def test_a_revoked_token_is_401_everywhere(app, client, services):
    revoked = {}
    for role in Role:
        token = create_token(services, role, f"revoked-{role.value}")
        principal = authenticate(services, token)
        assert principal is not None and principal.role is role
        assert revoke_token(services, principal.token_id)
        assert authenticate(services, token) is None
        revoked[role] = token
    for rule, method, _, url in _routes(app):
        if rule in PUBLIC_RULES:
            continue
        for role, token in revoked.items():
            resp = _call(client, method, url, {"Authorization": f"Bearer {token}"})
            _assert_401(resp, f"{method} {url} with a revoked {role.value} token")


def test_a_role_not_admitted_is_403_and_an_admitted_one_passes(app, client, auth):
    forbidden_checked = 0
    fhir_forbidden_checked = 0
    for rule, method, endpoint, url in _routes(app):
        if rule in PUBLIC_RULES:
            continue
        admitted = allowed_roles(app, endpoint) or frozenset()
        for role in Role:
            resp = _call(client, method, url, auth[role.value])
            where = f"{method} {url} as {role.value}"
            if role in admitted:
                # Past the gate: whatever the view answers (404 for the made-up UID, 422 for an empty body, ...).
                assert resp.status_code not in (401, 403), f"{where}: {resp.status_code}"
            else:
                assert resp.status_code == 403, f"{where}: {resp.status_code}"
                body = resp.get_json()
                if rule.startswith("/fhir/"):  # an OperationOutcome, counted apart
                    assert body["issue"][0]["code"] == "forbidden", where
                    fhir_forbidden_checked += 1
                else:
                    assert body["code"] == "forbidden" and body["status"] == 403, where
                    forbidden_checked += 1
                assert "WWW-Authenticate" not in resp.headers, where
            resp.close()
    # FHIR resource routes (search, read, history, vread): 4 x (clinician, admin); /fhir/metadata admits every role.
    assert fhir_forbidden_checked == 4 * 2
    # Image reader routes: 5 x (ehr, admin); admin routes (peers 3, outbox 2): 5 x (clinician, auditor, ehr);
    # procedure routes: 5 reads (3 + report.pdf, consent.pdf) x admin, 1 image list x (ehr, admin), 3 writes x
    # (auditor, admin), 5 clinician-only x 3 others; WADO-RS routes (study, series, instance): 3 x admin.
    assert forbidden_checked == 5 * 2 + 5 * 3 + 5 * 1 + 1 * 2 + 3 * 2 + 5 * 3 + 3 * 1
