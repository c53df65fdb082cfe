"""The FHIR sandbox (../shared/tools/fhir-sandbox: Medplum's FHIR router on loopback, Node) as pytest fixtures.

It is the EHR the outbox pushes to in tests: a real FHIR R4 server with a control API that simulates outages and
counts deliveries. Installed like the validator (tests/fhirvalidate.py): copied into the git-ignored
``.cache/fhir-sandbox``, ``npm ci`` once per package-lock. ``USGI_FHIR_SANDBOX_SOURCE`` points at another copy.
A missing tool or Node fails the run: the push tests must not be skipped silently.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.fhirvalidate import install_node_tool

ROOT = Path(__file__).resolve().parents[1]
SOURCE = Path(os.environ.get("USGI_FHIR_SANDBOX_SOURCE") or ROOT / ".." / "shared" / "tools" / "fhir-sandbox")
TARGET = ROOT / ".cache" / "fhir-sandbox"


def install_sandbox(source: Path = SOURCE, target: Path = TARGET) -> Path:
    return install_node_tool(source, target, "server.mjs", "the FHIR sandbox", "USGI_FHIR_SANDBOX_SOURCE")


class Sandbox:
    """A running sandbox: ``base`` is its FHIR base URL; the rest drives its control API."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.control = base.removesuffix("/fhir/R4") + "/_sandbox"
        self.http = requests.Session()

    def reset(self) -> None:
        self.http.post(f"{self.control}/reset", timeout=10).raise_for_status()

    def outage(self, mode: str, count: int | None = None, retry_after: float | None = None) -> None:
        body: dict[str, Any] = {"mode": mode}
        if count is not None:
            body["count"] = count
        if retry_after is not None:
            body["retryAfter"] = retry_after
        self.http.post(f"{self.control}/outage", json=body, timeout=10).raise_for_status()

    def end_outage(self) -> None:
        self.http.delete(f"{self.control}/outage", timeout=10).raise_for_status()

    def requests(self) -> list[dict[str, Any]]:
        resp = self.http.get(f"{self.control}/requests", timeout=10)
        resp.raise_for_status()
        return resp.json()["requests"]  # type: ignore[no-any-return]

    def transactions(self) -> list[dict[str, Any]]:
        return [r for r in self.requests() if r["method"] == "POST" and r.get("bundleType") == "transaction"]

    def applied(self) -> list[dict[str, Any]]:
        """Transactions the server committed: answered 2xx, or applied before their answer was lost."""
        return [r for r in self.transactions() if str(r.get("status") or r.get("applied") or "").startswith("2")]

    def get(self, path: str, **params: str) -> requests.Response:
        return self.http.get(f"{self.base}/{path}", params=params, headers={"Accept": "application/fhir+json"})

    def search_total(self, resource_type: str, **params: str) -> int:
        resp = self.get(resource_type, **params)
        resp.raise_for_status()
        return len(resp.json().get("entry") or [])

    def find(self, resource_type: str, system: str, value: str) -> list[dict[str, Any]]:
        """The resources of a type carrying identifier ``system|value``."""
        resp = self.get(resource_type, identifier=f"{system}|{value}")
        resp.raise_for_status()
        return [e["resource"] for e in resp.json().get("entry") or []]

    def close(self) -> None:
        self.http.close()


@pytest.fixture(scope="session")
def sandbox_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    tool = install_sandbox()
    folder = tmp_path_factory.mktemp("fhir-sandbox")
    port_file, out = folder / "port", folder / "out.log"
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            ["node", str(tool / "server.mjs"), "--port", "0", "--port-file", str(port_file)],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 15
        while not (port_file.is_file() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the FHIR sandbox did not start:\n{out.read_text()}", pytrace=False)
            time.sleep(0.05)
        sandbox = Sandbox(f"http://127.0.0.1:{int(port_file.read_text())}/fhir/R4")
        yield sandbox
        sandbox.close()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def sandbox(sandbox_server: Sandbox) -> Sandbox:
    """The session's sandbox, emptied: no resources, no log, no outage."""
    sandbox_server.reset()
    return sandbox_server
