"""compute hosts: the hosts table, the host an instance is placed on and a task is bound to, bases per host

Revision ID: 0008_compute_hosts
Revises: 0007

Bases are a cache of materialized image disks; their rows are carried over as the host `local` (the
single-process server, whose directory they are in), and the primary key grows the host.
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_compute_hosts"
down_revision = "0007"
branch_labels = None
depends_on = None

_COLUMNS = ("region", "manifest_digest", "path", "state", "virtual_size", "builder", "build_expires_at",
            "created_at")


def _bases(with_host: bool) -> None:
    """Rebuild `bases` with or without the host in its key, keeping its rows."""
    conn = op.get_bind()
    old = sa.Table("bases", sa.MetaData(), autoload_with=conn)
    rows = [dict(r._mapping) for r in conn.execute(sa.select(old))]
    op.drop_table("bases")
    key = [sa.Column("host", sa.String(length=64), nullable=False)] if with_host else []
    table = op.create_table(
        "bases",
        *key,
        sa.Column("region", sa.String(length=64), nullable=False),
        sa.Column("manifest_digest", sa.String(length=64), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("virtual_size", sa.BigInteger(), nullable=False),
        sa.Column("builder", sa.String(length=64), nullable=True),
        sa.Column("build_expires_at", sa.Float(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint(*(["host"] if with_host else []), "region", "manifest_digest"),
    )
    seen = set()
    keep = []
    for r in rows:
        if not with_host and (r["region"], r["manifest_digest"]) in seen:
            continue  # two hosts' bases of one disk: the downgraded catalog keeps one row
        seen.add((r["region"], r["manifest_digest"]))
        keep.append({**{c: r[c] for c in _COLUMNS}, **({"host": r.get("host") or "local"} if with_host else {})})
    if keep:
        op.bulk_insert(table, keep)


def upgrade() -> None:
    op.create_table(
        "hosts",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("regions", sa.Text(), nullable=False),
        sa.Column("compute", sa.String(length=16), nullable=False),
        sa.Column("capacity_instances", sa.Integer(), nullable=False),
        sa.Column("process", sa.String(length=64), nullable=True),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("heartbeat_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    with op.batch_alter_table("instances") as batch:
        batch.add_column(sa.Column("compute_host", sa.String(length=64), nullable=False, server_default="local"))
        batch.create_index("ix_instances_compute_host", ["compute_host"])
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("host", sa.String(length=64), nullable=True))
    _bases(with_host=True)


def downgrade() -> None:
    _bases(with_host=False)
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("host")
    with op.batch_alter_table("instances") as batch:
        batch.drop_index("ix_instances_compute_host")
        batch.drop_column("compute_host")
    op.drop_table("hosts")
