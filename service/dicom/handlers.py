"""DICOM event handlers: small functions of the event that call the service layer and return a status.

Each follows pynetdicom's handler contract (pynetdicom/_handlers.py) and never raises: an exception would
become pynetdicom's catch-all 0xC211, which tells a modality nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom.events import Event
from pynetdicom.sop_class import ModalityPerformedProcedureStep, StorageCommitmentPushModel

from service import modality
from service.bootstrap import Services
from service.dicom import status as st
from service.dicom_index import is_valid_uid
from service.ingest import Origin, ingest_file

if TYPE_CHECKING:
    from service.dicom.commitment import CommitmentReporter

log = logging.getLogger("service.dicom")


def _origin(event: Event) -> Origin:
    requestor = event.assoc.requestor
    return Origin("dicom", requestor.ae_title, f"{requestor.address}:{requestor.port}")


def handle_conn_close(event: Event) -> None:
    """A connection that ends in the middle of a C-STORE (A-ABORT, dropped TCP, network timeout, shutdown)
    leaves pynetdicom's partial data set file open in the store's temp folder: close and remove it now."""
    message = getattr(event.assoc.dimse, "message", None)
    partial = getattr(message, "_data_set_file", None)
    if partial is not None:
        partial.close()
        Path(partial.name).unlink(missing_ok=True)
        log.info("removed the partial data set of an interrupted C-STORE")


def handle_echo(event: Event) -> int:
    return st.SUCCESS


def handle_store(event: Event, services: Services) -> int | Dataset:
    """C-STORE: answered 0x0000 only after the object is fsync'd, in place and indexed (ingest_file)."""
    try:
        req = event.request
        result = ingest_file(
            services,
            event.dataset_path,
            _origin(event),
            str(event.context.transfer_syntax),
            expected_sop_class_uid=str(req.AffectedSOPClassUID or "") or None,
            expected_sop_instance_uid=str(req.AffectedSOPInstanceUID or "") or None,
        )
    except Exception:  # noqa: BLE001
        log.exception("C-STORE failed unexpectedly")
        return st.status_dataset(st.PROCESSING_FAILURE, "internal error")
    status = st.store_status(result)
    if log.isEnabledFor(logging.INFO):
        code = status if isinstance(status, int) else status.Status
        detail = f" [{result.message}]" if result.message else ""
        log.info(
            "C-STORE from %s: %s (status 0x%04X)%s", event.assoc.requestor.ae_title, result.outcome.value, code, detail
        )
    return status


def handle_n_create(event: Event, services: Services) -> tuple[int | Dataset, Dataset | None]:
    """N-CREATE of a Modality Performed Procedure Step (PS3.4 F.7.2.1)."""
    req = event.request
    if str(req.AffectedSOPClassUID) != ModalityPerformedProcedureStep:
        return st.status_dataset(st.NO_SUCH_SOP_CLASS, "no such SOP class"), None
    uid = str(req.AffectedSOPInstanceUID or "")
    if not uid:
        uid = generate_uid()
        req.AffectedSOPInstanceUID = uid
    try:
        attrs = event.attribute_list
        modality.mpps_create(services, uid, attrs, event.assoc.requestor.ae_title)
    except modality.MppsError as exc:
        log.info("MPPS N-CREATE refused: %s", exc)
        return st.status_dataset(exc.status, str(exc)), None
    except Exception:  # noqa: BLE001
        log.exception("MPPS N-CREATE failed")
        return st.status_dataset(st.PROCESSING_FAILURE, "internal error"), None
    log.info("MPPS N-CREATE from %s: in progress", event.assoc.requestor.ae_title)
    return st.SUCCESS, attrs


def handle_n_set(event: Event, services: Services) -> tuple[int | Dataset, Dataset | None]:
    """N-SET of a Modality Performed Procedure Step (PS3.4 F.7.2.2)."""
    req = event.request
    if str(req.RequestedSOPClassUID) != ModalityPerformedProcedureStep:
        return st.status_dataset(st.NO_SUCH_SOP_CLASS, "no such SOP class"), None
    try:
        mods = event.modification_list
        step = modality.mpps_set(services, str(req.RequestedSOPInstanceUID), mods)
    except modality.MppsError as exc:
        log.info("MPPS N-SET refused: %s", exc)
        return st.status_dataset(exc.status, str(exc)), None
    except Exception:  # noqa: BLE001
        log.exception("MPPS N-SET failed")
        return st.status_dataset(st.PROCESSING_FAILURE, "internal error"), None
    log.info("MPPS N-SET from %s: %s", event.assoc.requestor.ae_title, step.status)
    return st.SUCCESS, mods


def handle_n_action(event: Event, services: Services, reporter: CommitmentReporter) -> tuple[Any, None]:
    """N-ACTION of Storage Commitment Push Model (PS3.4 J.3.2): answer now, report the result after."""
    req = event.request
    if str(req.RequestedSOPClassUID) != StorageCommitmentPushModel:
        return st.status_dataset(st.NO_SUCH_SOP_CLASS, "no such SOP class"), None
    if req.ActionTypeID != 1:
        return st.status_dataset(st.NO_SUCH_ACTION, "only action type 1 is defined"), None
    try:
        info = event.action_information
        transaction_uid = str(info.get("TransactionUID", "") or "")
        refs = [
            (str(item.get("ReferencedSOPClassUID", "")), str(item.get("ReferencedSOPInstanceUID", "")))
            for item in info.get("ReferencedSOPSequence", []) or []
        ]
    except Exception:  # noqa: BLE001
        return st.status_dataset(st.PROCESSING_FAILURE, "action information cannot be parsed"), None
    if not is_valid_uid(transaction_uid):
        return st.status_dataset(st.MISSING_ATTRIBUTE, "TransactionUID missing or invalid"), None
    if not refs or not all(is_valid_uid(c) and is_valid_uid(i) for c, i in refs):
        return st.status_dataset(st.INVALID_ATTRIBUTE_VALUE, "ReferencedSOPSequence missing or invalid"), None
    try:
        items = modality.evaluate_commitment(services, refs)
        commitment_id = modality.record_commitment(services, transaction_uid, event.assoc.requestor.ae_title, items)
    except Exception:  # noqa: BLE001
        log.exception("storage commitment failed")
        return st.status_dataset(st.PROCESSING_FAILURE, "internal error"), None
    log.info(
        "storage commitment from %s: %d committed, %d failed",
        event.assoc.requestor.ae_title,
        sum(i.committed for i in items),
        sum(not i.committed for i in items),
    )
    reporter.report_later(event.assoc, commitment_id, transaction_uid, items)
    return st.SUCCESS, None
