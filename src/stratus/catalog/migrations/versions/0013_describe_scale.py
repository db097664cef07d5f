"""DescribeImages at 100,000 images: per-(region, owner, public) image counters, and the image's kind on
its tags and shares

An unfiltered DescribeImages counted every visible image on each call (20,000 index entries for an account
with 20,000 images). `image_counts` holds the number of images per (region, owner_id, is_public), kept by
triggers on `images` in the same transaction as the write, so the public and private totals are one or a
few rows. Tag filters built the set of all images carrying a tag (across every account), and shared images
were looked up one by one: `image_tags` and `image_shares` now carry the image's region, owner, public flag
and creation time (`image_*`), kept by triggers, and are indexed by them, so a tag filter or the shared
kind is an index range of the caller's images, in page order.

The triggers are the only writers of these columns and of `image_counts`: the service code doesn't know
them. On SQLite a table rebuild (Alembic's batch mode on `images`, `image_tags` or `image_shares`) drops
the table's triggers; a later migration doing one must create them again (tests/catalog checks they exist
at head). On PostgreSQL a tag or share row locks its image (FOR SHARE) while it copies the kind, so a
concurrent publish can't leave it stale.

Revision ID: 0013_describe_scale
Revises: 0012_task_subjects
"""

import sqlalchemy as sa
from alembic import op

revision = "0013_describe_scale"
down_revision = "0012_task_subjects"
branch_labels = None
depends_on = None

KIND_COLS = ["image_region", "image_owner_id", "image_public", "image_created_at"]
TAG_INDEXES = {
    "ix_image_tags_key_kind": ["key", "image_region", "image_public", "image_owner_id", "image_created_at",
                               "image_id"],
    "ix_image_tags_key_value_kind": ["key", "value", "image_region", "image_public", "image_owner_id",
                                     "image_created_at", "image_id"],
    "ix_image_tags_value_kind": ["value", "image_region", "image_public", "image_owner_id", "image_created_at",
                                 "image_id"],
}
SHARE_INDEX = ["account_id", "image_region", "image_public", "image_created_at", "image_id", "image_owner_id"]

SQLITE_TRIGGERS = {
    "trg_image_counts_insert": """
        CREATE TRIGGER trg_image_counts_insert AFTER INSERT ON images BEGIN
            INSERT INTO image_counts (region, owner_id, is_public, n)
            VALUES (NEW.region, NEW.owner_id, NEW.is_public, 1)
            ON CONFLICT (region, is_public, owner_id) DO UPDATE SET n = n + 1;
        END""",
    "trg_image_counts_delete": """
        CREATE TRIGGER trg_image_counts_delete AFTER DELETE ON images BEGIN
            UPDATE image_counts SET n = n - 1
            WHERE region = OLD.region AND owner_id = OLD.owner_id AND is_public = OLD.is_public;
        END""",
    "trg_image_counts_update": """
        CREATE TRIGGER trg_image_counts_update AFTER UPDATE OF region, owner_id, is_public ON images BEGIN
            UPDATE image_counts SET n = n - 1
            WHERE region = OLD.region AND owner_id = OLD.owner_id AND is_public = OLD.is_public;
            INSERT INTO image_counts (region, owner_id, is_public, n)
            VALUES (NEW.region, NEW.owner_id, NEW.is_public, 1)
            ON CONFLICT (region, is_public, owner_id) DO UPDATE SET n = n + 1;
        END""",
    "trg_image_kind_update": """
        CREATE TRIGGER trg_image_kind_update AFTER UPDATE OF region, owner_id, is_public, created_at ON images BEGIN
            UPDATE image_tags SET image_region = NEW.region, image_owner_id = NEW.owner_id,
                image_public = NEW.is_public, image_created_at = NEW.created_at WHERE image_id = NEW.id;
            UPDATE image_shares SET image_region = NEW.region, image_owner_id = NEW.owner_id,
                image_public = NEW.is_public, image_created_at = NEW.created_at WHERE image_id = NEW.id;
        END""",
    **{f"trg_{table}_kind": f"""
        CREATE TRIGGER trg_{table}_kind AFTER INSERT ON {table} BEGIN
            UPDATE {table} SET (image_region, image_owner_id, image_public, image_created_at) =
                (SELECT region, owner_id, is_public, created_at FROM images WHERE id = NEW.image_id)
            WHERE image_id = NEW.image_id AND {key} = NEW.{key};
        END""" for table, key in (("image_tags", "key"), ("image_shares", "account_id"))},
}

PG_FUNCTIONS = {
    "stratus_image_counts": """
        CREATE OR REPLACE FUNCTION stratus_image_counts() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            old_first boolean := TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND
                (OLD.region, OLD.is_public, OLD.owner_id) <= (NEW.region, NEW.is_public, NEW.owner_id));
        BEGIN
            -- A publish and an unpublish at once each change two counter rows: both lock them in key
            -- order, or each would hold one and wait for the other (a deadlock, one of them aborted).
            IF old_first THEN
                UPDATE image_counts SET n = n - 1
                WHERE region = OLD.region AND owner_id = OLD.owner_id AND is_public = OLD.is_public;
            END IF;
            IF TG_OP IN ('UPDATE', 'INSERT') THEN
                INSERT INTO image_counts (region, owner_id, is_public, n)
                VALUES (NEW.region, NEW.owner_id, NEW.is_public, 1)
                ON CONFLICT (region, is_public, owner_id) DO UPDATE SET n = image_counts.n + 1;
            END IF;
            IF TG_OP = 'UPDATE' AND NOT old_first THEN
                UPDATE image_counts SET n = n - 1
                WHERE region = OLD.region AND owner_id = OLD.owner_id AND is_public = OLD.is_public;
            END IF;
            RETURN NULL;
        END $$""",
    "stratus_image_kind_update": """
        CREATE OR REPLACE FUNCTION stratus_image_kind_update() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            UPDATE image_tags SET image_region = NEW.region, image_owner_id = NEW.owner_id,
                image_public = NEW.is_public, image_created_at = NEW.created_at WHERE image_id = NEW.id;
            UPDATE image_shares SET image_region = NEW.region, image_owner_id = NEW.owner_id,
                image_public = NEW.is_public, image_created_at = NEW.created_at WHERE image_id = NEW.id;
            RETURN NULL;
        END $$""",
    # BEFORE INSERT: the row is filled as it is written. FOR SHARE waits for a concurrent update of the image
    # (publish) to commit and then reads its new version, which that update's trigger could not see here.
    "stratus_image_kind_copy": """
        CREATE OR REPLACE FUNCTION stratus_image_kind_copy() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            SELECT region, owner_id, is_public, created_at
            INTO NEW.image_region, NEW.image_owner_id, NEW.image_public, NEW.image_created_at
            FROM images WHERE id = NEW.image_id FOR SHARE;
            RETURN NEW;
        END $$""",
}
PG_TRIGGERS = {
    "trg_image_counts": "AFTER INSERT OR DELETE OR UPDATE OF region, owner_id, is_public ON images "
                        "FOR EACH ROW EXECUTE FUNCTION stratus_image_counts()",
    "trg_image_kind_update": "AFTER UPDATE OF region, owner_id, is_public, created_at ON images "
                             "FOR EACH ROW EXECUTE FUNCTION stratus_image_kind_update()",
    "trg_image_tags_kind": "BEFORE INSERT ON image_tags FOR EACH ROW EXECUTE FUNCTION stratus_image_kind_copy()",
    "trg_image_shares_kind": "BEFORE INSERT ON image_shares FOR EACH ROW EXECUTE FUNCTION stratus_image_kind_copy()",
}


def _kind_columns() -> list[sa.Column]:
    return [sa.Column("image_region", sa.String(64), nullable=True),
            sa.Column("image_owner_id", sa.String(20), nullable=True),
            sa.Column("image_public", sa.Boolean(), nullable=True),
            sa.Column("image_created_at", sa.Float(), nullable=True)]


def upgrade() -> None:
    op.create_table(
        "image_counts",
        sa.Column("region", sa.String(64), primary_key=True),
        sa.Column("is_public", sa.Boolean(), primary_key=True),  # the public images of a region: one range
        sa.Column("owner_id", sa.String(20), primary_key=True),
        sa.Column("n", sa.Integer(), nullable=False),
    )
    for table in ("image_tags", "image_shares"):
        for column in _kind_columns():
            op.add_column(table, column)
    # Backfill before the triggers exist, all in this migration's transaction.
    op.execute("INSERT INTO image_counts (region, owner_id, is_public, n) "
               "SELECT region, owner_id, is_public, count(*) FROM images GROUP BY region, owner_id, is_public")
    for table in ("image_tags", "image_shares"):
        op.execute(f"UPDATE {table} SET (image_region, image_owner_id, image_public, image_created_at) = "
                   f"(SELECT region, owner_id, is_public, created_at FROM images i WHERE i.id = {table}.image_id)")
    op.drop_index("ix_image_tags_key_value", "image_tags")
    op.drop_index("ix_image_tags_value", "image_tags")
    for name, cols in TAG_INDEXES.items():
        op.create_index(name, "image_tags", cols)
    op.drop_index("ix_image_shares_account_image", "image_shares")
    op.create_index("ix_image_shares_account_kind", "image_shares", SHARE_INDEX)
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        for body in PG_FUNCTIONS.values():
            bind.exec_driver_sql(body)
        for name, spec in PG_TRIGGERS.items():
            bind.exec_driver_sql(f"CREATE TRIGGER {name} {spec}")
    else:
        for body in SQLITE_TRIGGERS.values():
            bind.exec_driver_sql(body)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        for name, spec in PG_TRIGGERS.items():
            bind.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name} ON {spec.split(' ON ')[1].split()[0]}")
        for name in PG_FUNCTIONS:
            bind.exec_driver_sql(f"DROP FUNCTION IF EXISTS {name}()")
    else:
        for name in SQLITE_TRIGGERS:
            bind.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name}")
    op.drop_index("ix_image_shares_account_kind", "image_shares")
    op.create_index("ix_image_shares_account_image", "image_shares", ["account_id", "image_id"])
    for name in TAG_INDEXES:
        op.drop_index(name, "image_tags")
    op.create_index("ix_image_tags_key_value", "image_tags", ["key", "value", "image_id"])
    op.create_index("ix_image_tags_value", "image_tags", ["value", "image_id"])
    for table in ("image_tags", "image_shares"):
        with op.batch_alter_table(table) as batch:
            for column in KIND_COLS:
                batch.drop_column(column)
    op.drop_table("image_counts")
