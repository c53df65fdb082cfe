"""C-STORE of real vendor ultrasound files over loopback, with pynetdicom and dcmtk as the modality."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from sqlalchemy import select

from service.models import Instance
from tests.dicomutil import VENDOR_FILES, dataset_bytes, restamp, send, sha256, storescu_cmd, vendor_path


def _row(services, uid: str) -> Instance:
    with services.session_factory() as s:
        return s.scalars(select(Instance).where(Instance.sop_instance_uid == uid)).one()


@pytest.mark.parametrize("key", sorted(VENDOR_FILES))
def test_pynetdicom_store_keeps_the_dataset_byte_exact_and_indexes_it(key, dicom_server, services, tmp_path):
    src = restamp(vendor_path(key), tmp_path / "in" / f"{key}.dcm", AccessionNumber="ACC123", PatientID="PID-1")
    assert send(dicom_server.port, [src]) == [0x0000]

    sent = dcmread(src, stop_before_pixels=True)
    row = _row(services, str(sent.SOPInstanceUID))
    stored = services.store.path(row.storage_key)
    # The stored file is the received dataset, untouched, behind a valid file meta header.
    assert sha256(dataset_bytes(stored)) == sha256(dataset_bytes(src)) == row.sha256
    meta = dcmread(stored, stop_before_pixels=True).file_meta
    assert meta.MediaStorageSOPInstanceUID == sent.SOPInstanceUID
    assert meta.MediaStorageSOPClassUID == sent.SOPClassUID
    assert meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID == row.transfer_syntax_uid
    # Index fields match the object.
    assert row.sop_class_uid == sent.SOPClassUID
    assert row.study_instance_uid == sent.StudyInstanceUID
    assert row.series_instance_uid == sent.SeriesInstanceUID
    assert row.accession_number == "ACC123" and row.patient_id == "PID-1"
    assert row.patient_name == (str(sent.PatientName) or None)
    assert row.modality == sent.get("Modality")
    assert row.rows == sent.Rows and row.columns == sent.Columns
    assert row.number_of_frames == int(sent.get("NumberOfFrames", 1))
    assert row.photometric_interpretation == sent.PhotometricInterpretation
    assert row.is_image is True
    assert row.calling_ae_title == "TESTSCU" and row.peer_address.startswith("127.0.0.1:")
    assert row.size_bytes == stored.stat().st_size
    assert row.received_at is not None


def test_storescu_sends_every_vendor_file_and_all_are_indexed(dicom_server, services, tmp_path, dcmtk):
    files = [restamp(vendor_path(k), tmp_path / "in" / f"{k}.dcm") for k in sorted(VENDOR_FILES)]
    for f in files:
        # One storescu run per file, proposing the file's own transfer syntax (as the machine holds it).
        proc = subprocess.run(
            storescu_cmd(dcmtk["storescu"], dicom_server.port, f),
            capture_output=True,
            text=True,
            timeout=60,
            env={"TCP_NODELAY": "1"},
        )
        assert proc.returncode == 0, proc.stderr
    for f in files:
        sent = dcmread(f, stop_before_pixels=True)
        row = _row(services, str(sent.SOPInstanceUID))
        assert sha256(dataset_bytes(services.store.path(row.storage_key))) == row.sha256
        assert row.calling_ae_title == "STORESCU"


def test_echoscu_succeeds_and_an_unknown_calling_ae_is_rejected(dicom_server, dcmtk):
    ok = subprocess.run(
        [dcmtk["echoscu"], "-aet", "ECHOSCU", "-aec", "USGI", "127.0.0.1", str(dicom_server.port)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run(
        [dcmtk["echoscu"], "-aet", "INTRUDER", "-aec", "USGI", "127.0.0.1", str(dicom_server.port)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode != 0
    assert "Calling AE Title Not Recognized" in bad.stderr

    # The same rejection seen by a pynetdicom peer: permanent, by the service user, reason 3 (PS3.8 9.3.4).
    ae = AE(ae_title="INTRUDER")
    ae.add_requested_context(Verification)
    rejected = []
    from pynetdicom import evt

    assoc = ae.associate(
        "127.0.0.1", dicom_server.port, ae_title="USGI", evt_handlers=[(evt.EVT_REJECTED, lambda e: rejected.append(e))]
    )
    assert assoc.is_rejected
    rsp = assoc.acceptor.primitive
    assert (rsp.result, rsp.result_source, rsp.diagnostic) == (0x01, 0x01, 0x03)


def test_registered_peer_may_associate_without_being_in_the_environment(dicom_server, services):
    from service.peers import add_peer

    ae = AE(ae_title="NEWPROBE")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", dicom_server.port, ae_title="USGI")
    assert assoc.is_rejected
    add_peer(services, "NEWPROBE", None, None)
    dicom_server.ae._allow_list._at = 0  # the registry is re-read every few seconds; don't wait in a test
    assoc = ae.associate("127.0.0.1", dicom_server.port, ae_title="USGI")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


def test_private_sop_class_is_accepted_and_stored_as_non_image(dicom_server, services, tmp_path, client, auth):
    # A vendor's private storage SOP class (GE's private 3D/raw data class root) is never refused.
    private_class = "1.2.840.113619.4.27"
    src = restamp(vendor_path("ge_rgb"), tmp_path / "priv.dcm", SOPClassUID=private_class)
    ds = dcmread(src)
    ds.file_meta.MediaStorageSOPClassUID = private_class
    ds.save_as(src, enforce_file_format=True)
    assert send(dicom_server.port, [src]) == [0x0000]
    row = _row(services, str(ds.SOPInstanceUID))
    assert row.sop_class_uid == private_class and row.is_image is False
    listed = client.get(f"/api/images?study_instance_uid={ds.StudyInstanceUID}", headers=auth["auditor"]).json
    assert [i["sop_class_uid"] for i in listed["items"]] == [private_class]
    assert "preview" not in listed["items"][0]["links"]


def test_duplicates_identical_is_success_and_different_content_keeps_both(
    dicom_server, services, tmp_path, client, auth
):
    src = restamp(vendor_path("ge_jpeg2k"), tmp_path / "a.dcm")
    assert send(dicom_server.port, [src, src]) == [0x0000, 0x0000]
    ds = dcmread(src)
    uid = str(ds.SOPInstanceUID)
    with services.session_factory() as s:
        assert len(s.scalars(select(Instance).where(Instance.sop_instance_uid == uid)).all()) == 1

    ds.SeriesDescription = "re-sent with a change"
    changed = tmp_path / "b.dcm"
    ds.save_as(changed, enforce_file_format=True)
    assert send(dicom_server.port, [changed]) == [0x0000]
    with services.session_factory() as s:
        rows = s.scalars(select(Instance).where(Instance.sop_instance_uid == uid).order_by(Instance.id)).all()
    assert len(rows) == 2 and rows[0].sha256 != rows[1].sha256
    assert all(r.conflict for r in rows)
    assert all(services.store.exists(r.storage_key) for r in rows)

    body = client.get(f"/api/images/{uid}", headers=auth["clinician"]).json
    assert body["conflict"] is True and body["version"] == 2
    assert [v["sha256"] for v in body["versions"]] == [rows[0].sha256, rows[1].sha256]
    with client.get(f"/api/images/{uid}/dicom?version=1", headers=auth["clinician"]) as first:
        assert first.status_code == 200 and first.mimetype == "application/dicom"
        assert sha256(first.data[dataset_offset_of(first.data) :]) == rows[0].sha256
    conflicts = client.get("/api/images?conflict=true", headers=auth["auditor"]).json
    assert [i["sop_instance_uid"] for i in conflicts["items"]] == [uid]


def dataset_offset_of(data: bytes) -> int:
    from service.ingest import dataset_offset

    return dataset_offset(data[: 1 << 16])


def test_nothing_half_written_remains_in_the_store(dicom_server, services, tmp_path):
    files = [restamp(vendor_path("philips_palette"), tmp_path / f"{i}.dcm") for i in range(5)]
    assert send(dicom_server.port, files) == [0] * 5
    root = Path(services.store.root)
    stored = [p.relative_to(root) for p in root.rglob("*") if p.is_file()]
    assert len([p for p in stored if p.suffix == ".dcm" and p.parts[0] != "tmp"]) == 5
    assert [p for p in stored if p.parts[0] == "tmp"] == []


def test_max_associations_is_enforced_with_the_local_limit_reason(services, settings):
    from dataclasses import replace

    from service.dicom.server import DicomServer

    services.settings = replace(settings, dicom_max_associations=2)
    server = DicomServer(services)
    server.start()
    try:
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(Verification)
        first = [ae.associate("127.0.0.1", server.port, ae_title="USGI") for _ in range(2)]
        assert all(a.is_established for a in first)
        third = ae.associate("127.0.0.1", server.port, ae_title="USGI")
        assert third.is_rejected
        rsp = third.acceptor.primitive
        # Rejected transient, by the service provider (presentation), local limit exceeded (PS3.8 9.3.4).
        assert (rsp.result, rsp.result_source, rsp.diagnostic) == (0x02, 0x03, 0x02)
        for a in first:
            a.release()
        # release() returns when the A-RELEASE-RP arrives; the service's association threads end just after.
        deadline = time.monotonic() + 5
        while server.active_associations() and time.monotonic() < deadline:
            time.sleep(0.01)
        again = ae.associate("127.0.0.1", server.port, ae_title="USGI")
        assert again.is_established
        again.release()
    finally:
        server.stop(grace_seconds=2)


def test_a_missing_stored_file_is_a_json_404_not_a_crash(dicom_server, services, tmp_path, client, auth):
    src = restamp(vendor_path("ge_rgb"), tmp_path / "m.dcm")
    assert send(dicom_server.port, [src]) == [0]
    row = _row(services, str(dcmread(src).SOPInstanceUID))
    services.store.path(row.storage_key).unlink()
    for suffix in ("/dicom", "/preview.png"):
        r = client.get(f"/api/images/{row.sop_instance_uid}{suffix}", headers=auth["clinician"])
        assert r.status_code == 404 and "missing" in r.json["message"]
