"""Migrations and models describe the same schema, on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from azaguard.store.models import Base


def test_migrations_match_models(db):
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], f"models changed without a migration: {diff}"


def test_migrate_is_idempotent(db):
    from azaguard.store.db import migrate

    migrate(db.engine)  # already at head: no error, no change
    with db.engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() is not None
