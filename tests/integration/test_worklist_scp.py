"""Modality Worklist C-FIND SCP over loopback: dcmtk's findscu and a pynetdicom SCU play the ultrasound machine.

Procedures are rows inserted with the ORM; the modalities' clock is Europe/London (GMT in winter, BST in summer),
so a procedure scheduled at 08:00 UTC in June is offered at 09:00.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from uuid import uuid4

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import ModalityWorklistInformationFind, Verification

from service.bootstrap import Services
from service.config import Settings
from service.db import unit_of_work
from service.dicom.handlers import handle_find
from service.models import Procedure

PENDING, SUCCESS, CANCEL = 0xFF00, 0x0000, 0xFE00


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings.for_tests(tmp_path, database_url=database_url, timezone="Europe/London")


def _procedure(
    services: Services,
    accession: str,
    family: str,
    given: list[str],
    scheduled_at: datetime | None,
    status: str = "scheduled",
    station: str | None = "US_ROOM1",
) -> Procedure:
    """Insert one procedure row as the procedures API would leave it."""
    now = datetime.now(UTC)
    patient_id = f"MRN-{accession}"
    proc = Procedure(
        id=uuid4().hex[:16],
        version=1,
        status=status,
        report={
            "patient": {
                "identifier": {"system": "urn:oid:1.2.3", "value": patient_id},
                "name": {"family": family, "given": given},
                "birth_date": "1960-02-01",
                "sex": "female",
            },
            "accession_number": accession,
            "kind": "injection",
            "site": "knee_joint",
            "laterality": "left",
            "performer": {"name": "Dr A Smith", "npi": "1234567893"},
        },
        patient_id_system="urn:oid:1.2.3",
        patient_id=patient_id,
        encounter_id=f"V-{accession}",
        accession_number=accession,
        study_instance_uid=f"2.25.{uuid4().int}",
        scheduled_station_ae_title=station,
        site="knee_joint",
        laterality="left",
        educational=False,
        scheduled_at=scheduled_at,
        created_at=now,
        updated_at=now,
    )
    with unit_of_work(services.session_factory) as s:
        s.add(proc)
    return proc


@pytest.fixture
def worklist(services: Services) -> dict[str, Procedure]:
    """Three procedures on the worklist and two that are not, on the same day and with the same name as ACC1."""
    day = datetime(2025, 3, 14, 9, 30, tzinfo=UTC)  # 09:30 in London (GMT)
    return {
        "ACC1": _procedure(services, "ACC1", "Doe", ["Jane"], day),
        "ACC2": _procedure(
            services, "ACC2", "Roe", ["John"], datetime(2025, 3, 15, 14, 0, tzinfo=UTC), "in_progress", "US_ROOM2"
        ),
        "ACC3": _procedure(services, "ACC3", "DOE", ["Joan", "M"], datetime(2025, 6, 10, 8, 0, tzinfo=UTC)),
        "ACC4": _procedure(services, "ACC4", "Doe", ["Jane"], day, "cancelled"),
        "ACC5": _procedure(services, "ACC5", "Doe", ["Jane"], day, "final"),
    }


# --- helpers: a pynetdicom worklist SCU ------------------------------------------------------------------------


def _query(sps: dict[str, str] | None = None, **keys: Any) -> Dataset:
    """An MWL identifier; ``sps`` keys go in the single Scheduled Procedure Step Sequence item."""
    ds = Dataset()
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    step = Dataset()
    for keyword, value in (sps or {}).items():
        setattr(step, keyword, value)
    ds.ScheduledProcedureStepSequence = [step]
    return ds


def _scu(ae_title: str = "TESTSCU") -> AE:
    ae = AE(ae_title=ae_title)
    ae.add_requested_context(ModalityWorklistInformationFind)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    return ae


@pytest.fixture
def assoc(dicom_server) -> Iterator[Association]:
    association = _scu().associate("127.0.0.1", dicom_server.port, ae_title="USGI")
    assert association.is_established
    yield association
    association.release()


def _find(assoc: Association, query: Dataset) -> list[tuple[int, Dataset | None]]:
    return [(status.Status, ident) for status, ident in assoc.send_c_find(query, ModalityWorklistInformationFind)]


def _matches(assoc: Association, query: Dataset) -> list[Dataset]:
    """The pending identifiers, after checking the response stream ends with a single success."""
    responses = _find(assoc, query)
    assert responses, "no C-FIND response"
    assert responses[-1] == (SUCCESS, None), [hex(s) for s, _ in responses]
    assert all(status == PENDING and ident is not None for status, ident in responses[:-1])
    return [ident for _, ident in responses[:-1] if ident is not None]


def _accessions(identifiers: list[Dataset]) -> list[str]:
    return sorted(str(i.AccessionNumber) for i in identifiers)


# --- dcmtk findscu ---------------------------------------------------------------------------------------------


def _findscu(dcmtk: dict[str, str], port: int, out: Path, *keys: str, ae_title: str = "FINDSCU"):
    """findscu in worklist mode, each pending response's identifier written to ``out``/rspNNNN.dcm."""
    out.mkdir(parents=True, exist_ok=True)
    args = [dcmtk["findscu"], "-W", "-aet", ae_title, "-aec", "USGI", "-X", "-od", str(out)]
    for key in keys:
        args += ["-k", key]
    return subprocess.run([*args, "127.0.0.1", str(port)], capture_output=True, text=True, timeout=60)


def test_findscu_gets_the_days_scheduled_items_with_what_the_images_must_carry(dicom_server, worklist, dcmtk, tmp_path):
    proc = _findscu(
        dcmtk,
        dicom_server.port,
        tmp_path / "rsp",
        "ScheduledProcedureStepSequence[0].Modality=US",
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=20250314",
        "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime",
        "ScheduledProcedureStepSequence[0].ScheduledStationAETitle",
        "PatientName",
        "PatientID",
        "AccessionNumber",
        "StudyInstanceUID",
    )
    assert proc.returncode == 0, proc.stderr
    files = sorted((tmp_path / "rsp").glob("rsp*.dcm"))
    assert len(files) == 1, "only ACC1: ACC4 (cancelled) and ACC5 (final) are on the same day but not on the list"
    ds = dcmread(files[0])
    expected = worklist["ACC1"]
    assert ds.AccessionNumber == "ACC1"
    assert str(ds.PatientName) == "Doe^Jane"
    assert ds.PatientID == "MRN-ACC1"
    assert ds.StudyInstanceUID == expected.study_instance_uid
    step = ds.ScheduledProcedureStepSequence[0]
    assert step.Modality == "US"
    assert (step.ScheduledProcedureStepStartDate, step.ScheduledProcedureStepStartTime) == ("20250314", "093000")
    assert step.ScheduledStationAETitle == "US_ROOM1"
    assert "RequestedProcedureDescription" not in ds, "only the keys asked for come back"


def test_findscu_from_an_unknown_calling_ae_is_rejected(dicom_server, worklist, dcmtk, tmp_path):
    proc = _findscu(dcmtk, dicom_server.port, tmp_path / "rsp", "PatientName", ae_title="INTRUDER")
    assert proc.returncode != 0
    assert "Calling AE Title Not Recognized" in proc.stderr
    assert list((tmp_path / "rsp").glob("rsp*.dcm")) == []


# --- pynetdicom SCU --------------------------------------------------------------------------------------------


def test_pynetdicom_scu_gets_every_scheduled_and_started_item_and_nothing_else(assoc, worklist):
    query = _query(
        {"Modality": "US", "ScheduledProcedureStepStatus": ""},
        PatientName="",
        PatientID="",
        AccessionNumber="",
        StudyInstanceUID="",
    )
    found = {str(i.AccessionNumber): i for i in _matches(assoc, query)}

    assert sorted(found) == ["ACC1", "ACC2", "ACC3"]
    for accession, ident in found.items():
        proc = worklist[accession]
        assert ident.StudyInstanceUID == proc.study_instance_uid
        assert ident.PatientID == proc.patient_id
    assert str(found["ACC3"].PatientName) == "DOE^Joan M"
    statuses = {a: i.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus for a, i in found.items()}
    assert statuses == {"ACC1": "SCHEDULED", "ACC2": "STARTED", "ACC3": "SCHEDULED"}


def test_universal_return_keys_come_back_filled(assoc, worklist):
    sps_keys = (
        "Modality",
        "ScheduledStationAETitle",
        "ScheduledProcedureStepStartDate",
        "ScheduledProcedureStepStartTime",
        "ScheduledPerformingPhysicianName",
        "ScheduledProcedureStepDescription",
        "ScheduledProcedureStepID",
    )
    top_keys = (
        "PatientName",
        "PatientID",
        "IssuerOfPatientID",
        "PatientBirthDate",
        "PatientSex",
        "AdmissionID",
        "AccessionNumber",
        "RequestedProcedureID",
        "RequestedProcedureDescription",
        "StudyInstanceUID",
    )
    query = _query(dict.fromkeys(sps_keys, ""), **dict.fromkeys(top_keys, ""))
    query.AccessionNumber = "ACC3"
    query.ReferringPhysicianName = ""  # a key we have no value for comes back, empty

    (ident,) = _matches(assoc, query)

    proc = worklist["ACC3"]
    assert str(ident.PatientName) == "DOE^Joan M"
    assert ident.PatientID == "MRN-ACC3"
    assert ident.IssuerOfPatientID == "urn:oid:1.2.3"
    assert (ident.PatientBirthDate, ident.PatientSex) == ("19600201", "F")
    assert ident.AdmissionID == "V-ACC3"
    assert ident.RequestedProcedureID == proc.id
    assert ident.RequestedProcedureDescription == "US-guided injection, left knee joint"
    assert ident.StudyInstanceUID == proc.study_instance_uid
    assert "ReferringPhysicianName" in ident and ident["ReferringPhysicianName"].is_empty
    step = ident.ScheduledProcedureStepSequence[0]
    assert step.Modality == "US"
    assert step.ScheduledStationAETitle == "US_ROOM1"
    # 08:00 UTC on a June day is 09:00 on the machines' (BST) clock.
    assert (step.ScheduledProcedureStepStartDate, step.ScheduledProcedureStepStartTime) == ("20250610", "090000")
    assert str(step.ScheduledPerformingPhysicianName) == "Dr A Smith"
    assert step.ScheduledProcedureStepDescription == "US-guided injection, left knee joint"
    assert step.ScheduledProcedureStepID == proc.id
    assert {e.keyword for e in ident} == {*top_keys, "ReferringPhysicianName", "ScheduledProcedureStepSequence"}
    assert {e.keyword for e in step} == set(sps_keys)


@pytest.mark.parametrize(
    ("date", "time", "expected"),
    [
        ("20250314-20250315", None, ["ACC1", "ACC2"]),
        ("20250315-", None, ["ACC2", "ACC3"]),
        ("-20250314", None, ["ACC1"]),
        ("20250101-20251231", None, ["ACC1", "ACC2", "ACC3"]),
        ("20250401-20250430", None, []),
        # The time is the machines' local time: 08:00 UTC is 09:00 BST in June.
        ("20250610", "0830-0930", ["ACC3"]),
        ("20250610", "0730-0830", []),
        ("20250314", "0900-1000", ["ACC1"]),
    ],
)
def test_date_and_time_range_queries(assoc, worklist, date: str, time: str | None, expected: list[str]):
    sps = {"ScheduledProcedureStepStartDate": date}
    if time is not None:
        sps["ScheduledProcedureStepStartTime"] = time
    assert _accessions(_matches(assoc, _query(sps, AccessionNumber=""))) == expected


def test_query_by_scheduled_station_ae_title(assoc, worklist):
    assert _accessions(_matches(assoc, _query({"ScheduledStationAETitle": "US_ROOM2"}, AccessionNumber=""))) == ["ACC2"]
    assert _accessions(_matches(assoc, _query({"ScheduledStationAETitle": "US_ROOM1"}, AccessionNumber=""))) == [
        "ACC1",
        "ACC3",
    ]


def test_a_procedure_without_station_matches_only_a_universal_station_key(services, assoc, worklist):
    _procedure(services, "ACC6", "Poe", ["Ann"], datetime(2025, 3, 14, 11, 0, tzinfo=UTC), station=None)
    by_station = _matches(assoc, _query({"ScheduledStationAETitle": "US_ROOM1"}, AccessionNumber=""))
    assert "ACC6" not in _accessions(by_station)
    (ident,) = _matches(assoc, _query({"ScheduledStationAETitle": ""}, AccessionNumber="ACC6"))
    assert ident.ScheduledProcedureStepSequence[0]["ScheduledStationAETitle"].is_empty


@pytest.mark.parametrize(
    ("name", "expected"),
    [("DOE*", ["ACC1", "ACC3"]), ("doe^ja*", ["ACC1"]), ("*^J?hn", ["ACC2"]), ("Doe", []), ("Doe^Jane", ["ACC1"])],
)
def test_patient_name_queries_with_wildcards(assoc, worklist, name: str, expected: list[str]):
    assert _accessions(_matches(assoc, _query(PatientName=name, AccessionNumber=""))) == expected


def test_query_by_patient_id_and_by_accession_number(assoc, worklist):
    assert _accessions(_matches(assoc, _query(PatientID="MRN-ACC2", AccessionNumber=""))) == ["ACC2"]
    (ident,) = _matches(assoc, _query(AccessionNumber="ACC3", StudyInstanceUID=""))
    assert ident.StudyInstanceUID == worklist["ACC3"].study_instance_uid
    assert _matches(assoc, _query(AccessionNumber="ACC4")) == [], "a cancelled procedure is not on the worklist"


def test_an_empty_result_is_a_single_final_success(assoc, worklist):
    assert _find(assoc, _query({"Modality": "US"}, PatientID="NOBODY", PatientName="")) == [(SUCCESS, None)]


def test_an_empty_worklist_answers_success(assoc):
    assert _find(assoc, _query({"Modality": "US"}, PatientName="")) == [(SUCCESS, None)]


def test_a_malformed_query_fails_and_the_association_still_works(assoc, worklist):
    bad = _query(AccessionNumber="")
    second = Dataset()
    second.Modality = "US"
    bad.ScheduledProcedureStepSequence.append(second)  # a query sequence holds a single item (PS3.4 C.2.2.2.6)

    responses = _find(assoc, bad)

    assert [status for status, _ in responses] == [0xA900]
    assert responses[0][1] is None
    assert assoc.is_established
    assert assoc.send_c_echo().Status == SUCCESS
    assert _accessions(_matches(assoc, _query({"Modality": "US"}, AccessionNumber=""))) == ["ACC1", "ACC2", "ACC3"]


def test_an_identifier_without_keys_fails(assoc, worklist):
    assert [status for status, _ in _find(assoc, Dataset())] == [0xA900]
    assert assoc.send_c_echo().Status == SUCCESS


def test_non_ascii_names_come_back_in_utf8(services, assoc):
    _procedure(services, "ACC7", "Müller", ["Zoë"], datetime(2025, 3, 14, 11, 0, tzinfo=UTC))
    query = _query(PatientName="MÜLLER*", AccessionNumber="")
    query.SpecificCharacterSet = "ISO_IR 192"

    (ident,) = _matches(assoc, query)

    assert ident.SpecificCharacterSet == "ISO_IR 192"
    assert str(ident.PatientName) == "Müller^Zoë"


def test_an_unknown_calling_ae_is_rejected(dicom_server, worklist):
    rejected = _scu("INTRUDER").associate("127.0.0.1", dicom_server.port, ae_title="USGI")
    assert rejected.is_rejected
    rsp = rejected.acceptor.primitive
    assert (rsp.result, rsp.result_source, rsp.diagnostic) == (0x01, 0x01, 0x03)


# --- the handler called directly: cases a live association cannot produce on demand ---------------------------
# (A C-CANCEL over loopback races the responses: pynetdicom reads it only once its send queue is empty.)


class _Unreadable:
    """An identifier whose bytes pydicom cannot decode: the error comes at first use, as with deferred reads."""

    def __iter__(self) -> Iterator[Any]:
        raise ValueError("cannot decode")


class _Event:
    """What handle_find reads of a pynetdicom Event; ``is_cancelled`` turns true after ``cancel_after`` checks."""

    def __init__(
        self, identifier: Any, sop_class: str = ModalityWorklistInformationFind, cancel_after: int | None = None
    ) -> None:
        self.request = SimpleNamespace(AffectedSOPClassUID=sop_class)
        self.identifier = identifier
        self.assoc = SimpleNamespace(requestor=SimpleNamespace(ae_title="TESTSCU"))
        self._cancel_after = cancel_after
        self._checks = 0

    @property
    def is_cancelled(self) -> bool:
        self._checks += 1
        return self._cancel_after is not None and self._checks > self._cancel_after


def _statuses(results: list[tuple[Any, Dataset | None]]) -> list[int]:
    return [s if isinstance(s, int) else s.Status for s, _ in results]


def test_handler_refuses_another_sop_class(services, worklist):
    results = list(handle_find(_Event(_query(AccessionNumber=""), sop_class="1.2.840.10008.5.1.4.1.2.1.1"), services))
    assert _statuses(results) == [0x0122]


def test_handler_answers_an_undecodable_identifier_with_unable_to_process(services, worklist):
    results = list(handle_find(_Event(_Unreadable()), services))
    assert _statuses(results) == [0xC000]
    assert results[0][1] is None


def test_handler_stops_with_cancel_when_the_machine_cancels(services, worklist):
    results = list(handle_find(_Event(_query(AccessionNumber=""), cancel_after=1), services))
    assert _statuses(results) == [PENDING, CANCEL], "one match sent, then the cancel status and nothing more"
    assert results[-1][1] is None
