"""The independent FHIR R4 validator (../shared/tools/fhir-validate, Node) as a pytest helper.

The tool is copied into the project's git-ignored ``.cache/fhir-validate`` (``../shared`` is read-only) and
``npm ci`` runs there once: again only when ``package-lock.json`` changed since the last install. A missing tool
fails the test run (it is the second, independent proof of validity and must not be skipped silently).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The leads' copy beside the project (../shared), or wherever USGI_FHIR_VALIDATE_SOURCE points.
SOURCE = Path(os.environ.get("USGI_FHIR_VALIDATE_SOURCE") or ROOT / ".." / "shared" / "tools" / "fhir-validate")
TARGET = ROOT / ".cache" / "fhir-validate"
_STAMP = "node_modules/.usgi-lock-sha256"


@dataclass(frozen=True)
class Verdict:
    """One validator run: exit code and its output lines (file, Type/id, path, severity, message)."""

    returncode: int
    lines: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def report(self) -> str:
        return "\n".join(self.lines) or f"(exit {self.returncode}, no output)"


def install_node_tool(source: Path, target: Path, entry: str, what: str, variable: str) -> Path:
    """Copy the Node tool ``source`` (whose main file is ``entry``) into ``target`` and run ``npm ci`` there,
    unless an install for the same lock file is already in place. Fails the run when the tool or Node is missing."""
    if not (source / entry).is_file() or not (source / "package-lock.json").is_file():
        pytest.fail(
            f"{what} is missing: expected it at {source.resolve()} (set {variable} to its folder)",
            pytrace=False,
        )
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail(f"node and npm (Node 20+) are needed to run {what}", pytrace=False)
    digest = hashlib.sha256((source / "package-lock.json").read_bytes()).hexdigest()
    stamp = target / _STAMP
    # Refresh the tool's own files every time (cheap); node_modules is kept when the lock file is unchanged.
    target.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.name == "node_modules":
            continue
        if item.is_dir():
            shutil.copytree(item, target / item.name, dirs_exist_ok=True)
        else:
            shutil.copy2(item, target / item.name)
    if (target / "node_modules").is_dir() and stamp.is_file() and stamp.read_text().strip() == digest:
        return target
    done = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=target,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"npm ci in {target} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}", pytrace=False)
    stamp.write_text(digest + "\n")
    return target


def install_validator(source: Path = SOURCE, target: Path = TARGET) -> Path:
    return install_node_tool(
        source, target, "validate.mjs", "the independent FHIR validator", "USGI_FHIR_VALIDATE_SOURCE"
    )


def validate_resources(
    resources: Iterable[Mapping[str, Any]],
    tool: Path = TARGET,
    names: Iterable[str] | None = None,
    options: Sequence[str] = ("--us-core",),
) -> Verdict:
    """Validate FHIR JSON resources in one ``node validate.mjs -q`` call (start-up costs about 2 s).

    Each resource goes to its own file (named after ``names`` when given, else ``Type-id``) so an issue line says
    which one failed. ``--us-core`` (default) also checks resources claiming the US Core profiles it ships offline
    (us-core-patient among them).
    """
    items = list(resources)
    labels = list(names) if names is not None else [f"{r.get('resourceType')}-{r.get('id')}" for r in items]
    with tempfile.TemporaryDirectory(prefix="fhirvalidate-") as tmp:
        files = []
        for i, (label, resource) in enumerate(zip(labels, items, strict=True)):
            path = Path(tmp) / f"{i:03d}-{label.replace('/', '_')}.json"
            path.write_text(json.dumps(resource, indent=1))
            files.append(str(path))
        done = subprocess.run(
            ["node", str(tool / "validate.mjs"), "-q", *options, *files],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    lines = tuple(line.replace(tmp + "/", "") for line in (done.stdout + done.stderr).splitlines() if line.strip())
    return Verdict(done.returncode, lines)


@pytest.fixture(scope="session")
def fhir_validator() -> Path:
    """The installed validator's folder (installs it once per session when needed)."""
    return install_validator()
