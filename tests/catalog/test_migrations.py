"""The Alembic migrations build exactly the schema the models declare, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from stratus.catalog import migrate
from stratus.catalog.db import open_database
from stratus.catalog.models import Base


def test_migrations_match_the_models(db_url: str) -> None:
    db = open_database(db_url)
    try:
        migrate.upgrade(db)
        migrate.upgrade(db)  # idempotent: a second run changes nothing
        with db.write_engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == [], diff
    finally:
        db.dispose()
