"""DICOM event handlers: small functions of the event that call the service layer and return a status.

Each follows pynetdicom's handler contract (pynetdicom/_handlers.py) and never raises: an exception would
become pynetdicom's catch-all 0xC211, which tells a modality nothing.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom.events import Event
from pynetdicom.sop_class import (
    ModalityPerformedProcedureStep,
    ModalityWorklistInformationFind,
    StorageCommitmentPushModel,
)
from sqlalchemy import func, select

from service import audit_trail, modality
from service.bootstrap import Services
from service.dicom import status as st
from service.dicom import storelane
from service.dicom.storelane import StoreCommand
from service.dicom_index import is_valid_uid
from service.ingest import Origin, Received, ingest, ingest_file
from service.models import Procedure
from service.worklist.items import worklist_item, worklist_statuses
from service.worklist.matching import SPECIFIC_CHARACTER_SET, match, response

if TYPE_CHECKING:
    from service.dicom.commitment import CommitmentReporter

log = logging.getLogger("service.dicom")


def handle_conn_close(event: Event) -> None:
    """A connection that ends in the middle of a C-STORE (A-ABORT, dropped TCP, network timeout, shutdown)
    leaves pynetdicom's partial data set file open in the store's temp folder: close and remove it now."""
    message = getattr(event.assoc.dimse, "message", None)
    partial = getattr(message, "_data_set_file", None)
    if partial is not None:
        partial.close()
        Path(partial.name).unlink(missing_ok=True)
        log.info("removed the partial data set of an interrupted C-STORE")
    if storelane.discard(event.assoc.dul):
        log.info("removed the partial data set of an interrupted C-STORE")


def handle_echo(event: Event) -> int:
    return st.SUCCESS


def handle_store(event: Event, services: Services) -> int | Dataset:
    """C-STORE through pynetdicom (the fast lane, service/dicom/storelane.py, takes the plain ones)."""
    req = event.request
    code, comment = store_received(
        services,
        event.assoc,
        event.dataset_path,
        str(event.context.transfer_syntax),
        str(req.AffectedSOPClassUID or "") or None,
        str(req.AffectedSOPInstanceUID or "") or None,
    )
    return st.status_dataset(code, comment) if comment else code


def store_lane(
    services: Services, assoc: Any, received: Received, transfer_syntax: str, command: StoreCommand
) -> tuple[int, str]:
    """The fast lane's store function (storelane.StoreFunction)."""
    return store_received(services, assoc, received, transfer_syntax, command.sop_class_uid, command.sop_instance_uid)


def store_received(
    services: Services,
    assoc: Any,
    received: Path | Received,
    transfer_syntax: str,
    sop_class_uid: str | None,
    sop_instance_uid: str | None,
) -> tuple[int, str]:
    """A received C-STORE data set: (status, error comment), 0x0000 only once the object is fsync'd, in place
    and indexed (service.ingest). Never raises."""
    requestor = assoc.requestor
    origin = Origin("dicom", requestor.ae_title, f"{requestor.address}:{requestor.port}")
    try:
        if isinstance(received, Path):
            result = ingest_file(services, received, origin, transfer_syntax, sop_class_uid, sop_instance_uid)
        else:
            result = ingest(services, received, origin, transfer_syntax, sop_class_uid, sop_instance_uid)
    except Exception:  # noqa: BLE001
        log.exception("C-STORE failed unexpectedly")
        return st.PROCESSING_FAILURE, "internal error"
    code, comment = st.store_status(result)
    if log.isEnabledFor(logging.INFO):
        detail = f" [{result.message}]" if result.message else ""
        log.info("C-STORE from %s: %s (status 0x%04X)%s", requestor.ae_title, result.outcome.value, code, detail)
    return code, comment


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


FindResult = tuple[int | Dataset, Dataset | None]


def handle_find(event: Event, services: Services) -> Iterator[FindResult]:
    """C-FIND of the Modality Worklist (PS3.4 K.4.1.2): a pending response per matching scheduled step.

    Yields ``(status, identifier)`` pairs; pynetdicom sends the final success when the generator ends. Nothing
    here raises: pynetdicom would answer an exception with 0xC311 and log its message, which may hold patient data.
    """
    calling = event.assoc.requestor.ae_title
    if str(event.request.AffectedSOPClassUID) != ModalityWorklistInformationFind:
        yield st.status_dataset(st.SOP_CLASS_NOT_SUPPORTED, "SOP class not supported"), None
        return
    try:
        query = _decoded(event.identifier)
    except Exception as exc:  # noqa: BLE001
        log.info("worklist C-FIND from %s refused: identifier cannot be decoded (%s)", calling, type(exc).__name__)
        yield st.status_dataset(st.CANNOT_UNDERSTAND, "identifier cannot be decoded"), None
        return
    problem = _query_problem(query)
    if problem:
        log.info("worklist C-FIND from %s refused: %s", calling, problem)
        yield st.status_dataset(st.DOES_NOT_MATCH, problem), None
        return
    try:
        items = _worklist_items(services)
    except Exception as exc:  # noqa: BLE001
        _log_failure("worklist C-FIND: the worklist cannot be read", exc)
        yield st.status_dataset(st.CANNOT_UNDERSTAND, "internal error"), None
        return

    disclosed: list[str] = []
    try:
        yield from _find_responses(event, query, items, disclosed)
    finally:
        # Worklist answers carry patient demographics: who asked, from where, and which procedures they got.
        _audit_find(services, event, len(disclosed), disclosed)


def _find_responses(event: Event, query: Dataset, items: list[Dataset], disclosed: list[str]) -> Iterator[FindResult]:
    calling = event.assoc.requestor.ae_title
    matched = 0
    for item in items:
        if event.is_cancelled:
            log.info("worklist C-FIND from %s cancelled after %d match(es)", calling, matched)
            yield st.CANCEL, None
            return
        try:
            identifier = response(query, item) if match(query, item) else None
        except ValueError as exc:  # a query the matching rules cannot read (PS3.4 C.2.2.2)
            log.info("worklist C-FIND from %s refused: %s", calling, type(exc).__name__)
            yield st.status_dataset(st.DOES_NOT_MATCH, "identifier does not match the worklist model"), None
            return
        except Exception as exc:  # noqa: BLE001
            _log_failure("worklist C-FIND: matching failed", exc)
            yield st.status_dataset(st.CANNOT_UNDERSTAND, "internal error"), None
            return
        if identifier is not None:
            matched += 1
            disclosed.append(str(item.get("RequestedProcedureID", "")))
            yield st.PENDING, identifier
    log.info("worklist C-FIND from %s: %d of %d item(s) matched", calling, matched, len(items))


def _audit_find(services: Services, event: Event, returned: int, procedure_ids: list[str]) -> None:
    requestor = event.assoc.requestor
    try:
        audit_trail.record(
            services, f"dicom:{requestor.ae_title}", None, "worklist_query", "worklist", None,
            str(requestor.address), {"returned": returned, "procedures": procedure_ids},
        )  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - the answer has gone; a failed audit write is logged, not raised
        log.error("worklist C-FIND: the audit event could not be written (%s)", type(exc).__name__)


def _decoded(identifier: Dataset) -> Dataset:
    """The identifier with every element decoded now: pydicom defers decoding until first use (nested too)."""
    for elem in identifier:
        if elem.VR == "SQ":
            for item in elem.value or []:
                _decoded(item)
    return identifier


def _query_problem(query: Dataset, top: bool = True) -> str | None:
    """Why the identifier is no Modality Worklist query (an ErrorComment, no values in it), else None."""
    keys = [e for e in query if e.tag.element != 0 and e.tag != SPECIFIC_CHARACTER_SET]
    if top and not keys:
        return "the identifier has no keys"
    for elem in keys:
        if elem.VR != "SQ":
            continue
        items = list(elem.value or [])
        if len(items) > 1:  # sequence matching takes a single item (PS3.4 C.2.2.2.6)
            return f"{elem.keyword or elem.tag}: more than one item"
        if items and (problem := _query_problem(items[0], top=False)):
            return problem
    return None


def _worklist_items(services: Services) -> list[Dataset]:
    """Every procedure on the worklist as an item, in scheduled order.

    No pre-filter on the query's values in SQL: an exact column match would miss values DICOM matching treats as
    equal (padding spaces), and the worklist (scheduled and in-progress procedures only) stays small. The items
    are built before the session closes, so no connection is held while a slow machine reads the responses.
    """
    zone = services.settings.local_zone
    stmt = (
        select(Procedure)
        .where(Procedure.status.in_(sorted(worklist_statuses)))
        .order_by(func.coalesce(Procedure.scheduled_at, Procedure.created_at), Procedure.id)
    )
    items: list[Dataset] = []
    skipped = 0
    with services.session_factory() as session:
        for proc in session.scalars(stmt):
            try:
                items.append(worklist_item(proc, zone))
            except Exception as exc:  # noqa: BLE001
                # One unreadable report must not hide the rest of the worklist from the machines.
                skipped += 1
                _log_failure(f"worklist item of procedure {proc.id} cannot be built", exc)
    if skipped:
        log.warning("worklist: %d procedure(s) left off", skipped)
    return items


def _log_failure(message: str, exc: BaseException) -> None:
    # The exception's type and where it was raised, not its message: pydicom and SQLAlchemy put values
    # (names, identifiers, query parameters) in their messages.
    where = "".join(traceback.format_tb(exc.__traceback__))
    log.error("%s: %s\n%s", message, type(exc).__name__, where.rstrip())
