"""The C-STORE fast lane (service/dicom/storelane.py) over real associations, with PDUs laid out as peers may.

pynetdicom and dcmtk put the command and the data set in separate PDUs; the standard lets a peer pack them
together, split the data set in fragments of any size, split the command too, or use a tiny maximum PDU.
Each layout must end with the same stored, indexed, byte-exact object; a fragment that breaks the
protocol aborts the association and leaves nothing behind; what the lane does not take, pynetdicom does.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, UltrasoundImageStorage, generate_uid
from pynetdicom import AE
from sqlalchemy import select

from service.models import Instance
from tests.dicomutil import c_store_rq, dataset_bytes, exchange, p_data_tf, restamp, sha256, storescu_cmd, vendor_path
from tests.integration.test_dicom_bad_input import (
    _context_id,
    _echo_on_new_association,
    _store_files,
    _wait_until,
)

CONTEXTS = [(UltrasoundImageStorage, ExplicitVRLittleEndian), (SecondaryCaptureImageStorage, ExplicitVRLittleEndian)]


def _associate(port: int, max_pdu: int = 16382):  # type: ignore[no-untyped-def]
    ae = AE(ae_title="TESTSCU")
    ae.maximum_pdu_size = max_pdu
    for abstract, ts in CONTEXTS:
        ae.add_requested_context(abstract, ts)
    assoc = ae.associate("127.0.0.1", port, ae_title="USGI")
    assert assoc.is_established
    return assoc


def _cx(assoc, abstract: str) -> int:  # type: ignore[no-untyped-def]
    return _context_id(assoc, abstract, ExplicitVRLittleEndian)


def _command(sop_class: str, sop_instance: str) -> bytes:
    return c_store_rq(sop_class, sop_instance, message_id=11, priority=0)


def _exchange(assoc, *pdus: bytes) -> int | None:  # type: ignore[no-untyped-def]
    """Send hand-made PDUs on the association and wait for the C-STORE response's status (None: none came)."""
    rsp = exchange(assoc, lambda: [assoc.dul.socket.send(pdu) for pdu in pdus])
    return None if rsp is None else int(rsp.Status)


def _image(tmp_path: Path) -> tuple[Path, str, bytes]:
    path = restamp(vendor_path("ge_rgb"), tmp_path / f"{generate_uid()}.dcm")
    return path, str(dcmread(path, stop_before_pixels=True).SOPInstanceUID), dataset_bytes(path)


def _assert_stored(services, uid: str, data: bytes) -> None:  # type: ignore[no-untyped-def]
    with services.session_factory() as s:
        row = s.scalars(select(Instance).where(Instance.sop_instance_uid == uid)).one()
    assert row.sha256 == sha256(data)
    with services.store.open(row.storage_key) as f:
        stored = f.read()
    assert stored.endswith(data), "the stored object is not the received data set"
    assert _store_files(services)[1] == [], "a temp file was left behind"


def test_command_and_whole_data_set_in_onep_data_tf(dicom_server, services, tmp_path):
    _, uid, data = _image(tmp_path)
    assoc = _associate(dicom_server.port)
    try:
        cx = _cx(assoc, UltrasoundImageStorage)
        status = _exchange(assoc, p_data_tf((cx, 0x03, _command(UltrasoundImageStorage, uid)), (cx, 0x02, data)))
        assert status == 0x0000
        _assert_stored(services, uid, data)
    finally:
        assoc.release()


@pytest.mark.parametrize("fragment", [1, 999, 4096])
def test_data_set_in_many_fragments_and_pdus(fragment, dicom_server, services, tmp_path):
    _, uid, data = _image(tmp_path)
    assoc = _associate(dicom_server.port)
    try:
        cx = _cx(assoc, UltrasoundImageStorage)
        pieces = (
            [data[i : i + fragment] for i in range(0, len(data), fragment)] if fragment > 1 else [data[:1], data[1:]]
        )
        pdvs = [(cx, 0x02 if i == len(pieces) - 1 else 0x00, p) for i, p in enumerate(pieces)]
        # Three fragments to a PDU, the command alone in the first.
        pdus = [p_data_tf((cx, 0x03, _command(UltrasoundImageStorage, uid)))]
        pdus += [p_data_tf(*pdvs[i : i + 3]) for i in range(0, len(pdvs), 3)]
        assert _exchange(assoc, *pdus) == 0x0000
        _assert_stored(services, uid, data)
    finally:
        assoc.release()


def test_command_in_two_fragments_is_stored_by_pynetdicom(dicom_server, services, tmp_path):
    _, uid, data = _image(tmp_path)
    command = _command(UltrasoundImageStorage, uid)
    assoc = _associate(dicom_server.port)
    try:
        cx = _cx(assoc, UltrasoundImageStorage)
        pdus = [p_data_tf((cx, 0x01, command[:20])), p_data_tf((cx, 0x03, command[20:])), p_data_tf((cx, 0x02, data))]
        assert _exchange(assoc, *pdus) == 0x0000
        _assert_stored(services, uid, data)
    finally:
        assoc.release()


def test_request_on_a_context_of_another_sop_class_is_answered_by_pynetdicom(dicom_server, services, tmp_path):
    # The object is an ultrasound image and says so; the request names Secondary Capture and travels on
    # the Secondary Capture context: not the lane's case, and the request does not match the data set.
    _, uid, data = _image(tmp_path)
    assoc = _associate(dicom_server.port)
    try:
        cx = _cx(assoc, SecondaryCaptureImageStorage)
        status = _exchange(assoc, p_data_tf((cx, 0x03, _command(SecondaryCaptureImageStorage, uid)), (cx, 0x02, data)))
        assert status == 0xA900
        assert _store_files(services) == ([], [])
    finally:
        assoc.release()


def test_a_fragment_of_another_context_inside_a_data_set_aborts_and_leaves_nothing(dicom_server, services, tmp_path):
    _, uid, data = _image(tmp_path)
    assoc = _associate(dicom_server.port)
    try:
        us, sc = _cx(assoc, UltrasoundImageStorage), _cx(assoc, SecondaryCaptureImageStorage)
        pdus = [
            p_data_tf((us, 0x03, _command(UltrasoundImageStorage, uid)), (us, 0x00, data[:5000])),
            p_data_tf((sc, 0x02, data[5000:])),
        ]
        assert _exchange(assoc, *pdus) is None
        assert _wait_until(lambda: assoc.is_aborted, 5), "the service did not abort the association"
    finally:
        if assoc.is_established:
            assoc.release()
    assert _wait_until(lambda: _store_files(services) == ([], []), 5), "the partial data set was left behind"
    _echo_on_new_association(dicom_server.port)


def test_a_peer_whose_maximum_pdu_cannot_hold_the_response_gets_it_in_fragments(dicom_server, services, tmp_path):
    path, uid, data = _image(tmp_path)
    assoc = _associate(dicom_server.port, max_pdu=64)  # the response is about 170 bytes
    try:
        assert int(assoc.send_c_store(path).Status) == 0x0000
        _assert_stored(services, uid, data)
    finally:
        assoc.release()


@pytest.fixture
def server_without_lane(services):  # type: ignore[no-untyped-def]
    from dataclasses import replace

    from service.dicom.server import DicomServer

    services.settings = replace(services.settings)
    server = DicomServer(services)
    server.start()
    yield server
    server.stop(grace_seconds=2)


def test_with_the_lane_switched_off_pynetdicom_stores_the_same(server_without_lane, services, tmp_path, dcmtk):
    path, uid, data = _image(tmp_path)
    assoc = _associate(server_without_lane.port)
    try:
        assert int(assoc.send_c_store(path).Status) == 0x0000
    finally:
        assoc.release()
    _assert_stored(services, uid, data)
    other, other_uid, _ = _image(tmp_path)
    cmd = storescu_cmd(dcmtk["storescu"], server_without_lane.port, other)
    subprocess.run(cmd, check=True, capture_output=True, timeout=60, env={"TCP_NODELAY": "1"})
    # storescu may re-encode what it sends: the stored object must be what arrived, as indexed.
    with services.session_factory() as s:
        row = s.scalars(select(Instance).where(Instance.sop_instance_uid == other_uid)).one()
    assert sha256(dataset_bytes(services.store.path(row.storage_key))) == row.sha256
    assert row.calling_ae_title == "STORESCU"


def test_a_pdu_announced_far_longer_than_it_is_ends_only_its_association(dicom_server, services, tmp_path):
    import socket

    _, uid, data = _image(tmp_path)
    assoc = _associate(dicom_server.port)
    cx = _cx(assoc, UltrasoundImageStorage)
    # A transfer in flight, then a PDU that announces 64 MiB and sends a few bytes before the peer goes away.
    assoc.dul.socket.send(p_data_tf((cx, 0x03, _command(UltrasoundImageStorage, uid)), (cx, 0x00, data[:5000])))
    assoc.dul.socket.send(b"\x04\x00" + (64 << 20).to_bytes(4, "big") + b"\x00" * 1000)
    raw = assoc.dul.socket.socket
    raw.shutdown(socket.SHUT_WR)
    assert _wait_until(lambda: dicom_server.active_associations() == 0, 5), "the association was not ended"
    assoc.abort()
    raw.close()
    assert _store_files(services) == ([], []), "the partial data set was left behind"
    _echo_on_new_association(dicom_server.port)


@pytest.fixture
def full_disk(tmp_path):  # type: ignore[no-untyped-def]
    """An image store on a 1 MiB tmpfs (a real full disk; mounting needs root, as in CI)."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_full_disk_is_answered_out_of_resources_and_the_association_goes_on(full_disk, tmp_path):
    from service.bootstrap import build_services
    from service.config import Settings
    from service.dicom.server import DicomServer
    from service.migrate import upgrade

    settings = Settings.for_tests(tmp_path, image_store=f"file://{full_disk / 'images'}")
    services = build_services(settings)
    upgrade(services.engine)
    server = DicomServer(services)
    server.start()
    try:
        path, uid, data = _image(tmp_path)
        filler = full_disk / "filler"
        free = os.statvfs(full_disk).f_bavail * os.statvfs(full_disk).f_frsize
        filler.write_bytes(b"\0" * (free - 4096))  # room for the file meta, not for the data set
        assoc = _associate(server.port)
        try:
            assert int(assoc.send_c_store(path).Status) == 0xA700
            assert _store_files(services) == ([], []), "a partial object was left on the full disk"
            filler.unlink()
            assert int(assoc.send_c_store(path).Status) == 0x0000, "the same association cannot store again"
        finally:
            assoc.release()
        _assert_stored(services, uid, data)
    finally:
        server.stop(grace_seconds=2)
        services.close()
