"""Migration 0013: the image counters and the image's kind copied onto its tags and shares stay exact under
concurrent imports, deletes, shares and publishes (they are kept by triggers, in the writer's transaction),
are backfilled by the migration, and DescribeImages' answers from them equal a plain count. On SQLite and on
PostgreSQL."""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import delete, insert, select, text, update

from stratus.catalog import migrate
from stratus.catalog.db import Database, open_database
from stratus.catalog.models import Account, Image, ImageShare, ImageTag
from stratus.config import load_settings
from stratus.service.context import Caller, Services
from stratus.service.image_describe import describe_images
from tests.catalog.test_migrations import downgrade
from tests.conftest import new_db_url

REGIONS = ("ap-guangzhou", "ap-shanghai")
ACCOUNTS = ("acc-a0000001", "acc-b0000001", "acc-c0000001")
TRIGGERS = {"sqlite": {"trg_image_counts_insert", "trg_image_counts_delete", "trg_image_counts_update",
                       "trg_image_kind_update", "trg_image_tags_kind", "trg_image_shares_kind"},
            "postgresql": {"trg_image_counts", "trg_image_kind_update", "trg_image_tags_kind",
                           "trg_image_shares_kind"}}


def _image(image_id: str, owner: str, region: str, public: bool, created: float) -> dict[str, Any]:
    return {"id": image_id, "region": region, "owner_id": owner, "name": image_id, "state": "NORMAL",
            "source": "EXTERNAL_IMPORT", "is_public": public, "created_at": created, "updated_at": created}


def _assert_exact(db: Database) -> None:
    """The counters equal a count of the images, and every tag and share row carries its image's kind."""
    with db.read_connection() as conn:
        counted = {tuple(r[:3]): r[3] for r in conn.execute(text(
            "SELECT region, owner_id, is_public, count(*) FROM images GROUP BY region, owner_id, is_public"))}
        kept = {tuple(r[:3]): r[3] for r in conn.execute(text(
            "SELECT region, owner_id, is_public, n FROM image_counts")) if r[3]}
        assert kept == counted
        for table in ("image_tags", "image_shares"):
            stale = conn.execute(text(
                f"SELECT count(*) FROM {table} t JOIN images i ON i.id = t.image_id WHERE t.image_region IS NULL "
                "OR t.image_region != i.region OR t.image_owner_id != i.owner_id OR t.image_public != i.is_public "
                "OR t.image_created_at != i.created_at")).scalar()
            assert stale == 0, table


def _run_at_once(target: Any, args: Any, errors: list[BaseException]) -> None:
    """One thread per argument, all at once; the errors they collected fail the test."""
    threads = [threading.Thread(target=target, args=(a,)) for a in args]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


@pytest.fixture()
def svc(db_url: str, tmp_path: Path) -> Any:
    assert db_url  # on both databases
    url = new_db_url(tmp_path)
    services = Services.open(load_settings(data_dir=tmp_path, config_file=None, env={"STRATUS_DATABASE_URL": url}))
    migrate.upgrade(services.db)
    with services.db.write() as s:
        s.execute(insert(Account), [{"id": a, "name": a} for a in ACCOUNTS])
    yield services
    services.db.dispose()


def test_the_triggers_exist_at_head(svc: Services) -> None:
    """A table rebuild (Alembic batch mode on SQLite) drops a table's triggers: a later migration that does
    one must create them again, or the counters silently go stale."""
    with svc.db.read_connection() as conn:
        if svc.db.is_sqlite:
            names = set(conn.scalars(text("SELECT name FROM sqlite_master WHERE type = 'trigger'")))
        else:
            names = set(conn.scalars(text("SELECT tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                                          "WHERE c.relnamespace = current_schema()::regnamespace "
                                          "AND NOT t.tgisinternal")))
    assert names >= TRIGGERS[svc.db.write_engine.dialect.name]


def test_counters_and_kinds_stay_exact_under_concurrent_writes(svc: Services) -> None:
    """Four writers at once import (with tags), share, publish and unpublish, and delete images."""
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        rng = random.Random(w)
        mine: list[str] = []
        try:
            for step in range(40):
                owner, region = rng.choice(ACCOUNTS), rng.choice(REGIONS)
                op = rng.random()
                with svc.db.write() as s:
                    if op < 0.45 or not mine:
                        image_id = f"img-{w}{step:03d}abcd"[:12]
                        s.execute(insert(Image), [_image(image_id, owner, region, rng.random() < 0.2, 1000.0 + step)])
                        s.execute(insert(ImageTag), [{"image_id": image_id, "key": "env", "value": "prod"},
                                                     {"image_id": image_id, "key": "team", "value": f"t{w}"}])
                        mine.append(image_id)
                    elif op < 0.65:
                        other = next(a for a in ACCOUNTS if a != s.get(Image, mine[-1]).owner_id)
                        if s.get(ImageShare, (mine[-1], other)) is None:
                            s.add(ImageShare(image_id=mine[-1], account_id=other))
                    elif op < 0.85:
                        image = s.get(Image, rng.choice(mine))
                        image.is_public = not image.is_public  # publish or unpublish, through the ORM
                    else:
                        s.execute(delete(Image).where(Image.id == mine.pop(rng.randrange(len(mine)))))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    _run_at_once(writer, range(4), errors)
    _assert_exact(svc.db)
    with svc.db.read_connection() as conn:
        assert conn.scalar(text("SELECT count(*) FROM images")) > 20
    # DescribeImages' totals, from the counters and the copied kinds, equal a plain visibility count.
    for me in ACCOUNTS:
        caller = Caller(me)
        for region in REGIONS:
            shared = select(ImageShare.image_id).where(ImageShare.account_id == me)
            visible = sa.or_(Image.is_public, Image.owner_id == me, Image.id.in_(shared))
            with svc.db.read_connection() as conn:
                want = conn.scalar(select(sa.func.count()).where(Image.region == region, visible))
                want_tagged = conn.scalar(select(sa.func.count()).where(
                    Image.region == region, visible, Image.id.in_(select(ImageTag.image_id).where(
                        ImageTag.key == "team", ImageTag.value.in_(["t0", "t1"])))))
            page = describe_images(svc, caller, region, limit=100)
            assert page.total == len(page.images) == want
            tagged = describe_images(svc, caller, region, limit=100,
                                     filters=[{"Name": "tag:team", "Values": ["t0", "t1"]}])
            assert tagged.total == len(tagged.images) == want_tagged
            by_kind = [describe_images(svc, caller, region, filters=[{"Name": "image-type", "Values": [k]}]).total
                       for k in ("PUBLIC_IMAGE", "PRIVATE_IMAGE", "SHARED_IMAGE")]
            assert sum(by_kind) == want


def test_a_tag_value_under_two_keys_counts_its_image_once(svc: Services) -> None:
    with svc.db.write() as s:
        s.execute(insert(Image), [_image("img-twotags1", ACCOUNTS[0], REGIONS[0], False, 1.0)])
        s.execute(insert(ImageTag), [{"image_id": "img-twotags1", "key": "a", "value": "x"},
                                     {"image_id": "img-twotags1", "key": "b", "value": "x"}])
    caller = Caller(ACCOUNTS[0])
    for name, values in (("tag-value", ["x"]), ("tag-key", ["a", "b"])):
        page = describe_images(svc, caller, REGIONS[0], filters=[{"Name": name, "Values": values}])
        assert page.total == 1 and [i.id for i in page.images] == ["img-twotags1"]


def test_0013_backfills_and_downgrades(tmp_path: Path, db_url: str) -> None:
    assert db_url  # on both databases
    db = open_database(new_db_url(tmp_path))
    try:
        migrate.upgrade(db, "0012_task_subjects")
        with db.write() as s:
            s.execute(insert(Account), [{"id": a, "name": a} for a in ACCOUNTS])
            s.execute(insert(Image), [_image(f"img-old{i:05d}", ACCOUNTS[i % 3], REGIONS[i % 2], i % 5 == 0, i)
                                      for i in range(30)])
            s.execute(insert(ImageTag), [{"image_id": f"img-old{i:05d}", "key": "k", "value": "v"} for i in range(30)])
            s.execute(insert(ImageShare), [{"image_id": "img-old00001", "account_id": ACCOUNTS[0]}])
        migrate.upgrade(db)
        _assert_exact(db)
        with db.write() as s:  # and the triggers run from here on
            s.execute(update(Image).where(Image.id == "img-old00001").values(is_public=True))
            s.execute(delete(Image).where(Image.id == "img-old00002"))
        _assert_exact(db)
        downgrade(db, "0012_task_subjects")
        with db.write_engine.connect() as conn:
            assert "image_region" not in {c["name"] for c in sa.inspect(conn).get_columns("image_tags")}
            assert "image_counts" not in sa.inspect(conn).get_table_names()
    finally:
        db.dispose()


def test_an_empty_list_of_image_ids_matches_nothing(svc: Services) -> None:
    with svc.db.write() as s:
        s.execute(insert(Image), [_image("img-empty001", ACCOUNTS[0], REGIONS[0], True, 1.0)])
    page = describe_images(svc, Caller(ACCOUNTS[0]), REGIONS[0], image_ids=[])
    assert page.total == 0 and page.images == []


def test_publish_and_unpublish_at_once_dont_deadlock_on_the_counters(svc: Services) -> None:
    """Each flips two counter rows of one owner and region (private -1, public +1, or back): they must
    take them in the same order, or PostgreSQL aborts one of them as a deadlock."""
    owner, region = ACCOUNTS[0], REGIONS[0]
    with svc.db.write() as s:
        s.execute(insert(Image), [_image("img-flip0000", owner, region, False, 1.0),
                                  _image("img-flip0001", owner, region, True, 1.0)])
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def flip(image_id: str) -> None:
        try:
            start.wait()
            for _ in range(60):
                with svc.db.write() as s:
                    s.execute(update(Image).where(Image.id == image_id).values(is_public=~Image.is_public))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    _run_at_once(flip, ("img-flip0000", "img-flip0001"), errors)
    _assert_exact(svc.db)
