"""Database tables (SQLAlchemy 2). Schema changes go through Alembic (service/migrations)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

UID = String(64)


class Base(DeclarativeBase):
    pass


class ApiToken(Base):
    """A bearer token; only its SHA-256 is kept."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(20))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class DicomPeer(Base):
    """A modality allowed to associate; host/port is where late Storage Commitment results go."""

    __tablename__ = "dicom_peers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ae_title: Mapped[str] = mapped_column(String(16), unique=True)
    host: Mapped[str | None] = mapped_column(String(255), nullable=True)
    port: Mapped[int | None] = mapped_column(Integer, nullable=True)
    description: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Instance(Base):
    """One stored DICOM object (one version of a SOP Instance UID)."""

    __tablename__ = "instances"
    # Every index is written by every stored image (migration 0005 dropped two that no query used): the
    # unique index serves look-ups by SOP Instance UID, its leading column.
    __table_args__ = (UniqueConstraint("sop_instance_uid", "sha256", name="uq_instance_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    study_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    series_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    accession_number: Mapped[str | None] = mapped_column(String(16), index=True, nullable=True)
    patient_id: Mapped[str | None] = mapped_column(String(64), index=True, nullable=True)
    issuer_of_patient_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    patient_name: Mapped[str | None] = mapped_column(String(324), nullable=True)
    admission_id: Mapped[str | None] = mapped_column(String(64), index=True, nullable=True)
    study_datetime: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    series_datetime: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    acquisition_datetime: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    content_datetime: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    modality: Mapped[str | None] = mapped_column(String(16), nullable=True)
    laterality: Mapped[str | None] = mapped_column(String(16), nullable=True)
    body_part: Mapped[str | None] = mapped_column(String(64), nullable=True)
    series_description: Mapped[str | None] = mapped_column(String(64), nullable=True)
    protocol_name: Mapped[str | None] = mapped_column(String(64), nullable=True)
    image_comments: Mapped[str | None] = mapped_column(Text, nullable=True)
    number_of_frames: Mapped[int | None] = mapped_column(Integer, nullable=True)
    rows: Mapped[int | None] = mapped_column(Integer, nullable=True)
    columns: Mapped[int | None] = mapped_column(Integer, nullable=True)
    photometric_interpretation: Mapped[str | None] = mapped_column(String(16), nullable=True)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    is_image: Mapped[bool] = mapped_column(Boolean)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(String(255), index=True)
    calling_ae_title: Mapped[str | None] = mapped_column(String(16), nullable=True)
    peer_address: Mapped[str | None] = mapped_column(String(64), nullable=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    # True when another stored version of the same SOP Instance UID has different bytes.
    conflict: Mapped[bool] = mapped_column(Boolean, default=False)
    warnings: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Set by the linker (service/procedures/linker.py); NULL means unlinked.
    procedure_id: Mapped[str | None] = mapped_column(String(64), index=True, nullable=True)
    image_role: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # NULL: not yet looked at by the linker; else a LinkStatus (linked, unmatched, ambiguous, contradiction,
    # unlinked = a person took it off a procedure and the linker leaves it alone).
    link_status: Mapped[str | None] = mapped_column(String(16), index=True, nullable=True)
    link_method: Mapped[str | None] = mapped_column(String(16), nullable=True)  # accession, study, visit, ...
    link_detail: Mapped[str | None] = mapped_column(String(500), nullable=True)
    role_source: Mapped[str | None] = mapped_column(String(16), nullable=True)  # marker, time, none, manual
    role_reason: Mapped[str | None] = mapped_column(String(200), nullable=True)


class PerformedProcedureStep(Base):
    """A Modality Performed Procedure Step (N-CREATE / N-SET)."""

    __tablename__ = "performed_procedure_steps"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    status: Mapped[str] = mapped_column(String(16))
    study_instance_uid: Mapped[str | None] = mapped_column(UID, index=True, nullable=True)
    accession_number: Mapped[str | None] = mapped_column(String(16), index=True, nullable=True)
    patient_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    performed_station_ae_title: Mapped[str | None] = mapped_column(String(16), nullable=True)
    procedure_step_id: Mapped[str | None] = mapped_column(String(16), nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    discontinuation_reason: Mapped[str | None] = mapped_column(String(200), nullable=True)
    calling_ae_title: Mapped[str | None] = mapped_column(String(16), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    instances: Mapped[list[PerformedInstance]] = relationship(
        back_populates="step", cascade="all, delete-orphan", order_by="PerformedInstance.id"
    )


class PerformedInstance(Base):
    """An instance a performed procedure step says it produced."""

    __tablename__ = "performed_instances"
    __table_args__ = (UniqueConstraint("step_id", "sop_instance_uid", name="uq_performed_instance"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    step_id: Mapped[int] = mapped_column(ForeignKey("performed_procedure_steps.id", ondelete="CASCADE"))
    series_instance_uid: Mapped[str | None] = mapped_column(UID, nullable=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    sop_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    step: Mapped[PerformedProcedureStep] = relationship(back_populates="instances")


class StorageCommitment(Base):
    """One Storage Commitment request (N-ACTION) and the result reported back (N-EVENT-REPORT)."""

    __tablename__ = "storage_commitments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    transaction_uid: Mapped[str] = mapped_column(UID, index=True)
    calling_ae_title: Mapped[str] = mapped_column(String(16))
    requested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # [{"sop_class_uid", "sop_instance_uid", "committed": bool, "reason": int|None}]
    result: Mapped[list[dict[str, object]]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))  # pending | reported | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    reported_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_error: Mapped[str | None] = mapped_column(String(500), nullable=True)


class AuditEvent(Base):
    """Who did what to which record, from where (reads of patient data included)."""

    __tablename__ = "audit_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    actor: Mapped[str] = mapped_column(String(200))
    role: Mapped[str | None] = mapped_column(String(20), nullable=True)
    action: Mapped[str] = mapped_column(String(40))
    entity_type: Mapped[str] = mapped_column(String(40))
    entity_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    source: Mapped[str | None] = mapped_column(String(64), nullable=True)
    detail: Mapped[dict[str, object] | None] = mapped_column(JSON, nullable=True)


class IngestCheckpoint(Base):
    """One row: every index row committed before ``durable_before`` is known to be on disk.

    On SQLite the ingest path commits without fsync; a periodic fsync'd commit (a barrier) advances this
    time. After an unclean stop, stored files newer than it that have no index row are indexed again.
    """

    __tablename__ = "ingest_checkpoints"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    durable_before: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Procedure(Base):
    """The aggregate at the centre (DESIGN.md §1). ``report`` is the current version's body; the columns
    beside it are copies of the fields the worklist, the linker and searches look up."""

    __tablename__ = "procedures"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), index=True)
    report: Mapped[dict[str, object]] = mapped_column(JSON)
    patient_id_system: Mapped[str] = mapped_column(String(255))
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    encounter_id: Mapped[str | None] = mapped_column(String(64), index=True, nullable=True)
    accession_number: Mapped[str] = mapped_column(String(16), index=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    scheduled_station_ae_title: Mapped[str | None] = mapped_column(String(16), nullable=True)
    site: Mapped[str | None] = mapped_column(String(64), nullable=True)
    laterality: Mapped[str | None] = mapped_column(String(16), nullable=True)
    educational: Mapped[bool] = mapped_column(Boolean, default=False)
    scheduled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True, nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    injected_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    cancel_reason: Mapped[str | None] = mapped_column(String(500), nullable=True)


class ProcedureVersion(Base):
    """Every stored state of a procedure's report, never changed once written."""

    __tablename__ = "procedure_versions"
    __table_args__ = (UniqueConstraint("procedure_id", "version", name="uq_procedure_version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    procedure_id: Mapped[str] = mapped_column(ForeignKey("procedures.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(16))  # create, update, start, finalize, cosign, amend, cancel
    report: Mapped[dict[str, object]] = mapped_column(JSON)
    reason: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    changed_by: Mapped[str] = mapped_column(String(200))
    changed_by_token_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # The coding engine's result for a final or amended version (service/coding), as JSON.
    coding: Mapped[dict[str, object] | None] = mapped_column(JSON, nullable=True)


class ProcedureSignature(Base):
    """An attestation: who signed which version, as performer or supervisor, with which token."""

    __tablename__ = "procedure_signatures"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    procedure_id: Mapped[str] = mapped_column(ForeignKey("procedures.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    capacity: Mapped[str] = mapped_column(String(16))  # performer | supervisor | amender
    signer: Mapped[str] = mapped_column(String(200))
    token_id: Mapped[int] = mapped_column(Integer)
    statement: Mapped[str] = mapped_column(String(1000))
    signed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Set when a later edit of the draft voids a signature given before it.
    voided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class FhirResource(Base):
    """One version of one FHIR resource the service emits (served by /fhir, pushed to the EHR)."""

    __tablename__ = "fhir_resources"
    __table_args__ = (UniqueConstraint("resource_type", "resource_id", "version_id", name="uq_fhir_version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    resource_type: Mapped[str] = mapped_column(String(40))
    resource_id: Mapped[str] = mapped_column(String(64), index=True)
    version_id: Mapped[int] = mapped_column(Integer)
    # NULL for definitions shared by every procedure (our CodeSystems).
    procedure_id: Mapped[str | None] = mapped_column(
        ForeignKey("procedures.id", ondelete="CASCADE"), index=True, nullable=True
    )
    current: Mapped[bool] = mapped_column(Boolean, index=True)
    last_updated: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    body: Mapped[dict[str, object]] = mapped_column(JSON)


class OutboxMessage(Base):
    """A transaction Bundle waiting to be delivered to the EHR, written in the transaction that finalised."""

    __tablename__ = "fhir_outbox"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    procedure_id: Mapped[str] = mapped_column(ForeignKey("procedures.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    bundle: Mapped[dict[str, object]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), index=True)  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
