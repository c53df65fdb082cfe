"""Alembic environment: the URL comes from the caller (service.migrate), never from a file."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from service.models import Base

config = context.config


def run_migrations_online() -> None:
    connection: Connection | None = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations through `usgi migrate` (service.migrate.upgrade)")
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations_online()
