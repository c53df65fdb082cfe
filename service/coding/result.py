"""The coding engine's input and output: plain frozen values, no database, no HTTP.

:func:`coding_input` turns a loaded report (what :class:`schemas.procedures.ProcedureCreateSchema` returns: typed
values, enums, aware datetimes) plus the linked-images summary into a :class:`CodingInput`. The engine
(:func:`service.coding.rules.code_procedure`) returns a :class:`CodingResult`; :meth:`CodingResult.to_dict` is its
JSON form. Every :class:`ClaimLine` and :class:`Finding` carries the ids of the rules that produced it and the facts
they looked at, so an auditor can see why a line is there or missing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import Enum
from types import MappingProxyType
from typing import Any, Literal

Severity = Literal["error", "warning", "info"]
CodeSystem = Literal["CPT", "HCPCS", "OPCS-4"]


def _plain(value: Any) -> Any:
    """An enum, date or nested container as JSON-ready plain values."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, date | datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    return value


def _facts(facts: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType({k: _plain(v) for k, v in (facts or {}).items()})


# --- input -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InjectateFacts:
    """One injected product as the rules see it (DOC-06, DOC-07); amounts are in ``dose_unit``."""

    drug: str
    dose: float | None = None
    dose_unit: str | None = None
    concentration_mg_per_ml: float | None = None
    ndc: str | None = None
    container_type: str | None = None
    container_amount: float | None = None
    discarded_amount: float | None = None


@dataclass(frozen=True)
class CodingInput:
    """The facts of one finalised procedure that the coding rules read (DOMAIN.md §1.3 "rule for the service").

    ``image_count``, ``has_pre`` and ``has_post`` summarise the DICOM instances linked to the procedure and their
    roles; ``guidance_described`` is true when the report has a guidance description (DOC-04).
    """

    date_of_service: date | None
    educational: bool = False
    kind: str | None = None
    site: str | None = None
    laterality: str | None = None
    digit: int | None = None
    modality: str | None = None
    realtime_needle_guidance: bool | None = None
    needle_tip_visualised: bool | None = None
    guidance_described: bool = False
    guidance_reasons: tuple[str, ...] = ()
    prior_landmark_attempts: int | None = None
    conservative_treatment_months: int | None = None
    equipment_ownership: str | None = None
    place_of_service: str | None = None
    coverage_kind: str | None = None
    off_label_disclosed: bool | None = None
    abn_signed: bool | None = None
    injectates: tuple[InjectateFacts, ...] = ()
    indications: tuple[str, ...] = ()
    image_count: int = 0
    has_pre: bool = False
    has_post: bool = False


def _text(value: Any) -> str | None:
    return None if value is None else str(_plain(value))


def coding_input(report: Mapping[str, Any], image_count: int, has_pre: bool, has_post: bool) -> CodingInput:
    """Build the rules' input from a loaded report and its linked-images summary.

    Parameters
    ----------
    report
        The dict :class:`schemas.procedures.ProcedureCreateSchema` ``load`` returns.
    image_count, has_pre, has_post
        How many DICOM instances are linked to the procedure, and whether one has the role ``pre`` / ``post``.

    Returns
    -------
    CodingInput
        The date of service is the local date of ``times.injected_at``, else ``started_at``, else
        ``scheduled_at`` (None when the report has none of them).
    """
    times = report.get("times") or {}
    when = times.get("injected_at") or times.get("started_at") or times.get("scheduled_at")
    guidance = report.get("guidance") or {}
    consent = report.get("consent") or {}
    description = guidance.get("description")
    return CodingInput(
        date_of_service=when.date() if isinstance(when, datetime) else None,
        educational=bool(report.get("educational")),
        kind=_text(report.get("kind")),
        site=report.get("site"),
        laterality=_text(report.get("laterality")),
        digit=report.get("digit"),
        modality=_text(guidance.get("modality")),
        realtime_needle_guidance=guidance.get("realtime_needle_guidance"),
        needle_tip_visualised=guidance.get("needle_tip_visualised"),
        guidance_described=bool(description and str(description).strip()),
        guidance_reasons=tuple(str(_plain(r)) for r in guidance.get("reasons") or ()),
        prior_landmark_attempts=guidance.get("prior_landmark_attempts"),
        conservative_treatment_months=guidance.get("conservative_treatment_months"),
        equipment_ownership=_text(report.get("equipment_ownership")),
        place_of_service=_text(report.get("place_of_service")),
        coverage_kind=_text((report.get("coverage") or {}).get("kind")),
        off_label_disclosed=consent.get("off_label_disclosed"),
        abn_signed=consent.get("abn_signed"),
        injectates=tuple(
            InjectateFacts(
                drug=i["drug"],
                dose=i.get("dose"),
                dose_unit=_text(i.get("dose_unit")),
                concentration_mg_per_ml=i.get("concentration_mg_per_ml"),
                ndc=i.get("ndc"),
                container_type=_text(i.get("container_type")),
                container_amount=i.get("container_amount"),
                discarded_amount=i.get("discarded_amount"),
            )
            for i in report.get("injectates") or ()
        ),
        indications=tuple(i["code"] for i in report.get("indications") or ()),
        image_count=int(image_count),
        has_pre=bool(has_pre),
        has_post=bool(has_post),
    )


# --- output ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClaimLine:
    """One claim line: code, modifiers in claim order, units, 1-based diagnosis pointers, NDC, and why it is there."""

    system: CodeSystem
    code: str
    units: int = 1
    modifiers: tuple[str, ...] = ()
    diagnosis_pointers: tuple[int, ...] = ()
    ndc: str | None = None
    drug: str | None = None
    rules: tuple[str, ...] = ()
    facts: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "code": self.code,
            "modifiers": list(self.modifiers),
            "units": self.units,
            "diagnosis_pointers": list(self.diagnosis_pointers),
            "ndc": self.ndc,
            "drug": self.drug,
            "rules": list(self.rules),
            "facts": _plain(self.facts),
        }


@dataclass(frozen=True)
class Finding:
    """A documentation or compliance finding: the rule that fired, how bad, why, and the facts it looked at."""

    rule: str
    severity: Severity
    message: str
    facts: Mapping[str, Any] = field(default_factory=dict, hash=False)
    checks: tuple[str, ...] = ()  # the DOMAIN.md §9.1 check ids (DOC-xx) the finding belongs to

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "severity": self.severity,
            "message": self.message,
            "facts": _plain(self.facts),
            "checks": list(self.checks),
        }


@dataclass(frozen=True)
class OffLabel:
    """Whether any product is off-label at the site (DOMAIN.md §8.4), and why."""

    off_label: bool = False
    reasons: tuple[str, ...] = ()
    disclosed: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"off_label": self.off_label, "reasons": list(self.reasons), "disclosed": self.disclosed}


@dataclass(frozen=True)
class Criterion:
    """One commissioning criterion and whether the report's facts meet it."""

    id: str
    met: bool
    description: str
    facts: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "met": self.met, "description": self.description, "facts": _plain(self.facts)}


@dataclass(frozen=True)
class Commissioning:
    """The HNY ICB USGI policy evaluation (DOMAIN.md §7.1, DOC-15): ``met``, ``not_met`` or ``not_applicable``."""

    policy: str
    status: Literal["met", "not_met", "not_applicable"]
    pathways: tuple[str, ...]
    criteria: tuple[Criterion, ...]
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "status": self.status,
            "pathways": list(self.pathways),
            "criteria": [c.to_dict() for c in self.criteria],
            "reason": self.reason,
        }


@dataclass(frozen=True)
class CodingResult:
    """What the rules make of one procedure: claim lines, diagnoses, findings, off-label and commissioning."""

    rule_set: str
    date_of_service: date | None
    educational: bool
    lines: tuple[ClaimLine, ...]
    diagnoses: tuple[str, ...]
    findings: tuple[Finding, ...]
    off_label: OffLabel
    commissioning: Commissioning | None = None

    @property
    def rules_fired(self) -> frozenset[str]:
        """Every rule id that produced or shaped a line, raised a finding or decided the commissioning."""
        ids = {r for line in self.lines for r in line.rules} | {f.rule for f in self.findings}
        if self.commissioning is not None:
            ids.add("HNY-USGI-1")
        return frozenset(ids)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule_set": self.rule_set,
            "date_of_service": _plain(self.date_of_service),
            "educational": self.educational,
            "lines": [line.to_dict() for line in self.lines],
            "diagnoses": list(self.diagnoses),
            "findings": [f.to_dict() for f in self.findings],
            "off_label": self.off_label.to_dict(),
            "commissioning": None if self.commissioning is None else self.commissioning.to_dict(),
            "rules_fired": sorted(self.rules_fired),
        }


class Trace:
    """Collects findings while the rules run (mutable scratch inside one pure call; never shared)."""

    def __init__(self) -> None:
        self.findings: list[Finding] = []

    def add(self, rule: str, severity: Severity, message: str, checks: tuple[str, ...] = (), **facts: Any) -> None:
        self.findings.append(Finding(rule, severity, message, _facts(facts), checks))


def line(
    system: CodeSystem,
    code: str,
    *,
    rules: tuple[str, ...],
    units: int = 1,
    modifiers: tuple[str, ...] = (),
    ndc: str | None = None,
    drug: str | None = None,
    **facts: Any,
) -> ClaimLine:
    """A claim line (diagnosis pointers are set last, once the diagnosis list is known)."""
    return ClaimLine(system, code, units, modifiers, (), ndc, drug, rules, _facts(facts))
