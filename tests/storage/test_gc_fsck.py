"""gc (plan -> execute -> check with fsck) and fsck on a real DirStore."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import blake3
import pytest

from stratus.storage.dirstore import ChunkCorrupt, DirStore
from stratus.storage.fsck import fsck
from stratus.storage.gc import plan_gc

GRACE = 3600.0


def digest(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


def put(store: DirStore, data: bytes, age: float = 0.0) -> str:
    d = digest(data)
    store.put(d, data)
    if age:
        t = time.time() - age
        os.utime(store.path_for(d), (t, t))
    return d


@pytest.fixture
def store(tmp_path: Path) -> DirStore:
    return DirStore(tmp_path / "store")


@pytest.fixture
def populated(store: DirStore) -> dict[str, list[str]]:
    """live: referenced and old; dead: unreferenced and old; young: unreferenced, within the grace."""
    return {
        "live": [put(store, os.urandom(3000 + i), age=2 * GRACE) for i in range(4)],
        "dead": [put(store, os.urandom(5000 + i), age=2 * GRACE) for i in range(3)],
        "young": [put(store, os.urandom(7000 + i), age=GRACE / 2) for i in range(2)],
    }


def chunk_set(store: DirStore) -> set[str]:
    return {c.digest for c in store.iter_chunks()}


def test_plan_then_execute_then_fsck(store: DirStore, populated: dict[str, list[str]]) -> None:
    live, dead, young = populated["live"], populated["dead"], populated["young"]
    before = chunk_set(store)
    plan = plan_gc(store, set(live), grace_seconds=GRACE)
    assert chunk_set(store) == before  # planning changes nothing
    assert sorted(c.digest for c in plan.to_delete) == sorted(dead)
    assert sorted(c.digest for c in plan.kept_recent) == sorted(young)
    assert plan.referenced_count == len(live)
    assert plan.reclaim_bytes == 5000 + 5001 + 5002
    assert plan.missing_referenced == ()
    text = "\n".join(plan.describe())
    assert "to delete: 3 unreferenced chunks" in text and "referenced: 4 chunks kept" in text

    result = plan.execute()
    assert (result.deleted, result.deleted_bytes, result.kept_touched) == (3, 15003, 0)
    assert chunk_set(store) == set(live) | set(young)
    report = fsck(store, expected=set(live))
    assert report.ok and report.checked == 6 and report.damaged == [] and report.missing == []

    # A second run finds nothing more to do.
    again = plan_gc(store, set(live), grace_seconds=GRACE)
    assert again.to_delete == ()


def test_chunk_touched_after_planning_survives(store: DirStore, populated: dict[str, list[str]]) -> None:
    plan = plan_gc(store, set(populated["live"]), grace_seconds=GRACE)
    reused = populated["dead"][0]
    assert store.touch(reused)  # an import reuses it between plan and execute
    result = plan.execute()
    assert result.deleted == 2 and result.kept_touched == 1
    assert store.get(reused)


def test_referenced_chunk_is_never_deleted_even_if_listed(store: DirStore, populated: dict[str, list[str]]) -> None:
    plan = plan_gc(store, set(populated["live"]), grace_seconds=GRACE)
    # A plan whose listing went wrong still can't delete what it was told is referenced.
    live_infos = tuple(c for c in store.iter_chunks() if c.digest in populated["live"])
    bad = dataclasses.replace(plan, to_delete=plan.to_delete + live_infos)
    result = bad.execute()
    assert result.deleted == 3
    assert set(populated["live"]) <= chunk_set(store)


def test_chunk_already_gone_is_counted_not_an_error(store: DirStore, populated: dict[str, list[str]]) -> None:
    plan = plan_gc(store, set(populated["live"]), grace_seconds=GRACE)
    store.delete(populated["dead"][1])
    result = plan.execute()
    assert (result.deleted, result.already_gone) == (2, 1)


def test_missing_referenced_is_reported(store: DirStore, populated: dict[str, list[str]]) -> None:
    ghost = digest(b"never stored")
    plan = plan_gc(store, {*populated["live"], ghost}, grace_seconds=GRACE)
    assert plan.missing_referenced == (ghost,)
    assert any("WARNING" in line and "fsck" in line for line in plan.describe())
    report = fsck(store, expected={*populated["live"], ghost})
    assert report.missing == [ghost] and not report.ok


def test_grace_zero_and_now(store: DirStore, populated: dict[str, list[str]]) -> None:
    plan = plan_gc(store, set(populated["live"]), grace_seconds=0, now=time.time() + 10)
    assert sorted(c.digest for c in plan.to_delete) == sorted(populated["dead"] + populated["young"])
    # `now` far in the past: everything looks young, nothing is deleted.
    assert plan_gc(store, set(), grace_seconds=GRACE, now=time.time() - 10 * GRACE).to_delete == ()


@pytest.mark.parametrize("bad", ["A" * 64, "x", None, "a" * 64 + "\n"])
def test_malformed_reference_stops_gc(store: DirStore, populated: dict[str, list[str]], bad: object) -> None:
    with pytest.raises(ValueError, match="malformed"):
        plan_gc(store, {*populated["live"], bad}, grace_seconds=GRACE)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        plan_gc(store, set(), grace_seconds=-1)


def test_stale_temp_files_and_interrupted_deletes(store: DirStore, populated: dict[str, list[str]]) -> None:
    live = populated["live"][0]
    leaf = store.path_for(live).parent
    old = time.time() - 2 * GRACE
    stale = leaf / f"tmp.{live}.deadbeef"
    stale.write_bytes(b"partial write of a crashed import")
    os.utime(stale, (old, old))
    fresh = leaf / f"tmp.{live}.cafebabe"
    fresh.write_bytes(b"an import writing right now")
    scratch = store.scratch_dir / "ingest-x.raw"
    scratch.write_bytes(b"conversion left by a crash")
    os.utime(scratch, (old, old))
    # A gc that died between renaming a chunk away and deciding about it.
    dead = populated["dead"][0]
    trash = store.path_for(dead).with_name(f"gc.{dead}.01234567")
    os.rename(store.path_for(dead), trash)

    # Same for a young chunk: a trash file is restored whatever its age (its mtime is the chunk's).
    young = populated["young"][0]
    young_trash = store.path_for(young).with_name(f"gc.{young}.89abcdef")
    os.rename(store.path_for(young), young_trash)

    plan = plan_gc(store, set(populated["live"]), grace_seconds=GRACE)
    assert sorted(t.path.name for t in plan.stale_temp_files) == sorted(
        [stale.name, scratch.name, trash.name, young_trash.name]
    )
    result = plan.execute()
    assert (result.temp_files_removed, result.trash_restored) == (2, 2)
    assert not stale.exists() and not scratch.exists() and fresh.exists()
    assert store.get(dead) and store.get(young)  # restored rather than lost; a later gc may delete `dead`
    fresh.unlink()
    assert list(store.iter_temp_files()) == []


def test_temp_file_written_after_planning_is_kept(store: DirStore, populated: dict[str, list[str]]) -> None:
    live = populated["live"][0]
    temp = store.path_for(live).parent / f"tmp.{live}.0badf00d"
    temp.write_bytes(b"x")
    old = time.time() - 2 * GRACE
    os.utime(temp, (old, old))
    plan = plan_gc(store, set(populated["live"]), grace_seconds=GRACE)
    assert [t.path for t in plan.stale_temp_files] == [temp]
    os.utime(temp)  # its writer is alive after all
    assert plan.execute().temp_files_removed == 0
    assert temp.exists()


def flip_byte(path: Path, offset: int) -> None:
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def test_fsck_names_damaged_chunks(store: DirStore, populated: dict[str, list[str]]) -> None:
    clean = fsck(store)
    assert clean.ok and clean.checked == 9 and clean.damaged == []
    assert clean.bytes == sum(c.size for c in store.iter_chunks())

    flipped, truncated, emptied = populated["live"][0], populated["dead"][0], populated["young"][0]
    flip_byte(store.path_for(flipped), 1500)
    store.path_for(truncated).chmod(0o644)
    os.truncate(store.path_for(truncated), 100)
    store.path_for(emptied).chmod(0o644)
    os.truncate(store.path_for(emptied), 0)
    progress: list[tuple[int, int]] = []
    report = fsck(store, expected=set(populated["live"]), progress=lambda d, t: progress.append((d, t)))
    assert report.damaged == sorted([flipped, truncated, emptied])
    assert report.checked == 9 and not report.ok and report.missing == []
    assert any("DAMAGED" in line for line in report.describe())
    assert progress[-1][0] == progress[-1][1]
    with pytest.raises(ChunkCorrupt):
        store.get(flipped)

    # The repair: delete the damaged chunks (a re-import would write them again); fsck is clean again
    # apart from the referenced chunk that is now missing.
    for d in report.damaged:
        store.delete(d)
    after = fsck(store, expected=set(populated["live"]))
    assert after.damaged == [] and after.missing == [flipped]


def test_fsck_counts_temp_files(store: DirStore, populated: dict[str, list[str]]) -> None:
    d = populated["live"][0]
    (store.path_for(d).parent / f"tmp.{d}.12345678").write_bytes(b"x")
    report = fsck(store)
    assert report.ok and report.temp_files == 1


def test_sharded_plans_partition_the_store(store: DirStore, populated: dict[str, list[str]]) -> None:
    """gc can mark and sweep one shard of the digest space at a time: the shards' plans add up to the
    whole store's, each needing only its own shard's references (bytes or hex)."""
    live, dead = populated["live"], populated["dead"]
    full = plan_gc(store, set(live), grace_seconds=GRACE)
    shards = [(0, 64), (64, 128), (128, 256)]
    parts = [
        plan_gc(store, {bytes.fromhex(d) for d in live if lo <= int(d[:2], 16) < hi}, grace_seconds=GRACE,
                shard=(lo, hi))
        for lo, hi in shards
    ]
    assert sorted(c.digest for p in parts for c in p.to_delete) == sorted(c.digest for c in full.to_delete)
    assert sum(p.referenced_count for p in parts) == full.referenced_count == len(live)
    assert not any(p.missing_referenced for p in parts)
    for p in parts:
        p.execute()
    assert chunk_set(store) == set(live) | set(populated["young"])
    assert not set(dead) & chunk_set(store)
    with pytest.raises(ValueError, match="shard"):
        plan_gc(store, set(), grace_seconds=GRACE, shard=(10, 10))
