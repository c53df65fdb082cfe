"""The coding engine's rule tables (``service/coding/data/rules.yaml``): guidance codes, site-family codes, bundling
lists, digit modifiers, OPCS-4 codes and the HNY ICB USGI criteria (DOMAIN.md §2.2, §3, §7, §10).

Data, not code (DESIGN.md §2), so a payer's tables can change without a release. :func:`load_rule_tables` checks the
shape once and raises :class:`~service.coding.catalog.CatalogError` naming the file and the entry; sites and drugs
stay in :mod:`service.coding.catalog`. Pure: no I/O after loading.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from service.coding.catalog import CONFIDENCE, DATA_DIR, SITE_FAMILIES, CatalogError

RULES_FILE = "rules.yaml"
_CPT = re.compile(r"^[0-9]{4}[0-9T]$")
_OPCS = re.compile(r"^[A-Z][0-9]{2}\.[0-9]$")
_MOD = re.compile(r"^[A-Z0-9]{2}$")


@dataclass(frozen=True)
class FamilyCodes:
    """A non-arthrocentesis site family: its CPT code(s) and the guidance code reportable with it (§2.3)."""

    family: str
    codes: tuple[str, ...]
    us_guidance: str
    conf: str


@dataclass(frozen=True)
class HnyPathway:
    """One HNY ICB USGI indication: any of ``any_of`` reasons, plus a minimum of conservative care (§7.1)."""

    name: str
    any_of: tuple[str, ...]
    conservative_treatment_min_months: int | None


@dataclass(frozen=True, eq=False)
class RuleTables:
    """The validated rule tables; build with :func:`load_rule_tables`."""

    guidance_codes: Mapping[str, str]
    family_codes: Mapping[str, FamilyCodes]
    never_with_76942: frozenset[str]
    never_with_0232t: frozenset[str]
    digit_modifiers: Mapping[str, Mapping[str, tuple[str, ...]]]
    opcs4: Mapping[str, Any]
    hny_policy_name: str
    hny_policy_number: str
    hny_pathways: Mapping[str, HnyPathway]


def _fail(where: str, message: str) -> Any:
    raise CatalogError(f"{RULES_FILE}: {where}: {message}")


def _codes(value: Any, where: str, pattern: re.Pattern[str]) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and pattern.fullmatch(v) for v in value):
        _fail(where, f"expected a non-empty list of codes matching {pattern.pattern}, got {value!r}")
    return tuple(value)


def _map(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        _fail(where, f"expected a mapping, got {value!r}")
    return {str(k): v for k, v in value.items()}


def load_rule_tables(path: Path | None = None) -> RuleTables:
    """Read and check ``rules.yaml`` (default: the shipped file); :class:`CatalogError` names a bad entry."""
    file = (DATA_DIR if path is None else Path(path)) / RULES_FILE
    try:
        data = _map(yaml.safe_load(file.read_text(encoding="utf-8")), "top level")
    except (OSError, yaml.YAMLError) as exc:
        raise CatalogError(f"{RULES_FILE}: cannot read: {exc}") from exc
    guidance = {k: str(v) for k, v in _map(data.get("guidance_codes"), "guidance_codes").items()}
    for modality in ("ultrasound", "fluoroscopy", "ct", "mr"):
        if not _CPT.fullmatch(guidance.get(modality, "")):
            _fail(f"guidance_codes.{modality}", "missing or not a CPT code")
    families: dict[str, FamilyCodes] = {}
    for fam, raw in _map(data.get("family_codes"), "family_codes").items():
        row = _map(raw, f"family_codes.{fam}")
        if fam not in SITE_FAMILIES or fam == "arthrocentesis":
            _fail(f"family_codes.{fam}", f"not a non-arthrocentesis family of the site catalog ({SITE_FAMILIES})")
        if row.get("conf") not in CONFIDENCE:
            _fail(f"family_codes.{fam}.conf", f"{row.get('conf')!r} is not one of {CONFIDENCE}")
        codes = _codes(row.get("codes"), f"family_codes.{fam}.codes", _CPT)
        us = _codes([row.get("us_guidance")], f"family_codes.{fam}.us_guidance", _CPT)[0]
        families[fam] = FamilyCodes(fam, codes, us, row["conf"])
    missing = set(SITE_FAMILIES) - {"arthrocentesis"} - set(families)
    if missing:
        _fail("family_codes", f"no row for {sorted(missing)}")
    digits: dict[str, Mapping[str, tuple[str, ...]]] = {}
    for kind, raw in _map(data.get("digit_modifiers"), "digit_modifiers").items():
        sides = _map(raw, f"digit_modifiers.{kind}")
        pair = {s: _codes(sides.get(s), f"digit_modifiers.{kind}.{s}", _MOD) for s in ("left", "right")}
        if any(len(v) != 5 for v in pair.values()):
            _fail(f"digit_modifiers.{kind}", "needs five modifiers per side (digit 1 to 5)")
        digits[kind] = MappingProxyType(pair)
    opcs = _map(data.get("opcs4"), "opcs4")
    for name in ("injection_joint", "aspiration_joint"):
        _codes([_map(opcs.get(name), f"opcs4.{name}").get("code")], f"opcs4.{name}.code", _OPCS)
    for name in ("approach", "laterality", "site_codes"):
        _codes(list(_map(opcs.get(name), f"opcs4.{name}").values()), f"opcs4.{name}", _OPCS)
    _codes(opcs.get("joint_sites"), "opcs4.joint_sites", re.compile(r"^[a-z][a-z0-9_]*$"))
    policy = _map(data.get("uk_hny_usgi_policy"), "uk_hny_usgi_policy")
    pathways: dict[str, HnyPathway] = {}
    for name in ("steroid_injection", "aspiration"):
        row = _map(policy.get(name), f"uk_hny_usgi_policy.{name}")
        reasons = _codes(row.get("any_of"), f"uk_hny_usgi_policy.{name}.any_of", re.compile(r"^[a-z0-9_]+$"))
        months = row.get("conservative_treatment_min_months")
        if months is not None and (not isinstance(months, int) or isinstance(months, bool) or months < 0):
            _fail(f"uk_hny_usgi_policy.{name}", f"conservative_treatment_min_months {months!r} is not a month count")
        pathways[name] = HnyPathway(name, reasons, months)
    return RuleTables(
        guidance_codes=MappingProxyType(guidance),
        family_codes=MappingProxyType(families),
        never_with_76942=frozenset(_codes(data.get("never_with_76942"), "never_with_76942", _CPT)),
        never_with_0232t=frozenset(_codes(data.get("never_with_0232T_same_site"), "never_with_0232T_same_site", _CPT)),
        digit_modifiers=MappingProxyType(digits),
        opcs4=MappingProxyType(opcs),
        hny_policy_name=str(policy.get("name", "")),
        hny_policy_number=str(policy.get("policy_number", "")),
        hny_pathways=MappingProxyType(pathways),
    )


@functools.cache
def default_rule_tables() -> RuleTables:
    """The shipped rule tables, loaded once on first use."""
    return load_rule_tables()
