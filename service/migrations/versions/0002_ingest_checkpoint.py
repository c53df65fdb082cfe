"""ingest checkpoint (durability barrier of the index) and an index on instances.storage_key

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "ingest_checkpoints",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("durable_before", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.bulk_insert(table, [{"id": 1, "durable_before": datetime.now(UTC)}])
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_instances_storage_key"), ["storage_key"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_instances_storage_key"))
    op.drop_table("ingest_checkpoints")
