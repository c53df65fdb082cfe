"""Read side of the image index: queries used by the API (and later the UI and FHIR mapping)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Select, func, select

from service.bootstrap import Services
from service.db import page_of, unit_of_work
from service.errors import NotFound
from service.models import Instance

log = logging.getLogger(__name__)


@dataclass
class ImageFilter:
    patient_id: str | None = None
    accession_number: str | None = None
    study_instance_uid: str | None = None
    date_from: datetime | None = None
    date_to: datetime | None = None
    linked: bool | None = None
    conflict: bool | None = None
    link_status: str | None = None


def _naive(value: datetime | None) -> datetime | None:
    # DICOM times are local wall-clock times without an offset; compare them as such.
    return value.replace(tzinfo=None) if value is not None and value.tzinfo else value


def latest_ids(*where: Any) -> Select[tuple[int]]:
    """The row id of the latest version of each SOP Instance among the rows matching ``where``."""
    return select(func.max(Instance.id)).where(*where).group_by(Instance.sop_instance_uid)


def search_images(services: Services, f: ImageFilter, page: int, per_page: int) -> tuple[list[dict[str, Any]], int]:
    """The latest version of each SOP Instance matching ``f``, newest first, and the total count."""
    q = select(Instance).where(Instance.id.in_(latest_ids()))
    when = func.coalesce(Instance.acquisition_datetime, Instance.content_datetime, Instance.study_datetime)
    if f.patient_id:
        q = q.where(Instance.patient_id == f.patient_id)
    if f.accession_number:
        q = q.where(Instance.accession_number == f.accession_number)
    if f.study_instance_uid:
        q = q.where(Instance.study_instance_uid == f.study_instance_uid)
    if f.date_from:
        q = q.where(when >= _naive(f.date_from))
    if f.date_to:
        q = q.where(when <= _naive(f.date_to))
    if f.linked is not None:
        q = q.where(Instance.procedure_id.is_not(None) if f.linked else Instance.procedure_id.is_(None))
    if f.link_status is not None:
        q = q.where(Instance.link_status == f.link_status)
    if f.conflict is not None:
        q = q.where(Instance.conflict.is_(f.conflict))
    with unit_of_work(services.session_factory) as s:
        rows, total = page_of(s, q, page, per_page, Instance.id.desc())
        return [image_view(r) for r in rows], total


def get_versions(services: Services, sop_instance_uid: str) -> list[Instance]:
    with unit_of_work(services.session_factory) as s:
        rows = list(
            s.scalars(select(Instance).where(Instance.sop_instance_uid == sop_instance_uid).order_by(Instance.id))
        )
    if not rows:
        raise NotFound("no image with this SOP Instance UID")
    return rows


def get_image(services: Services, sop_instance_uid: str, version: int | None = None) -> tuple[Instance, list[Instance]]:
    """One version (1-based; default the latest) and all versions of a SOP Instance."""
    rows = get_versions(services, sop_instance_uid)
    if version is None:
        return rows[-1], rows
    if version > len(rows):
        raise NotFound(f"version {version} does not exist (there are {len(rows)})")
    return rows[version - 1], rows


def latest_in_study(services: Services, study_uid: str, series_uid: str | None = None) -> list[Instance]:
    """The current version of each instance of a study (or of one of its series), in the order received."""
    members = select(Instance.sop_instance_uid).where(Instance.study_instance_uid == study_uid)
    latest = latest_ids(Instance.sop_instance_uid.in_(members))
    q = select(Instance).where(Instance.id.in_(latest), Instance.study_instance_uid == study_uid)
    if series_uid is not None:
        q = q.where(Instance.series_instance_uid == series_uid)
    with services.session_factory() as s:
        rows = list(s.scalars(q.order_by(Instance.id)))
    if not rows:
        raise NotFound("no stored instance in this series" if series_uid else "no stored instance in this study")
    return rows


def stored_path(services: Services, row: Instance) -> Path:
    """Where the object's bytes are; NotFound (and an error in the log) if the file has gone missing."""
    path = services.store.path(row.storage_key)
    if not path.is_file():
        log.error("indexed object %s has no stored file", row.storage_key)
        raise NotFound("the stored file of this image is missing")
    return path


_COLUMNS = [c.key for c in Instance.__table__.columns if c.key not in ("id",)]


def image_view(row: Instance, versions: list[Instance] | None = None) -> dict[str, Any]:
    out = {k: getattr(row, k) for k in _COLUMNS}
    out["linked"] = row.procedure_id is not None
    if versions is not None:
        out["version"] = next(i for i, v in enumerate(versions, 1) if v.id == row.id)
        out["versions"] = [
            {
                "version": i,
                "sha256": v.sha256,
                "size_bytes": v.size_bytes,
                "received_at": v.received_at,
                "calling_ae_title": v.calling_ae_title,
                "transfer_syntax_uid": v.transfer_syntax_uid,
            }
            for i, v in enumerate(versions, 1)
        ]
    base = f"/api/images/{row.sop_instance_uid}"
    out["links"] = {"self": base, "dicom": f"{base}/dicom"}
    if row.is_image:
        out["links"]["preview"] = f"{base}/preview.png"
    return out
