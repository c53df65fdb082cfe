"""service.worklist.items: the Modality Worklist item a machine receives for a procedure (PS3.4 K.6.1.2.2)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone
from io import BytesIO
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pynetdicom.dsutils import decode

from service.coding.catalog import default_catalog
from service.models import Procedure
from service.worklist.items import NO_SITE_DESCRIPTION, worklist_item, worklist_statuses
from service.worklist.matching import match

NEW_YORK = ZoneInfo("America/New_York")
LONDON = ZoneInfo("Europe/London")
STUDY_UID = "2.25.329800735698586629295641978511506172918"


def _report(**changes: Any) -> dict[str, Any]:
    report: dict[str, Any] = {
        "patient": {
            "identifier": {"system": "urn:oid:1.2.3", "value": "MRN1"},
            "name": {"family": "Doe", "given": ["Jane", "Ann"]},
            "birth_date": "1960-02-01",
            "sex": "female",
        },
        "kind": "injection",
        "site": "knee_joint",
        "laterality": "left",
        "performer": {"name": "Dr A Smith", "npi": "1234567893"},
    }
    report.update(changes)
    return report


def _procedure(**changes: Any) -> Procedure:
    created = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
    values: dict[str, Any] = {
        "id": "0123456789abcdef",
        "version": 1,
        "status": "scheduled",
        "report": _report(),
        "patient_id_system": "urn:oid:1.2.3",
        "patient_id": "MRN1",
        "encounter_id": "V2025031400187",
        "accession_number": "ACC25031401",
        "study_instance_uid": STUDY_UID,
        "scheduled_station_ae_title": "US_ROOM1",
        "site": "knee_joint",
        "laterality": "left",
        "educational": False,
        "scheduled_at": datetime(2025, 3, 14, 14, 0, tzinfo=UTC),
        "created_at": created,
        "updated_at": created,
    }
    values.update(changes)
    return Procedure(**values)


def _step(item: Dataset) -> Dataset:
    assert len(item.ScheduledProcedureStepSequence) == 1
    return item.ScheduledProcedureStepSequence[0]


def _encoded_and_decoded(item: Dataset) -> Dataset:
    """The item as a machine reads it: encoded (implicit VR LE, as pynetdicom sends it), then decoded."""
    buffer = DicomBytesIO()
    buffer.is_implicit_VR = True
    buffer.is_little_endian = True
    write_dataset(buffer, item)
    return decode(BytesIO(buffer.getvalue()), True, True)


# --- content -------------------------------------------------------------------------------------------------


def test_item_carries_what_the_machine_copies_into_its_images():
    item = worklist_item(_procedure(), NEW_YORK, default_catalog())

    assert str(item.PatientName) == "Doe^Jane Ann"
    assert item.PatientName.family_name == "Doe" and item.PatientName.given_name == "Jane Ann"
    assert item.PatientID == "MRN1"
    assert item.IssuerOfPatientID == "urn:oid:1.2.3"
    assert item.PatientBirthDate == "19600201"
    assert item.PatientSex == "F"
    assert item.AdmissionID == "V2025031400187"
    assert item.AccessionNumber == "ACC25031401"
    assert item.ReferringPhysicianName == ""
    assert item.RequestedProcedureID == "0123456789abcdef"
    assert item.RequestedProcedureDescription == "US-guided injection, left knee joint"
    assert item.StudyInstanceUID == STUDY_UID
    step = _step(item)
    assert step.Modality == "US"
    assert step.ScheduledStationAETitle == "US_ROOM1"
    assert (step.ScheduledProcedureStepStartDate, step.ScheduledProcedureStepStartTime) == ("20250314", "100000")
    assert str(step.ScheduledPerformingPhysicianName) == "Dr A Smith"
    assert step.ScheduledPerformingPhysicianName.family_name == "Dr A Smith"
    assert step.ScheduledProcedureStepDescription == item.RequestedProcedureDescription
    assert step.ScheduledProcedureStepID == "0123456789abcdef"
    assert step.ScheduledProcedureStepStatus == "SCHEDULED"
    assert "SpecificCharacterSet" not in item, "plain ASCII needs no character set"


def test_item_encodes_without_a_validation_warning_and_survives_the_round_trip():
    # pytest turns pydicom's invalid-value warnings into errors: every value must be valid for its VR.
    item = worklist_item(_procedure(), LONDON)
    back = _encoded_and_decoded(item)
    assert back.AccessionNumber == "ACC25031401"
    assert str(back.PatientName) == "Doe^Jane Ann"
    assert _step(back).ScheduledStationAETitle == "US_ROOM1"


def test_the_catalog_defaults_to_the_shipped_one():
    assert worklist_item(_procedure(), LONDON) == worklist_item(_procedure(), LONDON, default_catalog())


def test_missing_optional_values_are_present_but_empty():
    proc = _procedure(
        report={"patient": {"identifier": {"system": "urn:oid:1.2.3", "value": "MRN1"}}},
        encounter_id=None,
        scheduled_station_ae_title=None,
    )
    item = worklist_item(proc, LONDON)
    for keyword in ("PatientName", "PatientBirthDate", "PatientSex", "AdmissionID", "RequestedProcedurePriority"):
        assert keyword in item and item[keyword].is_empty, keyword
    step = _step(item)
    assert step.ScheduledStationAETitle == ""
    assert step["ScheduledPerformingPhysicianName"].is_empty
    assert item.PatientID == "MRN1", "the identifier columns do not depend on the report"


@pytest.mark.parametrize(
    ("sex", "code"), [("female", "F"), ("male", "M"), ("other", "O"), ("unknown", ""), (None, ""), ("x", "")]
)
def test_patient_sex_codes(sex: str | None, code: str):
    patient = {**_report()["patient"], "sex": sex}
    assert worklist_item(_procedure(report=_report(patient=patient)), LONDON).PatientSex == code


@pytest.mark.parametrize(("birth_date", "da"), [("1960-02-01", "19600201"), ("1960-02", ""), ("01/02/1960", "")])
def test_birth_date_is_yyyymmdd_or_empty(birth_date: str, da: str):
    patient = {**_report()["patient"], "birth_date": birth_date}
    assert worklist_item(_procedure(report=_report(patient=patient)), LONDON).PatientBirthDate == da


def test_name_delimiters_in_free_text_do_not_shift_the_name_components():
    patient = {**_report()["patient"], "name": {"family": "O^Brien=X", "given": ["Mary\\Ann"]}}
    proc = _procedure(report=_report(patient=patient, performer={"name": "Smith^John"}))
    item = worklist_item(proc, LONDON)
    assert item.PatientName.family_name == "O Brien X"
    assert item.PatientName.given_name == "Mary Ann"
    assert _step(item).ScheduledPerformingPhysicianName.family_name == "Smith John"


def test_long_values_are_cut_to_their_vr_length():
    proc = _procedure(id="f" * 40, patient_id_system="urn:oid:" + "1." * 60 + "1")
    item = worklist_item(proc, LONDON)
    assert item.RequestedProcedureID == "f" * 16
    assert _step(item).ScheduledProcedureStepID == "f" * 16
    assert len(item.IssuerOfPatientID) == 64 and item.IssuerOfPatientID.startswith("urn:oid:1.1.")
    _encoded_and_decoded(item)


# --- descriptions ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "site", "laterality", "text"),
    [
        ("injection", "knee_joint", "left", "US-guided injection, left knee joint"),
        ("aspiration", "knee_joint", "right", "US-guided aspiration, right knee joint"),
        (
            "aspiration_and_injection",
            "elbow_joint",
            "bilateral",
            "US-guided aspiration and injection, bilateral elbow joint",
        ),
        ("injection", "carpal_tunnel", "not_applicable", "US-guided injection, carpal tunnel"),
        ("injection", "carpal_tunnel", None, "US-guided injection, carpal tunnel"),
        ("aspiration", "baker_cyst", "left", "US-guided aspiration, left Baker's (popliteal) cyst"),
        (None, "knee_joint", "left", "US-guided procedure, left knee joint"),
        ("injection", None, "left", NO_SITE_DESCRIPTION),
        ("injection", "retired_site_key", "left", "US-guided injection, left retired site key"),
    ],
)
def test_description(kind: str | None, site: str | None, laterality: str | None, text: str):
    proc = _procedure(report=_report(kind=kind, site=site, laterality=laterality), site=site, laterality=laterality)
    item = worklist_item(proc, LONDON)
    assert item.RequestedProcedureDescription == text
    assert _step(item).ScheduledProcedureStepDescription == text


def test_description_longer_than_lo_is_cut_to_64_characters():
    # "US-guided aspiration and injection, bilateral flexor tendon sheath of a digit (trigger finger or thumb)"
    proc = _procedure(report=_report(kind="aspiration_and_injection"), site="trigger_finger_sheath", laterality="right")
    item = worklist_item(proc, LONDON)
    # Cut at a word boundary: the machine's operator reads it.
    assert item.RequestedProcedureDescription == "US-guided aspiration and injection, right flexor tendon sheath"
    assert _step(item).ScheduledProcedureStepDescription == item.RequestedProcedureDescription


# --- dates and times -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scheduled_utc", "zone", "da", "tm"),
    [
        # New York: EST (UTC-5) until 2025-03-09 02:00, EDT (UTC-4) after.
        (datetime(2025, 3, 8, 14, 0), NEW_YORK, "20250308", "090000"),
        (datetime(2025, 3, 10, 14, 0), NEW_YORK, "20250310", "100000"),
        (datetime(2025, 3, 9, 6, 59, 59), NEW_YORK, "20250309", "015959"),
        (datetime(2025, 3, 9, 7, 0), NEW_YORK, "20250309", "030000"),
        # Late evening in New York is already the next day in UTC: the machine's date is the local one.
        (datetime(2025, 3, 15, 3, 30), NEW_YORK, "20250314", "233000"),
        # London: GMT in winter, BST (UTC+1) from 2025-03-30.
        (datetime(2025, 1, 15, 9, 5, 7), LONDON, "20250115", "090507"),
        (datetime(2025, 7, 1, 12, 0), LONDON, "20250701", "130000"),
    ],
)
def test_step_start_is_on_the_modalities_wall_clock(scheduled_utc: datetime, zone: ZoneInfo, da: str, tm: str):
    step = _step(worklist_item(_procedure(scheduled_at=scheduled_utc.replace(tzinfo=UTC)), zone))
    assert (step.ScheduledProcedureStepStartDate, step.ScheduledProcedureStepStartTime) == (da, tm)


def test_naive_datetimes_from_sqlite_are_read_as_utc():
    aware = _step(worklist_item(_procedure(scheduled_at=datetime(2025, 7, 1, 12, 0, tzinfo=UTC)), NEW_YORK))
    naive = _step(worklist_item(_procedure(scheduled_at=datetime(2025, 7, 1, 12, 0)), NEW_YORK))
    assert naive.ScheduledProcedureStepStartTime == aware.ScheduledProcedureStepStartTime == "080000"


def test_an_aware_datetime_in_another_offset_is_converted():
    tokyo_morning = datetime(2025, 7, 2, 9, 0, tzinfo=timezone(timedelta(hours=9)))  # 2025-07-02 00:00 UTC
    step = _step(worklist_item(_procedure(scheduled_at=tokyo_morning), NEW_YORK))
    assert (step.ScheduledProcedureStepStartDate, step.ScheduledProcedureStepStartTime) == ("20250701", "200000")


def test_without_a_scheduled_time_the_creation_time_is_the_start():
    proc = _procedure(scheduled_at=None, created_at=datetime(2025, 1, 15, 16, 45, 30, tzinfo=UTC))
    step = _step(worklist_item(proc, NEW_YORK))
    assert (step.ScheduledProcedureStepStartDate, step.ScheduledProcedureStepStartTime) == ("20250115", "114530")


def test_no_zone_means_the_servers_local_zone(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        step = _step(worklist_item(_procedure(scheduled_at=datetime(2025, 3, 14, 20, 0, tzinfo=UTC)), None))
    finally:
        monkeypatch.undo()
        time.tzset()
    assert (step.ScheduledProcedureStepStartDate, step.ScheduledProcedureStepStartTime) == ("20250315", "050000")


# --- character set -------------------------------------------------------------------------------------------


def test_non_ascii_name_sets_utf8_and_is_sent_intact():
    patient = {**_report()["patient"], "name": {"family": "Müller", "given": ["Zoë"]}}
    item = worklist_item(_procedure(report=_report(patient=patient)), LONDON)
    assert item.SpecificCharacterSet == "ISO_IR 192"
    back = _encoded_and_decoded(item)
    assert back.SpecificCharacterSet == "ISO_IR 192"
    assert str(back.PatientName) == "Müller^Zoë"


def test_non_ascii_only_inside_the_step_sets_utf8_too():
    item = worklist_item(_procedure(report=_report(performer={"name": "Dr Łukasz Nowak"})), LONDON)
    assert item.SpecificCharacterSet == "ISO_IR 192"
    assert str(_encoded_and_decoded(item).ScheduledProcedureStepSequence[0].ScheduledPerformingPhysicianName) == (
        "Dr Łukasz Nowak"
    )


# --- statuses ------------------------------------------------------------------------------------------------


def test_worklist_statuses_are_scheduled_and_in_progress_only():
    assert worklist_statuses == {"scheduled", "in_progress"}


@pytest.mark.parametrize(("status", "step_status"), [("scheduled", "SCHEDULED"), ("in_progress", "STARTED")])
def test_step_status(status: str, step_status: str):
    assert _step(worklist_item(_procedure(status=status), LONDON)).ScheduledProcedureStepStatus == step_status


# --- with the matching rules ---------------------------------------------------------------------------------


def test_a_typical_modality_query_matches_the_item():
    query = Dataset()
    query.PatientName = "DOE*"
    query.AccessionNumber = ""
    step = Dataset()
    step.Modality = "US"
    step.ScheduledStationAETitle = "US_ROOM1"
    step.ScheduledProcedureStepStartDate = "20250314"
    query.ScheduledProcedureStepSequence = [step]
    item = worklist_item(_procedure(), NEW_YORK)
    assert match(query, item)
    step.ScheduledProcedureStepStartDate = "20250315"
    assert not match(query, item)
