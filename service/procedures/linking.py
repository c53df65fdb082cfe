"""Which procedure an image belongs to (pure): the rules of the linker, without a database.

The rules, in order (the first that finds a candidate decides):

1. the image's Accession Number is a procedure's accession number (the worklist put it there);
2. its Study Instance UID is a procedure's (the worklist's, or one a person linked before);
3. its Admission ID is a procedure's encounter (visit) number: encounter-based imaging without orders;
4. its Patient ID is a procedure's patient and it was acquired within the time window around the procedure.

Several candidates under one rule are narrowed by the image's laterality (a left and a right knee on one
order); still several is *ambiguous*. The one candidate is then checked: a Patient ID or a laterality that
contradicts it is a *contradiction*. Ambiguous, contradicting and unmatched images are not linked: they wait
in the unlinked queue for a person.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo


class LinkStatus(enum.StrEnum):
    LINKED = "linked"
    UNMATCHED = "unmatched"
    AMBIGUOUS = "ambiguous"
    CONTRADICTION = "contradiction"
    UNLINKED = "unlinked"
    """A person took the image off its procedure: the linker leaves it alone."""


class LinkMethod(enum.StrEnum):
    ACCESSION = "accession"
    STUDY = "study"
    VISIT = "visit"
    PATIENT_TIME = "patient_time"
    MANUAL = "manual"


@dataclass(frozen=True)
class ImageFacts:
    """What the linker reads from one image's index row. Date-times are as DICOM sends them: naive local."""

    accession_number: str | None
    study_instance_uid: str | None
    admission_id: str | None
    patient_id: str | None
    laterality: str | None  # DICOM (Image) Laterality: R, L, B, U
    acquired_at: datetime | None


@dataclass(frozen=True)
class ProcedureFacts:
    """What the linker reads from one procedure. Times are aware (UTC), or naive UTC as SQLite returns them."""

    id: str
    accession_number: str | None
    study_instance_uid: str | None
    encounter_id: str | None
    patient_id: str
    laterality: str | None  # left, right, bilateral, not_applicable
    scheduled_at: datetime | None = None
    started_at: datetime | None = None
    injected_at: datetime | None = None
    ended_at: datetime | None = None
    created_at: datetime | None = None


@dataclass(frozen=True)
class LinkDecision:
    status: LinkStatus
    procedure_id: str | None = None
    method: LinkMethod | None = None
    detail: str = ""


# B (both) covers either side and U (unpaired) says nothing: only L and R can contradict a side.
_DICOM_SIDE = {"L": "left", "R": "right"}


def aware(value: datetime | None, zone: tzinfo | None) -> datetime | None:
    """A DICOM (naive, local) date-time made aware in ``zone``; None means the server's local zone."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=zone) if zone is not None else value.astimezone()


def _utc(value: datetime | None) -> datetime | None:
    return value if value is None or value.tzinfo is not None else value.replace(tzinfo=UTC)


def side_conflict(image_laterality: str | None, procedure_laterality: str | None) -> str | None:
    """Why the image's side contradicts the procedure's, or None (unknown sides never contradict)."""
    image_side = _DICOM_SIDE.get((image_laterality or "").strip().upper())
    if image_side is None or procedure_laterality not in ("left", "right"):
        return None
    if image_side != procedure_laterality:
        return f"the image is of the {image_side} side, the procedure of the {procedure_laterality}"
    return None


def time_window(proc: ProcedureFacts) -> tuple[datetime, datetime] | None:
    """The span of the procedure's recorded times (started..ended, else the injection, else the schedule)."""
    times = [_utc(t) for t in (proc.started_at, proc.injected_at, proc.ended_at) if t is not None]
    if not times:
        times = [_utc(t) for t in (proc.scheduled_at,) if t is not None]
    if not times:
        return None
    return min(times), max(times)  # type: ignore[type-var]


def _within(image: ImageFacts, proc: ProcedureFacts, window: timedelta, zone: tzinfo | None) -> bool:
    span = time_window(proc)
    when = aware(image.acquired_at, zone)
    return span is not None and when is not None and span[0] - window <= when <= span[1] + window


def decide(
    image: ImageFacts, candidates: Sequence[ProcedureFacts], window: timedelta, zone: tzinfo | None
) -> LinkDecision:
    """The procedure ``image`` belongs to, among ``candidates`` (the procedures that are not cancelled)."""
    rules = (
        (LinkMethod.ACCESSION, "accession number", lambda p: bool(image.accession_number)
         and p.accession_number == image.accession_number),
        (LinkMethod.STUDY, "study", lambda p: bool(image.study_instance_uid)
         and p.study_instance_uid == image.study_instance_uid),
        (LinkMethod.VISIT, "visit number", lambda p: bool(image.admission_id)
         and p.encounter_id == image.admission_id),
        (LinkMethod.PATIENT_TIME, f"patient within {window.total_seconds() / 3600:g} h", lambda p: bool(
            image.patient_id) and p.patient_id == image.patient_id and _within(image, p, window, zone)),
    )  # fmt: skip
    for method, what, fits in rules:
        found = [p for p in candidates if fits(p)]
        if not found:
            continue
        if len(found) > 1:
            same_side = [p for p in found if side_conflict(image.laterality, p.laterality) is None]
            if len(same_side) == 1:
                found = same_side
            else:
                ids = ", ".join(sorted(p.id for p in found))
                return LinkDecision(LinkStatus.AMBIGUOUS, None, method, f"{what} matches procedures {ids}")
        return check(image, found[0], method, f"by {what}")
    return LinkDecision(LinkStatus.UNMATCHED, None, None, "no procedure matches its accession, study, visit or patient")


def check(image: ImageFacts, proc: ProcedureFacts, method: LinkMethod, how: str) -> LinkDecision:
    """Link to ``proc`` unless the image's Patient ID or side contradicts it."""
    problems = []
    if image.patient_id and image.patient_id != proc.patient_id:
        problems.append("its Patient ID differs from the procedure's patient")
    side = side_conflict(image.laterality, proc.laterality)
    if side:
        problems.append(side)
    if problems:
        detail = f"matches {proc.id} {how}, but " + "; ".join(problems)
        return LinkDecision(LinkStatus.CONTRADICTION, None, method, detail)
    return LinkDecision(LinkStatus.LINKED, proc.id, method, how)
