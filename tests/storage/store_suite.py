"""The chunk-store conformance suite: the same tests for every store (restic's backend/test/suite.go).

A test module imports these tests and provides two fixtures: ``store`` (an empty store) and ``backdoor``
(a :class:`Backdoor`: the ways a test damages or ages a chunk behind the store's back, which differ per
store). tests/storage/test_dirstore.py runs them on a directory, tests/storage/test_s3store.py on a
bucket of the real Swift s3api server.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Protocol

import blake3
import pytest

from stratus.storage.chunkstore import (
    ChunkCorrupt,
    ChunkInfo,
    ChunkMissing,
    ChunkStore,
    InvalidDigest,
    StoreError,
    ZeroChunk,
    zero_digest,
)

PAGE = 4096


def digest(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


class Backdoor(Protocol):
    def overwrite(self, digest: str, data: bytes) -> None:
        """Replace the stored bytes of ``digest`` (damage), bypassing the store's checks."""

    def exists(self, digest: str) -> bool:
        """Whether the chunk's file/object exists, asked without the store."""


def test_satisfies_the_interface(store: ChunkStore) -> None:
    assert isinstance(store, ChunkStore)
    assert store.scratch_dir.is_dir()
    assert store.describe()


def test_put_get_round_trip(store: ChunkStore, backdoor: Backdoor) -> None:
    data = os.urandom(10_000)
    d = digest(data)
    assert not store.has(d) and store.stat(d) is None
    assert store.put(d, data) is True
    assert backdoor.exists(d)
    assert store.get(d) == data
    assert store.has(d)
    info = store.stat(d)
    assert info is not None and info.digest == d and info.size == 10_000
    assert abs(info.mtime - time.time()) < 120


def test_put_twice_writes_once(store: ChunkStore) -> None:
    data = b"x" * 5000
    d = digest(data)
    assert store.put(d, data) is True
    assert store.put(d, data) is False
    assert [c.digest for c in store.iter_chunks()] == [d]


def test_put_refuses_wrong_bytes_and_writes_nothing(store: ChunkStore, backdoor: Backdoor) -> None:
    d = digest(b"right")
    with pytest.raises(ChunkCorrupt, match="refusing"):
        store.put(d, b"wrong")
    with store.writer() as w, pytest.raises(ChunkCorrupt):
        w.put(d, b"wrong")
    assert not store.has(d) and not backdoor.exists(d)
    assert list(store.scan()) == []


def test_zero_chunks_are_never_stored(store: ChunkStore) -> None:
    zeros = bytes(65536)
    assert zero_digest(65536) == digest(zeros)
    with pytest.raises(ZeroChunk):
        store.put(digest(zeros), zeros)
    with store.writer() as w:
        assert w.put_data(zeros) == (None, False)
        assert w.put_data(bytearray(100)) == (None, False)
    assert list(store.scan()) == []


@pytest.mark.parametrize(
    "bad",
    ["../" * 20 + "etc/passwd", "A" * 64, "a" * 63, "a" * 65, "a" * 64 + "\n", "", "../../" + "a" * 58, None],
)
def test_invalid_digest_never_names_anything(store: ChunkStore, bad: object) -> None:
    for call in (
        lambda: store.has(bad),  # type: ignore[arg-type]
        lambda: store.get(bad),  # type: ignore[arg-type]
        lambda: store.stat(bad),  # type: ignore[arg-type]
        lambda: store.touch(bad),  # type: ignore[arg-type]
        lambda: store.delete(bad),  # type: ignore[arg-type]
        lambda: store.put(bad, b"data"),  # type: ignore[arg-type]
        lambda: store.present([bad]),  # type: ignore[list-item]
        lambda: store.writer().put(bad, b"data"),  # type: ignore[arg-type]
    ):
        with pytest.raises(InvalidDigest):
            call()
    assert issubclass(InvalidDigest, StoreError) and issubclass(InvalidDigest, ValueError)


def test_get_missing_and_corrupt(store: ChunkStore, backdoor: Backdoor) -> None:
    data = os.urandom(3000)
    d = digest(data)
    with pytest.raises(ChunkMissing) as missing:
        store.get(d)
    assert missing.value.digest == d and isinstance(missing.value, StoreError)
    with pytest.raises(ChunkMissing):
        store.verify(d)
    store.put(d, data)
    assert store.verify(d) is True
    damaged = bytearray(data)
    damaged[1234] ^= 0x01
    backdoor.overwrite(d, bytes(damaged))
    with pytest.raises(ChunkCorrupt) as corrupt:
        store.get(d)
    assert corrupt.value.digest == d and corrupt.value.actual == digest(bytes(damaged))
    assert store.verify(d) is False


def test_touch_and_missing(store: ChunkStore) -> None:
    data = b"t" * 100
    d = digest(data)
    assert store.touch(d) is False
    store.put(d, data)
    assert store.touch(d) is True


def test_delete(store: ChunkStore, backdoor: Backdoor) -> None:
    data = b"d" * 100
    d = digest(data)
    assert store.delete(d) is False
    store.put(d, data)
    assert store.delete(d) is True
    assert not store.has(d) and not backdoor.exists(d)
    assert store.delete(d) is False


def test_delete_unless_touched_since(store: ChunkStore) -> None:
    data = b"gc" * 500
    d = digest(data)
    store.put(d, data)
    # Written just now: a cutoff an hour ago protects it.
    assert store.delete(d, unless_touched_since=time.time() - 3600) is False
    assert store.get(d) == data
    # A cutoff in the future makes it old: it goes, and leaves nothing behind.
    assert store.delete(d, unless_touched_since=time.time() + 3600) is True
    assert not store.has(d)
    assert store.delete(d, unless_touched_since=time.time() + 3600) is False
    assert list(store.scan()) == []


def test_present_answers_in_batches_and_ignores_duplicates(store: ChunkStore) -> None:
    blobs = [os.urandom(PAGE + i) for i in range(150)]
    kept = blobs[::2]
    for b in kept:
        store.put(digest(b), b)
    wanted = [digest(b) for b in blobs]
    # Both answers: few digests (asked one by one) and many (a store may list instead).
    assert store.present(wanted[:6] + wanted[:6]) == {digest(b): len(b) for b in blobs[:6:2]}
    assert store.present(wanted) == {digest(b): len(b) for b in kept}
    assert store.present([]) == {}


def test_scan_lists_chunks(store: ChunkStore) -> None:
    blobs = [os.urandom(2000 + i) for i in range(5)]
    for b in blobs:
        store.put(digest(b), b)
    chunks = sorted(store.iter_chunks(), key=lambda c: c.digest)
    assert [(c.digest, c.size) for c in chunks] == sorted((digest(b), len(b)) for b in blobs)
    assert all(isinstance(c, ChunkInfo) for c in chunks)
    stats = store.stats()
    assert (stats.chunks, stats.bytes) == (5, sum(len(b) for b in blobs))


def test_writer_threads_and_duplicates(store: ChunkStore) -> None:
    blobs = [os.urandom(PAGE * 2) for _ in range(8)]
    work = blobs * 4  # every blob four times, from many threads at once
    results: list[tuple[str | None, bool]] = []
    lock = threading.Lock()
    with store.writer(expected=1000) as w:  # a large batch (an object store lists instead of asking)

        def run(items: list[bytes]) -> None:
            for b in items:
                r = w.put_data(b)
                with lock:
                    results.append(r)

        threads = [threading.Thread(target=run, args=(work[i::4],)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted({d for d, _ in results}) == sorted(digest(b) for b in blobs)  # type: ignore[type-var]
    assert sum(new for _, new in results) == 8 == w.new_chunks
    assert w.reused_chunks == 24 and w.new_bytes == 8 * PAGE * 2
    assert store.stats().chunks == 8
    for b in blobs:
        assert store.get(digest(b)) == b


def test_writer_reuses_what_the_store_has(store: ChunkStore) -> None:
    old = os.urandom(PAGE)
    store.put(digest(old), old)
    with store.writer() as w:
        assert w.put_data(old) == (digest(old), False)
        assert w.put_data(b"new" * 100) == (digest(b"new" * 100), True)
    assert (w.new_chunks, w.reused_chunks) == (1, 1)


def test_a_concealing_writer_reuses_without_a_trace(store: ChunkStore) -> None:
    """conceal_present: a present chunk is written somewhere and thrown away (the cost of a new one), yet
    the store ends as it would have: one copy, nothing left over, the same counts."""
    old = os.urandom(PAGE)
    store.put(digest(old), old)
    with store.writer(expected=1000, conceal_present=True) as w:
        assert w.put_data(old) == (digest(old), False)
        assert w.put_data(b"new" * 100) == (digest(b"new" * 100), True)
    assert (w.new_chunks, w.reused_chunks) == (1, 1)
    stats = store.stats()
    assert (stats.chunks, stats.temp_files) == (2, 0), stats
    assert store.get(digest(old)) == old


def test_writer_rewrites_a_chunk_deleted_under_it(store: ChunkStore) -> None:
    data = os.urandom(PAGE)
    d = digest(data)
    store.put(d, data)
    store.delete(d)  # e.g. gc won the race
    with store.writer() as w:
        assert w.put(d, data) is True
    assert store.get(d) == data
