"""Bad input over real associations never takes the service down (README "Acknowledgement").

Every case checks the DIMSE status the service answers, that nothing is indexed or left in the image
store, that the same association still stores a good vendor file (where the association survives) and
that a new association still gets a C-ECHO answered.
"""

from __future__ import annotations

import gc
import logging
import os
import random
import socket
import struct
import subprocess
import time
import warnings
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    SecondaryCaptureImageStorage,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
    generate_uid,
)
from pynetdicom import AE
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import Verification
from sqlalchemy import func, select

from service.models import Instance
from tests.dicomutil import (
    c_store_rq,
    dataset_bytes,
    exchange,
    p_data_tf,
    restamp,
    sha256,
    storescu_cmd,
    vendor_path,
)

# The SCP runs in this process, so pytest's filterwarnings=error would turn pydicom's UserWarnings about odd
# data ("Expected explicit VR, but found implicit VR"...) into exceptions inside the C-STORE handler, which
# production never does. Let the service see foreign bytes exactly as it does in production.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydicom.*")

CANNOT_UNDERSTAND = 0xC000
DOES_NOT_MATCH = 0xA900
WARNING_DOES_NOT_MATCH = 0xB007

# One presentation context per (abstract syntax, transfer syntax) the cases below use.
CONTEXTS = [
    (UltrasoundImageStorage, ExplicitVRLittleEndian),
    (UltrasoundImageStorage, ImplicitVRLittleEndian),
    (UltrasoundMultiFrameImageStorage, JPEGBaseline8Bit),
    (UltrasoundImageStorage, DeflatedExplicitVRLittleEndian),
]


# -- helpers -------------------------------------------------------------------------------------------


def _associate(port: int, contexts=CONTEXTS):  # type: ignore[no-untyped-def]
    ae = AE(ae_title="TESTSCU")
    for abstract, ts in contexts:
        ae.add_requested_context(abstract, ts)
    assoc = ae.associate("127.0.0.1", port, ae_title="USGI")
    assert assoc.is_established, "association was not accepted"
    return assoc


def _context_id(assoc, abstract: str, ts: str) -> int:  # type: ignore[no-untyped-def]
    for cx in assoc.accepted_contexts:
        if cx.abstract_syntax == abstract and cx.transfer_syntax[0] == ts:
            return int(cx.context_id)
    raise AssertionError(f"no accepted context for {abstract} / {ts}")


def send_raw(assoc, payload: bytes, sop_class: str, sop_instance: str, ts: str = ExplicitVRLittleEndian) -> int:  # type: ignore[no-untyped-def]
    """C-STORE ``payload`` as the data set, whatever it is, announcing ``sop_class``/``sop_instance``.

    The same steps as pynetdicom 3.0.4's ``Association.send_c_store`` minus the encoding of a Dataset:
    pause the reactor, send the C-STORE-RQ through DIMSE, wait for the C-STORE-RSP. Returns its status.
    """
    req = C_STORE()
    req.MessageID = 7
    req.Priority = 2
    req.AffectedSOPClassUID = sop_class
    req.AffectedSOPInstanceUID = sop_instance
    req.DataSet = BytesIO(payload)
    cx_id = _context_id(assoc, sop_class, ts)
    rsp = exchange(assoc, lambda: assoc.dimse.send_msg(req, cx_id))
    assert rsp is not None, "no C-STORE response (DIMSE timeout)"
    assert assoc.is_established, "the service dropped the association"
    return int(rsp.Status)


def _store_files(services) -> tuple[list[Path], list[Path]]:  # type: ignore[no-untyped-def]
    """(objects kept in the store, files in its temp folders)."""
    root = Path(services.store.root)
    files = [p.relative_to(root) for p in root.rglob("*") if p.is_file()]
    return [p for p in files if p.parts[0] != "tmp"], [p for p in files if p.parts[0] == "tmp"]


def _count(services, uid: str | None = None) -> int:  # type: ignore[no-untyped-def]
    q = select(func.count()).select_from(Instance)
    if uid is not None:
        q = q.where(Instance.sop_instance_uid == uid)
    with services.session_factory() as s:
        return int(s.scalar(q))


def _assert_nothing_kept(services, kept_before: list[Path], uid: str | None = None) -> None:  # type: ignore[no-untyped-def]
    kept, temp = _store_files(services)
    assert kept == kept_before, "a refused object left a file in the store"
    assert temp == [], "a refused object left a temp file"
    if uid is not None:
        assert _count(services, uid) == 0, "a refused object was indexed"


def _good_store_on(assoc, services, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A good restamped vendor file on the same association is stored and indexed."""
    good = restamp(vendor_path("ge_rgb"), tmp_path / "good" / f"{generate_uid()}.dcm")
    status = assoc.send_c_store(good)
    assert int(status.Status) == 0x0000
    uid = str(dcmread(good, stop_before_pixels=True).SOPInstanceUID)
    with services.session_factory() as s:
        row = s.scalars(select(Instance).where(Instance.sop_instance_uid == uid)).one()
    assert row.sha256 == sha256(dataset_bytes(good))


def _echo_on_new_association(port: int) -> None:
    ae = AE(ae_title="ECHOSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="USGI")
    assert assoc.is_established, "the service no longer accepts associations"
    try:
        assert int(assoc.send_c_echo().Status) == 0x0000
    finally:
        assoc.release()


def _is_failure(status: int) -> bool:
    """PS3.7 C: a failure, not success, warning (0x0001, 0xB000-0xBFFF) or pending (0xFF00/0xFF01)."""
    return status not in (0x0000, 0x0001, 0xFF00, 0xFF01) and not 0xB000 <= status <= 0xBFFF


def _open_files_under(directory: Path) -> list[str]:
    """Files under ``directory`` this process (the test and the in-process SCP) holds open."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(directory)):
            held.append(target)
    return held


def _wait_until(predicate, timeout: float = 2.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())


# -- not DICOM at all ----------------------------------------------------------------------------------

NOT_DICOM = {
    "text": b"this is not a DICOM data set, just some text\r\n" * 40,
    "random": random.Random(20240601).randbytes(8192),
    "png": b"\x89PNG\r\n\x1a\n" + random.Random(7).randbytes(4096),
}


@pytest.mark.parametrize("kind", sorted(NOT_DICOM))
def test_non_dicom_payload_is_cannot_understand_and_the_association_goes_on(kind, dicom_server, services, tmp_path):
    assoc = _associate(dicom_server.port)
    try:
        for ts in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            uid = generate_uid()
            kept = _store_files(services)[0]
            status = send_raw(assoc, NOT_DICOM[kind], UltrasoundImageStorage, uid, ts)
            assert status == CANNOT_UNDERSTAND, f"{kind} bytes on {ts.name}: status 0x{status:04X}"
            _assert_nothing_kept(services, kept, uid)
            _good_store_on(assoc, services, tmp_path)
    finally:
        assoc.release()
    _echo_on_new_association(dicom_server.port)
    assert _count(services) == 2


# -- truncated data sets -------------------------------------------------------------------------------


def _pixel_data_offset(data: bytes) -> int:
    """Offset of the top-level (7FE0,0010) tag in little endian dataset bytes (last occurrence)."""
    at = data.rfind(b"\xe0\x7f\x10\x00")
    assert at > 0
    return at


TRUNCATIONS = {
    # name: (vendor file, cut(dataset bytes) -> length kept)
    "native-half": ("ge_rgb", lambda d: len(d) // 2),
    "native-last-byte-missing": ("ge_rgb", lambda d: len(d) - 1),
    "native-inside-pixel-data-header": ("ge_rgb", lambda d: _pixel_data_offset(d) + 6),
    "native-just-before-pixel-data-ends-mid-element": ("ge_rgb", lambda d: _pixel_data_offset(d) - 1),
    "jpeg-cine-half": ("sonosite_cine", lambda d: len(d) // 2),
    "jpeg-cine-without-sequence-delimiter": ("sonosite_cine", lambda d: len(d) - 8),
    "deflated-half": ("ge_rgb+deflated", lambda d: len(d) // 2),
}


@pytest.mark.parametrize("case", list(TRUNCATIONS))
def test_truncated_dataset_is_refused_and_nothing_is_kept(case, dicom_server, services, tmp_path):
    key, cut = TRUNCATIONS[case]
    src = restamp(vendor_path(key.removesuffix("+deflated")), tmp_path / "src.dcm")
    if key.endswith("+deflated"):
        deflated = tmp_path / "deflated.dcm"
        subprocess.run(["dcmconv", "+td", str(src), str(deflated)], check=True, capture_output=True, timeout=60)
        src = deflated
    header = dcmread(src, stop_before_pixels=True)
    data = dataset_bytes(src)
    truncated = data[: cut(data)]
    assert 0 < len(truncated) < len(data)
    uid = str(header.SOPInstanceUID)

    assoc = _associate(dicom_server.port)
    try:
        status = send_raw(assoc, truncated, str(header.SOPClassUID), uid, str(header.file_meta.TransferSyntaxUID))
        assert _is_failure(status), f"a truncated data set ({case}) was answered 0x{status:04X}"
        _assert_nothing_kept(services, [], uid)
        _good_store_on(assoc, services, tmp_path)
    finally:
        assoc.release()
    _echo_on_new_association(dicom_server.port)
    assert _count(services, uid) == 0


def test_storescu_refuses_to_send_a_truncated_part10_file(dicom_server, services, tmp_path, dcmtk):
    # dcmtk parses the file before sending it and stops at the element that runs past the end of the
    # file: the truncated object never reaches the service (truncation over the wire is covered above).
    src = restamp(vendor_path("ge_rgb"), tmp_path / "full.dcm")
    half = tmp_path / "half.dcm"
    half.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    proc = subprocess.run(
        storescu_cmd(dcmtk["storescu"], dicom_server.port, half),
        capture_output=True,
        text=True,
        timeout=60,
        env={"TCP_NODELAY": "1"},
    )
    assert proc.returncode != 0
    assert "premature end of stream" in proc.stderr
    assert _count(services) == 0
    assert _store_files(services) == ([], [])
    _echo_on_new_association(dicom_server.port)
    # The service is still fine for the same tool with the complete file.
    ok = subprocess.run(
        storescu_cmd(dcmtk["storescu"], dicom_server.port, src),
        capture_output=True,
        text=True,
        timeout=60,
        env={"TCP_NODELAY": "1"},
    )
    assert ok.returncode == 0, ok.stderr
    assert _count(services) == 1


# -- data sets that do not match the request or the SOP class ------------------------------------------


@pytest.mark.parametrize("missing", ["SOPInstanceUID", "StudyInstanceUID"])
def test_dataset_without_a_required_uid_is_does_not_match(missing, dicom_server, services, tmp_path):
    src = restamp(vendor_path("ge_rgb"), tmp_path / "src.dcm")
    ds = dcmread(src)
    uid = str(ds.SOPInstanceUID)
    delattr(ds, missing)
    payload = encode(ds, False, True)
    assert payload is not None

    assoc = _associate(dicom_server.port)
    try:
        # The request still announces the SOP Instance UID (as a machine's C-STORE-RQ must).
        status = send_raw(assoc, payload, UltrasoundImageStorage, uid)
        assert status == DOES_NOT_MATCH
        _assert_nothing_kept(services, [], uid)
        _good_store_on(assoc, services, tmp_path)
    finally:
        assoc.release()
    _echo_on_new_association(dicom_server.port)


@pytest.mark.parametrize("differs", ["sop-class", "sop-instance"])
def test_dataset_uids_different_from_the_request_are_does_not_match(differs, dicom_server, services, tmp_path):
    if differs == "sop-class":
        src = restamp(vendor_path("ge_rgb"), tmp_path / "src.dcm", SOPClassUID=SecondaryCaptureImageStorage)
    else:
        src = restamp(vendor_path("ge_rgb"), tmp_path / "src.dcm")
    ds = dcmread(src, stop_before_pixels=True)
    announced = generate_uid() if differs == "sop-instance" else str(ds.SOPInstanceUID)

    assoc = _associate(dicom_server.port)
    try:
        # Announced as an Ultrasound Image with `announced` as its SOP Instance UID.
        status = send_raw(assoc, dataset_bytes(src), UltrasoundImageStorage, announced)
        assert status == DOES_NOT_MATCH
        _assert_nothing_kept(services, [], str(ds.SOPInstanceUID))
        assert _count(services, announced) == 0
        _good_store_on(assoc, services, tmp_path)
    finally:
        assoc.release()
    _echo_on_new_association(dicom_server.port)


def test_image_without_rows_and_columns_is_stored_with_warning_b007(dicom_server, services, tmp_path):
    src = restamp(vendor_path("ge_rgb"), tmp_path / "src.dcm")
    ds = dcmread(src)
    del ds.Rows
    del ds.Columns
    ds.save_as(src, enforce_file_format=True)

    assoc = _associate(dicom_server.port)
    try:
        status = assoc.send_c_store(src)
        assert int(status.Status) == WARNING_DOES_NOT_MATCH
        assert "Rows/Columns" in str(status.get("ErrorComment", ""))
        with services.session_factory() as s:
            row = s.scalars(select(Instance).where(Instance.sop_instance_uid == ds.SOPInstanceUID)).one()
        # A warning is an acknowledgement: the object is kept, byte-exact, and indexed.
        assert row.rows is None and row.columns is None and row.is_image is True
        assert row.warnings == "image object without Rows/Columns"
        assert services.store.exists(row.storage_key)
        assert sha256(dataset_bytes(services.store.path(row.storage_key))) == sha256(dataset_bytes(src))
        _good_store_on(assoc, services, tmp_path)
    finally:
        assoc.release()
    _echo_on_new_association(dicom_server.port)
    assert _count(services) == 2


# -- the SCU goes away in the middle of a large C-STORE ----------------------------------------------

_MAX_PDV_DATA = 16 * 1024 - 6  # fragments well under any max PDU (the service advertises 128 KiB)


def _big_cine_header(uid: str, frames: int) -> tuple[bytes, int]:
    """Dataset bytes of a native RGB US multi-frame object up to the Pixel Data value; and that value's length."""
    ds = dcmread(vendor_path("ge_rgb"), stop_before_pixels=True)
    ds.SOPClassUID = UltrasoundMultiFrameImageStorage
    ds.SOPInstanceUID = uid
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.NumberOfFrames = frames
    length = int(ds.Rows) * int(ds.Columns) * 3 * frames
    head = encode(ds, False, True)
    assert head is not None
    return head + b"\xe0\x7f\x10\x00OB\x00\x00" + struct.pack("<I", length), length


@pytest.mark.parametrize("how", ["a-abort", "socket-closed"])
def test_scu_gone_in_the_middle_of_a_large_store_leaves_only_a_sweepable_temp_file(
    how, dicom_server, services, tmp_path
):
    uid = generate_uid()
    head, pixel_length = _big_cine_header(uid, frames=400)  # a 92 MB cine, of which ~6 MB is sent
    assoc = _associate(dicom_server.port, [(UltrasoundMultiFrameImageStorage, ExplicitVRLittleEndian)])
    cx_id = _context_id(assoc, UltrasoundMultiFrameImageStorage, ExplicitVRLittleEndian)

    command = c_store_rq(UltrasoundMultiFrameImageStorage, uid, message_id=1)

    temp_dir = services.store.temp_dir()
    sock = assoc.dul.socket
    # Write the PDUs ourselves so the service has a partial data set when the association goes away.
    sent = 0
    sock.send(p_data_tf((cx_id, 0x03, command)))
    sock.send(p_data_tf((cx_id, 0x00, head)))
    sent += len(head)
    chunk = bytes(_MAX_PDV_DATA)
    while sent < 6_000_000:
        sock.send(p_data_tf((cx_id, 0x00, chunk)))
        sent += len(chunk)
    assert sent < len(head) + pixel_length

    # The data set is streamed into the store's temp folder as it arrives.
    def partial_files() -> list[Path]:
        return [p for p in temp_dir.iterdir() if p.is_file()]

    assert _wait_until(lambda: sum(p.stat().st_size for p in partial_files()) > 5_000_000)
    seen = set(partial_files())
    assert len(seen) == 1

    if how == "a-abort":
        assoc.abort()
    else:
        raw = sock.socket
        raw.shutdown(socket.SHUT_RDWR)
        assert _wait_until(lambda: not assoc.is_alive(), 2.0)
        raw.close()  # pynetdicom leaves a socket that failed under it open
    assert _wait_until(lambda: dicom_server.active_associations() == 0), "the service kept the association open"

    # Once the association is gone the service must not keep the partial file open: an unlinked but open
    # file keeps its disk space (a 200 MB cine) until the descriptor is closed.
    held_open = _open_files_under(temp_dir)

    # Nothing indexed, nothing in place; at most the partial file remains, until the sweeper removes it.
    assert _count(services, uid) == 0
    kept, temp = _store_files(services)
    assert kept == []
    leftover = set(partial_files())
    assert leftover <= seen, f"unexpected temp files: {leftover - seen}"
    assert services.store.sweep_temp() == len(leftover)
    assert _store_files(services) == ([], [])

    # The service is up: a new association stores and echoes.
    _echo_on_new_association(dicom_server.port)
    fresh = _associate(dicom_server.port)
    try:
        _good_store_on(fresh, services, tmp_path)
    finally:
        fresh.release()
        # A file object left open is only closed by the garbage collector, whose ResourceWarning would
        # then fail whichever later test it happens in: collect it here (the leak is asserted below).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            _wait_until(lambda: gc.collect() is not None and not _open_files_under(temp_dir), 2.0)
    assert held_open == [], f"the service still holds the aborted transfer's temp file open: {held_open}"


# -- logs ----------------------------------------------------------------------------------------------


def test_logs_never_contain_patient_data(dicom_server, services, tmp_path, caplog, dcmtk):
    # USGI_LOG_LEVEL=DEBUG also turns pynetdicom's DEBUG on (service/cli.py): check at DEBUG, a superset of INFO.
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="service")
    caplog.set_level(logging.DEBUG, logger="pynetdicom")  # last: the capture handler is left at DEBUG
    secrets = {"PatientName": "DOE^JANE", "PatientID": "PID-SECRET-1"}
    src = restamp(vendor_path("ge_rgb"), tmp_path / "secret.dcm", **secrets)

    # Sent by dcmtk (another process), so every pynetdicom record captured here is the service's own.
    proc = subprocess.run(
        storescu_cmd(dcmtk["storescu"], dicom_server.port, src),
        capture_output=True,
        text=True,
        timeout=60,
        env={"TCP_NODELAY": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    # A refused object carrying the same patient data (its SOP Instance UID differs from the request's).
    assoc = _associate(dicom_server.port)
    try:
        assert send_raw(assoc, dataset_bytes(src), UltrasoundImageStorage, generate_uid()) == DOES_NOT_MATCH
    finally:
        assoc.release()
    assert _wait_until(lambda: dicom_server.active_associations() == 0)

    assert _count(services) == 1
    messages = [r.getMessage() for r in caplog.records]
    assert any(r.name.startswith("service") and "stored" in r.getMessage() for r in caplog.records)
    for secret in ("DOE^JANE", "JANE", "PID-SECRET-1"):
        leaks = [m for m in messages if secret in m]
        assert leaks == [], f"patient data {secret!r} in the logs: {leaks[:3]}"
