"""copy_chunks: only missing chunks cross, present ones are touched, reads are verified, progress is a
safe checkpoint, and the pace holds."""

from __future__ import annotations

import os
import time
from pathlib import Path

import blake3
import pytest

from stratus.storage.copy import CopyInterrupted, CopyProgress, Pace, copy_chunks
from stratus.storage.dirstore import ChunkCorrupt, ChunkMissing, DirStore, InvalidDigest

KiB = 1024


def put_random(store: DirStore, n: int, size: int = 64 * KiB, seed: int = 0) -> list[str]:
    digests = []
    for i in range(n):
        data = (seed * 1000 + i).to_bytes(8, "big") + os.urandom(size - 8)
        d = blake3.blake3(data).hexdigest()
        store.put(d, data)
        digests.append(d)
    return digests


@pytest.fixture
def src(tmp_path: Path) -> DirStore:
    return DirStore(tmp_path / "src")


@pytest.fixture
def dst(tmp_path: Path) -> DirStore:
    return DirStore(tmp_path / "dst")


def test_copies_everything_into_an_empty_store(src: DirStore, dst: DirStore) -> None:
    digests = put_random(src, 12)
    result = copy_chunks(digests, src, dst)
    assert (result.chunks_copied, result.bytes_copied, result.chunks_present) == (12, 12 * 64 * KiB, 0)
    for d in digests:
        assert dst.verify(d) and dst.get(d) == src.get(d)


def test_only_missing_chunks_cross_and_present_ones_are_touched(src: DirStore, dst: DirStore) -> None:
    digests = put_random(src, 10)
    for d in digests[:6]:
        dst.put(d, src.get(d))
        os.utime(dst.path_for(d), (1_000_000, 1_000_000))  # old: gc would take them without a touch
    inodes = {d: dst.path_for(d).stat().st_ino for d in digests[:6]}
    before = time.time() - 1
    result = copy_chunks(digests + digests[:3], src, dst)  # duplicates are handled once
    assert (result.chunks_copied, result.chunks_present) == (4, 6)
    assert result.bytes_copied == 4 * 64 * KiB and result.bytes_present == 6 * 64 * KiB
    for d in digests[:6]:
        assert dst.path_for(d).stat().st_mtime >= before, "a present chunk must be touched for gc's grace"
        assert dst.path_for(d).stat().st_ino == inodes[d], "a present chunk must not be written again"
    # A second copy finds everything present.
    again = copy_chunks(digests, src, dst)
    assert (again.chunks_copied, again.bytes_copied, again.chunks_present) == (0, 0, 10)


def test_a_damaged_source_chunk_is_never_copied(src: DirStore, dst: DirStore) -> None:
    digests = put_random(src, 5)
    bad = digests[2]
    path = src.path_for(bad)
    path.chmod(0o644)
    with open(path, "r+b") as f:
        f.seek(100)
        f.write(b"\xff\xfe")
    with pytest.raises(ChunkCorrupt) as info:
        copy_chunks(digests, src, dst, workers=1)
    assert info.value.digest == bad
    assert not dst.has(bad)


def test_a_missing_source_chunk_fails_the_copy(src: DirStore, dst: DirStore) -> None:
    digests = put_random(src, 3)
    src.delete(digests[1])
    with pytest.raises(ChunkMissing):
        copy_chunks(digests, src, dst)


def test_malformed_digests_are_refused_before_any_io(src: DirStore, dst: DirStore) -> None:
    digests = put_random(src, 2)
    with pytest.raises(InvalidDigest):
        copy_chunks([digests[0], "../../etc/passwd"], src, dst)
    assert not dst.has(digests[0])


def test_progress_is_truthful_and_a_safe_checkpoint(src: DirStore, dst: DirStore) -> None:
    """Progress counts bytes of finished, durable chunks in order; resuming from the last report with the
    rest of the list finishes the copy with nothing crossing twice."""
    sizes = [64 * KiB, 128 * KiB, 64 * KiB, 192 * KiB] * 5
    digests = []
    for i, size in enumerate(sizes):
        data = i.to_bytes(4, "big") + os.urandom(size - 4)
        d = blake3.blake3(data).hexdigest()
        src.put(d, data)
        digests.append(d)
    total = sum(sizes)
    seen: list[CopyProgress] = []

    def on_progress(p: CopyProgress) -> None:
        seen.append(p)

    with pytest.raises(CopyInterrupted) as info:
        copy_chunks(digests, src, dst, progress=on_progress, should_stop=lambda: len(seen) >= 3,
                    report_every_bytes=1, workers=2)
    assert len(seen) >= 3
    for p in seen:
        assert p.bytes_done == sum(sizes[: p.chunks_done]), "bytes_done is the bytes of the leading chunks"
        assert p.so_far.chunks_copied + p.so_far.chunks_present == p.chunks_done
        for d in digests[: p.chunks_done]:
            assert dst.has(d)
    assert [p.bytes_done for p in seen] == sorted(p.bytes_done for p in seen)
    checkpoint = info.value.progress.chunks_done
    assert checkpoint >= seen[-1].chunks_done and checkpoint < len(digests)
    rest = copy_chunks(digests[checkpoint:], src, dst)
    assert rest.chunks + checkpoint == len(digests)
    assert rest.bytes_copied <= total - sum(sizes[:checkpoint])
    # The window may have written a few chunks past the checkpoint: they count as present, not copied.
    assert all(dst.verify(d) for d in digests)


def test_final_progress_reports_everything(src: DirStore, dst: DirStore) -> None:
    digests = put_random(src, 9)
    seen: list[CopyProgress] = []
    copy_chunks(digests, src, dst, progress=seen.append, report_every_bytes=3 * 64 * KiB)
    assert seen[-1].chunks_done == 9 and seen[-1].bytes_done == 9 * 64 * KiB
    assert len(seen) >= 3


def test_pace_bounds_the_bytes_that_cross(src: DirStore, dst: DirStore) -> None:
    digests = put_random(src, 8, size=256 * KiB)
    for d in digests[:4]:
        dst.put(d, src.get(d))  # present chunks are not paced: they don't cross
    rate = 2 * 1024 * KiB  # 2 MiB/s: 4 chunks of 256 KiB = 1 MiB, the first one free
    started = time.monotonic()
    result = copy_chunks(digests, src, dst, max_bytes_per_second=rate)
    elapsed = time.monotonic() - started
    assert result.bytes_copied == 1024 * KiB
    assert elapsed >= (result.bytes_copied - 256 * KiB) / rate * 0.95
    assert elapsed < 5


def test_pace_books_consecutive_slots() -> None:
    slept: list[float] = []
    pace = Pace(100.0, clock=lambda: 0.0, sleep=slept.append)
    for _ in range(3):
        pace.wait(50)
    # 50 bytes at 100 B/s books half a second each: the 2nd waits 0.5 s, the 3rd 1 s.
    assert slept == [0.5, 1.0]
