"""MPPS (N-CREATE/N-SET) and Storage Commitment (N-ACTION -> N-EVENT-REPORT) with a pynetdicom modality.

Everything goes over loopback to the live `dicom_server`; the modality side is a real pynetdicom AE.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    ModalityPerformedProcedureStep,
    StorageCommitmentPushModel,
    StorageCommitmentPushModelInstance,
)
from sqlalchemy import select

from service.models import StorageCommitment
from service.peers import add_peer
from tests.dicomutil import restamp, send, vendor_path

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"


# --- helpers ---------------------------------------------------------------------------------------------------


def _wait_for(predicate: Callable[[], object], timeout: float) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(0.02)


def _store_images(port: int, tmp_path: Path, keys: tuple[str, ...] = ("ge_rgb", "philips_palette")) -> list:
    """C-STORE restamped vendor files; (SOP Class UID, SOP Instance UID) of each."""
    files = [restamp(vendor_path(k), tmp_path / "in" / f"{i}-{k}.dcm") for i, k in enumerate(keys)]
    assert send(port, files) == [0x0000] * len(files)
    out = []
    for f in files:
        ds = dcmread(f, stop_before_pixels=True)
        out.append((str(ds.SOPClassUID), str(ds.SOPInstanceUID)))
    return out


def _ref(sop_class: str, sop_instance: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    return item


def _action_info(transaction_uid: str | None, refs: list[tuple[str, str]]) -> Dataset:
    ds = Dataset()
    if transaction_uid is not None:
        ds.TransactionUID = transaction_uid
    ds.ReferencedSOPSequence = [_ref(c, i) for c, i in refs]
    return ds


class ReportCollector:
    """An EVT_N_EVENT_REPORT handler that keeps (event type, event information) of every report."""

    def __init__(self) -> None:
        self.reports: list[tuple[int | None, Dataset, str]] = []
        self.calling_aes: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, event: evt.Event) -> tuple[int, None]:
        info = event.event_information  # decoded here: the request is gone once the handler returns
        with self._lock:
            self.reports.append((event.event_type, info, str(event.request.AffectedSOPInstanceUID)))
            self.calling_aes.append(event.assoc.requestor.ae_title)
        return 0x0000, None  # pynetdicom's N-EVENT-REPORT handler contract: (status, event reply or None)

    def handlers(self) -> list:
        return [(evt.EVT_N_EVENT_REPORT, self)]


def _commitment_ae() -> AE:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(StorageCommitmentPushModel)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    return ae


def _commitment_row(services, transaction_uid: str) -> StorageCommitment | None:
    with services.session_factory() as s:
        return s.scalars(select(StorageCommitment).where(StorageCommitment.transaction_uid == transaction_uid)).first()


def _pairs(seq) -> list[tuple[str, str]]:
    return [(str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID)) for i in seq]


def _request_commitment_and_wait(port: int, transaction_uid: str, refs: list[tuple[str, str]]):
    """N-ACTION on one association, kept open until the N-EVENT-REPORT comes back on it (up to 5 s)."""
    collector = ReportCollector()
    assoc = _commitment_ae().associate("127.0.0.1", port, ae_title="USGI", evt_handlers=collector.handlers())
    assert assoc.is_established
    try:
        status, reply = assoc.send_n_action(
            _action_info(transaction_uid, refs), 1, StorageCommitmentPushModel, StorageCommitmentPushModelInstance
        )
        _wait_for(lambda: collector.reports, 5.0)
        still_open = assoc.is_established
    finally:
        assoc.release()
    assert still_open
    return status, reply, collector.reports


# --- 1. Storage Commitment on the same association -------------------------------------------------------------


def test_storage_commitment_reports_committed_and_failed_on_the_same_association(dicom_server, services, tmp_path):
    stored = _store_images(dicom_server.port, tmp_path)
    never_stored = (US_IMAGE, generate_uid())
    wrong_class = (SECONDARY_CAPTURE, stored[0][1])  # stored, but as another SOP class
    txn = generate_uid()

    status, reply, reports = _request_commitment_and_wait(
        dicom_server.port, txn, [stored[0], never_stored, stored[1], wrong_class]
    )

    assert status.Status == 0x0000
    assert not reply, "Storage Commitment N-ACTION has no action reply"
    assert len(reports) == 1, "exactly one N-EVENT-REPORT on the association"
    event_type, info, instance_uid = reports[0]
    assert event_type == 2, "some failed -> event type 2"
    assert instance_uid == StorageCommitmentPushModelInstance
    assert info.TransactionUID == txn
    assert _pairs(info.ReferencedSOPSequence) == stored
    failed = {
        (str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID)): i.FailureReason for i in info.FailedSOPSequence
    }
    assert failed == {never_stored: 0x0112, wrong_class: 0x0119}
    assert len(info.FailedSOPSequence) == 2

    row = _wait_for(lambda: (r := _commitment_row(services, txn)) and r.status == "reported" and r, 2.0)
    assert row, f"commitment row not reported: {_commitment_row(services, txn)}"
    assert row.calling_ae_title == "TESTSCU"
    assert row.attempts == 1 and row.reported_at is not None and row.last_error is None
    assert [(r["sop_instance_uid"], r["committed"], r["reason"]) for r in row.result] == [
        (stored[0][1], True, None),
        (never_stored[1], False, 0x0112),
        (stored[1][1], True, None),
        (wrong_class[1], False, 0x0119),
    ]


def test_storage_commitment_all_committed_is_event_type_1_without_failed_sequence(dicom_server, services, tmp_path):
    stored = _store_images(dicom_server.port, tmp_path)
    txn = generate_uid()

    status, _, reports = _request_commitment_and_wait(dicom_server.port, txn, stored)

    assert status.Status == 0x0000
    assert len(reports) == 1
    event_type, info, _ = reports[0]
    assert event_type == 1
    assert info.TransactionUID == txn
    assert _pairs(info.ReferencedSOPSequence) == stored
    assert "FailedSOPSequence" not in info
    row = _wait_for(lambda: (r := _commitment_row(services, txn)) and r.status == "reported" and r, 2.0)
    assert row and all(r["committed"] for r in row.result)


# --- 2. Storage Commitment after the modality released the association ----------------------------------------


def test_storage_commitment_is_reported_on_a_new_association_after_release(dicom_server, services, tmp_path):
    stored = _store_images(dicom_server.port, tmp_path)
    collector = ReportCollector()
    # The modality's own listener: it accepts the service as the Storage Commitment SCP (role selection).
    listener = AE(ae_title="TESTSCU")
    listener.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
    listener.acse_timeout = listener.dimse_timeout = listener.network_timeout = 10
    server = listener.start_server(("127.0.0.1", 0), block=False, evt_handlers=collector.handlers())
    try:
        add_peer(services, "TESTSCU", "127.0.0.1", server.server_address[1])
        missing = (US_IMAGE, generate_uid())
        txn = generate_uid()

        assoc = _commitment_ae().associate("127.0.0.1", dicom_server.port, ae_title="USGI")
        assert assoc.is_established
        status, _ = assoc.send_n_action(
            _action_info(txn, [*stored, missing]), 1, StorageCommitmentPushModel, StorageCommitmentPushModelInstance
        )
        assoc.release()  # right after the N-ACTION response, as many machines do
        assert status.Status == 0x0000

        assert _wait_for(lambda: collector.reports, 10.0), "no N-EVENT-REPORT on a new association"
        event_type, info, instance_uid = collector.reports[0]
        assert event_type == 2
        assert instance_uid == StorageCommitmentPushModelInstance
        assert info.TransactionUID == txn
        assert _pairs(info.ReferencedSOPSequence) == stored
        assert [(_pairs([i])[0], i.FailureReason) for i in info.FailedSOPSequence] == [(missing, 0x0112)]

        row = _wait_for(lambda: (r := _commitment_row(services, txn)) and r.status == "reported" and r, 5.0)
        assert row, f"commitment row not reported: {_commitment_row(services, txn)}"
        assert row.reported_at is not None and row.last_error is None
        assert row.attempts == 1, "delivered on the first new association"
        assert len(collector.reports) == 1
        assert collector.calling_aes == ["USGI"], "the service called the modality back"
    finally:
        server.shutdown()


def test_storage_commitment_rejects_missing_transaction_uid_and_unknown_action_type(dicom_server, services, tmp_path):
    stored = _store_images(dicom_server.port, tmp_path, ("ge_rgb",))
    collector = ReportCollector()
    assoc = _commitment_ae().associate(
        "127.0.0.1", dicom_server.port, ae_title="USGI", evt_handlers=collector.handlers()
    )
    assert assoc.is_established
    try:
        no_txn, _ = assoc.send_n_action(
            _action_info(None, stored), 1, StorageCommitmentPushModel, StorageCommitmentPushModelInstance
        )
        bad_type, _ = assoc.send_n_action(
            _action_info(generate_uid(), stored), 7, StorageCommitmentPushModel, StorageCommitmentPushModelInstance
        )
        time.sleep(0.5)  # longer than the reporter's delay: a refused request must not be reported
    finally:
        assoc.release()
    assert no_txn.Status == 0x0120
    assert bad_type.Status == 0x0123
    assert collector.reports == []
    with services.session_factory() as s:
        assert s.scalars(select(StorageCommitment)).all() == []


# --- 3. Modality Performed Procedure Step ----------------------------------------------------------------------


def _mpps_assoc(port: int):
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(ModalityPerformedProcedureStep)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", port, ae_title="USGI")
    assert assoc.is_established
    return assoc


def _in_progress(study_uid: str, accession: str = "ACC-MPPS-1", status: str = "IN PROGRESS") -> Dataset:
    ds = Dataset()
    ds.PatientID = "PID-MPPS"
    ds.PatientName = "Doe^Jane"
    sched = Dataset()
    sched.StudyInstanceUID = study_uid
    sched.AccessionNumber = accession
    sched.RequestedProcedureID = "RP1"
    sched.ScheduledProcedureStepID = "SPS1"
    ds.ScheduledStepAttributesSequence = [sched]
    ds.PerformedProcedureStepID = "PPS-0001"
    ds.PerformedStationAETitle = "US_ROOM_3"
    ds.PerformedProcedureStepStartDate = "20240506"
    ds.PerformedProcedureStepStartTime = "103000"
    ds.PerformedProcedureStepEndDate = None
    ds.PerformedProcedureStepEndTime = None
    ds.PerformedProcedureStepStatus = status
    ds.Modality = "US"
    ds.PerformedSeriesSequence = []
    return ds


def _completed(series_uid: str, images: list[tuple[str, str]], status: str = "COMPLETED") -> Dataset:
    ds = Dataset()
    ds.PerformedProcedureStepStatus = status
    ds.PerformedProcedureStepEndDate = "20240506"
    ds.PerformedProcedureStepEndTime = "104512"
    series = Dataset()
    series.SeriesInstanceUID = series_uid
    series.PerformingPhysicianName = ""
    series.ProtocolName = "Abdomen"
    series.OperatorsName = ""
    series.ReferencedImageSequence = [_ref(c, i) for c, i in images]
    series.ReferencedNonImageCompositeSOPInstanceSequence = []
    ds.PerformedSeriesSequence = [series]
    return ds


def _steps(client, auth, **query) -> list[dict]:
    rsp = client.get("/api/performed-procedure-steps", query_string=query, headers=auth["auditor"])
    assert rsp.status_code == 200, rsp.data
    return rsp.json


def test_mpps_in_progress_then_completed_is_visible_in_the_api(dicom_server, services, client, auth):
    study_uid, pps_uid, series_uid = generate_uid(), generate_uid(), generate_uid()
    images = [(US_IMAGE, generate_uid()), (US_IMAGE, generate_uid())]

    assoc = _mpps_assoc(dicom_server.port)
    try:
        created, attrs = assoc.send_n_create(_in_progress(study_uid), ModalityPerformedProcedureStep, pps_uid)
        assert created.Status == 0x0000
        assert attrs is not None and attrs.PerformedProcedureStepStatus == "IN PROGRESS"

        [step] = _steps(client, auth)
        assert step["sop_instance_uid"] == pps_uid
        assert step["status"] == "IN PROGRESS" and step["acquisition_ended"] is False
        assert step["study_instance_uid"] == study_uid
        assert step["accession_number"] == "ACC-MPPS-1"
        assert step["performed_station_ae_title"] == "US_ROOM_3"
        assert step["started_at"] == "2024-05-06T10:30:00"
        assert step["ended_at"] is None and step["instances"] == []

        updated, _ = assoc.send_n_set(_completed(series_uid, images), ModalityPerformedProcedureStep, pps_uid)
        assert updated.Status == 0x0000
    finally:
        assoc.release()

    [step] = _steps(client, auth)
    assert step["status"] == "COMPLETED" and step["acquisition_ended"] is True
    assert step["ended_at"] == "2024-05-06T10:45:12"
    assert step["started_at"] == "2024-05-06T10:30:00", "N-SET without a start keeps the start"
    assert step["study_instance_uid"] == study_uid and step["accession_number"] == "ACC-MPPS-1"
    assert [(i["sop_class_uid"], i["sop_instance_uid"], i["series_instance_uid"]) for i in step["instances"]] == [
        (c, i, series_uid) for c, i in images
    ]

    # Filtering by study: this step for its study, nothing for another.
    assert [s["sop_instance_uid"] for s in _steps(client, auth, study_instance_uid=study_uid)] == [pps_uid]
    assert _steps(client, auth, study_instance_uid=generate_uid()) == []


def test_mpps_refuses_invalid_requests(dicom_server, services, client, auth):
    study_uid, pps_uid = generate_uid(), generate_uid()
    assoc = _mpps_assoc(dicom_server.port)
    try:
        # A new step must be IN PROGRESS.
        bad_create, _ = assoc.send_n_create(
            _in_progress(study_uid, status="COMPLETED"), ModalityPerformedProcedureStep, generate_uid()
        )
        assert bad_create.Status == 0x0106

        ok, _ = assoc.send_n_create(_in_progress(study_uid), ModalityPerformedProcedureStep, pps_uid)
        assert ok.Status == 0x0000
        duplicate, _ = assoc.send_n_create(_in_progress(study_uid), ModalityPerformedProcedureStep, pps_uid)
        assert duplicate.Status == 0x0111

        unknown, _ = assoc.send_n_set(_completed(generate_uid(), []), ModalityPerformedProcedureStep, generate_uid())
        assert unknown.Status == 0x0112

        done, _ = assoc.send_n_set(
            _completed(generate_uid(), [(US_IMAGE, generate_uid())]), ModalityPerformedProcedureStep, pps_uid
        )
        assert done.Status == 0x0000
        late = Dataset()
        late.PerformedProcedureStepStatus = "DISCONTINUED"
        after_completed, _ = assoc.send_n_set(late, ModalityPerformedProcedureStep, pps_uid)
        assert after_completed.Status == 0x0110
    finally:
        assoc.release()

    # Only the valid step exists, still COMPLETED with what it had when completed.
    [step] = _steps(client, auth)
    assert step["sop_instance_uid"] == pps_uid
    assert step["status"] == "COMPLETED" and len(step["instances"]) == 1


def test_mpps_discontinued_records_the_reason(dicom_server, services, client, auth):
    study_uid, pps_uid = generate_uid(), generate_uid()
    assoc = _mpps_assoc(dicom_server.port)
    try:
        created, _ = assoc.send_n_create(_in_progress(study_uid), ModalityPerformedProcedureStep, pps_uid)
        assert created.Status == 0x0000
        mods = _completed(generate_uid(), [], status="DISCONTINUED")
        reason = Dataset()
        reason.CodeValue = "110514"
        reason.CodingSchemeDesignator = "DCM"
        reason.CodeMeaning = "Incorrect worklist entry selected"
        mods.PerformedProcedureStepDiscontinuationReasonCodeSequence = [reason]
        updated, _ = assoc.send_n_set(mods, ModalityPerformedProcedureStep, pps_uid)
        assert updated.Status == 0x0000
    finally:
        assoc.release()

    [step] = _steps(client, auth, study_instance_uid=study_uid)
    assert step["status"] == "DISCONTINUED"
    assert step["acquisition_ended"] is False
    assert step["discontinuation_reason"] == "Incorrect worklist entry selected"
    assert step["ended_at"] == "2024-05-06T10:45:12"


def test_a_report_left_undelivered_by_a_stopped_process_is_delivered_at_the_next_start(services, tmp_path):
    from service import modality
    from service.dicom.server import DicomServer

    # What an earlier process recorded and could not deliver before it stopped.
    txn = generate_uid()
    items = [modality.CommitItem(US_IMAGE, generate_uid(), False, 0x0112)]
    commitment_id = modality.record_commitment(services, txn, "TESTSCU", items)

    collector = ReportCollector()
    listener = AE(ae_title="TESTSCU")
    listener.add_supported_context(StorageCommitmentPushModel, scu_role=True, scp_role=True)
    listener.acse_timeout = listener.dimse_timeout = listener.network_timeout = 10
    server = listener.start_server(("127.0.0.1", 0), block=False, evt_handlers=collector.handlers())
    receiver = None
    try:
        add_peer(services, "TESTSCU", "127.0.0.1", server.server_address[1])
        receiver = DicomServer(services)
        receiver.start()
        assert _wait_for(lambda: collector.reports, 10.0), "the pending report was not resent at start"
        event_type, info, _ = collector.reports[0]
        assert event_type == 2 and info.TransactionUID == txn
        row = _wait_for(lambda: (r := _commitment_row(services, txn)) and r.status == "reported" and r, 5.0)
        assert row and row.id == commitment_id
    finally:
        if receiver is not None:
            receiver.stop(grace_seconds=1)
        server.shutdown()
