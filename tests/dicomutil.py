"""Helpers for tests that play an ultrasound machine: real vendor files re-stamped, a pynetdicom SCU."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, StoragePresentationContexts
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode

# The real ultrasound objects shipped in the pydicom wheel (DESIGN/bench corpus uses the same ones).
VENDOR_FILES = {
    "ge_jpeg2k": "examples_jpeg2k.dcm",
    "ge_rgb": "examples_rgb_color.dcm",
    "philips_palette": "examples_palette.dcm",
    "sonosite_cine": "examples_ybr_color.dcm",
}


def vendor_path(key: str) -> Path:
    return Path(get_testdata_file(VENDOR_FILES[key]))  # type: ignore[arg-type]


def dataset_bytes(path: Path) -> bytes:
    """The encoded dataset of a Part 10 file: everything after the file meta group."""
    raw = path.read_bytes()
    from service.ingest import dataset_offset

    return raw[dataset_offset(raw[: 1 << 16]) :]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def restamp(src: Path, dest: Path, **attrs: object) -> Path:
    """Copy a vendor file with new Study/Series/SOP Instance UIDs (and any attributes given)."""
    ds = dcmread(src)
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for k, v in attrs.items():
        setattr(ds, k, v)
    dest.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dest, enforce_file_format=True)
    return dest


def c_store_rq(sop_class: str, sop_instance: str, message_id: int = 7, priority: int = 2, **fields: object) -> bytes:
    """A C-STORE-RQ command set as pynetdicom encodes it (implicit VR LE), saying that a data set follows."""
    req = C_STORE()
    req.MessageID = message_id
    req.Priority = priority
    req.AffectedSOPClassUID = sop_class
    req.AffectedSOPInstanceUID = sop_instance
    req.DataSet = BytesIO(b"\x00")  # only so that the command says a data set follows
    for name, value in fields.items():
        setattr(req, name, value)
    msg = C_STORE_RQ()
    msg.primitive_to_message(req)
    return bytes(encode(msg.command_set, True, True))


def p_data_tf(*pdvs: tuple[int, int, bytes]) -> bytes:
    """A P-DATA-TF PDU of (context id, message control header, fragment) items (PS3.8 9.3.5, E.2)."""
    items = b"".join((len(f) + 2).to_bytes(4, "big") + bytes([cx, h]) + f for cx, h, f in pdvs)
    return b"\x04\x00" + len(items).to_bytes(4, "big") + items


def exchange(assoc: Any, send: Callable[[], object]) -> Any | None:
    """What pynetdicom 3.0.4's ``send_c_store`` does around its own send: pause the association's reactor,
    ``send()``, and return the next DIMSE message that arrives (None: the DIMSE timeout passed)."""
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)
    try:
        send()
        _, rsp = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    return rsp


def scu(ae_title: str = "TESTSCU") -> AE:
    ae = AE(ae_title=ae_title)
    ae.requested_contexts = StoragePresentationContexts[:120]
    return ae


def read(path: Path) -> Dataset:
    return dcmread(BytesIO(path.read_bytes()))


def send(port: int, paths: list[Path], ae_title: str = "TESTSCU", called: str = "USGI") -> list[int]:
    """C-STORE each file over one association proposing exactly its SOP class and transfer syntax.

    Returns the status of each C-STORE (-1 when no response came back).
    """
    headers = [dcmread(p, stop_before_pixels=True) for p in paths]
    ae = AE(ae_title=ae_title)
    seen: set[tuple[str, str]] = set()
    for h in headers:
        key = (str(h.SOPClassUID), str(h.file_meta.TransferSyntaxUID))
        if key not in seen:
            seen.add(key)
            ae.add_requested_context(key[0], key[1])
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established, "association was not accepted"
    out = []
    try:
        for p in paths:
            status = assoc.send_c_store(p)
            out.append(int(status.Status) if status and "Status" in status else -1)
    finally:
        assoc.release()
    return out


# storescu proposes only uncompressed syntaxes unless told which compressed one to propose.
STORESCU_PROPOSE = {
    "1.2.840.10008.1.2": ["-xi"],
    "1.2.840.10008.1.2.1": ["-xe"],
    "1.2.840.10008.1.2.1.99": ["-xd"],
    "1.2.840.10008.1.2.4.50": ["-xy"],
    "1.2.840.10008.1.2.4.51": ["-xx"],
    # JPEG lossless process 14 (4.57) has no storescu option (-xl is MPEG-4 BD): use a negotiation profile.
    "1.2.840.10008.1.2.4.70": ["-xs"],
    "1.2.840.10008.1.2.4.80": ["-xt"],
    "1.2.840.10008.1.2.4.81": ["-xu"],
    "1.2.840.10008.1.2.4.90": ["-xv"],
    "1.2.840.10008.1.2.4.91": ["-xw"],
    "1.2.840.10008.1.2.5": ["-xr"],
}


def storescu_cmd(storescu: str, port: int, path: Path, ae_title: str = "STORESCU") -> list[str]:
    ts = str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    return [storescu, "-aet", ae_title, "-aec", "USGI", *STORESCU_PROPOSE[ts], "127.0.0.1", str(port), str(path)]


# The patient of tests/data/procedure_example.json: the Modality stamps it unless told otherwise.
EXAMPLE_MRN = "MRN-0042917"


class Modality:
    """Plays the ultrasound machine: re-stamps a vendor file and sends it."""

    def __init__(self, tmp_path: Path, port: int) -> None:
        self.dir = tmp_path / "outbox"
        self.port = port
        self.count = 0

    def image(self, key: str = "ge_rgb", *, at: str = "20250314091400", **attrs: object) -> Path:
        """A file acquired at ``at`` (local YYYYMMDDHHMMSS) of the example patient, no accession, no markers."""
        self.count += 1
        base: dict[str, object] = {
            "PatientID": EXAMPLE_MRN,
            "AccessionNumber": "",
            "AcquisitionDateTime": at,
            "ContentDate": at[:8],
            "ContentTime": at[8:],
            "StudyDate": at[:8],
            "StudyTime": at[8:],
            "ImageComments": "",
            "SeriesDescription": "",
        }
        return restamp(vendor_path(key), self.dir / f"{self.count}.dcm", **(base | attrs))

    def send(self, *paths: Path) -> None:
        assert send(self.port, list(paths)) == [0] * len(paths)


def uid(path: Path) -> str:
    """The SOP Instance UID of a file."""
    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
