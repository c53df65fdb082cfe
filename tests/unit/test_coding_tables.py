"""The coding engine's rule tables (service/coding/data/rules.yaml): the shipped file loads; broken data is named."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from service.coding.catalog import DATA_DIR, CatalogError
from service.coding.ruletables import RULES_FILE, default_rule_tables, load_rule_tables


def test_the_shipped_tables_load() -> None:
    tables = default_rule_tables()
    assert tables is default_rule_tables()
    assert tables.guidance_codes["ultrasound"] == "76942"
    assert {"20600", "20604", "20605", "20606", "20610", "20611", "0232T"} <= tables.never_with_76942
    assert tables.digit_modifiers["finger"]["right"][0] == "F5" and tables.digit_modifiers["toe"]["left"][0] == "TA"
    assert tables.opcs4["approach"]["ultrasound"] == "Y53.2"
    assert tables.hny_pathways["steroid_injection"].conservative_treatment_min_months == 3
    assert tables.hny_pathways["aspiration"].conservative_treatment_min_months is None


def _broken(tmp_path: Path, change: dict[str, object]) -> Path:
    shutil.copy(DATA_DIR / RULES_FILE, tmp_path / RULES_FILE)
    data = yaml.safe_load((tmp_path / RULES_FILE).read_text())
    data.update(change)
    (tmp_path / RULES_FILE).write_text(yaml.safe_dump(data))
    return tmp_path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"guidance_codes": {"ultrasound": "76942"}}, "guidance_codes.fluoroscopy"),
        ({"family_codes": {"20550": {"codes": ["20550"], "us_guidance": "76942", "conf": "H"}}}, "no row for"),
        ({"digit_modifiers": {"finger": {"left": ["FA"], "right": ["F5"]}}}, "five modifiers"),
        ({"never_with_76942": []}, "never_with_76942"),
    ],
)
def test_broken_tables_are_named(tmp_path: Path, change: dict[str, object], message: str) -> None:
    with pytest.raises(CatalogError, match=message):
        load_rule_tables(_broken(tmp_path, change))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot read"):
        load_rule_tables(tmp_path)
