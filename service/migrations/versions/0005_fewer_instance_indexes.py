"""two indexes of instances that no query uses

Every stored image writes every index of ``instances`` (a WAL page each on SQLite). Look-ups by SOP Instance
UID use the unique (sop_instance_uid, sha256) index, whose leading column it is; the date filter is on
coalesce(acquisition, content, study), which a plain index on content_datetime cannot serve.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_instances_sop_instance_uid", table_name="instances")
    op.drop_index("ix_instances_content_datetime", table_name="instances")


def downgrade() -> None:
    op.create_index("ix_instances_content_datetime", "instances", ["content_datetime"], unique=False)
    op.create_index("ix_instances_sop_instance_uid", "instances", ["sop_instance_uid"], unique=False)
