"""DirStore: the store conformance suite (tests/storage/store_suite.py) on a directory, then what is
particular to files: layout, crash-safe write order, O_DIRECT, mtime touch, rename-first delete."""

from __future__ import annotations

import errno
import os
import stat
import time
from pathlib import Path

import blake3
import pytest

from stratus.storage import dirstore as dirstore_mod
from stratus.storage.dirstore import (
    ChunkCorrupt,
    ChunkInfo,
    DirStore,
    InvalidDigest,
    StoreError,
    TempFile,
)
from tests.storage.store_suite import *  # noqa: F403 - the conformance suite runs here on a DirStore

PAGE = 4096


def digest(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> DirStore:
    return DirStore(tmp_path / "store")


class FileBackdoor:
    def __init__(self, store: DirStore) -> None:
        self.store = store

    def overwrite(self, digest: str, data: bytes) -> None:
        path = self.store.path_for(digest)
        path.chmod(0o644)
        path.write_bytes(data)

    def exists(self, digest: str) -> bool:
        return self.store.path_for(digest).exists()


@pytest.fixture
def backdoor(store: DirStore) -> FileBackdoor:
    return FileBackdoor(store)


def test_layout_is_content_addressed(store: DirStore) -> None:
    data = os.urandom(10_000)
    d = digest(data)
    assert store.put(d, data) is True
    path = store.root / "chunks" / d[:2] / d[2:4] / d
    assert store.path_for(d) == path
    assert path.read_bytes() == data
    # Anyone can check a chunk with b3sum: the file name is the BLAKE3 of its bytes.
    assert blake3.blake3(path.read_bytes()).hexdigest() == path.name
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert store.get(d) == data
    assert store.has(d)


def test_put_twice_writes_once_and_touches(store: DirStore) -> None:
    data = b"x" * 5000
    d = digest(data)
    assert store.put(d, data) is True
    os.utime(store.path_for(d), (1_000_000, 1_000_000))
    ino = store.path_for(d).stat().st_ino
    assert store.put(d, data) is False
    st = store.path_for(d).stat()
    assert st.st_ino == ino  # not rewritten
    assert st.st_mtime > time.time() - 60  # but touched


@pytest.mark.parametrize(
    "bad",
    ["../" * 20 + "etc/passwd", "A" * 64, "a" * 63, "a" * 65, "a" * 64 + "\n", "", "../../" + "a" * 58, None],
)
def test_invalid_digest_never_becomes_a_path(store: DirStore, bad: object) -> None:
    for call in (
        lambda: store.path_for(bad),  # type: ignore[arg-type]
        lambda: store.has(bad),  # type: ignore[arg-type]
        lambda: store.get(bad),  # type: ignore[arg-type]
        lambda: store.touch(bad),  # type: ignore[arg-type]
        lambda: store.delete(bad),  # type: ignore[arg-type]
        lambda: store.put(bad, b"data"),  # type: ignore[arg-type]
        lambda: store.writer().put(bad, b"data"),  # type: ignore[arg-type]
    ):
        with pytest.raises(InvalidDigest):
            call()
    assert issubclass(InvalidDigest, StoreError) and issubclass(InvalidDigest, ValueError)


def test_get_refuses_oversized_file_without_hashing_it_all(store: DirStore) -> None:
    d = digest(b"small")
    path = store.path_for(d)
    path.parent.mkdir(parents=True)
    with open(path, "wb") as f:
        f.truncate(dirstore_mod.MAX_CHUNK_SIZE + 1)
    with pytest.raises(ChunkCorrupt, match="larger than the largest chunk"):
        store.get(d)
    assert store.verify(d) is False


def test_get_refuses_a_symlink(store: DirStore, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"not yours")
    d = digest(b"not yours")  # even with the right digest, the store never follows a link out
    path = store.path_for(d)
    path.parent.mkdir(parents=True)
    path.symlink_to(secret)
    with pytest.raises(ChunkCorrupt, match="symbolic link"):
        store.get(d)
    assert list(store.iter_chunks()) == []


def test_touch_refreshes_the_mtime(store: DirStore) -> None:
    data = b"t" * 100
    d = digest(data)
    assert store.touch(d) is False
    store.put(d, data)
    os.utime(store.path_for(d), (1_000_000, 1_000_000))
    assert store.touch(d) is True
    assert store.path_for(d).stat().st_mtime > time.time() - 60


def test_delete_unless_touched_since_by_mtime(store: DirStore) -> None:
    old, fresh = b"old" * 100, b"fresh" * 100
    d_old, d_fresh = digest(old), digest(fresh)
    store.put(d_old, old)
    store.put(d_fresh, fresh)
    os.utime(store.path_for(d_old), (1_000_000, 1_000_000))
    cutoff = time.time() - 3600
    assert store.delete(d_old, unless_touched_since=cutoff) is True
    assert store.delete(d_fresh, unless_touched_since=cutoff) is False
    assert store.get(d_fresh) == fresh  # restored under its name, intact
    assert not store.has(d_old)
    assert list(store.iter_temp_files()) == []  # no gc.* leftovers


def test_touch_during_delete_cannot_lose_the_chunk(store: DirStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer that touches the chunk while gc is deleting it: either the touch lands first (gc sees the
    fresh mtime after its rename and restores), or it fails (the writer writes the chunk again)."""
    data = b"race" * 1000
    d = digest(data)
    store.put(d, data)
    os.utime(store.path_for(d), (1_000_000, 1_000_000))
    real_rename = os.rename
    outcomes: list[bool] = []

    def rename_then_touch(src: object, dst: object) -> None:
        real_rename(src, dst)
        if str(dst).rsplit("/", 1)[-1].startswith("gc."):
            # The writer runs right after gc's rename: its touch fails, so it writes the chunk anew.
            outcomes.append(store.touch(d))
            with store.writer() as w:
                outcomes.append(w.put(d, data))

    monkeypatch.setattr(dirstore_mod.os, "rename", rename_then_touch)
    assert store.delete(d, unless_touched_since=time.time() - 60) is True  # gc removed *its* copy
    monkeypatch.undo()
    assert outcomes == [False, True]
    assert store.get(d) == data  # the writer's copy survives


def test_scan_classifies_and_ignores_foreign_files(store: DirStore) -> None:
    data = os.urandom(2000)
    d = digest(data)
    store.put(d, data)
    leaf = store.path_for(d).parent
    (leaf / f"tmp.{d}.abcd1234").write_bytes(b"partial")
    (leaf / f"gc.{d}.abcd1234").write_bytes(data)
    (leaf / "README").write_text("not a chunk")
    other = digest(b"elsewhere")
    (leaf / other).write_bytes(b"elsewhere")  # a valid digest in the wrong directory is unreachable
    (store.root / "chunks" / "zz").mkdir()
    (store.scratch_dir / "ingest-1.raw").write_bytes(b"scratch")
    items = list(store.scan())
    chunks = [i for i in items if isinstance(i, ChunkInfo)]
    temps = sorted((t.kind, t.digest) for t in items if isinstance(t, TempFile))
    assert [c.digest for c in chunks] == [d] and chunks[0].size == 2000
    assert temps == [("scratch", None), ("trash", d), ("write", d)]
    stats = store.stats()
    assert (stats.chunks, stats.bytes, stats.temp_files) == (1, 2000, 3)


def test_chunk_file_is_fsynced_before_it_gets_its_name(store: DirStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """The crash-safety rule: bytes durable (fsync of the file) -> rename -> directory fsync."""
    events: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        events.append(("fsync", kind))
        real_fsync(fd)

    def rename(src: object, dst: object) -> None:
        events.append(("rename", str(dst).rsplit("/", 1)[-1][:8]))
        real_rename(src, dst)

    monkeypatch.setattr(dirstore_mod.os, "fsync", fsync)
    monkeypatch.setattr(dirstore_mod.os, "rename", rename)
    data = os.urandom(PAGE * 3)
    d = digest(data)
    store.put(d, data)
    assert events[0] == ("fsync", "file")
    assert events[1] == ("rename", d[:8])
    # New leaf, new middle directory: the leaf holds the name, the parents hold the new directories.
    assert events[2:] and all(e == ("fsync", "dir") for e in events[2:])
    assert len(events[2:]) == 3

    events.clear()
    data2 = os.urandom(PAGE)
    with store.writer() as w:
        w.put_data(data2)
        assert [e for e in events if e[1] == "dir"] == []  # directories wait for the commit
    assert events[0] == ("fsync", "file") and events[1][0] == "rename"
    assert ("fsync", "dir") in events[2:]


def test_failed_write_leaves_no_temp_and_no_name(store: DirStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "injected")

    monkeypatch.setattr(dirstore_mod.os, "fsync", failing_fsync)
    data = os.urandom(PAGE)
    with pytest.raises(OSError, match="injected"):
        store.put(digest(data), data)
    monkeypatch.undo()
    assert list(store.scan()) == []


@pytest.mark.parametrize("size", [PAGE, 16 * PAGE, PAGE * 3 + 100, 1])
@pytest.mark.parametrize("kind", ["bytes", "bytearray", "mmap"])
def test_direct_and_buffered_writes_round_trip(store: DirStore, size: int, kind: str) -> None:
    import mmap

    raw = os.urandom(size)
    raw = bytes([raw[0] | 1]) + raw[1:]  # never all zeros (one random byte is 0 once in 256 runs)
    if kind == "bytes":
        data: object = raw
    elif kind == "bytearray":
        data = bytearray(raw)
    else:
        m = mmap.mmap(-1, size)
        m[:] = raw
        data = memoryview(m)
    with store.writer() as w:
        d, new = w.put_data(data)  # type: ignore[arg-type]
    assert new and d == digest(raw)
    assert store.get(d) == raw


def test_whole_page_chunks_use_o_direct(store: DirStore, monkeypatch: pytest.MonkeyPatch) -> None:
    flags_seen: list[int] = []
    real_open = os.open

    def spy_open(path: object, flags: int, *args: object) -> int:
        if "tmp." in str(path):
            flags_seen.append(flags)
        return real_open(path, flags, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(dirstore_mod.os, "open", spy_open)
    store.put(digest(b"a" * PAGE * 2), b"a" * PAGE * 2)  # whole pages, copied to an aligned buffer
    store.put(digest(b"b" * 1000), b"b" * 1000)  # short: through the page cache
    assert [bool(f & os.O_DIRECT) for f in flags_seen] == [True, False]


def _refuse_o_direct(monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = os.open

    def no_direct(path: object, flags: int, *args: object) -> int:
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "O_DIRECT not supported (injected)")
        return real_open(path, flags, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(dirstore_mod.os, "open", no_direct)


def test_o_direct_refused_falls_back_to_buffered(store: DirStore, monkeypatch: pytest.MonkeyPatch) -> None:
    _refuse_o_direct(monkeypatch)
    data = os.urandom(PAGE * 4)
    assert store.put(digest(data), data) is True
    assert store.direct_io is False
    monkeypatch.undo()
    assert store.get(digest(data)) == data
    assert list(store.iter_temp_files()) == []


@pytest.mark.parametrize("size", [1000, PAGE * 2, PAGE * 2 + 512])
def test_reads_bypass_the_page_cache_and_return_exact_bytes(store: DirStore, monkeypatch: pytest.MonkeyPatch,
                                                            size: int) -> None:
    data = os.urandom(size)
    store.put(digest(data), data)
    real_open = os.open
    flags_seen: list[int] = []

    def spy_open(path: object, flags: int, *args: object) -> int:
        flags_seen.append(flags)
        return real_open(path, flags, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(dirstore_mod.os, "open", spy_open)
    got = store.get(digest(data))
    assert bytes(got) == data and len(got) == size
    assert [bool(f & os.O_DIRECT) for f in flags_seen] == [True]


def test_reads_where_o_direct_is_refused_go_through_the_page_cache(store: DirStore,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(PAGE * 3)
    store.put(digest(data), data)
    _refuse_o_direct(monkeypatch)
    assert bytes(store.get(digest(data))) == data


def test_reads_that_refuse_o_direct_after_opening_go_through_the_page_cache(
        store: DirStore, monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(PAGE * 3)
    store.put(digest(data), data)

    def refused(fd: int, size: int) -> memoryview:
        raise OSError(errno.EINVAL, "O_DIRECT read not supported (injected)")

    monkeypatch.setattr(dirstore_mod, "_read_direct", refused)
    assert bytes(store.get(digest(data))) == data


def test_remove_temp(store: DirStore) -> None:
    data = os.urandom(500)
    d = digest(data)
    store.put(d, data)
    leaf = store.path_for(d).parent
    store.path_for(d).rename(leaf / f"gc.{d}.00000000")  # a gc that died mid-delete
    (leaf / f"tmp.{d}.11111111").write_bytes(b"partial")
    for temp in store.iter_temp_files():
        assert store.remove_temp(temp) is True
    assert store.get(d) == data  # the interrupted deletion is undone
    assert list(store.iter_temp_files()) == []
