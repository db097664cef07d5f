"""Garbage collection of a chunk store: mark (the caller's), plan, execute, then fsck to check.

Steps, each readable on its own:

1. The caller marks: the set of digests every live manifest references (the catalog knows them; this
   module knows nothing of images).
2. :func:`plan_gc` lists the store and sorts every chunk into *referenced* (kept), *recent* (unreferenced
   but younger than the grace period: an import in flight may have just written or touched it; kept) and
   *to delete*; plus leftovers of interrupted writes and deletes. Nothing is changed; ``describe()`` is
   what ``stratus gc --dry-run`` prints.
3. :meth:`GcPlan.execute` deletes. Each chunk's mtime is checked again at the moment of deletion
   (``ChunkStore.delete`` with ``unless_touched_since``), so a chunk touched after planning survives,
   and a referenced chunk is never deleted whatever the listing said. An S3 store, whose objects have no
   mtime to refresh, also puts a chunk back unless no task of the region ran since planning
   (``planned_at``; storage/s3store.py).

Interrupting ``execute`` at any point is safe: each deletion is independent, and a chunk caught mid-delete
(renamed to ``gc.*``) is restored by the next run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Set
from dataclasses import dataclass, field

from stratus.domain.manifest import is_digest
from stratus.domain.units import human_bytes
from stratus.storage.chunkstore import ChunkInfo, ChunkStore, TempFile


@dataclass(frozen=True)
class GcResult:
    deleted: int
    deleted_bytes: int
    kept_touched: int  # candidates touched after planning: an import reused them
    already_gone: int  # candidates someone else deleted meanwhile
    temp_files_removed: int
    trash_restored: int

    def describe(self) -> list[str]:
        return [
            f"deleted {self.deleted} chunks ({human_bytes(self.deleted_bytes)})",
            f"kept {self.kept_touched} chunks touched since planning, {self.already_gone} already gone",
            f"removed {self.temp_files_removed} stale temp files, restored {self.trash_restored} interrupted deletions",
        ]


@dataclass(frozen=True)
class GcPlan:
    """What a gc run would do. ``cutoff`` is the mtime before which an unreferenced chunk is garbage."""

    store: ChunkStore
    cutoff: float
    grace_seconds: float
    referenced: Set[bytes] = field(repr=False)  # binary digests: ~100 bytes each in memory, not ~150
    to_delete: tuple[ChunkInfo, ...]
    kept_recent: tuple[ChunkInfo, ...]
    referenced_count: int  # referenced chunks present in the store
    missing_referenced: tuple[str, ...]  # referenced but absent: not gc's to fix, fsck's to report
    stale_temp_files: tuple[TempFile, ...]

    @property
    def reclaim_bytes(self) -> int:
        return sum(c.size for c in self.to_delete)

    def describe(self) -> list[str]:
        """Lines for ``stratus gc --dry-run``."""
        lines = [
            f"store {self.store.describe()}: grace period {self.grace_seconds:g} s "
            f"(chunks modified before {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.cutoff))})",
            f"referenced: {self.referenced_count} chunks kept",
            f"recent: {len(self.kept_recent)} unreferenced chunks kept "
            f"({human_bytes(sum(c.size for c in self.kept_recent))}), younger than the grace period",
            f"to delete: {len(self.to_delete)} unreferenced chunks ({human_bytes(self.reclaim_bytes)})",
            f"stale temp files: {len(self.stale_temp_files)} "
            f"({human_bytes(sum(t.size for t in self.stale_temp_files))})",
        ]
        if self.missing_referenced:
            lines.append(
                f"WARNING: {len(self.missing_referenced)} referenced chunks are missing from the store "
                "(e.g. " + ", ".join(self.missing_referenced[:3]) + "); run `stratus fsck`"
            )
        return lines

    def execute(self, *, progress: Callable[[int, int], None] | None = None) -> GcResult:
        deleted = deleted_bytes = touched = gone = removed = restored = 0
        total = len(self.to_delete)
        for n, chunk in enumerate(self.to_delete, 1):
            if bytes.fromhex(chunk.digest) in self.referenced:  # unreachable by construction; the last lock on the door
                continue
            # Re-check existence and mtime at the moment of deletion (see each store's delete).
            info = self.store.stat(chunk.digest)
            if info is None:
                gone += 1
                continue
            if info.mtime >= self.cutoff or not self.store.delete(
                chunk.digest, unless_touched_since=self.cutoff, planned_at=self.cutoff + self.grace_seconds
            ):
                touched += 1
            else:
                deleted += 1
                deleted_bytes += chunk.size
            if progress is not None:
                progress(n, total)
        for temp in self.stale_temp_files:
            if temp.kind == "trash":
                restored += self.store.remove_temp(temp)
                continue
            # A temp file written to since planning belongs to a live writer.
            try:
                if temp.path.stat().st_mtime >= self.cutoff:
                    continue
            except FileNotFoundError:
                continue
            removed += self.store.remove_temp(temp)
        return GcResult(deleted, deleted_bytes, touched, gone, removed, restored)


def plan_gc(
    store: ChunkStore,
    referenced: Iterable[str | bytes],
    *,
    grace_seconds: float,
    now: float | None = None,
    shard: tuple[int, int] = (0, 256),
) -> GcPlan:
    """Plan a gc run: which chunks are unreferenced and older than ``grace_seconds``.

    ``grace_seconds`` must exceed the longest time between an import writing or touching a chunk and
    recording its manifest in the catalog (the longest import), or a chunk of an import in flight could be
    swept. ``referenced`` entries must be digests: a malformed one is a bug in the mark phase, and gc
    stops rather than guess what it meant to protect.

    ``shard`` = (lo, hi) limits the plan to the chunks whose digest's first byte is in [lo, hi), so a
    caller can mark and sweep a large store one shard at a time (``referenced`` then only needs that
    shard's digests). Leftover temp files are the first shard's.
    """
    lo, hi = shard
    if not 0 <= lo < hi <= 256:
        raise ValueError(f"shard {shard} is not a range of first bytes within [0, 256)")
    if grace_seconds < 0:
        raise ValueError("grace_seconds must be >= 0")
    refs = _raw_digests(referenced)
    cutoff = (time.time() if now is None else now) - grace_seconds
    to_delete: list[ChunkInfo] = []
    recent: list[ChunkInfo] = []
    temps: list[TempFile] = []
    present = 0
    seen: set[bytes] = set()
    for item in store.scan():
        if isinstance(item, TempFile):
            # trash: any age (the delete that made it died); write/scratch: only when past the grace period
            if lo == 0 and (item.kind == "trash" or item.mtime < cutoff):
                temps.append(item)
            continue
        raw = bytes.fromhex(item.digest)
        if not lo <= raw[0] < hi:
            continue
        seen.add(raw)
        if raw in refs:
            present += 1
        elif item.mtime >= cutoff:
            recent.append(item)
        else:
            to_delete.append(item)
    missing = tuple(sorted(raw.hex() for raw in refs - seen if lo <= raw[0] < hi))
    return GcPlan(
        store=store,
        cutoff=cutoff,
        grace_seconds=grace_seconds,
        referenced=refs,
        to_delete=tuple(to_delete),
        kept_recent=tuple(recent),
        referenced_count=present,
        missing_referenced=missing,
        stale_temp_files=tuple(temps),
    )


def _raw_digests(referenced: Iterable[str | bytes]) -> Set[bytes]:
    """The referenced digests as 32-byte strings. A malformed one is a bug in the mark phase, and gc
    stops rather than guess what it meant to protect."""
    if isinstance(referenced, (set, frozenset)) and all(isinstance(d, bytes) and len(d) == 32 for d in referenced):
        return referenced  # the mark phase's own set: no copy of what may be millions of digests
    refs: set[bytes] = set()
    for d in referenced:
        if isinstance(d, bytes) and len(d) == 32:
            refs.add(d)
        elif isinstance(d, str) and is_digest(d):
            refs.add(bytes.fromhex(d))
        else:
            raise ValueError(f"referenced set holds a malformed digest ({d!r:.80}); gc stopped")
    return refs


__all__ = ["GcPlan", "GcResult", "plan_gc"]
