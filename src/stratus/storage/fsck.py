"""fsck: re-hash every chunk in a store and, given the referenced digests, report those missing.

A chunk is *damaged* when its bytes don't hash to its name. fsck only reports; the repair is to delete
the damaged chunk and re-import or re-copy an image that has it (the store then writes it again). Chunk
names are plain BLAKE3 digests, so the same check by hand is::

    find root/chunks -type f -regextype egrep -regex '.*/[0-9a-f]{64}' \
        | awk -F/ '{print $NF "  " $0}' | b3sum --check --quiet
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from stratus.storage.chunkstore import ChunkInfo, ChunkMissing, ChunkStore

_PROGRESS_INTERVAL = 0.25


@dataclass(frozen=True)
class FsckReport:
    checked: int
    bytes: int
    damaged: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # only when fsck was given the expected digests
    temp_files: int = 0  # leftovers gc will clean (informational)

    @property
    def ok(self) -> bool:
        return not self.damaged and not self.missing

    def describe(self) -> list[str]:
        lines = [f"checked {self.checked} chunks ({self.bytes} bytes)"]
        if self.damaged:
            lines.append(
                f"DAMAGED: {len(self.damaged)} chunks don't match their digest; delete them, then "
                "re-import or re-copy the images that use them: " + ", ".join(self.damaged[:10])
            )
        if self.missing:
            lines.append(f"MISSING: {len(self.missing)} referenced chunks: " + ", ".join(self.missing[:10]))
        if self.temp_files:
            lines.append(f"{self.temp_files} temp files left by interrupted writes (gc removes them)")
        if self.ok:
            lines.append("no problems found")
        return lines


def fsck(
    store: ChunkStore,
    *,
    expected: Iterable[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    workers: int | None = None,
) -> FsckReport:
    """Re-hash every chunk in ``store``. ``progress(done_bytes, total_bytes)``. With ``expected``
    (the digests live manifests reference), also list those not in the store."""
    # Two hashers keep a directory's two cores busy; an object store's reads wait on the network.
    workers = workers or max(2, store.concurrency // 2)
    chunks: list[ChunkInfo] = []
    temp_files = 0
    for item in store.scan():
        if isinstance(item, ChunkInfo):
            chunks.append(item)
        else:
            temp_files += 1
    total = sum(c.size for c in chunks)
    done_bytes = 0
    damaged: list[str] = []
    present: set[str] = set()
    last = 0.0

    def check(digest: str) -> bool | None:
        try:
            return store.verify(digest)
        except ChunkMissing:
            return None  # deleted since listing (gc): neither checked nor damaged

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="fsck") as pool:
        # map() keeps at most all futures alive; the digests are small, the hashing streams from mmap.
        for chunk, ok in zip(chunks, pool.map(check, [c.digest for c in chunks]), strict=True):
            done_bytes += chunk.size
            if ok is None:
                continue
            present.add(chunk.digest)
            if not ok:
                damaged.append(chunk.digest)
            now = time.monotonic()
            if progress is not None and now - last >= _PROGRESS_INTERVAL:
                last = now
                progress(done_bytes, total)
    if progress is not None:
        progress(total, total)
    missing = sorted(set(expected) - present) if expected is not None else []
    return FsckReport(
        checked=len(present),
        bytes=sum(c.size for c in chunks if c.digest in present),
        damaged=sorted(damaged),
        missing=missing,
        temp_files=temp_files,
    )


__all__ = ["FsckReport", "fsck"]
