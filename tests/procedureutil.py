"""Report bodies for tests: the README's complete example, and variations of it."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

EXAMPLE_PATH = Path(__file__).parent / "data" / "procedure_example.json"
EXAMPLE: dict[str, Any] = json.loads(EXAMPLE_PATH.read_text())

SCHEDULING_KEYS = (
    "patient",
    "encounter_identifier",
    "accession_number",
    "place_of_service",
    "coverage",
    "equipment_ownership",
    "performer",
    "performing_organization",
    "kind",
    "site",
    "laterality",
    "indications",
)


def full_report(**changes: Any) -> dict[str, Any]:
    """The complete example report (finalisable), top-level fields replaced by ``changes``."""
    body = copy.deepcopy(EXAMPLE)
    for key, value in changes.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return body


def scheduled(**changes: Any) -> dict[str, Any]:
    """An order: who, where and what, with a scheduled time, and nothing of the report yet."""
    body = {k: copy.deepcopy(EXAMPLE[k]) for k in SCHEDULING_KEYS}
    body["times"] = {"scheduled_at": EXAMPLE["times"]["scheduled_at"]}
    for key, value in changes.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return body


def documenting_part() -> dict[str, Any]:
    """The fields a clinician adds to an order to complete the report."""
    return {k: copy.deepcopy(v) for k, v in EXAMPLE.items() if k not in SCHEDULING_KEYS}
