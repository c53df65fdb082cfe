"""The README's complete report is the test suite's example, and it is valid and ready to finalise."""

from __future__ import annotations

import json
import re
from pathlib import Path

from schemas.procedures import ProcedureCreateSchema, finalisation_problems
from tests.procedureutil import EXAMPLE

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_example_is_the_tested_one_and_complete():
    blocks = re.findall(r"```json\n(.*?)\n```", README.read_text(), flags=re.S)
    examples = [json.loads(b) for b in blocks if '"patient"' in b]
    assert examples == [EXAMPLE]
    loaded = ProcedureCreateSchema().load(examples[0])
    assert finalisation_problems(loaded) == {}
