"""The fast header reader must index every file exactly as pydicom does, or step aside."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom import dcmread

from service.dicom_header import Unsupported, read_header
from service.dicom_index import NotIndexable, extract_index_fields

# The files shipped inside the pydicom wheel (the download store is out of reach here).
FILES = sorted((Path(pydicom.__file__).parent / "data" / "test_files").rglob("*.dcm"))


def _fields(source):  # type: ignore[no-untyped-def]
    try:
        f = extract_index_fields(source)
    except NotIndexable as exc:
        return ("not indexable", str(exc))
    return (
        f.sop_instance_uid,
        f.sop_class_uid,
        f.study_instance_uid,
        f.series_instance_uid,
        f.is_image,
        f.values,
        f.warnings,
    )


def test_most_files_take_the_fast_path_so_the_comparison_means_something():
    fast = 0
    for path in FILES:
        try:
            read_header(path.read_bytes())
            fast += 1
        except Unsupported:
            pass
    assert len(FILES) >= 70 and fast >= 50


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_fast_reader_agrees_with_pydicom_or_declines(path: Path):
    raw = path.read_bytes()
    try:
        ours = read_header(raw)
    except Unsupported:
        return  # the ingest path then uses pydicom itself
    try:
        ds = dcmread(path, stop_before_pixels=True)
        reference = _fields(ds)
    except Exception:  # noqa: BLE001 - pydicom cannot read it: nothing to compare
        return
    assert _fields(ours) == reference
    assert ours.file_meta_transfer_syntax == str(ds.file_meta.TransferSyntaxUID)


def test_vendor_ultrasound_files_take_the_fast_path():
    from tests.dicomutil import VENDOR_FILES, vendor_path

    for key in VENDOR_FILES:
        assert read_header(vendor_path(key).read_bytes()).get("SOPInstanceUID")


def test_a_truncated_header_is_declined():
    from tests.dicomutil import vendor_path

    raw = vendor_path("ge_rgb").read_bytes()
    with pytest.raises(Unsupported):
        read_header(raw[:700])


def test_a_prefix_that_ends_on_an_element_boundary_is_declined_unless_complete():
    from tests.dicomutil import vendor_path

    raw = vendor_path("ge_rgb").read_bytes()
    head = read_header(raw)
    assert head.get("Rows") and head.get("AccessionNumber") is not None
    with pytest.raises(Unsupported):
        read_header(raw[:144], complete=False)
