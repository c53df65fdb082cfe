"""The code tables behind the coding rules: sites, drugs and ICD-10-CM families (DOMAIN.md §1.2, §4, §5, §10).

The tables are data (``service/coding/data/*.yaml``, DESIGN.md §2). :func:`load_catalog` reads them and validates
every row at start: an unknown or missing field, a value outside its vocabulary, a duplicate key or a reference to a
site that does not exist raises :class:`CatalogError` naming the file, the row and the field.

Pure: no Flask, no SQLAlchemy, no I/O after loading.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, NoReturn

import yaml

DATA_DIR = Path(__file__).parent / "data"
SITES_FILE, DRUGS_FILE, ICD10CM_FILE = "sites.yaml", "drugs.yaml", "icd10cm.yaml"

Side = Literal["left", "right", "bilateral", "unspecified"]

#: ICD-10-CM form: a letter other than U, a digit, a digit or letter; then a dot and 1-4 characters (DOMAIN.md §5).
ICD10CM_CODE = re.compile(r"^[A-TV-Z][0-9][0-9A-Z](\.[0-9A-Z]{1,4})?$")
#: :meth:`Catalog.icd10_check` problems that start with this are warning-level (they do not make a report invalid).
WARNING_PREFIX = "warning: "

CONFIDENCE = ("H", "M", "L", "UNVERIFIED")
SITE_FAMILIES = ("arthrocentesis", "20526", "20550", "20551", "20552-20553", "20612", "64450", "64455")
JOINT_CLASSES = ("small", "intermediate", "major")
DIGIT_KINDS = ("none", "finger", "toe")
DRUG_KINDS = ("corticosteroid", "local_anaesthetic", "hyaluronan", "prp")
DOSE_UNITS = ("mg", "mL")
BILLING_UNITS = ("mg", "dose", "session")
BILLABLE = ("yes", "no", "payer_dependent")
ICD_RULES = ("none", "side_char", "explicit")
ICD_SIDES = ("left", "right", "bilateral", "unspecified", "none")

_KEY = re.compile(r"^[a-z][a-z0-9_]*$")
_SNOMED = re.compile(r"^[1-9][0-9]{5,17}$")
_CODES = {"hcpcs": re.compile(r"^[A-V][0-9]{4}$"), "cpt": re.compile(r"^[0-9]{4}[0-9FTU]$")}
_CPT = re.compile(r"^[0-9]{5}$")
#: An NDC as printed (4-4-2, 5-3-2, 5-4-1 with hyphens) or in the 11-digit 5-4-2 billing form (DOMAIN.md §4.1).
NDC = re.compile(r"^(\d{4}-\d{4}-\d{2}|\d{5}-\d{3}-\d{2}|\d{5}-\d{4}-\d{1,2}|\d{11})$")


class CatalogError(ValueError):
    """A catalog data file is unreadable or breaks its rules; the message names the file, the row and the field."""


@dataclass(frozen=True)
class JointCodes:
    """The CPT pair of an arthrocentesis size class: without US guidance, and with recorded US guidance (§1.1)."""

    size_class: str
    no_us: str
    us_recorded: str
    conf: str


@dataclass(frozen=True)
class Site:
    """An injection or aspiration target of the site catalog (DOMAIN.md §1.2, §10 ``site_catalog``).

    ``size_class`` is set for the arthrocentesis family only; ``payer_config`` means the class is payer-dependent
    and ``default_class`` applies until a payer rule says otherwise. ``paired`` sites need a laterality; ``digit``
    tells whether a finger or toe number is asked (the F/T modifiers of DOMAIN.md §3).
    """

    key: str
    label: str
    family: str
    size_class: str | None
    default_class: str | None
    paired: bool
    digit: str
    snomed: str | None
    us_guidance_payer_risk: str | None
    conf: str
    source: str
    note: str | None = None

    @property
    def joint_class(self) -> str | None:
        """small, intermediate or major (the default for payer-configured sites); None outside arthrocentesis."""
        return self.default_class if self.size_class == "payer_config" else self.size_class


@dataclass(frozen=True)
class BillingCode:
    """One HCPCS (or CPT, for PRP's 0232T) code of a drug, its billing unit and the dates it is valid for (§4)."""

    system: str
    code: str
    unit_amount: float | None
    unit: str
    effective_from: date | None
    effective_to: date | None
    conf: str

    def valid_on(self, day: date) -> bool:
        """True when ``day`` (the date of service) is inside the code's effective dates (DOMAIN.md §4.2)."""
        return (self.effective_from is None or self.effective_from <= day) and (
            self.effective_to is None or day <= self.effective_to
        )


@dataclass(frozen=True)
class Drug:
    """A product of the drug catalog (DOMAIN.md §4.2, §4.3, §10 ``drug_units``).

    ``label_joints`` lists the site keys the product's label covers (None: no joint restriction); ``investigational``
    products (PRP) are off-label everywhere (DOMAIN.md §8.4, §10 ``off_label_triggers``).
    """

    key: str
    label: str
    kind: str
    substance: str
    codes: tuple[BillingCode, ...]
    billing_unit: str
    dose_units: tuple[str, ...]
    label_joints: tuple[str, ...] | None
    packaged: bool
    separately_billable: str
    investigational: bool
    ndc_example: str | None
    conf: str
    source: str
    note: str | None = None

    def codes_on(self, day: date) -> tuple[BillingCode, ...]:
        """The billing codes valid on the date of service (methylprednisolone: J1020/J1030/J1040 or J1010, §4.2)."""
        return tuple(c for c in self.codes if c.valid_on(day))


@dataclass(frozen=True)
class IcdFamily:
    """An ICD-10-CM code family, its laterality rule and the sites it fits (DOMAIN.md §5.1, §5.2).

    ``laterality`` is ``none`` (no side in the code), ``side_char`` (the last character gives the side, per
    ``side_chars``, for codes of exactly ``code_length`` characters) or ``explicit`` (only ``codes`` are valid).
    ``codes`` maps single codes to their side under any rule ("none": no side).
    """

    key: str
    label: str
    laterality: str
    code_length: int | None
    side_chars: Mapping[str, str] = field(hash=False)
    codes: Mapping[str, str] = field(hash=False)
    sites: tuple[str, ...]
    conf: str
    source: str

    def is_complete(self, code: str) -> bool:
        """True when ``code`` is a complete (billable) code of this family as far as the catalog knows."""
        if code in self.codes:
            return True
        if self.laterality == "side_char":
            return len(code) == self.code_length and code[-1] in self.side_chars
        if self.laterality == "none":
            return self.code_length is None or len(code) == self.code_length
        return False

    def side(self, code: str) -> Side | None:
        """The side ``code`` carries, or None when it carries none or is not a complete code of this family."""
        if not self.is_complete(code):
            return None
        value = self.codes.get(code)
        if value is None and self.laterality == "side_char":
            value = self.side_chars[code[-1]]
        return None if value in (None, "none") else value  # type: ignore[return-value]

    def completion_hint(self) -> str:
        if self.laterality == "explicit":
            return "its codes are " + ", ".join(self.codes)
        if self.laterality == "none":
            return f"the code is {self.key}, with no laterality character"
        sides = ", ".join(f"{c} ({s})" for c, s in self.side_chars.items())
        return f"its codes have {self.code_length} characters and end in {sides}"


@dataclass(frozen=True, eq=False)
class Catalog:
    """The validated code tables; build it with :func:`load_catalog`."""

    sites: Mapping[str, Site]
    drugs: Mapping[str, Drug]
    icd10_families: tuple[IcdFamily, ...]
    joint_class_codes: Mapping[str, JointCodes]
    source_dir: Path

    def site(self, key: str) -> Site:
        """The site with this key; ``KeyError`` naming the key when the catalog has none."""
        try:
            return self.sites[key]
        except KeyError:
            raise KeyError(f"unknown site {key!r}") from None

    def drug(self, key: str) -> Drug:
        """The drug with this key; ``KeyError`` naming the key when the catalog has none."""
        try:
            return self.drugs[key]
        except KeyError:
            raise KeyError(f"unknown drug {key!r}") from None

    def joint_codes(self, site_key: str, size_class: str | None = None) -> JointCodes | None:
        """The arthrocentesis CPT pair for a site (DOMAIN.md §1.1, §1.2, §10 ``joint_class_to_cpt``).

        Parameters
        ----------
        site_key
            A site of the catalog.
        size_class
            A payer's class for a ``payer_config`` site (e.g. Highmark's intermediate for thumb CMC); ignored for
            sites whose class is fixed.

        Returns
        -------
        JointCodes or None
            None for sites outside the arthrocentesis family (they use their family code plus 76942).
        """
        site = self.site(site_key)
        if site.family != "arthrocentesis":
            return None
        cls = size_class if size_class and site.size_class == "payer_config" else site.joint_class
        if cls not in self.joint_class_codes:
            raise ValueError(f"size class {cls!r} is not one of {', '.join(self.joint_class_codes)}")
        return self.joint_class_codes[cls]

    def off_label_reason(self, drug_key: str, site_key: str) -> str | None:
        """Why a product at a site is off-label, or None (DOMAIN.md §8.4, §10 ``off_label_triggers``)."""
        drug, site = self.drug(drug_key), self.site(site_key)
        if drug.investigational:
            return f"{drug.label} is investigational (Medicare non-covered) at every site"
        if drug.label_joints is not None and site.key not in drug.label_joints:
            labelled = ", ".join(self.sites[k].label for k in drug.label_joints)
            return f"{drug.label} is labelled only for {labelled}, not for {site.label} ({site.key})"
        return None

    def is_off_label(self, drug_key: str, site_key: str) -> bool:
        """True when the product is off-label at the site, so consent must disclose it (DOMAIN.md §8.4).

        Hyaluronans and Zilretta outside the knee joint, and PRP anywhere (§10 ``off_label_triggers``).
        Raises ``KeyError`` for a drug or site the catalog does not know.
        """
        return self.off_label_reason(drug_key, site_key) is not None

    def icd10_family(self, code: str) -> IcdFamily | None:
        """The family whose key is the longest prefix of ``code``, or None (DOMAIN.md §5.2)."""
        best: IcdFamily | None = None
        for fam in self.icd10_families:
            if code.startswith(fam.key) and (best is None or len(fam.key) > len(best.key)):
                best = fam
        return best

    def icd10_laterality(self, code: str) -> Side | None:
        """The side an ICD-10-CM code carries (Official Guidelines I.B.13; DOMAIN.md §5.1, §5.2).

        Returns
        -------
        'left', 'right', 'bilateral', 'unspecified' or None
            None when the code carries no laterality (M65.4, M72.2, M17.9; §10 ``codes_without_laterality``), and
            also when the catalog cannot tell: a malformed code, an incomplete code, or a family it does not list.
            :meth:`icd10_check` says which.
        """
        if not isinstance(code, str) or not ICD10CM_CODE.fullmatch(code):
            return None
        fam = self.icd10_family(code)
        return fam.side(code) if fam else None

    def icd10_check(self, code: str, site: Site | str | None, laterality: str | None) -> list[str]:
        """Problems with an indication code for a procedure's site and laterality (DOMAIN.md §5.1, DOC-05).

        Parameters
        ----------
        code
            The ICD-10-CM code as entered.
        site
            The procedure's site (a :class:`Site` or its key); None or an unknown key skips the site checks.
        laterality
            The procedure's laterality: left, right, bilateral, not_applicable or None (not documented yet).

        Returns
        -------
        list of str
            Empty when the code is fine. In order: a malformed code (form
            ``^[A-TV-Z][0-9][0-9A-Z](\\.[0-9A-Z]{1,4})?$``) or an incomplete code of a known family; a family that
            does not fit the site; a side that contradicts the procedure's (M17.12, left, with a right knee: §5.1
            "claim consistency"); and, warning-level (prefixed ``"warning: "``, see :func:`is_warning`), an
            unspecified-side code where the procedure's side is documented (§5.1: an audit flag). A bilateral code
            with a unilateral procedure is accepted (§5.1: keep the bilateral code while both sides are affected);
            a bilateral procedure accepts either side per code (the caller checks that both sides are covered).
        """
        if not isinstance(code, str) or not ICD10CM_CODE.fullmatch(code):
            return [
                f"{code!r} is not an ICD-10-CM code: expected a letter other than U, a digit, a digit or letter, "
                "then optionally a dot and 1-4 characters (e.g. M17.11)"
            ]
        if isinstance(site, str):
            site = self.sites.get(site)
        fam = self.icd10_family(code)
        if fam is None:
            return []
        if not fam.is_complete(code):
            return [f"{code} is not a complete code of {fam.key} ({fam.label}): {fam.completion_hint()}"]
        problems: list[str] = []
        if site is not None and site.key not in fam.sites:
            fits = ", ".join(fam.sites)
            problems.append(f"{code} ({fam.label}) does not fit the site {site.key} ({site.label}); it fits: {fits}")
        side = fam.side(code)
        if laterality in ("left", "right") and side in ("left", "right") and side != laterality:
            problems.append(
                f"{code} codes the {side} side but the procedure is on the {laterality} side "
                "(ICD-10-CM laterality must agree with the procedure's)"
            )
        if side == "unspecified" and laterality in ("left", "right", "bilateral"):
            problems.append(
                f"{WARNING_PREFIX}{code} is an unspecified-side code but the procedure's side is documented "
                f"({laterality}); code the documented side"
            )
        return problems


def is_warning(problem: str) -> bool:
    """True for a warning-level problem of :meth:`Catalog.icd10_check`."""
    return problem.startswith(WARNING_PREFIX)


# --- loading and validation --------------------------------------------------------------------------------------


class _UniqueKeyLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """The safe loader (libyaml's when built in) refusing a key given twice in one mapping (PyYAML keeps the last)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
        if isinstance(key, str | int | float | bool) and key in seen:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping", node.start_mark, f"found the key {key!r} twice", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)  # type: ignore[arg-type]


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogError(f"{path.name}: cannot read {path}: {exc.strerror or exc}") from exc
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a safe loader: no arbitrary objects
    except yaml.MarkedYAMLError as exc:
        mark, context = exc.problem_mark, exc.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        within = f" ({exc.context} at line {context.line + 1})" if exc.context and context else ""
        raise CatalogError(f"{path.name}{where}: not valid YAML: {exc.problem}{within}") from exc
    except yaml.YAMLError as exc:
        raise CatalogError(f"{path.name}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise CatalogError(f"{path.name}: expected a mapping at the top level")
    return data


class _Row:
    """One row of a data file, read field by field; every failure names the file, the row and the field."""

    def __init__(self, file: str, where: str, data: object, allowed: Iterable[str]) -> None:
        self.file, self.where = file, where
        if not isinstance(data, dict):
            raise CatalogError(f"{file}: {where}: expected a mapping of fields, got {type(data).__name__}")
        self.data: dict[str, Any] = data
        if isinstance(data.get("key"), str):
            self.where = f"{where} (key {data['key']!r})"
        unknown = sorted(str(k) for k in data if k not in allowed)
        if unknown:
            self.fail(unknown[0], f"unknown field (allowed: {', '.join(allowed)})")

    def fail(self, name: str, message: str) -> NoReturn:
        raise CatalogError(f"{self.file}: {self.where}, field {name!r}: {message}")

    def get(self, name: str, *, required: bool = True) -> Any:
        if name not in self.data or self.data[name] is None:
            if required:
                self.fail(name, "missing (required)")
            return None
        return self.data[name]

    def text(
        self,
        name: str,
        *,
        required: bool = True,
        choices: Iterable[str] | None = None,
        pattern: re.Pattern[str] | None = None,
    ) -> Any:
        value = self.get(name, required=required)
        if value is None:
            return None
        if isinstance(value, bool):
            self.fail(name, f"got {value!r}: YAML reads an unquoted yes/no/true/false as a boolean; quote it")
        if not isinstance(value, str) or not value.strip():
            self.fail(name, f"expected a non-empty string, got {value!r}")
        if choices is not None and value not in choices:
            self.fail(name, f"{value!r} is not one of {', '.join(choices)}")
        if pattern is not None and not pattern.fullmatch(value):
            self.fail(name, f"{value!r} does not match {pattern.pattern}")
        return value

    def flag(self, name: str) -> bool:
        value = self.get(name)
        if not isinstance(value, bool):
            self.fail(name, f"expected true or false, got {value!r}")
        return value

    def number(self, name: str, *, required: bool = True, integer: bool = False) -> Any:
        value = self.get(name, required=required)
        if value is None:
            return None
        ok = isinstance(value, int) if integer else isinstance(value, int | float)
        if isinstance(value, bool) or not ok or not math.isfinite(value) or value <= 0:
            self.fail(name, f"expected a positive {'whole ' if integer else ''}number, got {value!r}")
        return value

    def day(self, name: str) -> date | None:
        value = self.get(name, required=False)
        if value is None or isinstance(value, date):
            return value
        try:
            return date.fromisoformat(str(value))
        except ValueError:
            self.fail(name, f"expected a date YYYY-MM-DD, got {value!r}")

    def texts(self, name: str, *, required: bool = True, choices: Iterable[str] | None = None) -> Any:
        value = self.get(name, required=required)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.fail(name, f"expected a list of strings, got {value!r}")
        if len(set(value)) != len(value):
            self.fail(name, "lists a value twice")
        bad = [v for v in value if choices is not None and v not in choices]
        if bad:
            self.fail(name, f"{bad[0]!r} is not one of {', '.join(choices or ())}")
        return tuple(value)

    def mapping(self, name: str, *, required: bool = True) -> dict[str, Any] | None:
        value = self.get(name, required=required)
        if value is None:
            return None
        if not isinstance(value, dict):
            self.fail(name, f"expected a mapping, got {value!r}")
        return {str(k): v for k, v in value.items()}


def _rows(file: str, data: dict[str, Any], section: str) -> list[Any]:
    rows = data.get(section)
    if not isinstance(rows, list):
        raise CatalogError(f"{file}: expected a list under {section!r}")
    return rows


def _unique(rows: list[_Row], name: str = "key") -> None:
    seen: dict[str, str] = {}
    for row in rows:
        key = row.data[name]
        if key in seen:
            row.fail(name, f"duplicate key {key!r} (first in {seen[key]})")
        seen[key] = row.where


def _names(*words: str) -> tuple[str, ...]:
    return tuple(" ".join(words).split())


_SITE_FIELDS = _names(
    "key label family size_class default_class paired digit snomed",
    "us_guidance_payer_risk conf source note",
)


def _read_sections(path: Path, sections: tuple[str, ...]) -> dict[str, Any]:
    """The file's YAML, refusing any top-level section not in ``sections``."""
    data = _read(path)
    extra = sorted(set(data) - set(sections))
    if extra:
        raise CatalogError(f"{path.name}: unknown section {extra[0]!r} (allowed: {', '.join(sections)})")
    return data


def _section_rows(file: str, data: dict[str, Any], section: str, fields: tuple[str, ...]) -> list[_Row]:
    return [_Row(file, f"{section}[{i}]", r, fields) for i, r in enumerate(_rows(file, data, section))]


def _load_sites(path: Path) -> tuple[dict[str, JointCodes], dict[str, Site]]:
    file = path.name
    data = _read_sections(path, ("joint_class_to_cpt", "sites"))
    classes = data.get("joint_class_to_cpt")
    if not isinstance(classes, dict) or set(classes) != set(JOINT_CLASSES):
        raise CatalogError(f"{file}: joint_class_to_cpt must map exactly {', '.join(JOINT_CLASSES)}")
    joint: dict[str, JointCodes] = {}
    for cls in JOINT_CLASSES:
        row = _Row(file, f"joint_class_to_cpt.{cls}", classes[cls], ("no_us", "us_recorded", "conf", "source"))
        no_us, us_recorded = row.text("no_us", pattern=_CPT), row.text("us_recorded", pattern=_CPT)
        joint[cls] = JointCodes(cls, no_us, us_recorded, row.text("conf", choices=CONFIDENCE))
    rows = _section_rows(file, data, "sites", _SITE_FIELDS)
    sites: dict[str, Site] = {}
    for row in rows:
        key = row.text("key", pattern=_KEY)
        family = row.text("family", choices=SITE_FAMILIES)
        if family == "arthrocentesis":
            size_class = row.text("size_class", choices=(*JOINT_CLASSES, "payer_config"))
            if size_class == "payer_config":
                default_class = row.text("default_class", choices=JOINT_CLASSES)
            elif row.get("default_class", required=False) is not None:
                row.fail("default_class", "only a payer_config size_class has a default_class")
            else:
                default_class = None
        else:
            for name in ("size_class", "default_class"):
                if row.get(name, required=False) is not None:
                    row.fail(name, f"only arthrocentesis sites have a size class (family is {family})")
            size_class = default_class = None
        sites[key] = Site(
            key=key,
            label=row.text("label"),
            family=family,
            size_class=size_class,
            default_class=default_class,
            paired=row.flag("paired"),
            digit=row.text("digit", choices=DIGIT_KINDS),
            snomed=row.text("snomed", required=False, pattern=_SNOMED),
            us_guidance_payer_risk=row.text("us_guidance_payer_risk", required=False, pattern=_KEY),
            conf=row.text("conf", choices=CONFIDENCE),
            source=row.text("source"),
            note=row.text("note", required=False),
        )
        if "snomed" not in row.data:
            row.fail("snomed", "missing: give the verified SCTID or null")
        if sites[key].digit != "none" and not sites[key].paired:
            row.fail("digit", "a finger or toe site must be paired (the F/T modifiers carry the side)")
    _unique(rows)
    return joint, sites


_DRUG_FIELDS = _names(
    "key label kind substance codes billing_unit dose_units label_joints packaged",
    "separately_billable investigational ndc_example conf source note",
)
_CODE_FIELDS = ("system", "code", "unit_amount", "unit", "effective_from", "effective_to", "conf")


def _load_drugs(path: Path, sites: Mapping[str, Site]) -> dict[str, Drug]:
    file = path.name
    rows = _section_rows(file, _read_sections(path, ("drugs",)), "drugs", _DRUG_FIELDS)
    drugs: dict[str, Drug] = {}
    for row in rows:
        key = row.text("key", pattern=_KEY)
        raw_codes = row.get("codes")
        if not isinstance(raw_codes, list):
            row.fail("codes", f"expected a list (empty when nothing is billable), got {raw_codes!r}")
        codes: list[BillingCode] = []
        for j, raw in enumerate(raw_codes):
            sub = _Row(file, f"{row.where}, codes[{j}]", raw, _CODE_FIELDS)
            system = sub.text("system", choices=tuple(_CODES))
            unit = sub.text("unit", choices=BILLING_UNITS)
            amount = sub.number("unit_amount", required=unit == "mg")
            if unit != "mg" and amount is not None:
                sub.fail("unit_amount", f"a per-{unit} code has no unit amount")
            start, end = sub.day("effective_from"), sub.day("effective_to")
            if start and end and end < start:
                sub.fail("effective_to", f"{end} is before effective_from {start}")
            codes.append(
                BillingCode(
                    system,
                    sub.text("code", pattern=_CODES[system]),
                    float(amount) if amount is not None else None,
                    unit,
                    start,
                    end,
                    sub.text("conf", choices=CONFIDENCE),
                )
            )
        label_joints = row.texts("label_joints", required=False)
        for k in label_joints or ():
            if k not in sites:
                row.fail("label_joints", f"{k!r} is not a site of {SITES_FILE}")
        if "label_joints" not in row.data:
            row.fail("label_joints", "missing: give the labelled site keys or null")
        if "ndc_example" not in row.data:
            row.fail("ndc_example", "missing: give an NDC or null")
        drugs[key] = Drug(
            key=key,
            label=row.text("label"),
            kind=row.text("kind", choices=DRUG_KINDS),
            substance=row.text("substance", pattern=_KEY),
            codes=tuple(codes),
            billing_unit=row.text("billing_unit"),
            dose_units=row.texts("dose_units", choices=DOSE_UNITS),
            label_joints=label_joints,
            packaged=row.flag("packaged"),
            separately_billable=row.text("separately_billable", choices=BILLABLE),
            investigational=row.flag("investigational"),
            ndc_example=row.text("ndc_example", required=False, pattern=NDC),
            conf=row.text("conf", choices=CONFIDENCE),
            source=row.text("source"),
            note=row.text("note", required=False),
        )
        if not drugs[key].dose_units:
            row.fail("dose_units", "must list at least one unit")
        if drugs[key].separately_billable == "no" and codes:
            row.fail("codes", "a drug that is not separately billable has no billing codes")
    _unique(rows)
    return drugs


_ICD_FIELDS = ("key", "label", "laterality", "code_length", "side_chars", "codes", "sites", "conf", "source")


def _load_icd10(path: Path, sites: Mapping[str, Site]) -> tuple[IcdFamily, ...]:
    file = path.name
    rows = _section_rows(file, _read_sections(path, ("families",)), "families", _ICD_FIELDS)
    families: list[IcdFamily] = []
    for row in rows:
        key = row.text("key", pattern=ICD10CM_CODE)
        rule = row.text("laterality", choices=ICD_RULES)
        length = row.number("code_length", required=rule != "explicit", integer=True)
        if length is not None and length < len(key):
            row.fail("code_length", f"{length} is shorter than the key {key!r}")
        side_chars = row.mapping("side_chars", required=rule == "side_char") or {}
        if rule != "side_char" and side_chars:
            row.fail("side_chars", f"only a side_char family has side_chars (laterality is {rule})")
        for char, side in side_chars.items():
            if len(char) != 1 or side not in ICD_SIDES[:4]:
                row.fail("side_chars", f"{char!r}: {side!r} must map one character to {', '.join(ICD_SIDES[:4])}")
        codes = row.mapping("codes", required=rule == "explicit") or {}
        for code, side in codes.items():
            if not ICD10CM_CODE.fullmatch(code) or not code.startswith(key):
                row.fail("codes", f"{code!r} is not an ICD-10-CM code starting with {key}")
            if side not in ICD_SIDES:
                row.fail("codes", f"{code}: {side!r} is not one of {', '.join(ICD_SIDES)}")
        fam_sites = row.texts("sites")
        for k in fam_sites:
            if k not in sites:
                row.fail("sites", f"{k!r} is not a site of {SITES_FILE}")
        families.append(
            IcdFamily(
                key=key,
                label=row.text("label"),
                laterality=rule,
                code_length=length,
                side_chars=MappingProxyType(side_chars),
                codes=MappingProxyType(codes),
                sites=fam_sites,
                conf=row.text("conf", choices=CONFIDENCE),
                source=row.text("source"),
            )
        )
    _unique(rows)
    return tuple(families)


def load_catalog(path: Path | None = None) -> Catalog:
    """Read and validate the catalog data files (DESIGN.md §2: code tables are data, validated at start).

    Parameters
    ----------
    path
        The directory holding ``sites.yaml``, ``drugs.yaml`` and ``icd10cm.yaml``; default: the files shipped in
        ``service/coding/data``.

    Returns
    -------
    Catalog

    Raises
    ------
    CatalogError
        A file is missing or not YAML, or a row has an unknown or missing field, a value outside its vocabulary, a
        duplicate key or a reference to an unknown site. The message names the file, the row and the field.
    """
    directory = DATA_DIR if path is None else Path(path)
    joint, sites = _load_sites(directory / SITES_FILE)
    drugs = _load_drugs(directory / DRUGS_FILE, sites)
    families = _load_icd10(directory / ICD10CM_FILE, sites)
    return Catalog(
        sites=MappingProxyType(sites),
        drugs=MappingProxyType(drugs),
        icd10_families=families,
        joint_class_codes=MappingProxyType(joint),
        source_dir=directory,
    )


@functools.cache
def default_catalog() -> Catalog:
    """The catalog of the shipped data files, loaded once on first use."""
    return load_catalog()


def icd10_laterality(code: str, catalog: Catalog | None = None) -> Side | None:
    """:meth:`Catalog.icd10_laterality` on ``catalog`` (default: :func:`default_catalog`)."""
    return (catalog or default_catalog()).icd10_laterality(code)


def icd10_check(
    code: str, site: Site | str | None, laterality: str | None, catalog: Catalog | None = None
) -> list[str]:
    """:meth:`Catalog.icd10_check` on ``catalog`` (default: :func:`default_catalog`)."""
    return (catalog or default_catalog()).icd10_check(code, site, laterality)
