"""The linker: applies the pure rules of :mod:`service.procedures.linking` to rows of the database.

It runs in three places, always inside the caller's transaction:

* when an image is indexed (``link_columns``, inside the ingest transaction, so an image is never stored
  without having been looked at, and one commit covers both);
* when a procedure is created or changed (``relink_for_procedure``): unlinked images that may now match, and
  the ones it already has (a changed accession number or injection time changes their link or role);
* at start (``link_pending``): rows indexed before linking existed, or re-indexed after an unclean stop.

Links and roles set by a person (method or role source ``manual``) are never changed by the linker.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from sqlalchemy import or_, select, text
from sqlalchemy.orm import Session

from service.config import Settings
from service.db import Direct, RawConnection
from service.models import Instance, Procedure
from service.procedures.linking import (
    ImageFacts,
    LinkDecision,
    LinkMethod,
    LinkStatus,
    ProcedureFacts,
    aware,
    decide,
)
from service.procedures.roles import ImageRole, classify_image

_FACT_COLUMNS = (
    "id, accession_number, study_instance_uid, encounter_id, patient_id, laterality, "
    "scheduled_at, started_at, injected_at, ended_at, created_at"
)
_PROCEDURES = Procedure.__table__.c
# Prebuilt and run on the DBAPI cursor (service.db.Direct): the ingest path runs it once per stored object.
_CANDIDATES = Direct(
    f"SELECT {_FACT_COLUMNS}, status FROM procedures WHERE status <> 'cancelled' AND ("
    "accession_number = :acc OR study_instance_uid = :study OR encounter_id = :adm OR patient_id = :pid)",
    {
        "acc": _PROCEDURES.accession_number.type,
        "study": _PROCEDURES.study_instance_uid.type,
        "adm": _PROCEDURES.encounter_id.type,
        "pid": _PROCEDURES.patient_id.type,
    },
    [_PROCEDURES[name.strip()] for name in f"{_FACT_COLUMNS}, status".split(",")],
)
_START = Direct(
    "UPDATE procedures SET status = 'in_progress' WHERE id = :id AND status = 'scheduled'", {"id": _PROCEDURES.id.type}
)
_INJECTED = text("SELECT injected_at FROM procedures WHERE id = :id").columns(Procedure.__table__.c.injected_at)


class LinkSettings:
    """The parts of Settings the linker uses, resolved once."""

    def __init__(self, settings: Settings) -> None:
        self.window = timedelta(hours=settings.link_window_hours)
        self.zone: tzinfo | None = settings.local_zone
        self.keywords = settings.image_role_keywords


def image_facts(values: Mapping[str, Any]) -> ImageFacts:
    """From an index row (a dict of ``instances`` columns)."""
    acquired = next(
        (values.get(k) for k in ("acquisition_datetime", "content_datetime", "series_datetime", "study_datetime")
         if values.get(k) is not None),
        None,
    )  # fmt: skip
    return ImageFacts(
        accession_number=values.get("accession_number") or None,
        study_instance_uid=values.get("study_instance_uid") or None,
        admission_id=values.get("admission_id") or None,
        patient_id=values.get("patient_id") or None,
        laterality=values.get("laterality") or None,
        acquired_at=acquired,
    )


def procedure_facts(row: Any) -> ProcedureFacts:
    return ProcedureFacts(
        id=row.id,
        accession_number=row.accession_number,
        study_instance_uid=row.study_instance_uid,
        encounter_id=row.encounter_id,
        patient_id=row.patient_id,
        laterality=row.laterality,
        scheduled_at=row.scheduled_at,
        started_at=row.started_at,
        injected_at=row.injected_at,
        ended_at=row.ended_at,
        created_at=row.created_at,
    )


def candidates(raw: RawConnection, image: ImageFacts) -> list[Any]:
    if not (image.accession_number or image.study_instance_uid or image.admission_id or image.patient_id):
        return []
    params = {
        "acc": image.accession_number,
        "study": image.study_instance_uid,
        "adm": image.admission_id,
        "pid": image.patient_id,
    }
    return _CANDIDATES.rows(raw, params)


def role_columns(values: Mapping[str, Any], injected_at: datetime | None, ls: LinkSettings) -> dict[str, str | None]:
    decision = classify_image(
        series_description=values.get("series_description"),
        image_comments=values.get("image_comments"),
        protocol_name=values.get("protocol_name"),
        acquired_at=aware(image_facts(values).acquired_at, ls.zone),
        injection_at=aware(injected_at, UTC) if injected_at is not None else None,
        keywords=ls.keywords,
    )
    return {"image_role": decision.role.value, "role_source": decision.source, "role_reason": decision.reason[:200]}


def link_columns(raw: RawConnection, values: Mapping[str, Any], ls: LinkSettings) -> dict[str, Any]:
    """The link and role columns of a row about to be written (or rewritten), and the side effect on its
    procedure: a scheduled procedure whose first image arrives is in progress."""
    image = image_facts(values)
    rows = candidates(raw, image)
    decision = decide(image, [procedure_facts(r) for r in rows], ls.window, ls.zone)
    out = _decision_columns(decision)
    if decision.status is LinkStatus.LINKED:
        proc = next(r for r in rows if r.id == decision.procedure_id)
        out.update(role_columns(values, proc.injected_at, ls))
        if proc.status == "scheduled":
            _START.execute(raw, {"id": proc.id})
    else:
        out.update(image_role=None, role_source=None, role_reason=None)
    return out


def _decision_columns(decision: LinkDecision) -> dict[str, Any]:
    return {
        "procedure_id": decision.procedure_id,
        "link_status": decision.status.value,
        "link_method": decision.method.value if decision.method else None,
        "link_detail": decision.detail[:500] or None,
    }


def _values(row: Instance) -> dict[str, Any]:
    return {c.key: getattr(row, c.key) for c in Instance.__table__.columns}


def relink_rows(session: Session, rows: Iterable[Instance], ls: LinkSettings) -> int:
    """Decide again for each row not fixed by a person; returns how many changed."""
    conn = session.connection()
    changed = 0
    for row in rows:
        if row.link_method == LinkMethod.MANUAL or row.link_status == LinkStatus.UNLINKED:
            if row.procedure_id is not None and row.role_source != "manual":
                injected = conn.execute(_INJECTED, {"id": row.procedure_id}).scalar()
                changed += _apply(row, role_columns(_values(row), injected, ls))
            continue
        columns = link_columns(RawConnection.of(conn), _values(row), ls)
        if row.role_source == "manual" and columns["procedure_id"] == row.procedure_id:
            for key in ("image_role", "role_source", "role_reason"):
                columns.pop(key, None)
        changed += _apply(row, columns)
    return changed


def _apply(row: Instance, columns: Mapping[str, Any]) -> int:
    differs = any(getattr(row, k) != v for k, v in columns.items())
    for key, value in columns.items():
        setattr(row, key, value)
    return int(differs)


def relink_for_procedure(session: Session, proc: Procedure, ls: LinkSettings, previous: Sequence[str] = ()) -> int:
    """After ``proc`` was created or changed: its own images, and unlinked ones that share a key with it
    (``previous`` holds keys it had before the change, so images that matched only those are looked at too)."""
    keys = [
        Instance.accession_number == proc.accession_number,
        Instance.study_instance_uid == proc.study_instance_uid,
        Instance.patient_id == proc.patient_id,
    ]
    if proc.encounter_id:
        keys.append(Instance.admission_id == proc.encounter_id)
    waiting = or_(Instance.link_status.is_(None), Instance.link_status.in_(_WAITING))
    q = select(Instance).where(or_(Instance.procedure_id == proc.id, waiting & or_(*keys)))
    rows = session.scalars(q.order_by(Instance.id)).all()
    return relink_rows(session, rows, ls)


_WAITING = (LinkStatus.UNMATCHED.value, LinkStatus.AMBIGUOUS.value, LinkStatus.CONTRADICTION.value)


def link_pending(session: Session, ls: LinkSettings, batch: int = 500) -> int:
    """Rows never looked at (indexed before linking existed, or re-indexed after a crash)."""
    total = 0
    while True:
        rows = session.scalars(select(Instance).where(Instance.link_status.is_(None)).limit(batch)).all()
        if not rows:
            return total
        relink_rows(session, rows, ls)
        total += len(rows)
        session.flush()


def set_link(
    session: Session, rows: Sequence[Instance], proc: Procedure | None, role: ImageRole | None, ls: LinkSettings
) -> None:
    """A person's decision: link ``rows`` (every stored version of one instance) to ``proc`` (None: unlink),
    optionally with a role that then overrides the automatic one."""
    for row in rows:
        if proc is None:
            _apply(row, {
                "procedure_id": None, "link_status": LinkStatus.UNLINKED.value, "link_method": LinkMethod.MANUAL.value,
                "link_detail": "taken off its procedure by a person", "image_role": None, "role_source": None,
                "role_reason": None,
            })  # fmt: skip
            continue
        _apply(row, {
            "procedure_id": proc.id, "link_status": LinkStatus.LINKED.value, "link_method": LinkMethod.MANUAL.value,
            "link_detail": "linked by a person",
        })  # fmt: skip
        if role is not None:
            _apply(row, {"image_role": role.value, "role_source": "manual", "role_reason": "set by a person"})
        elif row.role_source != "manual":
            _apply(row, role_columns(_values(row), proc.injected_at, ls))
    if proc is not None and proc.status == "scheduled":
        proc.status = "in_progress"
