"""Every setting is documented in the README's table, and the table names no setting that does not exist."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from service.config import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_documents_exactly_the_settings():
    documented = set(re.findall(r"`(USGI_[A-Z_]+)`", README.read_text()))
    # The test suite's own switches, documented under Development.
    documented -= {"USGI_TEST_DATABASE_URL", "USGI_FHIR_VALIDATE_SOURCE", "USGI_FHIR_SANDBOX_SOURCE"}
    expected = {f"USGI_{f.name.upper()}" for f in fields(Settings)}
    assert documented == expected
