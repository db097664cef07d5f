"""DescribeImages at 100,000 images: covering indexes for every kind and filter, tags by key, trigrams

The two kind indexes become covering ones: each kind (the caller's own, public, shared) is an index range
whose entries also carry every column a DescribeImages filter compares, so counting and paging with any
filter reads the index alone instead of looking up one table row per image (~5 µs each: 100 ms for 20,000
images on SQLite). Shared images are found by id in a third covering index. Tag filters probe a set built
from an index on (key, value). On PostgreSQL, trigram GIN indexes (pg_trgm) serve the substring filters
(`image-name`, `platform`) when the pattern is selective; where the extension can't be created the migration
says so and goes on without them (the filters still work, by the covering scan).

Revision ID: 0011_describe_indexes
Revises: 0010_chunk_owners
"""

import logging

from alembic import op
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

revision = "0011_describe_indexes"
down_revision = "0010_chunk_owners"
branch_labels = None
depends_on = None

FILTERED = ["state", "architecture", "os_type", "source", "family", "platform", "name"]
OWNER_COLS = ["region", "owner_id", "is_public", "created_at", "id", *FILTERED]
PUBLIC_COLS = ["region", "is_public", "created_at", "id", *FILTERED]
ID_COLS = ["id", "region", "owner_id", "is_public", "created_at", *FILTERED]
TRIGRAM = {"ix_images_name_trgm": "name", "ix_images_platform_trgm": "platform"}

log = logging.getLogger("alembic.runtime.migration")


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.drop_index("ix_images_region_public_created")
        batch.drop_index("ix_images_region_owner_public_created")
        batch.create_index("ix_images_owner_cover", OWNER_COLS)
        batch.create_index("ix_images_public_cover", PUBLIC_COLS)
        batch.create_index("ix_images_id_cover", ID_COLS)
    op.create_index("ix_image_tags_key_value", "image_tags", ["key", "value", "image_id"])
    op.create_index("ix_image_tags_value", "image_tags", ["value", "image_id"])
    op.create_index("ix_image_shares_account_image", "image_shares", ["account_id", "image_id"])
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    schema = _trgm_schema(bind)
    if schema is None:
        return
    for name, column in TRIGRAM.items():
        opclass = f'"{schema}".gin_trgm_ops'
        bind.exec_driver_sql(f"CREATE INDEX IF NOT EXISTS {name} ON images USING gin ({column} {opclass})")


def _trgm_schema(bind: Connection) -> str | None:
    """The schema pg_trgm lives in, creating it in `public` if it isn't there (a catalog in its own schema
    shares the one extension, and dropping that schema must not drop it); None if it can't be created."""
    query = ("SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
             "WHERE e.extname = 'pg_trgm'")
    schema = bind.exec_driver_sql(query).scalar()
    if schema is not None:
        return str(schema)
    error = ""
    for create in ("CREATE EXTENSION IF NOT EXISTS pg_trgm SCHEMA public", "CREATE EXTENSION IF NOT EXISTS pg_trgm"):
        try:
            with bind.begin_nested():
                bind.exec_driver_sql(create)
            return str(bind.exec_driver_sql(query).scalar())
        except DBAPIError as exc:
            error = str(exc.orig).strip()
    log.warning("pg_trgm can't be created (%s): the image-name and platform filters scan the caller's images "
                "instead of a trigram index; run `CREATE EXTENSION pg_trgm` as a superuser, then migrate again",
                error)
    return None


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        for name in TRIGRAM:
            bind.exec_driver_sql(f"DROP INDEX IF EXISTS {name}")
    op.drop_index("ix_image_shares_account_image", "image_shares")
    op.drop_index("ix_image_tags_value", "image_tags")
    op.drop_index("ix_image_tags_key_value", "image_tags")
    with op.batch_alter_table("images") as batch:
        batch.drop_index("ix_images_id_cover")
        batch.drop_index("ix_images_public_cover")
        batch.drop_index("ix_images_owner_cover")
        batch.create_index("ix_images_region_owner_public_created", ["region", "owner_id", "is_public", "created_at"])
        batch.create_index("ix_images_region_public_created", ["region", "is_public", "created_at"])
