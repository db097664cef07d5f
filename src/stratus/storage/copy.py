"""Copy chunks from one store to another: only the chunks the destination lacks cross.

Used by SyncImages (a copy of an image into another region's store) and by any future replication.
For each digest, in order:

* present in the destination: touched (its mtime refreshed, so gc's grace period covers it until the
  manifest naming it is recorded) and counted as *present*; nothing is read or written;
* present but not *known* to the caller (``known``: the chunks the account it copies for could already
  read): read from the source with a verified read and paced like a missing one, but not written again.
  The copy takes as long as if the chunk were missing, so its time and progress don't say that another
  account's data already holds it;
* missing: read from the source with a verified read (:meth:`ChunkStore.get` re-hashes, so a damaged
  source chunk is :class:`ChunkCorrupt`, never copied), written to the destination through its batch
  writer (which verifies again and makes it durable), counted as *copied*.

Durability and resumption: chunks are written in a bounded window by a few threads, but progress is
reported only for the leading run of digests that are finished *and* durable (the writer's commit, a
directory fsync, comes first). ``CopyProgress.chunks_done`` is therefore a safe checkpoint: a caller that
records it and later calls again with ``digests[chunks_done:]`` misses nothing. A chunk written after the
last report is simply found present the next time.

An optional pace (``max_bytes_per_second``) bounds the bytes that cross, so a copy between stores that
share a disk or a link doesn't starve imports (and so tests can catch a copy in the middle).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Container, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from stratus import metrics
from stratus.storage.chunkstore import BatchWriter, ChunkStore, check_digest

MiB = 1 << 20


@dataclass(frozen=True)
class CopyResult:
    """What crossed: ``chunks_copied``/``bytes_copied`` were written into the destination,
    ``chunks_present``/``bytes_present`` were already there (and touched)."""

    chunks_copied: int = 0
    bytes_copied: int = 0
    chunks_present: int = 0
    bytes_present: int = 0

    @property
    def chunks(self) -> int:
        return self.chunks_copied + self.chunks_present

    @property
    def bytes(self) -> int:
        return self.bytes_copied + self.bytes_present


@dataclass(frozen=True)
class CopyProgress:
    """Reported after each durability point: the first ``chunks_done`` distinct digests (``bytes_done``
    bytes) are in the destination for good; ``so_far`` splits them into copied and present."""

    chunks_done: int
    bytes_done: int
    so_far: CopyResult


class CopyInterrupted(Exception):
    """``should_stop`` said stop; everything reported so far is durable in the destination."""

    def __init__(self, progress: CopyProgress) -> None:
        super().__init__(f"copy interrupted after {progress.chunks_done} chunks")
        self.progress = progress


class Pace:
    """Lets at most ``rate`` bytes per second through, across threads (0: no limit).

    Each caller books the next free slot of ``n / rate`` seconds and sleeps until it starts, so the
    average rate over any long stretch is at most ``rate`` (one chunk may go out at once).
    """

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate = rate
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next = clock()

    def wait(self, n: int) -> None:
        if self.rate <= 0:
            return
        with self._lock:
            now = self._clock()
            start = max(now, self._next)
            self._next = start + n / self.rate
        if start > now:
            self._sleep(start - now)


def copy_chunks(
    digests: Iterable[str],
    src: ChunkStore,
    dst: ChunkStore,
    *,
    progress: Callable[[CopyProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    max_bytes_per_second: float = 0,
    workers: int | None = None,
    report_every_bytes: int = 64 * MiB,
    report_every_seconds: float = 1.0,
    known: Container[str] | None = None,
) -> CopyResult:
    """Copy the chunks named by ``digests`` (duplicates are handled once) from ``src`` into ``dst``.

    Raises ChunkMissing or ChunkCorrupt (from the source; nothing is written under that digest),
    InvalidDigest for a malformed digest (before any I/O), OSError from the destination, and
    CopyInterrupted when ``should_stop`` turns true. ``progress`` runs in the calling thread after
    each durability point (see the module docstring), at least every ``report_every_bytes`` bytes or
    ``report_every_seconds`` seconds, and once at the end. ``known`` (None: all) are the digests whose
    presence in ``dst`` the caller may learn; the others cross as if missing (see the module docstring).
    """
    order = list(dict.fromkeys(check_digest(d) for d in digests))
    workers = workers or dst.concurrency
    # One batch question (a directory touches each; an object store lists by prefix, not a HEAD each).
    # A chunk gc is deleting right now reads as missing and is copied again: the safe side.
    present_sizes = dst.present(order)
    pace = Pace(max_bytes_per_second)
    writer = dst.writer(expected=len(order) - len(present_sizes))
    stop = should_stop or (lambda: False)

    def one(digest: str) -> tuple[bool, int]:
        size = present_sizes.get(digest)
        if size is not None and (known is None or digest in known):
            return False, size
        data = src.get(digest)
        pace.wait(len(data))
        if size is not None:  # there already, through someone else's data: read and verified, not rewritten
            return False, len(data)
        return writer.put(digest, data), len(data)

    copied = copied_bytes = present = present_bytes = 0
    done = done_bytes = 0

    def snapshot() -> CopyProgress:
        return CopyProgress(done, done_bytes, CopyResult(copied, copied_bytes, present, present_bytes))

    window = max(1, workers) * 2
    pending: deque[Future[tuple[bool, int]]] = deque()
    feed = iter(order)
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="copy")
    try:

        def fill() -> None:
            while len(pending) < window:
                digest = next(feed, None)
                if digest is None:
                    return
                pending.append(pool.submit(one, digest))

        fill()
        last_report, unreported = time.monotonic(), 0
        while pending:
            if stop():
                raise CopyInterrupted(_commit(writer, snapshot()))
            was_copied, size = pending.popleft().result()
            if was_copied:
                copied, copied_bytes = copied + 1, copied_bytes + size
                metrics.COPIED_BYTES.inc(size)
            else:
                present, present_bytes = present + 1, present_bytes + size
            done, done_bytes = done + 1, done_bytes + size
            unreported += size
            fill()
            now = time.monotonic()
            if pending and unreported < report_every_bytes and now - last_report < report_every_seconds:
                continue
            # A durability point: the directory entries of everything copied so far are fsynced before
            # the caller hears about it (and may checkpoint past it).
            writer.commit()
            if progress is not None:
                progress(snapshot())
            last_report, unreported = now, 0
    except BaseException:
        for f in pending:
            f.cancel()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    writer.commit()
    return snapshot().so_far


def _commit(writer: BatchWriter, at: CopyProgress) -> CopyProgress:
    writer.commit()
    return at


__all__ = ["CopyInterrupted", "CopyProgress", "CopyResult", "Pace", "copy_chunks"]
