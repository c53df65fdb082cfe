"""Every transfer syntax ultrasound machines send is accepted and stored exactly as received (README).

The variants are made from a real vendor file (GE, uncompressed RGB) with dcmtk's converters and, for
JPEG 2000, pydicom with the pylibjpeg-openjpeg encoder; each gets its own SOP Instance UID. They are
sent by dcmtk's storescu proposing the file's syntax, as a machine holding the object that way would.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import zlib
from pathlib import Path

import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
    UltrasoundImageStorage,
)
from pynetdicom import AE, _config
from sqlalchemy import select

from service.models import Instance
from tests.dicomutil import dataset_bytes, restamp, send, sha256, storescu_cmd, vendor_path

# name: (transfer syntax, how it is made from the restamped uncompressed RGB file)
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "implicit-vr-le": (ImplicitVRLittleEndian, ["dcmconv", "+ti"]),
    "explicit-vr-le": (ExplicitVRLittleEndian, ["dcmconv", "+te"]),
    "deflated": (DeflatedExplicitVRLittleEndian, ["dcmconv", "+td"]),
    "jpeg-baseline": (JPEGBaseline8Bit, ["dcmcjpeg", "+eb"]),
    "jpeg-extended": (JPEGExtended12Bit, ["dcmcjpeg", "+ee"]),  # process 2 (8-bit) of 1.2.840.10008.1.2.4.51
    "jpeg-lossless-sv1": (JPEGLosslessSV1, ["dcmcjpeg", "+e1"]),
    "jpeg-lossless-p14": (JPEGLossless, ["dcmcjpeg", "+el"]),
    "jpeg-ls-lossless": (JPEGLSLossless, ["dcmcjpls", "+el"]),
    "jpeg-ls-near-lossless": (JPEGLSNearLossless, ["dcmcjpls", "+en"]),
    "jpeg2000-lossless": (JPEG2000Lossless, []),
    "jpeg2000": (JPEG2000, []),
    "rle": (RLELossless, ["dcmcrle"]),
}

# storescu has no option proposing JPEG Lossless Process 14 (1.2.840.10008.1.2.4.57): its "-xl" proposes
# MPEG-4 AVC BD. A negotiation profile does it.
_P14_CONFIG = f"""\
[[TransferSyntaxes]]
[P14]
TransferSyntax1 = {JPEGLossless}
[[PresentationContexts]]
[P14Contexts]
PresentationContext1 = {UltrasoundImageStorage}\\P14
[[Profiles]]
[P14Profile]
PresentationContexts = P14Contexts
"""


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{' '.join(cmd)}: {proc.stderr}"


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each variant as a Part 10 file, written as dcmtk writes it (so storescu sends these exact bytes)."""
    tools = {cmd[0] for _ts, cmd in VARIANTS.values() if cmd} | {"dcmconv"}
    missing = sorted(t for t in tools if shutil.which(t) is None)
    if missing:
        pytest.fail(f"dcmtk is required for these tests ({', '.join(missing)} missing): apt-get install dcmtk")
    out = tmp_path_factory.mktemp("transfer-syntaxes")
    made: dict[str, Path] = {}
    for name, (ts, cmd) in VARIANTS.items():
        src = restamp(vendor_path("ge_rgb"), out / f"{name}.src.dcm")
        # The vendor file ends with Data Set Trailing Padding (FFFC,FFFC), which storescu does not send:
        # drop it so that the file's data set is byte for byte what goes over the wire.
        ds = dcmread(src)
        del ds[0xFFFCFFFC]
        ds.save_as(src, enforce_file_format=True)
        dest = out / f"{name}.dcm"
        if cmd:
            _run([*cmd, str(src), str(dest)])
        else:
            ds = dcmread(src)
            ds.compress(ts, **({"j2k_psnr": [45]} if ts == JPEG2000 else {}))
            encoded = out / f"{name}.pydicom.dcm"
            ds.save_as(encoded, enforce_file_format=True)
            _run(["dcmconv", str(encoded), str(dest)])  # same syntax, dcmtk's encoding of the data set
        assert dcmread(dest, stop_before_pixels=True).file_meta.TransferSyntaxUID == ts, name
        made[name] = dest
    uids = [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in made.values()]
    assert len(set(uids)) == len(uids)
    return made


def _send_with_storescu(storescu: str, port: int, path: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    ts = str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    if ts == JPEGLossless:
        cfg = tmp_path / "p14.cfg"
        cfg.write_text(_P14_CONFIG)
        cmd = [storescu, "-aet", "STORESCU", "-aec", "USGI", "-xf", str(cfg), "P14Profile"]
        cmd += ["127.0.0.1", str(port), str(path)]
    else:
        cmd = storescu_cmd(storescu, port, path)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env={"TCP_NODELAY": "1"})


def _row(services, uid: str) -> Instance:  # type: ignore[no-untyped-def]
    with services.session_factory() as s:
        return s.scalars(select(Instance).where(Instance.sop_instance_uid == uid)).one()


def _assert_preview(client, auth, uid: str, size: tuple[int, int]) -> None:  # type: ignore[no-untyped-def]
    with client.get(f"/api/images/{uid}/preview.png", headers=auth["clinician"]) as r:
        assert r.status_code == 200, r.get_data(as_text=True)
        assert r.mimetype == "image/png"
        data = r.get_data()
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        assert img.format == "PNG"
        assert img.size == size


@pytest.mark.parametrize("name", list(VARIANTS))
def test_storescu_transfer_syntax_is_accepted_and_stored_byte_exact(
    name, variants, dicom_server, services, client, auth, dcmtk, tmp_path
):
    path = variants[name]
    ts = VARIANTS[name][0]
    proc = _send_with_storescu(dcmtk["storescu"], dicom_server.port, path, tmp_path)
    assert proc.returncode == 0, proc.stderr

    sent = dcmread(path, stop_before_pixels=True)
    row = _row(services, str(sent.SOPInstanceUID))
    stored = services.store.path(row.storage_key)
    meta = dcmread(stored, stop_before_pixels=True).file_meta
    # Stored as received: no conversion, in the file meta and in the index.
    assert meta.TransferSyntaxUID == ts
    assert row.transfer_syntax_uid == ts
    assert sha256(dataset_bytes(stored)) == row.sha256
    if ts == DeflatedExplicitVRLittleEndian:
        # storescu deflates while sending and flushes its zlib stream as its buffers fill, so the stream on
        # the wire is not always the file's; what it carries is (the verbatim case is the test below).
        assert _inflate(dataset_bytes(stored)) == _inflate(dataset_bytes(path))
    else:
        assert sha256(dataset_bytes(stored)) == sha256(dataset_bytes(path))
    assert row.rows == sent.Rows and row.columns == sent.Columns
    _assert_preview(client, auth, str(sent.SOPInstanceUID), (int(sent.Columns), int(sent.Rows)))


def _inflate(data: bytes) -> bytes:
    return zlib.decompress(data, wbits=-zlib.MAX_WBITS)  # PS3.5 A.5: raw deflate, no zlib header


def test_deflated_stream_is_stored_exactly_as_received(variants, dicom_server, services, monkeypatch):
    # pynetdicom sends a file's data set verbatim when told to stream it (no decoding, no re-deflating).
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    path = variants["deflated"]
    assert send(dicom_server.port, [path]) == [0x0000]
    row = _row(services, str(dcmread(path, stop_before_pixels=True).SOPInstanceUID))
    stored = services.store.path(row.storage_key)
    assert dcmread(stored, stop_before_pixels=True).file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    assert row.transfer_syntax_uid == DeflatedExplicitVRLittleEndian
    assert sha256(dataset_bytes(stored)) == sha256(dataset_bytes(path)) == row.sha256


def test_one_context_with_uncompressed_and_jpeg_baseline_accepts_jpeg_baseline(
    variants, dicom_server, services, client, auth, monkeypatch
):
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # send the file's data set verbatim
    path = variants["jpeg-baseline"]
    sent = dcmread(path, stop_before_pixels=True)
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(UltrasoundImageStorage, [ImplicitVRLittleEndian, ExplicitVRLittleEndian, JPEGBaseline8Bit])
    assoc = ae.associate("127.0.0.1", dicom_server.port, ae_title="USGI")
    assert assoc.is_established
    try:
        (cx,) = assoc.accepted_contexts
        # The machine holds the image as JPEG: accepting JPEG Baseline spares it a decompression.
        assert cx.abstract_syntax == UltrasoundImageStorage
        assert cx.transfer_syntax == [JPEGBaseline8Bit]
        assert int(assoc.send_c_store(path).Status) == 0x0000
    finally:
        assoc.release()

    row = _row(services, str(sent.SOPInstanceUID))
    stored = services.store.path(row.storage_key)
    assert dcmread(stored, stop_before_pixels=True).file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    assert row.transfer_syntax_uid == JPEGBaseline8Bit
    assert sha256(dataset_bytes(stored)) == sha256(dataset_bytes(path)) == row.sha256
    _assert_preview(client, auth, str(sent.SOPInstanceUID), (int(sent.Columns), int(sent.Rows)))
