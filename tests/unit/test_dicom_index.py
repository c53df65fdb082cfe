"""service.dicom_index: DA/TM/DT parsing, UID validation and the index record of a dataset."""

from __future__ import annotations

from datetime import datetime

import pytest
from pydicom import dcmread
from pydicom.config import disable_value_validation
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from service.dicom_index import (
    IMAGE_SOP_CLASSES,
    US_IMAGE,
    US_MULTIFRAME,
    NotIndexable,
    extract_index_fields,
    is_valid_uid,
    parse_da_tm,
    parse_dt,
)
from tests.dicomutil import vendor_path

SR_COMPREHENSIVE = "1.2.840.10008.5.1.4.1.1.88.33"


@pytest.mark.parametrize(
    ("date", "time", "expected"),
    [
        ("20240105", "101530", datetime(2024, 1, 5, 10, 15, 30)),
        ("20240105", None, datetime(2024, 1, 5)),
        ("20240105", "", datetime(2024, 1, 5)),
        # Partial times (PS3.5 TM: HH, HHMM, HHMMSS).
        ("20240105", "10", datetime(2024, 1, 5, 10)),
        ("20240105", "1015", datetime(2024, 1, 5, 10, 15)),
        # Fractions of a second, up to six digits.
        ("20240105", "101530.5", datetime(2024, 1, 5, 10, 15, 30, 500000)),
        ("20240105", "101530.123456", datetime(2024, 1, 5, 10, 15, 30, 123456)),
        ("20240105", "101530.1234567", datetime(2024, 1, 5, 10, 15, 30, 123456)),
        ("20240105", "101530.", datetime(2024, 1, 5, 10, 15, 30)),
        # ACR-NEMA style dotted dates and colon-separated times, padding.
        ("2024.01.05", "10:15:30", datetime(2024, 1, 5, 10, 15, 30)),
        (" 20240105 ", " 101530 ", datetime(2024, 1, 5, 10, 15, 30)),
        # A broken time keeps the date.
        ("20240105", "99", datetime(2024, 1, 5)),
        ("20240105", "ab", datetime(2024, 1, 5)),
    ],
)
def test_parse_da_tm(date, time, expected):
    assert parse_da_tm(date, time) == expected


@pytest.mark.parametrize("date", [None, "", "garbage", "2024", "202401", "20241301", "20240230", "2024-1-5"])
def test_parse_da_tm_garbage_date_is_none(date):
    assert parse_da_tm(date, "101530") is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("20240105101530", datetime(2024, 1, 5, 10, 15, 30)),
        ("20240105101530.250000", datetime(2024, 1, 5, 10, 15, 30, 250000)),
        ("20240105", datetime(2024, 1, 5)),
        ("202401051015", datetime(2024, 1, 5, 10, 15)),
        # The offset is dropped: the wall-clock time is kept as sent.
        ("20240105101530+0100", datetime(2024, 1, 5, 10, 15, 30)),
        ("20240105101530.5-0500", datetime(2024, 1, 5, 10, 15, 30, 500000)),
        ("20240105-0500", datetime(2024, 1, 5)),
        (" 20240105101530 ", datetime(2024, 1, 5, 10, 15, 30)),
    ],
)
def test_parse_dt(value, expected):
    assert parse_dt(value) == expected
    assert parse_dt(value).tzinfo is None


@pytest.mark.parametrize("value", [None, "", "garbage", "+0100", "20241332101530"])
def test_parse_dt_garbage_is_none(value):
    assert parse_dt(value) is None


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("1.2.840.10008.5.1.4.1.1.6.1", True),
        ("0", True),
        ("0.0.1", True),
        ("1.2.840.10.0.3", True),
        ("1." + "2" * 62, True),  # exactly 64
        ("1." + "2" * 63, False),  # 65
        ("1.02.3", False),  # leading zero in a component
        ("01.2.3", False),
        ("1.2.3.", False),
        (".1.2.3", False),
        ("1..2", False),
        ("1.2.a3", False),
        ("1.2.3 ", False),
        ("1.2.3\x00", False),
        ("", False),
        (None, False),
        (12345, False),
    ],
)
def test_is_valid_uid(value, valid):
    assert is_valid_uid(value) is valid


def _dataset(sop_class: str = US_IMAGE, **attrs: object) -> Dataset:
    # Invalid values are the point of some tests: set them as a careless sender would (each element keeps
    # the validation mode in force when it was created, so the whole dataset is built without validation).
    with disable_value_validation():
        ds = Dataset()
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID = generate_uid()
        ds.SeriesInstanceUID = generate_uid()
        for k, v in attrs.items():
            setattr(ds, k, v)
    return ds


def test_extract_index_fields_of_a_full_dataset():
    ds = _dataset(
        US_MULTIFRAME,
        AccessionNumber="ACC-77",
        PatientID="PAT-9",
        IssuerOfPatientID="HOSP",
        PatientName="Doe^Jane",
        AdmissionID="ADM1",
        StudyDate="20240105",
        StudyTime="090000",
        SeriesDate="20240105",
        SeriesTime="091000",
        AcquisitionDate="20240105",
        AcquisitionTime="091500.5",
        ContentDate="20240105",
        ContentTime="092000",
        Modality="US",
        ImageLaterality="L",
        Laterality="R",
        BodyPartExamined="KNEE",
        SeriesDescription="pre",
        ProtocolName="knee injection",
        ImageComments="needle in view",
        NumberOfFrames=30,
        Rows=480,
        Columns=640,
        PhotometricInterpretation="YBR_FULL_422",
    )
    f = extract_index_fields(ds)
    assert f.sop_instance_uid == ds.SOPInstanceUID and f.sop_class_uid == US_MULTIFRAME
    assert f.study_instance_uid == ds.StudyInstanceUID and f.series_instance_uid == ds.SeriesInstanceUID
    assert f.is_image is True and f.warnings == []
    v = f.values
    assert (v["accession_number"], v["patient_id"], v["issuer_of_patient_id"]) == ("ACC-77", "PAT-9", "HOSP")
    assert (v["patient_name"], v["admission_id"], v["modality"]) == ("Doe^Jane", "ADM1", "US")
    assert v["study_datetime"] == datetime(2024, 1, 5, 9, 0)
    assert v["series_datetime"] == datetime(2024, 1, 5, 9, 10)
    assert v["acquisition_datetime"] == datetime(2024, 1, 5, 9, 15, 0, 500000)
    assert v["content_datetime"] == datetime(2024, 1, 5, 9, 20)
    assert v["laterality"] == "L"  # ImageLaterality wins over Laterality
    assert v["body_part"] == "KNEE"
    assert (v["series_description"], v["protocol_name"], v["image_comments"]) == (
        "pre",
        "knee injection",
        "needle in view",
    )
    assert (v["number_of_frames"], v["rows"], v["columns"]) == (30, 480, 640)
    assert v["photometric_interpretation"] == "YBR_FULL_422"


def test_acquisition_datetime_prefers_the_dt_attribute():
    ds = _dataset(AcquisitionDateTime="20240105101530+0100", AcquisitionDate="20200101", AcquisitionTime="000000")
    assert extract_index_fields(ds).values["acquisition_datetime"] == datetime(2024, 1, 5, 10, 15, 30)
    ds = _dataset(AcquisitionDateTime="", AcquisitionDate="20200101", AcquisitionTime="0800")
    assert extract_index_fields(ds).values["acquisition_datetime"] == datetime(2020, 1, 1, 8, 0)


@pytest.mark.parametrize("keyword", ["SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID"])
def test_a_missing_or_malformed_uid_is_not_indexable(keyword):
    ds = _dataset(Rows=10, Columns=10)
    delattr(ds, keyword)
    with pytest.raises(NotIndexable, match=keyword):
        extract_index_fields(ds)
    for bad in ("1.02.3", "", "1.2.abc", "1..2", " "):
        ds = _dataset(Rows=10, Columns=10, **{keyword: bad})
        with pytest.raises(NotIndexable, match=keyword):
            extract_index_fields(ds)
    assert issubclass(NotIndexable, ValueError)


def test_an_over_long_uid_is_not_indexable_rather_than_truncated():
    # PS3.5 9.1: at most 64 characters. A longer UID must be refused, not cut to 64 characters (which would
    # index the object under a UID its sender never used, and let two different UIDs collide).
    too_long = "1.2.826.0.1.3680043.8.498." + "1" * 45  # 71 characters, otherwise well-formed
    assert len(too_long) == 71 and not is_valid_uid(too_long)
    accepted = {}
    for keyword in ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID"):
        try:
            f = extract_index_fields(_dataset(Rows=10, Columns=10, **{keyword: too_long}))
        except NotIndexable as exc:
            assert keyword in str(exc)
        else:
            accepted[keyword] = {
                "SOPInstanceUID": f.sop_instance_uid,
                "SOPClassUID": f.sop_class_uid,
                "StudyInstanceUID": f.study_instance_uid,
                "SeriesInstanceUID": f.series_instance_uid,
            }[keyword]
    assert accepted == {}, f"over-long UIDs were indexed truncated: {accepted}"


def test_laterality_falls_back_to_the_series_laterality():
    assert extract_index_fields(_dataset(Laterality="R")).values["laterality"] == "R"
    assert extract_index_fields(_dataset(ImageLaterality="", Laterality="R")).values["laterality"] == "R"
    assert extract_index_fields(_dataset(ImageLaterality="B")).values["laterality"] == "B"
    assert extract_index_fields(_dataset()).values["laterality"] is None
    assert extract_index_fields(_dataset(Laterality="")).values["laterality"] is None


@pytest.mark.parametrize("sop_class", sorted(IMAGE_SOP_CLASSES))
def test_an_image_class_without_rows_gets_a_warning(sop_class):
    f = extract_index_fields(_dataset(sop_class))
    assert f.is_image is True
    assert f.warnings == ["image object without Rows/Columns"]
    f = extract_index_fields(_dataset(sop_class, Rows=480))
    assert f.warnings == ["image object without Rows/Columns"]
    assert extract_index_fields(_dataset(sop_class, Rows=480, Columns=640)).warnings == []


def test_a_non_image_without_rows_gets_no_warning():
    for sop_class in (SR_COMPREHENSIVE, "1.2.840.10008.5.1.4.1.1.104.1", "1.2.840.113619.4.27"):
        f = extract_index_fields(_dataset(sop_class))
        assert f.is_image is False and f.warnings == []
        assert f.values["number_of_frames"] is None and f.values["rows"] is None


def test_number_of_frames_defaults_to_one_for_a_single_frame_image():
    f = extract_index_fields(_dataset(US_IMAGE, Rows=480, Columns=640))
    assert f.values["number_of_frames"] == 1
    assert (
        extract_index_fields(_dataset(US_MULTIFRAME, Rows=4, Columns=4, NumberOfFrames="12")).values["number_of_frames"]
        == 12
    )
    # A broken NumberOfFrames does not make the object unindexable.
    assert (
        extract_index_fields(_dataset(US_IMAGE, Rows=4, Columns=4, NumberOfFrames=None)).values["number_of_frames"] == 1
    )


def test_text_values_are_trimmed_and_limited():
    ds = _dataset(AccessionNumber="ACC-1 ", PatientID=" P1\x00", ImageComments="x" * 20000, PatientName="")
    v = extract_index_fields(ds).values
    assert v["accession_number"] == "ACC-1" and v["patient_id"] == "P1"
    assert len(v["image_comments"]) == 10240
    assert v["patient_name"] is None


@pytest.mark.parametrize("key", ["ge_jpeg2k", "ge_rgb", "philips_palette", "sonosite_cine"])
def test_vendor_files_are_indexable(key):
    ds = dcmread(vendor_path(key), stop_before_pixels=True)
    f = extract_index_fields(ds)
    assert f.is_image is True and f.warnings == []
    assert (f.values["rows"], f.values["columns"]) == (ds.Rows, ds.Columns)
    assert f.values["number_of_frames"] == int(ds.get("NumberOfFrames", 1))
    assert f.values["study_datetime"] is not None
