"""The Alembic migrations build exactly the schema the models declare, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection

from stratus.catalog import migrate
from stratus.catalog.db import Database, open_database
from stratus.catalog.models import TRIGRAM_INDEXES, Base
from tests.conftest import new_db_url


def downgrade(db: Database, revision: str) -> None:
    with db.write_engine.connect() as conn:
        cfg = migrate.alembic_config()
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)
        conn.commit()


def test_migrations_match_the_models(db_url: str) -> None:
    db = open_database(db_url)
    try:
        migrate.upgrade(db)
        migrate.upgrade(db)  # idempotent: a second run changes nothing
        with db.write_engine.connect() as conn:
            # The PostgreSQL-only trigram indexes are the migration's, not the models' (models.TRIGRAM_INDEXES).
            keep = lambda _obj, name, *_: name not in TRIGRAM_INDEXES  # noqa: E731
            ctx = MigrationContext.configure(conn, opts={"include_object": keep})
            diff = compare_metadata(ctx, Base.metadata)
        assert diff == [], diff
    finally:
        db.dispose()


def test_0007_converts_json_manifests_to_binary_and_back(tmp_path: Path) -> None:
    """An existing catalog upgrades: JSON manifest rows become binary ones with the same digest (so no
    reference changes), and the downgrade restores the exact JSON."""
    import os

    import sqlalchemy as sa

    from stratus.domain.manifest import DiskManifest
    from stratus.service.manifests import parse_manifest

    manifests = [
        DiskManifest(3 * 1048576 + 512, 1048576, [os.urandom(32).hex(), None, None, os.urandom(32).hex()]),
        DiskManifest(9 * 65536, 65536, [None] * 9),
    ]
    db = open_database(new_db_url(tmp_path))  # a catalog of its own, built up to before 0007
    table = sa.table("manifests", sa.column("region"), sa.column("digest"), sa.column("body", sa.LargeBinary),
                     sa.column("virtual_size"), sa.column("created_at"))
    try:
        migrate.upgrade(db, "0006")
        with db.write_engine.begin() as conn:
            conn.execute(sa.delete(table))
            for m in manifests:
                conn.execute(sa.insert(table).values(region="r1", digest=m.digest(), body=m.to_json(),
                                                     virtual_size=m.virtual_size, created_at=0.0))
        migrate.upgrade(db)
        with db.write_engine.connect() as conn:
            rows = dict(conn.execute(sa.select(table.c.digest, table.c.body)).all())
        for m in manifests:
            body = bytes(rows[m.digest()])
            assert body.startswith(b"SMF2") and len(body) < len(m.to_json())
            assert parse_manifest(m.digest(), body) == m
        downgrade(db, "0006")
        with db.write_engine.connect() as conn:
            rows = dict(conn.execute(sa.select(table.c.digest, table.c.body)).all())
        assert {d: bytes(b) for d, b in rows.items()} == {m.digest(): m.to_json() for m in manifests}
    finally:
        db.dispose()


def test_0008_keeps_bases_as_the_host_local_and_back(tmp_path: Path, db_url: str) -> None:
    """Bases of a catalog from before compute hosts are the single host's (`local`), in its directory as
    before; instances are placed on `local`; the downgrade gives the rows back without a host."""
    import sqlalchemy as sa

    assert db_url  # on both databases
    db = open_database(new_db_url(tmp_path))
    bases = sa.table("bases", sa.column("region"), sa.column("manifest_digest"), sa.column("path"),
                     sa.column("state"), sa.column("virtual_size"), sa.column("created_at"))
    row = {"region": "r1", "manifest_digest": "ab" * 32, "path": "/var/host/bases/ab.raw", "state": "READY",
           "virtual_size": 1048576, "created_at": 0.0}
    try:
        migrate.upgrade(db, "0007")
        with db.write_engine.begin() as conn:
            conn.execute(sa.insert(bases).values(**row))
        migrate.upgrade(db)
        with db.write_engine.connect() as conn:
            got = conn.execute(sa.text("SELECT host, region, manifest_digest, path FROM bases")).all()
        assert [tuple(r) for r in got] == [("local", "r1", "ab" * 32, "/var/host/bases/ab.raw")]
        downgrade(db, "0007")
        with db.write_engine.connect() as conn:
            got = [dict(r._mapping) for r in conn.execute(sa.select(bases))]
            columns = {c["name"] for c in sa.inspect(conn).get_columns("instances")}
        assert got == [row] and "compute_host" not in columns
    finally:
        db.dispose()


def test_0009_drops_the_instance_columns_nothing_wrote_and_the_downgrade_restores_them(
        tmp_path: Path, db_url: str) -> None:
    import sqlalchemy as sa

    assert db_url  # on both databases
    db = open_database(new_db_url(tmp_path))

    def columns() -> set[str]:
        with db.write_engine.connect() as conn:
            return {c["name"] for c in sa.inspect(conn).get_columns("instances")}

    try:
        migrate.upgrade(db, "0008_compute_hosts")
        assert {"vm_pid", "vm_owner"} <= columns()
        migrate.upgrade(db, "0009_drop_unused_columns")
        assert not {"vm_pid", "vm_owner"} & columns() and "state" in columns()
        downgrade(db, "0008_compute_hosts")
        assert {"vm_pid", "vm_owner"} <= columns()
    finally:
        db.dispose()


def test_0012_fills_the_subjects_of_tasks_in_flight_and_the_mutex_lookups_use_their_indexes(
        tmp_path: Path, db_url: str) -> None:
    """A capture, a reset and a copy queued or running across the upgrade keep their mutex: their subject
    columns are filled from the payload. Finished tasks and the other kinds have none. The mutex lookups
    (service/capture.py, service/images.py) are served by the new partial indexes."""
    import json

    import sqlalchemy as sa

    assert db_url  # on both databases
    db = open_database(new_db_url(tmp_path))
    tasks = sa.table("tasks", sa.column("id"), sa.column("kind"), sa.column("state"), sa.column("payload"),
                     sa.column("stage"), sa.column("progress"), sa.column("attempts"), sa.column("created_at"),
                     sa.column("updated_at"))
    before = {  # id: (kind, state, payload)
        1: ("capture", "RUNNING", {"instance_id": "ins-capture1", "disk_ids": ["disk-00000001"]}),
        2: ("capture", "DONE", {"instance_id": "ins-captured", "disk_ids": ["disk-00000002"]}),
        3: ("instance", "QUEUED", {"op": "reset", "instance_ids": ["ins-reset001"], "image_id": "img-00000003"}),
        4: ("instance", "QUEUED", {"op": "start", "instance_ids": ["ins-start001", "ins-start002"]}),
        5: ("sync", "QUEUED", {"source_image_id": "img-source01", "source_region": "r1", "disks": []}),
        6: ("sync", "FAILED", {"source_image_id": "img-source02", "source_region": "r1", "disks": []}),
        7: ("launch", "RUNNING", {"instance_ids": ["ins-launch01"]}),
    }
    try:
        migrate.upgrade(db, "0011_describe_indexes")
        with db.write_engine.begin() as conn:
            conn.execute(sa.insert(tasks), [
                {"id": i, "kind": k, "state": st, "payload": json.dumps(p), "stage": "queued", "progress": 0.0,
                 "attempts": 0, "created_at": 0.0, "updated_at": 0.0} for i, (k, st, p) in before.items()])
        migrate.upgrade(db)
        with db.write_engine.connect() as conn:
            got = {r.id: (r.instance_id, r.source_image_id) for r in conn.execute(
                sa.text("SELECT id, instance_id, source_image_id FROM tasks"))}
            assert got == {1: ("ins-capture1", None), 2: (None, None), 3: ("ins-reset001", None), 4: (None, None),
                           5: (None, "img-source01"), 6: (None, None), 7: (None, None)}
            plans = {index: _plan(db, conn, f"SELECT id FROM tasks WHERE kind = '{kind}' AND "
                                            f"state IN ('QUEUED', 'RUNNING') AND {column} = '{value}'")
                     for index, kind, column, value in [
                         ("ix_tasks_instance_kind_state", "capture", "instance_id", "ins-capture1"),
                         ("ix_tasks_source_image_kind_state", "sync", "source_image_id", "img-source01")]}
        for index, plan in plans.items():
            assert index in plan, plan
        downgrade(db, "0011_describe_indexes")
        with db.write_engine.connect() as conn:
            columns = {c["name"] for c in sa.inspect(conn).get_columns("tasks")}
            kept = conn.execute(sa.select(sa.func.count()).select_from(tasks)).scalar()
        assert not {"instance_id", "source_image_id"} & columns and kept == len(before)
    finally:
        db.dispose()


def _plan(db: Database, conn: Connection, query: str) -> str:
    """The query plan as one string. On PostgreSQL sequential scans are turned off for it: on a table of
    seven rows the planner would rightly prefer one, and the question is whether the index can serve."""
    import sqlalchemy as sa

    if db.is_sqlite:
        return " ; ".join(r[3] for r in conn.execute(sa.text("EXPLAIN QUERY PLAN " + query)))
    conn.execute(sa.text("SET LOCAL enable_seqscan = off"))  # until the caller's transaction ends
    return " ; ".join(r[0] for r in conn.execute(sa.text("EXPLAIN " + query)))
