"""The `usgi` command against the test's own database: migrate, tokens and peers; a bad setting is a usage error."""

from __future__ import annotations

import hashlib
import os

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import inspect, select

from service import bootstrap
from service.auth import Role, authenticate
from service.bootstrap import Services, build_services
from service.cli import main
from service.config import Settings
from service.models import ApiToken


@pytest.fixture
def env(settings: Settings) -> dict[str, str | None]:
    """The environment `usgi` sees: the test's data dir and database, and no other USGI_* variable."""
    out: dict[str, str | None] = {k: None for k in os.environ if k.startswith("USGI_")}
    out |= {"USGI_DATA_DIR": str(settings.data_dir), "USGI_DATABASE_URL": settings.database_url}
    return out


@pytest.fixture
def opened(monkeypatch) -> list[Services]:  # type: ignore[no-untyped-def]
    """Every Services the commands build (cli._services imports build_services when called)."""
    made: list[Services] = []
    real = bootstrap.build_services

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        svc = real(*args, **kwargs)
        made.append(svc)
        return svc

    monkeypatch.setattr(bootstrap, "build_services", spy)
    yield made
    # Close what the commands left open (see test_commands_close_their_database_connections), so unclosed
    # connections are not garbage-collected, with a ResourceWarning, in some later test.
    for svc in made:
        svc.close()


@pytest.fixture
def usgi(env, opened):  # type: ignore[no-untyped-def]
    runner = CliRunner()

    def run(*args: str, extra_env: dict[str, str] | None = None) -> Result:
        return runner.invoke(main, list(args), env=env | (extra_env or {}), catch_exceptions=False)

    return run


@pytest.fixture
def migrated(usgi):  # type: ignore[no-untyped-def]
    result = usgi("migrate")
    assert result.exit_code == 0, result.output
    return usgi


@pytest.fixture
def inspect_services(settings: Settings):  # type: ignore[no-untyped-def]
    svc = build_services(settings)
    yield svc
    svc.close()


def test_migrate_creates_the_schema_and_is_idempotent(usgi, settings, inspect_services):
    first = usgi("migrate")
    assert first.exit_code == 0, first.output
    assert "is up to date" in first.output
    tables = set(inspect(inspect_services.engine).get_table_names())
    assert {"api_tokens", "dicom_peers", "instances", "audit_events"} <= tables
    again = usgi("migrate")
    assert again.exit_code == 0, again.output


def test_token_create_list_revoke(migrated, inspect_services):
    usgi = migrated
    created = usgi("token", "create", "--role", "auditor", "--name", "x")
    assert created.exit_code == 0, created.output
    token = created.output.strip()
    assert len(created.output.strip().splitlines()) == 1 and token.startswith("usgi_")

    principal = authenticate(inspect_services, token)
    assert principal is not None and principal.role is Role.AUDITOR and principal.name == "x"

    # Only the SHA-256 is stored: the token appears in no column of its row.
    with inspect_services.session_factory() as s:
        rows = s.scalars(select(ApiToken)).all()
    assert len(rows) == 1
    row = rows[0]
    assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert all(token not in str(getattr(row, c.key)) for c in ApiToken.__table__.columns)

    listed = usgi("token", "list")
    assert listed.exit_code == 0, listed.output
    fields = listed.output.strip().split("\t")
    assert fields[:4] == [str(row.id), "auditor", "x", "active"]
    assert token not in listed.output and row.token_hash not in listed.output

    revoked = usgi("token", "revoke", str(row.id))
    assert revoked.exit_code == 0 and f"token {row.id} revoked" in revoked.output
    assert authenticate(inspect_services, token) is None
    assert usgi("token", "list").output.strip().split("\t")[3] == "revoked"

    missing = usgi("token", "revoke", "9999")
    assert missing.exit_code == 1 and "no token 9999" in missing.output


def test_token_create_rejects_an_unknown_role(migrated):
    result = migrated("token", "create", "--role", "root", "--name", "x")
    assert result.exit_code == 2
    assert "--role" in result.output and "root" in result.output


def test_peer_add_list_duplicate_remove(migrated):
    usgi = migrated
    added = usgi("peer", "add", "NEWAE", "--host", "127.0.0.1", "--port", "104")
    assert added.exit_code == 0, added.output
    assert "peer NEWAE registered" in added.output

    listed = usgi("peer", "list")
    assert listed.exit_code == 0
    assert listed.output.splitlines() == ["NEWAE\t127.0.0.1\t104\t"]

    dup = usgi("peer", "add", "NEWAE")
    assert dup.exit_code != 0
    assert "NEWAE" in dup.output and "already registered" in dup.output
    assert "Traceback" not in dup.output

    bad_ae = usgi("peer", "add", "TOO_LONG_AE_TITLE_X")
    assert bad_ae.exit_code != 0 and "not a valid AE title" in bad_ae.output
    bad_port = usgi("peer", "add", "OTHER", "--port", "70000")
    assert bad_port.exit_code == 2 and "--port" in bad_port.output

    removed = usgi("peer", "remove", "NEWAE")
    assert removed.exit_code == 0 and "peer NEWAE removed" in removed.output
    assert usgi("peer", "list").output == ""
    again = usgi("peer", "remove", "NEWAE")
    assert again.exit_code == 1 and "no peer NEWAE" in again.output


def test_a_database_not_migrated_is_a_usage_error_not_a_traceback(usgi):
    for args in (("token", "list"), ("peer", "list"), ("serve",), ("worker",)):
        result = usgi(
            *args, extra_env={"USGI_EHR_FHIR_BASE": "http://127.0.0.1:9/fhir", "USGI_IDENTIFIER_SYSTEM": "urn:oid:1.2"}
        )
        assert result.exit_code == 2, (args, result.output)
        assert "is not migrated: run `usgi migrate`" in result.output and "Traceback" not in result.output
    assert usgi("migrate").exit_code == 0
    assert usgi("token", "list").exit_code == 0


def test_a_bad_setting_is_a_usage_error_naming_the_variable(usgi):
    for variable, value in (("USGI_HTTP_PORT", "abc"), ("USGI_HTTP_PORT", "70000"), ("USGI_PAYER_RULES", "de-gkv")):
        for args in (("migrate",), ("token", "list"), ("peer", "list")):
            result = usgi(*args, extra_env={variable: value})
            assert result.exit_code == 2, (variable, args, result.output)
            assert "Usage:" in result.output and variable in result.output and value in result.output
            assert "Traceback" not in result.output


def test_commands_close_their_database_connections(migrated, opened):
    """A one-shot command returns its pooled connections (Services.close()) before the process goes on."""
    usgi = migrated
    for args in (
        ("migrate",),
        ("token", "create", "--role", "admin", "--name", "ops"),
        ("token", "list"),
        ("token", "revoke", "1"),
        ("peer", "add", "CART9"),
        ("peer", "list"),
        ("peer", "remove", "CART9"),
    ):
        before = len(opened)
        result = usgi(*args)
        assert result.exit_code == 0, (args, result.output)
        built = opened[before:]
        assert built, args
        still_pooled = [svc.engine.pool.checkedin() for svc in built]
        assert still_pooled == [0] * len(built), f"usgi {' '.join(args)} left connections open: {still_pooled}"
