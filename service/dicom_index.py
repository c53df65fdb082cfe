"""Pure extraction of the index fields from a parsed DICOM dataset (no I/O, no database)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydicom.dataset import Dataset

US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
IMAGE_SOP_CLASSES = frozenset(
    {
        US_IMAGE,
        US_MULTIFRAME,
        "1.2.840.10008.5.1.4.1.1.6",  # US Image Storage (retired), still sent by old machines
        "1.2.840.10008.5.1.4.1.1.3",  # US Multi-frame Image Storage (retired)
        "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture
        "1.2.840.10008.5.1.4.1.1.7.1",  # Multi-frame Single Bit SC
        "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte SC
        "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word SC
        "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color SC
    }
)

_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def is_valid_uid(value: object) -> bool:
    """PS3.5 §9.1: digits and dots, no leading zeros in a component, at most 64 characters."""
    return isinstance(value, str) and 0 < len(value) <= 64 and bool(_UID_RE.match(value))


class NotIndexable(ValueError):
    """The dataset lacks what every stored object must have (its UIDs)."""


@dataclass
class IndexFields:
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    is_image: bool
    values: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _text(ds: Dataset, keyword: str, limit: int) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        value = "\\".join(str(v) for v in value)
    text = str(value).strip().rstrip("\x00").strip()
    return text[:limit] or None


def _int(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def parse_da_tm(date: str | None, time: str | None = None) -> datetime | None:
    """Combine a DA and a TM value (PS3.5 §6.2) into a naive local datetime; None when absent or malformed."""
    if not date:
        return None
    date = date.strip().replace(".", "")  # ACR-NEMA style YYYY.MM.DD still seen
    try:
        day = datetime.strptime(date[:8], "%Y%m%d")
    except ValueError:
        return None
    if not time:
        return day
    time = time.strip().replace(":", "")
    hh, mm, ss = time[0:2], time[2:4] or "00", time[4:6] or "00"
    frac = time.split(".", 1)[1] if "." in time else ""
    try:
        micro = int((frac + "000000")[:6]) if frac else 0
        return day.replace(hour=int(hh), minute=int(mm), second=int(ss), microsecond=micro)
    except ValueError:
        return day


def parse_dt(value: str | None) -> datetime | None:
    """A DT value (YYYYMMDDHHMMSS.FFFFFF&ZZXX); the offset is dropped (times are kept as sent)."""
    if not value:
        return None
    value = re.split(r"[+-]", value.strip(), maxsplit=1)[0]
    return parse_da_tm(value[:8], value[8:] or None)


def extract_index_fields(ds: Dataset) -> IndexFields:
    """The index record of one object (DESIGN.md §1; DOMAIN.md §8.3 attributes to capture).

    Raises :class:`NotIndexable` when a required UID is missing or malformed.
    """
    uids = {}
    for kw in ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID"):
        value = _text(ds, kw, 1024)  # validated whole: a truncated UID would index the wrong object
        if not is_valid_uid(value):
            raise NotIndexable(f"{kw} is missing or not a valid UID")
        uids[kw] = value
    warnings: list[str] = []
    sop_class = uids["SOPClassUID"]
    is_image = sop_class in IMAGE_SOP_CLASSES
    rows, columns = _int(ds, "Rows"), _int(ds, "Columns")
    if is_image and (not rows or not columns):
        warnings.append("image object without Rows/Columns")

    acquisition = parse_dt(_text(ds, "AcquisitionDateTime", 26)) or parse_da_tm(
        _text(ds, "AcquisitionDate", 8), _text(ds, "AcquisitionTime", 16)
    )
    frames = _int(ds, "NumberOfFrames")
    values: dict[str, Any] = {
        "accession_number": _text(ds, "AccessionNumber", 16),
        "patient_id": _text(ds, "PatientID", 64),
        "issuer_of_patient_id": _text(ds, "IssuerOfPatientID", 64),
        "patient_name": _text(ds, "PatientName", 324),
        "admission_id": _text(ds, "AdmissionID", 64),
        "study_datetime": parse_da_tm(_text(ds, "StudyDate", 8), _text(ds, "StudyTime", 16)),
        "series_datetime": parse_da_tm(_text(ds, "SeriesDate", 8), _text(ds, "SeriesTime", 16)),
        "acquisition_datetime": acquisition,
        "content_datetime": parse_da_tm(_text(ds, "ContentDate", 8), _text(ds, "ContentTime", 16)),
        "modality": _text(ds, "Modality", 16),
        "laterality": _text(ds, "ImageLaterality", 16) or _text(ds, "Laterality", 16),
        "body_part": _text(ds, "BodyPartExamined", 64),
        "series_description": _text(ds, "SeriesDescription", 64),
        "protocol_name": _text(ds, "ProtocolName", 64),
        "image_comments": _text(ds, "ImageComments", 10240),
        "number_of_frames": frames if frames is not None else (1 if is_image and rows else None),
        "rows": rows,
        "columns": columns,
        "photometric_interpretation": _text(ds, "PhotometricInterpretation", 16),
    }
    return IndexFields(
        sop_instance_uid=uids["SOPInstanceUID"],
        sop_class_uid=sop_class,
        study_instance_uid=uids["StudyInstanceUID"],
        series_instance_uid=uids["SeriesInstanceUID"],
        is_image=is_image,
        values=values,
        warnings=warnings,
    )
