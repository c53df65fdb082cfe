"""fhir resources and outbox

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "fhir_outbox",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("procedure_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("bundle", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["procedure_id"], ["procedures.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("fhir_outbox", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_fhir_outbox_next_attempt_at"), ["next_attempt_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_fhir_outbox_procedure_id"), ["procedure_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_fhir_outbox_status"), ["status"], unique=False)

    op.create_table(
        "fhir_resources",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("resource_type", sa.String(length=40), nullable=False),
        sa.Column("resource_id", sa.String(length=64), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("procedure_id", sa.String(length=64), nullable=True),
        sa.Column("current", sa.Boolean(), nullable=False),
        sa.Column("last_updated", sa.DateTime(timezone=True), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["procedure_id"], ["procedures.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("resource_type", "resource_id", "version_id", name="uq_fhir_version"),
    )
    with op.batch_alter_table("fhir_resources", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_fhir_resources_current"), ["current"], unique=False)
        batch_op.create_index(batch_op.f("ix_fhir_resources_procedure_id"), ["procedure_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_fhir_resources_resource_id"), ["resource_id"], unique=False)

    with op.batch_alter_table("procedure_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("coding", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("procedure_versions", schema=None) as batch_op:
        batch_op.drop_column("coding")

    with op.batch_alter_table("fhir_resources", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_fhir_resources_resource_id"))
        batch_op.drop_index(batch_op.f("ix_fhir_resources_procedure_id"))
        batch_op.drop_index(batch_op.f("ix_fhir_resources_current"))

    op.drop_table("fhir_resources")
    with op.batch_alter_table("fhir_outbox", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_fhir_outbox_status"))
        batch_op.drop_index(batch_op.f("ix_fhir_outbox_procedure_id"))
        batch_op.drop_index(batch_op.f("ix_fhir_outbox_next_attempt_at"))

    op.drop_table("fhir_outbox")
