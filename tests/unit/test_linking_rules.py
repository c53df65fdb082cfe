"""The linker's rules as a table: which procedure an image belongs to, or why none (pure, no database)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from service.procedures.linking import (
    ImageFacts,
    LinkMethod,
    LinkStatus,
    ProcedureFacts,
    aware,
    decide,
    side_conflict,
    time_window,
)

CHICAGO = ZoneInfo("America/Chicago")
WINDOW = timedelta(hours=12)
# 2025-03-14 09:12-09:21 CDT (-05:00) = 14:12-14:21 UTC
KNEE = ProcedureFacts(
    id="knee",
    accession_number="ACC1",
    study_instance_uid="1.2.3",
    encounter_id="V1",
    patient_id="MRN1",
    laterality="right",
    started_at=datetime(2025, 3, 14, 14, 12, tzinfo=UTC),
    injected_at=datetime(2025, 3, 14, 14, 16, tzinfo=UTC),
    ended_at=datetime(2025, 3, 14, 14, 21, tzinfo=UTC),
)
OTHER = ProcedureFacts(
    id="other", accession_number="ACC2", study_instance_uid="1.2.4", encounter_id="V2", patient_id="MRN2",
    laterality=None, scheduled_at=datetime(2025, 3, 14, 15, 0, tzinfo=UTC),
)  # fmt: skip
NOTHING = ImageFacts(None, None, None, None, None, None)


def image(**kw: object) -> ImageFacts:
    return replace(NOTHING, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("facts", "status", "proc", "method"),
    [
        (image(accession_number="ACC1"), LinkStatus.LINKED, "knee", LinkMethod.ACCESSION),
        (image(accession_number="ACC1", patient_id="MRN1"), LinkStatus.LINKED, "knee", LinkMethod.ACCESSION),
        (image(study_instance_uid="1.2.3"), LinkStatus.LINKED, "knee", LinkMethod.STUDY),
        (image(admission_id="V1"), LinkStatus.LINKED, "knee", LinkMethod.VISIT),
        # local 09:30 CDT = 14:30 UTC, 9 minutes after the end
        (image(patient_id="MRN1", acquired_at=datetime(2025, 3, 14, 9, 30)), LinkStatus.LINKED, "knee",
         LinkMethod.PATIENT_TIME),
        # 12 h after the end, to the second, is inside; one second more is not
        (image(patient_id="MRN1", acquired_at=datetime(2025, 3, 14, 21, 21)), LinkStatus.LINKED, "knee",
         LinkMethod.PATIENT_TIME),
        (image(patient_id="MRN1", acquired_at=datetime(2025, 3, 14, 21, 21, 1)), LinkStatus.UNMATCHED, None, None),
        (image(patient_id="MRN1"), LinkStatus.UNMATCHED, None, None),  # no time: the patient alone is not enough
        (image(accession_number="NOPE", patient_id="MRN9"), LinkStatus.UNMATCHED, None, None),
        (NOTHING, LinkStatus.UNMATCHED, None, None),
        # the first rule that finds a candidate decides, even when a later one would find another
        (image(accession_number="ACC2", study_instance_uid="1.2.3"), LinkStatus.LINKED, "other", LinkMethod.ACCESSION),
        # contradictions: flagged with the rule that found the procedure, not linked
        (image(accession_number="ACC1", patient_id="MRN2"), LinkStatus.CONTRADICTION, None, LinkMethod.ACCESSION),
        (image(study_instance_uid="1.2.3", laterality="L"), LinkStatus.CONTRADICTION, None, LinkMethod.STUDY),
        (image(accession_number="ACC1", laterality="R"), LinkStatus.LINKED, "knee", LinkMethod.ACCESSION),
        (image(accession_number="ACC1", laterality="B"), LinkStatus.LINKED, "knee", LinkMethod.ACCESSION),
        (image(accession_number="ACC1", laterality="U"), LinkStatus.LINKED, "knee", LinkMethod.ACCESSION),
    ],
)  # fmt: skip
def test_rules(facts: ImageFacts, status: LinkStatus, proc: str | None, method: LinkMethod | None) -> None:
    decision = decide(facts, [KNEE, OTHER], WINDOW, CHICAGO)
    assert (decision.status, decision.procedure_id, decision.method) == (status, proc, method)
    assert decision.detail


def test_several_candidates_are_narrowed_by_side_else_ambiguous() -> None:
    left = replace(KNEE, id="left", laterality="left")
    assert decide(image(accession_number="ACC1", laterality="L"), [KNEE, left], WINDOW, CHICAGO).procedure_id == "left"
    assert decide(image(accession_number="ACC1", laterality="R"), [KNEE, left], WINDOW, CHICAGO).procedure_id == "knee"
    unsure = decide(image(accession_number="ACC1"), [KNEE, left], WINDOW, CHICAGO)
    assert unsure.status is LinkStatus.AMBIGUOUS and "knee" in unsure.detail and "left" in unsure.detail
    same_day = replace(KNEE, id="hip", accession_number="ACC9")
    when = datetime(2025, 3, 14, 9, 30)
    both = decide(image(patient_id="MRN1", acquired_at=when), [KNEE, same_day], WINDOW, CHICAGO)
    assert both.status is LinkStatus.AMBIGUOUS and both.method is LinkMethod.PATIENT_TIME


def test_the_window_follows_the_configured_zone_and_its_daylight_saving() -> None:
    # 03:00 local on 2025-03-14 in Chicago (CDT) is 08:00 UTC: 6 h 12 min before the start.
    early = image(patient_id="MRN1", acquired_at=datetime(2025, 3, 14, 3, 0))
    assert decide(early, [KNEE], timedelta(hours=6), CHICAGO).status is LinkStatus.UNMATCHED
    assert decide(early, [KNEE], timedelta(hours=7), CHICAGO).status is LinkStatus.LINKED
    # Read as UTC instead, the same wall-clock time is 11 h 12 min before: the zone matters.
    assert decide(early, [KNEE], timedelta(hours=7), UTC).status is LinkStatus.UNMATCHED
    assert aware(datetime(2025, 1, 14, 9, 0), CHICAGO).utcoffset() == timedelta(hours=-6)  # type: ignore[union-attr]
    assert aware(datetime(2025, 3, 14, 9, 0), CHICAGO).utcoffset() == timedelta(hours=-5)  # type: ignore[union-attr]


def test_the_window_of_a_procedure_is_its_recorded_span_else_its_schedule() -> None:
    assert time_window(KNEE) == (KNEE.started_at, KNEE.ended_at)
    assert time_window(OTHER) == (OTHER.scheduled_at, OTHER.scheduled_at)
    assert time_window(replace(OTHER, scheduled_at=None)) is None
    naive_utc = replace(KNEE, started_at=datetime(2025, 3, 14, 14, 12), injected_at=None, ended_at=None)
    assert time_window(naive_utc) == (KNEE.started_at, KNEE.started_at)  # SQLite gives naive UTC back


@pytest.mark.parametrize(
    ("image_side", "procedure_side", "conflict"),
    [("L", "right", True), ("R", "left", True), ("L", "left", False), ("B", "right", False), ("", "right", False),
     ("L", "bilateral", False), ("R", None, False), (" l ", "right", True), ("U", "left", False)],
)  # fmt: skip
def test_side_conflicts(image_side: str, procedure_side: str | None, conflict: bool) -> None:
    assert (side_conflict(image_side, procedure_side) is not None) is conflict
