"""The completeness walk must accept every complete object pydicom reads, and refuse truncated ones."""

from __future__ import annotations

import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from service.ingest import check_complete

FILES = sorted((Path(pydicom.__file__).parent / "data" / "test_files").rglob("*.dcm"))
TRUNCATED = {"MR_truncated.dcm", "rtplan_truncated.dcm"}


def _readable(path: Path) -> str | None:
    """The transfer syntax if pydicom reads the whole file (every value), else None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = dcmread(path)
            for elem in ds.iterall():
                _ = elem.value
            return str(ds.file_meta.TransferSyntaxUID) if "TransferSyntaxUID" in ds.file_meta else None
    except Exception:  # noqa: BLE001
        return None


@pytest.mark.parametrize("path", [p for p in FILES if p.name not in TRUNCATED], ids=lambda p: p.name)
def test_every_complete_file_passes(path: Path):
    ts = _readable(path)
    if ts is None or path.read_bytes()[128:132] != b"DICM" or path.read_bytes()[132:134] != b"\x02\x00":
        pytest.skip("not a readable Part 10 file with a file meta group")
    try:
        check_complete(path, ts)
    except InvalidDicomError as exc:
        if "no file meta group length" in str(exc):
            pytest.skip("no group length (never the case for what the service writes)")
        raise


@pytest.mark.parametrize("name", sorted(TRUNCATED))
def test_truncated_files_are_refused(name: str):
    path = next(p for p in FILES if p.name == name)
    ts = str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    with pytest.raises(InvalidDicomError):
        check_complete(path, ts)


def test_every_cut_of_a_vendor_file_is_refused(tmp_path):
    from tests.dicomutil import vendor_path

    raw = vendor_path("ge_jpeg2k").read_bytes()
    ts = str(dcmread(vendor_path("ge_jpeg2k"), stop_before_pixels=True).file_meta.TransferSyntaxUID)
    check_complete(vendor_path("ge_jpeg2k"), ts)
    for cut in (400, 1000, len(raw) // 2, len(raw) - 1):
        p = tmp_path / f"cut{cut}.dcm"
        p.write_bytes(raw[:cut])
        with pytest.raises(InvalidDicomError):
            check_complete(p, ts)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_the_in_memory_walk_never_accepts_what_the_disk_walk_refuses(path: Path, tmp_path: Path):
    from service.dicom_header import Unsupported, walk_complete
    from service.ingest import dataset_offset

    raw = path.read_bytes()
    try:
        offset = dataset_offset(raw[: 1 << 16])
        ts = str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    except Exception:  # noqa: BLE001
        pytest.skip("no file meta group length")
    if ts in ("1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"):
        pytest.skip("big endian and deflate are walked on disk only")
    for n, data in enumerate((raw, raw[: len(raw) // 2], raw[:-1], raw[: offset + 10])):
        try:
            walk_complete(data, offset, implicit=ts == "1.2.840.10008.1.2")
        except Unsupported:
            continue
        copy = tmp_path / f"{n}.dcm"
        copy.write_bytes(data)
        check_complete(copy, ts)  # raises if the in-memory walk accepted an incomplete data set


def test_every_cut_of_a_vendor_file_is_refused_in_memory():
    from service.dicom_header import Unsupported, walk_complete
    from service.ingest import dataset_offset
    from tests.dicomutil import VENDOR_FILES, vendor_path

    for key in VENDOR_FILES:
        raw = vendor_path(key).read_bytes()
        ts = str(dcmread(vendor_path(key), stop_before_pixels=True).file_meta.TransferSyntaxUID)
        offset = dataset_offset(raw[: 1 << 16])
        walk_complete(raw, offset, implicit=ts == "1.2.840.10008.1.2")
        for cut in (offset + 5, len(raw) // 2, len(raw) - 1):
            with pytest.raises(Unsupported):
                walk_complete(raw[:cut], offset, implicit=ts == "1.2.840.10008.1.2")


def test_an_image_cut_exactly_before_its_pixel_data_is_not_indexable(tmp_path):
    from service.dicom_index import NotIndexable
    from service.ingest import _read_indexed
    from tests.dicomutil import vendor_path

    raw = vendor_path("ge_rgb").read_bytes()
    ts = str(dcmread(vendor_path("ge_rgb"), stop_before_pixels=True).file_meta.TransferSyntaxUID)
    cut = raw.rfind(b"\xe0\x7f\x10\x00")  # (7FE0,0010): everything before it is a whole data set
    p = tmp_path / "cut.dcm"
    p.write_bytes(raw[:cut])
    check_complete(p, ts)  # structurally whole...
    with pytest.raises(NotIndexable, match="Pixel Data"):
        _read_indexed(p, ts)  # ...but not an image
