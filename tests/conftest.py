"""Fixtures: per-test settings, database (SQLite file, or a fresh PostgreSQL schema when
USGI_TEST_DATABASE_URL is set), services, Flask app and client, tokens per role, and a live DICOM SCP."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from service.app import create_app
from service.auth import Role, create_token
from service.bootstrap import Services, build_services
from service.config import Settings
from service.migrate import upgrade

PG_URL = os.environ.get("USGI_TEST_DATABASE_URL", "")


def pytest_report_header(config: pytest.Config) -> str:
    db = make_url(PG_URL).render_as_string(hide_password=True) if PG_URL else "SQLite (a file per test)"
    return f"usgi-docs test database: {db}"


@pytest.fixture
def database_url(tmp_path: Path) -> Iterator[str]:
    if not PG_URL:
        yield f"sqlite:///{tmp_path / 'usgi.db'}"
        return
    # A schema per test: full isolation on the shared PostgreSQL database, dropped afterwards.
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    yield url.render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings.for_tests(tmp_path, database_url=database_url)


@pytest.fixture
def services(settings: Settings) -> Iterator[Services]:
    svc = build_services(settings)
    upgrade(svc.engine)
    yield svc
    svc.close()


@pytest.fixture
def app(settings: Settings, services: Services):  # type: ignore[no-untyped-def]
    return create_app(settings, services)


@pytest.fixture
def client(app):  # type: ignore[no-untyped-def]
    return app.test_client()


@pytest.fixture
def tokens(services: Services) -> dict[str, str]:
    return {role.value: create_token(services, role, f"test-{role.value}") for role in Role}


@pytest.fixture
def auth(tokens: dict[str, str]) -> dict[str, dict[str, str]]:
    """Authorization headers per role: ``client.get(url, headers=auth["clinician"])``."""
    return {role: {"Authorization": f"Bearer {tok}"} for role, tok in tokens.items()}


@pytest.fixture
def dicom_server(services: Services):  # type: ignore[no-untyped-def]
    from service.dicom.server import DicomServer

    server = DicomServer(services)
    server.start()
    yield server
    server.stop(grace_seconds=2)


@pytest.fixture
def modality(tmp_path: Path, dicom_server):  # type: ignore[no-untyped-def]
    """An ultrasound machine sending re-stamped vendor files to the running SCP (tests/dicomutil.Modality)."""
    from tests.dicomutil import Modality

    return Modality(tmp_path, dicom_server.port)


@pytest.fixture(scope="session")
def dcmtk() -> dict[str, str]:
    tools = {name: shutil.which(name) for name in ("storescu", "echoscu", "findscu")}
    missing = [n for n, p in tools.items() if p is None]
    if missing:
        pytest.fail(f"dcmtk is required for these tests ({', '.join(missing)} missing): apt-get install dcmtk")
    return {k: v for k, v in tools.items() if v}
