"""The procedure service: create, change, sign, amend and cancel reports; every step one transaction.

Each stored state of the report is a version (``procedure_versions``); the procedure row holds the current one
and copies of the fields the worklist and the linker look up. Optimistic concurrency: every change names the
version it was based on (HTTP ``If-Match``), and a stale one is refused, never merged silently. Every change
and every read is written to the audit trail in the same transaction as the data it concerns.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from marshmallow import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from schemas.procedures import (
    ProcedureCreateSchema,
    ProcedurePatchSchema,
    finalisation_problems,
    report_warnings,
)
from service.bootstrap import Services
from service.db import page_of, unit_of_work
from service.errors import Conflict, DomainError, NotFound, Rejected
from service.models import AuditEvent, Instance, Procedure, ProcedureSignature, ProcedureVersion
from service.procedures import linker
from service.procedures.lifecycle import Action, InvalidTransition, ProcedureStatus, is_editable, next_status
from service.procedures.publish import publish
from service.procedures.reads import linked_images, live_signatures, signature_view
from service.procedures.roles import ImageRole

# Fields whose presence means the report is being written (a draft), not only scheduled.
DOCUMENTING_FIELDS = frozenset(
    {
        "guidance",
        "injectates",
        "aspiration",
        "complications",
        "complication_details",
        "post_procedure_instructions",
        "consent",
    }
)
DOCUMENTING_TIMES = frozenset({"started_at", "injected_at", "ended_at"})


class Invalid(DomainError):
    """A body that fails validation: ``errors`` maps each dotted field path to its messages."""

    code = "invalid"

    def __init__(self, errors: Mapping[str, list[str]], message: str = "the request body is invalid") -> None:
        super().__init__(message)
        self.errors = dict(errors)


class Incomplete(Rejected):
    """The report cannot be finalised yet: ``errors`` says what each missing field is needed for."""

    code = "incomplete"

    def __init__(self, errors: Mapping[str, str]) -> None:
        super().__init__("the report is not complete enough to be finalised")
        self.errors = {k: [v] for k, v in errors.items()}


class PreconditionRequired(DomainError):
    code = "precondition_required"


class PreconditionFailed(DomainError):
    code = "precondition_failed"

    def __init__(self, current_version: int) -> None:
        super().__init__(
            f"the procedure was changed by someone else: it is now at version {current_version}; "
            "read it again and reapply your change"
        )
        self.current_version = current_version


@dataclass(frozen=True)
class Actor:
    """Who acts: the token's name and role, the token's id (signatures name it), and where from."""

    name: str
    role: str
    token_id: int | None = None
    source: str | None = None


def etag(version: int) -> str:
    return f'"{version}"'


def check_if_match(header: str | None, version: int, *, required: bool) -> None:
    """RFC 9110 If-Match with strong comparison; ``*`` matches any current version."""
    if header is None or not header.strip():
        if required:
            raise PreconditionRequired(
                "this change needs an If-Match header with the ETag of the version it is based on "
                "(GET the procedure first), so that two editors never overwrite each other"
            )
        return
    tags = [t.strip() for t in header.split(",")]
    if "*" in tags or etag(version) in tags:
        return
    raise PreconditionFailed(version)


# --- reading -----------------------------------------------------------------------------------------------------


def _audit(s: Session, services: Services, actor: Actor, action: str, entity_id: str | None, **detail: Any) -> None:
    s.add(
        AuditEvent(
            at=services.clock(),
            actor=actor.name,
            role=actor.role,
            action=action,
            entity_type="procedure",
            entity_id=entity_id,
            source=actor.source,
            detail=detail or None,
        )
    )


def _load(s: Session, procedure_id: str, *, lock: bool = False) -> Procedure:
    proc = s.get(Procedure, procedure_id, with_for_update=lock)
    if proc is None:
        raise NotFound(f"no procedure {procedure_id}")
    return proc


def view(s: Session, proc: Procedure) -> dict[str, Any]:
    """The API's representation of a procedure (its current version)."""
    signatures = s.scalars(
        select(ProcedureSignature).where(ProcedureSignature.procedure_id == proc.id).order_by(ProcedureSignature.id)
    ).all()
    loaded = _reload(proc.report)
    problems = finalisation_problems(loaded) if loaded is not None else {}
    in_training = bool((proc.report.get("performer") or {}).get("in_training"))
    live = [g for g in signatures if g.voided_at is None and g.version == proc.version]
    awaiting = None
    if proc.status == ProcedureStatus.DOCUMENTED and any(g.capacity == "performer" for g in live):
        awaiting = "supervisor" if in_training else None
    images = s.scalar(
        select(func.count(func.distinct(Instance.sop_instance_uid))).where(Instance.procedure_id == proc.id)
    )
    return {
        "id": proc.id,
        "version": proc.version,
        "status": proc.status,
        "accession_number": proc.accession_number,
        "study_instance_uid": proc.study_instance_uid,
        "educational": proc.educational,
        "report": proc.report,
        "finalisation_problems": problems,
        "warnings": report_warnings(loaded) if loaded is not None else {},
        "awaiting_signature": awaiting,
        "signatures": [signature_view(g) for g in signatures],
        "image_count": images or 0,
        "cancel_reason": proc.cancel_reason,
        # The coding of a final or amended version, with the rule behind every line and finding (for auditors).
        "coding": s.scalar(
            select(ProcedureVersion.coding).where(
                ProcedureVersion.procedure_id == proc.id, ProcedureVersion.version == proc.version
            )
        ),
        "created_at": proc.created_at,
        "updated_at": proc.updated_at,
    }


def _reload(report: Mapping[str, Any]) -> dict[str, Any] | None:
    """The stored report loaded again (typed values) for the rules; None if today's rules refuse it."""
    try:
        return ProcedureCreateSchema().load(report)  # type: ignore[no-any-return]
    except ValidationError:
        return None


def get(services: Services, procedure_id: str, actor: Actor) -> tuple[dict[str, Any], str]:
    with unit_of_work(services.session_factory) as s:
        proc = _load(s, procedure_id)
        _audit(s, services, actor, "read", proc.id)
        return view(s, proc), etag(proc.version)


@dataclass
class ProcedureFilter:
    status: str | None = None
    patient_id: str | None = None
    accession_number: str | None = None
    encounter_id: str | None = None


def search(
    services: Services, f: ProcedureFilter, page: int, per_page: int, actor: Actor
) -> tuple[list[dict[str, Any]], int]:
    q = select(Procedure)
    if f.status:
        q = q.where(Procedure.status == f.status)
    if f.patient_id:
        q = q.where(Procedure.patient_id == f.patient_id)
    if f.accession_number:
        q = q.where(Procedure.accession_number == f.accession_number)
    if f.encounter_id:
        q = q.where(Procedure.encounter_id == f.encounter_id)
    with unit_of_work(services.session_factory) as s:
        rows, total = page_of(s, q, page, per_page, Procedure.created_at.desc(), Procedure.id)
        items = [view(s, p) for p in rows]
        _audit(
            s, services, actor, "search", None, returned=len(items), filters=sorted(k for k, v in vars(f).items() if v)
        )
        return items, total


def versions(services: Services, procedure_id: str, actor: Actor) -> list[dict[str, Any]]:
    with unit_of_work(services.session_factory) as s:
        _load(s, procedure_id)
        rows = s.scalars(
            select(ProcedureVersion)
            .where(ProcedureVersion.procedure_id == procedure_id)
            .order_by(ProcedureVersion.version)
        ).all()
        _audit(s, services, actor, "read_versions", procedure_id)
        return [
            {
                "version": v.version,
                "status": v.status,
                "action": v.action,
                "reason": v.reason,
                "changed_at": v.changed_at,
                "changed_by": v.changed_by,
                "report": v.report,
            }
            for v in rows
        ]


# --- writing -----------------------------------------------------------------------------------------------------


def _documenting(data: Mapping[str, Any]) -> bool:
    return bool(DOCUMENTING_FIELDS & data.keys() or DOCUMENTING_TIMES & (data.get("times") or {}).keys())


def _utc(value: datetime | None) -> datetime | None:
    return value.astimezone(UTC) if value is not None else None


def _copy_columns(proc: Procedure, data: Mapping[str, Any]) -> None:
    """The looked-up fields, from the loaded (typed) report."""
    identifier = data["patient"]["identifier"]
    proc.patient_id_system, proc.patient_id = identifier["system"], identifier["value"]
    proc.encounter_id = (data.get("encounter_identifier") or {}).get("value")
    if data.get("accession_number"):
        proc.accession_number = data["accession_number"]
    if data.get("study_instance_uid"):
        proc.study_instance_uid = data["study_instance_uid"]
    proc.scheduled_station_ae_title = data.get("scheduled_station_ae_title")
    proc.site = data.get("site")
    laterality = data.get("laterality")
    proc.laterality = laterality.value if laterality is not None else None
    proc.educational = bool(data.get("educational"))
    times = data.get("times") or {}
    proc.scheduled_at = _utc(times.get("scheduled_at"))
    proc.started_at = _utc(times.get("started_at"))
    proc.injected_at = _utc(times.get("injected_at"))
    proc.ended_at = _utc(times.get("ended_at"))


def _new_accession() -> str:
    # 14 characters (DICOM SH allows 16): "US" and 12 hex digits; unique enough that a clash is a bug.
    return "US" + secrets.token_hex(6).upper()


def _add_version(
    s: Session, services: Services, proc: Procedure, action: Action | str, actor: Actor, reason: str | None = None
) -> None:
    s.add(
        ProcedureVersion(
            procedure_id=proc.id,
            version=proc.version,
            status=proc.status,
            action=str(action),
            report=proc.report,
            reason=reason,
            changed_at=services.clock(),
            changed_by=actor.name,
            changed_by_token_id=actor.token_id,
        )
    )


def _validated(body: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return ProcedureCreateSchema().load(body)  # type: ignore[no-any-return]
    except ValidationError as exc:
        raise Invalid(exc.messages) from exc  # type: ignore[arg-type]


def create(services: Services, data: Mapping[str, Any], actor: Actor) -> tuple[dict[str, Any], str]:
    """``data`` is a loaded :class:`ProcedureCreateSchema` body. Returns the view and the ETag."""
    now = services.clock()
    proc = Procedure(id=secrets.token_hex(8), version=1, created_at=now, updated_at=now)
    proc.status = ProcedureStatus.DOCUMENTED if _documenting(data) else ProcedureStatus.SCHEDULED
    proc.report = ProcedureCreateSchema().dump(data)
    proc.accession_number = _new_accession()
    proc.study_instance_uid = f"2.25.{uuid.uuid4().int}"
    _copy_columns(proc, data)
    # The report always carries the identifiers the machines will stamp, assigned or given.
    proc.report = {
        **proc.report,
        "accession_number": proc.accession_number,
        "study_instance_uid": proc.study_instance_uid,
    }
    with services.write_lock, unit_of_work(services.session_factory) as s:
        s.add(proc)
        s.flush()
        _add_version(s, services, proc, "create", actor)
        _audit(s, services, actor, "create", proc.id, status=proc.status, fields=sorted(data))
        linker.relink_for_procedure(s, proc, services.link_settings)
        s.flush()
        return view(s, proc), etag(proc.version)


def update(
    services: Services, procedure_id: str, changes: Mapping[str, Any], if_match: str | None, actor: Actor
) -> tuple[dict[str, Any], str]:
    """A partial update of a draft: each top-level field in ``changes`` (a loaded patch body) replaces that part."""
    with services.write_lock, unit_of_work(services.session_factory) as s:
        proc = _load(s, procedure_id, lock=True)
        check_if_match(if_match, proc.version, required=True)
        if not is_editable(ProcedureStatus(proc.status)):
            raise Conflict(
                f"a {proc.status} procedure cannot be edited"
                + (
                    ": amend it instead (POST /api/procedures/{id}/amend)"
                    if proc.status in ("final", "amended")
                    else ""
                )
            )
        merged = {**proc.report, **ProcedurePatchSchema().dump(changes)}
        data = _validated(merged)
        status = ProcedureStatus(proc.status)
        if _documenting(changes) or status == ProcedureStatus.DOCUMENTED:
            status = next_status(status, Action.DOCUMENT)
        _store_change(s, services, proc, data, status, "update", actor)
        # A signature covers the version it signed: an edit after it needs a new one.
        voided = _void_signatures(s, services, proc)
        _audit(s, services, actor, "update", proc.id, fields=sorted(changes), voided_signatures=voided)
        s.flush()
        return view(s, proc), etag(proc.version)


def _store_change(
    s: Session,
    services: Services,
    proc: Procedure,
    data: Mapping[str, Any],
    status: ProcedureStatus,
    action: str,
    actor: Actor,
    reason: str | None = None,
) -> None:
    facts_before = linker.procedure_facts(proc)
    report = ProcedureCreateSchema().dump(data)
    report.setdefault("accession_number", proc.accession_number)
    report.setdefault("study_instance_uid", proc.study_instance_uid)
    proc.report = report
    _copy_columns(proc, data)
    proc.status = status.value
    proc.version += 1
    proc.updated_at = services.clock()
    _add_version(s, services, proc, action, actor, reason)
    s.flush()
    # Only what the linker reads can change a link or a role.
    if linker.procedure_facts(proc) != facts_before:
        linker.relink_for_procedure(s, proc, services.link_settings)


def _void_signatures(s: Session, services: Services, proc: Procedure) -> int:
    live = live_signatures(s, proc.id)
    for sig in live:
        sig.voided_at = services.clock()
    return len(live)


ATTESTATION = {
    "performer": "I performed this procedure and attest that this report is accurate and complete.",
    "supervisor": "I supervised this procedure, was present for the key portions, and agree with this report.",
    "amender": "I amend this report for the reason given and attest that the amended report is accurate.",
}


def _sign(s: Session, services: Services, proc: Procedure, capacity: str, actor: Actor, version: int) -> None:
    if actor.token_id is None:
        raise Rejected("a signature needs a personal token")
    s.add(
        ProcedureSignature(
            procedure_id=proc.id,
            version=version,
            capacity=capacity,
            signer=actor.name,
            token_id=actor.token_id,
            statement=ATTESTATION[capacity],
            signed_at=services.clock(),
        )
    )


def finalize(services: Services, procedure_id: str, if_match: str | None, actor: Actor) -> tuple[dict[str, Any], str]:
    """The performer's attestation. A trainee's report then waits for the supervisor (:func:`cosign`)."""
    with services.write_lock, unit_of_work(services.session_factory) as s:
        proc = _load(s, procedure_id, lock=True)
        check_if_match(if_match, proc.version, required=False)
        _transition_allowed(proc, Action.FINALIZE)
        data = _reload(proc.report)
        if data is None:
            raise Rejected("the stored report no longer passes today's rules: correct it with PATCH first")
        problems = finalisation_problems(data)
        if problems:
            raise Incomplete(problems)
        live = live_signatures(s, proc.id, proc.version)
        if any(g.capacity == "performer" for g in live):
            raise Conflict("the performer has already signed this version; it waits for the supervisor's co-signature")
        _sign(s, services, proc, "performer", actor, proc.version)
        in_training = bool((data.get("performer") or {}).get("in_training"))
        if in_training:
            _audit(s, services, actor, "sign", proc.id, capacity="performer", awaiting="supervisor")
        else:
            _store_change(
                s, services, proc, data, next_status(ProcedureStatus(proc.status), Action.FINALIZE), "finalize", actor
            )
            publish(s, services, proc, data)
            _audit(s, services, actor, "finalize", proc.id, version=proc.version)
        s.flush()
        return view(s, proc), etag(proc.version)


def cosign(services: Services, procedure_id: str, if_match: str | None, actor: Actor) -> tuple[dict[str, Any], str]:
    """The supervisor's co-signature of a trainee's signed report: it becomes final."""
    with services.write_lock, unit_of_work(services.session_factory) as s:
        proc = _load(s, procedure_id, lock=True)
        check_if_match(if_match, proc.version, required=False)
        _transition_allowed(proc, Action.FINALIZE)
        data = _reload(proc.report)
        if data is None or not (data.get("performer") or {}).get("in_training"):
            raise Conflict("only a report whose performer is in training is co-signed; finalize this one")
        live = live_signatures(s, proc.id, proc.version)
        performer = next((g for g in live if g.capacity == "performer"), None)
        if performer is None:
            raise Conflict("the performer has not signed this version yet (POST .../finalize first)")
        if performer.token_id == actor.token_id:
            raise Conflict("the supervisor's co-signature must come from another person than the performer's signature")
        _sign(s, services, proc, "supervisor", actor, proc.version)
        _store_change(
            s, services, proc, data, next_status(ProcedureStatus(proc.status), Action.FINALIZE), "cosign", actor
        )
        publish(s, services, proc, data)
        _audit(s, services, actor, "cosign", proc.id, version=proc.version)
        s.flush()
        return view(s, proc), etag(proc.version)


def amend(
    services: Services, procedure_id: str, reason: str, changes: Mapping[str, Any], if_match: str | None, actor: Actor
) -> tuple[dict[str, Any], str]:
    """A new version of a final report, with a reason; the earlier versions stay readable."""
    with services.write_lock, unit_of_work(services.session_factory) as s:
        proc = _load(s, procedure_id, lock=True)
        check_if_match(if_match, proc.version, required=True)
        _transition_allowed(proc, Action.AMEND)
        merged = {**proc.report, **ProcedurePatchSchema().dump(changes)}
        data = _validated(merged)
        problems = finalisation_problems(data)
        if problems:
            raise Incomplete(problems)
        _store_change(
            s, services, proc, data, next_status(ProcedureStatus(proc.status), Action.AMEND), "amend", actor, reason
        )
        _sign(s, services, proc, "amender", actor, proc.version)
        publish(s, services, proc, data)
        _audit(s, services, actor, "amend", proc.id, version=proc.version, fields=sorted(changes))
        s.flush()
        return view(s, proc), etag(proc.version)


def cancel(
    services: Services, procedure_id: str, reason: str, if_match: str | None, actor: Actor
) -> tuple[dict[str, Any], str]:
    """Not performed, or entered in error: off the worklist; its images go back to the linker."""
    with services.write_lock, unit_of_work(services.session_factory) as s:
        proc = _load(s, procedure_id, lock=True)
        check_if_match(if_match, proc.version, required=False)
        _transition_allowed(proc, Action.CANCEL)
        proc.status = ProcedureStatus.CANCELLED.value
        proc.cancel_reason = reason
        proc.version += 1
        proc.updated_at = services.clock()
        _add_version(s, services, proc, "cancel", actor, reason)
        s.flush()
        rows = s.scalars(select(Instance).where(Instance.procedure_id == proc.id)).all()
        for row in rows:
            if row.link_method == linker.LinkMethod.MANUAL:
                row.link_method = None  # a person's link to a cancelled procedure no longer holds
        linker.relink_rows(s, rows, services.link_settings)
        _audit(s, services, actor, "cancel", proc.id, images_released=len(rows))
        s.flush()
        return view(s, proc), etag(proc.version)


def _transition_allowed(proc: Procedure, action: Action) -> None:
    try:
        next_status(ProcedureStatus(proc.status), action)
    except InvalidTransition as exc:
        raise Conflict(str(exc)) from exc


# --- images ------------------------------------------------------------------------------------------------------


def images(services: Services, procedure_id: str, actor: Actor) -> list[dict[str, Any]]:
    with unit_of_work(services.session_factory) as s:
        _load(s, procedure_id)
        found = linked_images(s, procedure_id)
        _audit(s, services, actor, "read_images", procedure_id, returned=len(found))
        return found


def link_image(
    services: Services,
    procedure_id: str,
    sop_instance_uid: str,
    role: ImageRole | None,
    accept_contradiction: bool,
    actor: Actor,
) -> dict[str, Any]:
    """A person links an image (every stored version of it) to a procedure, optionally setting its role."""
    from service.images import image_view
    from service.procedures.linking import LinkMethod, check

    with services.write_lock, unit_of_work(services.session_factory) as s:
        proc = _load(s, procedure_id, lock=True)
        if proc.status == ProcedureStatus.CANCELLED:
            raise Conflict("images cannot be linked to a cancelled procedure")
        rows = _instance_rows(s, sop_instance_uid)
        latest = rows[-1]
        facts = linker.image_facts({c.key: getattr(latest, c.key) for c in Instance.__table__.columns})
        verdict = check(facts, linker.procedure_facts(proc), LinkMethod.MANUAL, "by a person")
        if verdict.procedure_id is None and not accept_contradiction:
            raise Conflict(
                f"the image contradicts this procedure ({verdict.detail.split(', but ', 1)[-1]}); "
                "send accept_contradiction=true to link it anyway"
            )
        before = {"procedure_id": latest.procedure_id, "role": latest.image_role, "role_source": latest.role_source}
        linker.set_link(s, rows, proc, role, services.link_settings)
        if verdict.procedure_id is None:
            for row in rows:
                row.link_detail = f"linked by a person despite: {verdict.detail.split(', but ', 1)[-1]}"[:500]
        accepted = verdict.procedure_id is None
        _audit(
            s, services, actor, "link_image", proc.id, sop_instance_uid=sop_instance_uid, before=before,
            role=latest.image_role, role_overridden=role is not None, contradiction_accepted=accepted,
        )  # fmt: skip
        s.flush()
        return image_view(latest)


def unlink_image(services: Services, procedure_id: str, sop_instance_uid: str, actor: Actor) -> None:
    with services.write_lock, unit_of_work(services.session_factory) as s:
        proc = _load(s, procedure_id, lock=True)
        rows = _instance_rows(s, sop_instance_uid)
        if rows[-1].procedure_id != proc.id:
            raise NotFound(f"image {sop_instance_uid} is not linked to procedure {procedure_id}")
        before = {"role": rows[-1].image_role, "role_source": rows[-1].role_source}
        linker.set_link(s, rows, None, None, services.link_settings)
        _audit(s, services, actor, "unlink_image", proc.id, sop_instance_uid=sop_instance_uid, before=before)


def _instance_rows(s: Session, sop_instance_uid: str) -> list[Instance]:
    rows = list(s.scalars(select(Instance).where(Instance.sop_instance_uid == sop_instance_uid).order_by(Instance.id)))
    if not rows:
        raise NotFound(f"no image {sop_instance_uid}")
    return rows


# --- documents ---------------------------------------------------------------------------------------------------


def report_pdf(services: Services, procedure_id: str, actor: Actor) -> tuple[bytes, str]:
    """The guidance report of the current version as a PDF, with the first pre and post images; and its ETag."""
    from schemas.procedures import current_catalog
    from service.documents.report_pdf import KeyImage, render_report
    from service.images import stored_path
    from service.imaging.preview import PreviewError, render_preview

    with unit_of_work(services.session_factory) as s:
        proc = _load(s, procedure_id)
        linked = s.scalars(
            select(Instance).where(Instance.procedure_id == proc.id, Instance.image_role.in_(("pre", "post")))
            .order_by(Instance.acquisition_datetime, Instance.id)
        ).all()  # fmt: skip
        keys: list[KeyImage] = []
        for role in ("pre", "post"):
            row = next((r for r in linked if r.image_role == role and r.is_image), None)
            if row is None:
                continue
            try:
                png = render_preview(stored_path(services, row), 0, 600)
            except (PreviewError, OSError, NotFound):
                continue  # the report still renders; the image is listed as missing by its absence
            when = row.acquisition_datetime or row.content_datetime
            keys.append(KeyImage(role, png, f"{row.series_description or ''} {when or ''} SOP {row.sop_instance_uid}"))
        signatures = [signature_view(g) for g in live_signatures(s, proc.id)]
        site = current_catalog().sites.get(proc.site or "")
        pdf = render_report(
            proc.report,
            procedure_id=proc.id,
            version=proc.version,
            status=proc.status,
            site_label=site.label if site else (proc.site or "site not recorded"),
            signatures=signatures,
            images=keys,
        )
        _audit(s, services, actor, "export_report", proc.id, version=proc.version, images=len(keys))
        return pdf, f'"{proc.id}-{proc.version}-{len(keys)}"'


def consent_document(services: Services, procedure_id: str, actor: Actor) -> bytes:
    """The signed consent form attached to the report (a PDF), as it was uploaded."""
    import base64

    with unit_of_work(services.session_factory) as s:
        proc = _load(s, procedure_id)
        document = ((proc.report.get("consent") or {}).get("document") or {}).get("data")
        if not document:
            raise NotFound(f"procedure {procedure_id} has no attached consent document")
        _audit(s, services, actor, "export_consent", proc.id, version=proc.version)
        return base64.b64decode(str(document))
