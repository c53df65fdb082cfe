"""The migrations build exactly the tables the models declare, on SQLite and PostgreSQL alike."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from service.bootstrap import Services
from service.models import Base


def test_migrated_schema_matches_the_models(services: Services):
    with services.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
