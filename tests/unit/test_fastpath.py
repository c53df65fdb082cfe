"""The hand-written encoders must produce exactly what pynetdicom and pydicom produce."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode

from service.dicom.fastpath import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    FileMeta,
    encode_c_store_rsp,
    encode_file_meta,
)

US = "1.2.840.10008.5.1.4.1.1.6.1"


def _rsp(status: int, comment: str | None = None, instance: str = "1.2.3.4.5.6.7") -> C_STORE:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 7
    rsp.AffectedSOPClassUID = US
    rsp.AffectedSOPInstanceUID = instance
    rsp.Status = status
    if comment:
        rsp.ErrorComment = comment
    return rsp


def _pynetdicom_encoding(rsp: C_STORE) -> bytes:
    msg = C_STORE_RSP()
    msg.primitive_to_message(rsp)
    return encode(msg.command_set, True, True)


@pytest.mark.parametrize(
    ("status", "comment", "instance"),
    [
        (0x0000, None, "1.2.3.4.5.6.7"),  # odd-length UID: padded with NUL
        (0x0000, None, "1.2.3.4.5.6.78"),  # even length
        (0xB007, "image object without Rows/Columns", "1.2.3"),
        (0xA900, "SOP Class UID in the dataset differs", "1.2.826.0.1.3680043.8.498.1"),
        (0xC000, "odd", "1.2.3.4"),  # odd-length comment: padded with a space
    ],
)
def test_c_store_rsp_matches_pynetdicom_byte_for_byte(status, comment, instance):
    rsp = _rsp(status, comment, instance)
    assert encode_c_store_rsp(rsp) == _pynetdicom_encoding(rsp)


def test_c_store_rsp_with_other_status_fields_falls_back():
    rsp = _rsp(0xA900)
    rsp.OffendingElement = [0x00080018]
    assert encode_c_store_rsp(rsp) is None


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, JPEGBaseline8Bit])
@pytest.mark.parametrize("instance", ["1.2.3.4.5", "1.2.3.4.56"])
def test_file_meta_matches_pydicom_and_reads_back(ts, instance):
    ours = encode_file_meta(FileMeta(US, instance, ts))
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = US
    meta.MediaStorageSOPInstanceUID = instance
    meta.TransferSyntaxUID = ts
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    ref = BytesIO()
    write_file_meta_info(ref, meta, enforce_standard=True)
    assert ours == ref.getvalue()

    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = US, instance
    body = BytesIO()
    ds.save_as(body, implicit_vr=False, little_endian=True)
    back = dcmread(BytesIO(b"\x00" * 128 + b"DICM" + ours + body.getvalue()))
    assert back.file_meta.TransferSyntaxUID == ts and back.SOPInstanceUID == instance
