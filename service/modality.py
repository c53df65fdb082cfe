"""Service layer for the modality's workflow messages: MPPS (PS3.4 F.7) and Storage Commitment (PS3.4 J)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pydicom.dataset import Dataset
from sqlalchemy import select

from service.bootstrap import Services
from service.db import unit_of_work
from service.dicom_index import is_valid_uid, parse_da_tm
from service.models import Instance, PerformedInstance, PerformedProcedureStep, StorageCommitment


class StepStatus(enum.StrEnum):
    IN_PROGRESS = "IN PROGRESS"
    COMPLETED = "COMPLETED"
    DISCONTINUED = "DISCONTINUED"


class MppsError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _get(ds: Dataset, keyword: str) -> Any:
    try:
        value = ds.get(keyword)
    except Exception:  # noqa: BLE001 - a malformed element reads as absent
        return None
    if value in (None, ""):
        return None
    return value


def _str(ds: Dataset, keyword: str, limit: int = 64) -> str | None:
    value = _get(ds, keyword)
    return str(value).strip()[:limit] or None if value is not None else None


def _referenced_instances(ds: Dataset) -> list[tuple[str | None, str, str]]:
    """(series UID, SOP class, SOP instance) of every image and non-image object in the step's series."""
    out = []
    for series in _get(ds, "PerformedSeriesSequence") or []:
        series_uid = _str(series, "SeriesInstanceUID")
        for seq_kw in ("ReferencedImageSequence", "ReferencedNonImageCompositeSOPInstanceSequence"):
            for item in _get(series, seq_kw) or []:
                cls, inst = _str(item, "ReferencedSOPClassUID"), _str(item, "ReferencedSOPInstanceUID")
                if cls and inst:
                    out.append((series_uid, cls, inst))
    return out


def _apply(step: PerformedProcedureStep, ds: Dataset) -> None:
    start = parse_da_tm(_str(ds, "PerformedProcedureStepStartDate", 8), _str(ds, "PerformedProcedureStepStartTime", 16))
    end = parse_da_tm(_str(ds, "PerformedProcedureStepEndDate", 8), _str(ds, "PerformedProcedureStepEndTime", 16))
    step.started_at = start or step.started_at
    step.ended_at = end or step.ended_at
    step.performed_station_ae_title = _str(ds, "PerformedStationAETitle", 16) or step.performed_station_ae_title
    step.procedure_step_id = _str(ds, "PerformedProcedureStepID", 16) or step.procedure_step_id
    step.patient_id = _str(ds, "PatientID") or step.patient_id
    for item in _get(ds, "ScheduledStepAttributesSequence") or []:
        step.study_instance_uid = _str(item, "StudyInstanceUID") or step.study_instance_uid
        step.accession_number = _str(item, "AccessionNumber", 16) or step.accession_number
    reason = _get(ds, "PerformedProcedureStepDiscontinuationReasonCodeSequence")
    if reason:
        step.discontinuation_reason = _str(reason[0], "CodeMeaning", 200) or _str(reason[0], "CodeValue", 200)
    known = {i.sop_instance_uid for i in step.instances}
    for series_uid, cls, inst in _referenced_instances(ds):
        if inst not in known:
            step.instances.append(
                PerformedInstance(series_instance_uid=series_uid, sop_class_uid=cls, sop_instance_uid=inst)
            )
            known.add(inst)


def mpps_create(services: Services, sop_instance_uid: str, ds: Dataset, calling_ae: str) -> PerformedProcedureStep:
    """N-CREATE: a new step, which must start IN PROGRESS (PS3.4 F.7.2.1)."""
    status = _str(ds, "PerformedProcedureStepStatus", 16)
    if status is None:
        raise MppsError(0x0120, "PerformedProcedureStepStatus is missing")
    if status != StepStatus.IN_PROGRESS:
        raise MppsError(0x0106, "a new step must be IN PROGRESS")
    if not is_valid_uid(sop_instance_uid):
        raise MppsError(0x0106, "invalid SOP Instance UID")
    now = services.clock()
    with unit_of_work(services.session_factory) as s:
        if s.scalar(
            select(PerformedProcedureStep.id).where(PerformedProcedureStep.sop_instance_uid == sop_instance_uid)
        ):
            raise MppsError(0x0111, "duplicate SOP Instance")
        step = PerformedProcedureStep(
            sop_instance_uid=sop_instance_uid,
            status=StepStatus.IN_PROGRESS.value,
            calling_ae_title=calling_ae,
            created_at=now,
            updated_at=now,
            instances=[],
        )
        _apply(step, ds)
        s.add(step)
        s.flush()
        return step


def mpps_set(services: Services, sop_instance_uid: str, ds: Dataset) -> PerformedProcedureStep:
    """N-SET: update a step still IN PROGRESS; COMPLETED or DISCONTINUED ends it (PS3.4 F.7.2.2)."""
    with unit_of_work(services.session_factory) as s:
        step = s.scalar(
            select(PerformedProcedureStep).where(PerformedProcedureStep.sop_instance_uid == sop_instance_uid)
        )
        if step is None:
            raise MppsError(0x0112, "no such performed procedure step")
        if step.status != StepStatus.IN_PROGRESS:
            # F.7.2.2.2: a step that is COMPLETED or DISCONTINUED can no longer be modified.
            raise MppsError(0x0110, "the step is no longer IN PROGRESS")
        new_status = _str(ds, "PerformedProcedureStepStatus", 16)
        if new_status is not None and new_status not in {s_.value for s_ in StepStatus}:
            raise MppsError(0x0106, "unknown PerformedProcedureStepStatus")
        _apply(step, ds)
        if new_status:
            step.status = new_status
        step.updated_at = services.clock()
        s.flush()
        return step


def list_steps(services: Services, study_instance_uid: str | None = None) -> list[dict[str, Any]]:
    with unit_of_work(services.session_factory) as s:
        q = select(PerformedProcedureStep).order_by(PerformedProcedureStep.id)
        if study_instance_uid:
            q = q.where(PerformedProcedureStep.study_instance_uid == study_instance_uid)
        return [step_view(step) for step in s.scalars(q)]


def step_view(step: PerformedProcedureStep) -> dict[str, Any]:
    return {
        "sop_instance_uid": step.sop_instance_uid,
        "status": step.status,
        "acquisition_ended": step.status == StepStatus.COMPLETED,
        "study_instance_uid": step.study_instance_uid,
        "accession_number": step.accession_number,
        "performed_station_ae_title": step.performed_station_ae_title,
        "started_at": step.started_at,
        "ended_at": step.ended_at,
        "discontinuation_reason": step.discontinuation_reason,
        "instances": [
            {
                "sop_class_uid": i.sop_class_uid,
                "sop_instance_uid": i.sop_instance_uid,
                "series_instance_uid": i.series_instance_uid,
            }
            for i in step.instances
        ],
    }


# --- Storage Commitment -------------------------------------------------------------------------------------

NO_SUCH_OBJECT_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119
PROCESSING_FAILURE = 0x0110


@dataclass(frozen=True)
class CommitItem:
    sop_class_uid: str
    sop_instance_uid: str
    committed: bool
    reason: int | None = None


def evaluate_commitment(services: Services, refs: list[tuple[str, str]]) -> list[CommitItem]:
    """Commit an instance only if it is indexed with the same SOP Class and its file is on disk (PS3.4 J.3.2)."""
    out: list[CommitItem] = []
    with unit_of_work(services.session_factory) as s:
        for cls, inst in refs:
            rows = s.execute(
                select(Instance.sop_class_uid, Instance.storage_key, Instance.size_bytes).where(
                    Instance.sop_instance_uid == inst
                )
            ).all()
            if not rows:
                out.append(CommitItem(cls, inst, False, NO_SUCH_OBJECT_INSTANCE))
            elif all(r.sop_class_uid != cls for r in rows):
                out.append(CommitItem(cls, inst, False, CLASS_INSTANCE_CONFLICT))
            elif not any(
                r.sop_class_uid == cls
                and services.store.exists(r.storage_key)
                and services.store.path(r.storage_key).stat().st_size == r.size_bytes
                for r in rows
            ):
                out.append(CommitItem(cls, inst, False, PROCESSING_FAILURE))
            else:
                out.append(CommitItem(cls, inst, True))
    return out


def record_commitment(services: Services, transaction_uid: str, calling_ae: str, items: list[CommitItem]) -> int:
    with unit_of_work(services.session_factory) as s:
        row = StorageCommitment(
            transaction_uid=transaction_uid,
            calling_ae_title=calling_ae,
            requested_at=services.clock(),
            result=[i.__dict__ for i in items],
            status="pending",
            attempts=0,
        )
        s.add(row)
        s.flush()
        return row.id


def mark_commitment(services: Services, commitment_id: int, delivered: bool, error: str | None = None) -> None:
    with unit_of_work(services.session_factory) as s:
        row = s.get(StorageCommitment, commitment_id)
        if row is None:
            return
        row.attempts += 1
        if delivered:
            row.status, row.reported_at, row.last_error = "reported", services.clock(), None
        else:
            row.status, row.last_error = "pending", (error or "")[:500]


def pending_commitments(
    services: Services, max_age: timedelta = timedelta(days=1)
) -> list[tuple[int, str, str, list[CommitItem]]]:
    """Reports not yet delivered (an earlier process stopped first): (id, transaction UID, calling AE, items)."""
    since = services.clock() - max_age
    with unit_of_work(services.session_factory) as s:
        rows = s.scalars(
            select(StorageCommitment)
            .where(StorageCommitment.status == "pending", StorageCommitment.requested_at >= since)
            .order_by(StorageCommitment.id)
        ).all()
        return [
            (r.id, r.transaction_uid, r.calling_ae_title, [CommitItem(**item) for item in r.result])  # type: ignore[arg-type]
            for r in rows
        ]


def commitment_report(transaction_uid: str, items: list[CommitItem]) -> tuple[int, Dataset]:
    """The N-EVENT-REPORT event type (1 all committed, 2 some failed) and its dataset (PS3.4 J.3.3)."""
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    ok = [i for i in items if i.committed]
    failed = [i for i in items if not i.committed]
    if ok:
        ds.ReferencedSOPSequence = []
        for i in ok:
            item = Dataset()
            item.ReferencedSOPClassUID = i.sop_class_uid
            item.ReferencedSOPInstanceUID = i.sop_instance_uid
            ds.ReferencedSOPSequence.append(item)
    if failed:
        ds.FailedSOPSequence = []
        for i in failed:
            item = Dataset()
            item.ReferencedSOPClassUID = i.sop_class_uid
            item.ReferencedSOPInstanceUID = i.sop_instance_uid
            item.FailureReason = i.reason
            ds.FailedSOPSequence.append(item)
    return (2 if failed else 1), ds
