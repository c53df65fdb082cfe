"""procedures, versions, signatures and image links

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "procedures",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("report", sa.JSON(), nullable=False),
        sa.Column("patient_id_system", sa.String(length=255), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("encounter_id", sa.String(length=64), nullable=True),
        sa.Column("accession_number", sa.String(length=16), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("scheduled_station_ae_title", sa.String(length=16), nullable=True),
        sa.Column("site", sa.String(length=64), nullable=True),
        sa.Column("laterality", sa.String(length=16), nullable=True),
        sa.Column("educational", sa.Boolean(), nullable=False),
        sa.Column("scheduled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("injected_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cancel_reason", sa.String(length=500), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("procedures", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_procedures_accession_number"), ["accession_number"], unique=False)
        batch_op.create_index(batch_op.f("ix_procedures_encounter_id"), ["encounter_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_procedures_patient_id"), ["patient_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_procedures_scheduled_at"), ["scheduled_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_procedures_status"), ["status"], unique=False)
        batch_op.create_index(batch_op.f("ix_procedures_study_instance_uid"), ["study_instance_uid"], unique=False)

    op.create_table(
        "procedure_signatures",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("procedure_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("capacity", sa.String(length=16), nullable=False),
        sa.Column("signer", sa.String(length=200), nullable=False),
        sa.Column("token_id", sa.Integer(), nullable=False),
        sa.Column("statement", sa.String(length=1000), nullable=False),
        sa.Column("signed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("voided_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["procedure_id"], ["procedures.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("procedure_signatures", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_procedure_signatures_procedure_id"), ["procedure_id"], unique=False)

    op.create_table(
        "procedure_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("procedure_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("report", sa.JSON(), nullable=False),
        sa.Column("reason", sa.String(length=1000), nullable=True),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("changed_by", sa.String(length=200), nullable=False),
        sa.Column("changed_by_token_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["procedure_id"], ["procedures.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("procedure_id", "version", name="uq_procedure_version"),
    )
    with op.batch_alter_table("procedure_versions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_procedure_versions_procedure_id"), ["procedure_id"], unique=False)

    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("link_status", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("link_method", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("link_detail", sa.String(length=500), nullable=True))
        batch_op.add_column(sa.Column("role_source", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("role_reason", sa.String(length=200), nullable=True))
        batch_op.create_index(batch_op.f("ix_instances_link_status"), ["link_status"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_instances_link_status"))
        batch_op.drop_column("role_reason")
        batch_op.drop_column("role_source")
        batch_op.drop_column("link_detail")
        batch_op.drop_column("link_method")
        batch_op.drop_column("link_status")

    with op.batch_alter_table("procedure_versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_procedure_versions_procedure_id"))

    op.drop_table("procedure_versions")
    with op.batch_alter_table("procedure_signatures", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_procedure_signatures_procedure_id"))

    op.drop_table("procedure_signatures")
    with op.batch_alter_table("procedures", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_procedures_study_instance_uid"))
        batch_op.drop_index(batch_op.f("ix_procedures_status"))
        batch_op.drop_index(batch_op.f("ix_procedures_scheduled_at"))
        batch_op.drop_index(batch_op.f("ix_procedures_patient_id"))
        batch_op.drop_index(batch_op.f("ix_procedures_encounter_id"))
        batch_op.drop_index(batch_op.f("ix_procedures_accession_number"))

    op.drop_table("procedures")
