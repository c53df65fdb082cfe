"""Outcomes of the service layer -> DIMSE statuses (PS3.4 B.2.3 storage, PS3.7 C general statuses)."""

from __future__ import annotations

from pydicom.dataset import Dataset

from service.ingest import IngestResult, Outcome

SUCCESS = 0x0000
WARNING_DOES_NOT_MATCH = 0xB007  # stored, but the data set does not match the SOP class
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110
NO_SUCH_SOP_CLASS = 0x0118
INVALID_ATTRIBUTE_VALUE = 0x0106
MISSING_ATTRIBUTE = 0x0120
NO_SUCH_ACTION = 0x0123
# C-FIND (PS3.4 C.4.1.1.4). 0x0122 is the C-services' "SOP class not supported"; N-services use 0x0118.
SOP_CLASS_NOT_SUPPORTED = 0x0122
PENDING = 0xFF00
CANCEL = 0xFE00

_STORE_STATUS = {
    Outcome.UNREADABLE: CANNOT_UNDERSTAND,
    Outcome.NOT_INDEXABLE: DOES_NOT_MATCH,
    Outcome.MISMATCH: DOES_NOT_MATCH,
    Outcome.STORE_FAILED: PROCESSING_FAILURE,
}


def status_dataset(code: int, comment: str = "") -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment:
        # ErrorComment is LO: 64 characters at most; never patient data (our messages are fixed texts).
        ds.ErrorComment = comment[:64]
    return ds


def store_status(result: IngestResult) -> tuple[int, str]:
    """The C-STORE response status for an ingest result, and its error comment ("" for none)."""
    if result.outcome in (Outcome.STORED, Outcome.DUPLICATE):
        if result.warnings:
            return WARNING_DOES_NOT_MATCH, result.warnings[0][:64]
        return SUCCESS, ""
    if result.outcome is Outcome.STORE_FAILED and result.no_space:
        return OUT_OF_RESOURCES, "out of storage space"
    return _STORE_STATUS[result.outcome], result.message[:64]
