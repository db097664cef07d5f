"""Alembic environment: the connection is handed in by `stratus.catalog.migrate`."""

from alembic import context

from stratus.catalog.models import Base

config = context.config
target_metadata = Base.metadata

connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through stratus.catalog.migrate.upgrade()")
context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
