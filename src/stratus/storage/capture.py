"""Capture: the manifest of an instance disk, from its base's manifest and what the instance changed.

The overlay's allocation map (depth-0 extents: what the instance wrote, including writes of zeros)
names the chunks that changed. Only those are rebuilt: the base's bytes of the chunk (a verified read
from the store, never the host file), the overlay's data read straight from the qcow2 file at the
offsets the map gives, zeros where the instance wrote zeros. Every other chunk keeps the base's
digest. The cost is O(bytes changed), not O(disk size).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import blake3

from stratus.disk.qemu_img import Extent
from stratus.domain.manifest import DiskManifest, chunk_count
from stratus.storage.chunkstore import ChunkStore


class CaptureError(Exception):
    """A disk could not be captured."""


@dataclass(frozen=True)
class CaptureResult:
    manifest: DiskManifest
    changed_chunks: int  # chunks rebuilt from the overlay
    new_chunks: int  # of those, chunks the store did not have
    new_bytes: int
    read_bytes: int  # bytes read from the overlay file


def capture_disk(
    overlay: Path,
    extents: Sequence[Extent],
    virtual_size: int,
    base: DiskManifest | None,
    store: ChunkStore,
    chunk_size: int,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> CaptureResult:
    """The manifest of `overlay` (a qcow2 whose depth-0 `extents` are given) on top of `base`."""
    if base is not None:
        chunk_size = base.chunk_size  # keep the base's chunking, so unchanged chunks keep their digests
    count = chunk_count(virtual_size, chunk_size)
    chunks: list[str | None] = [None] * count
    dirty: set[int] = set()
    if base is not None:
        for i, digest in enumerate(base.chunks[:count]):
            chunks[i] = digest
        if base.virtual_size % chunk_size and base.virtual_size < virtual_size:
            dirty.add(base.virtual_size // chunk_size)  # the base's short tail chunk now covers a full one
    for e in extents:
        if not (e.data or e.zero) or e.length == 0:
            continue
        if e.data and not e.zero and e.offset is None:
            raise CaptureError(f"the overlay {overlay.name} holds compressed data at {e.start}; "
                               "capture reads overlays written by QEMU, which never compresses")
        end = min(e.start + e.length, virtual_size)
        dirty.update(range(e.start // chunk_size, (end - 1) // chunk_size + 1))
    writer = store.writer()
    read_bytes = 0
    fd = os.open(overlay, os.O_RDONLY)
    try:
        ordered = sorted(dirty)
        for n, i in enumerate(ordered):
            start = i * chunk_size
            length = min(chunk_size, virtual_size - start)
            buf = bytearray(length)
            if base is not None and i < len(base.chunks) and base.chunks[i] is not None:
                old = store.get(base.chunks[i])  # verified read
                buf[: min(len(old), length)] = old[:length]
            view = memoryview(buf)
            for e in extents:
                lo, hi = max(e.start, start), min(e.start + e.length, start + length)
                if lo >= hi or not (e.data or e.zero):
                    continue
                if e.zero:
                    view[lo - start: hi - start] = bytes(hi - lo)
                    continue
                assert e.offset is not None
                piece = view[lo - start: hi - start]
                got = os.preadv(fd, [piece], e.offset + (lo - e.start))
                if got != hi - lo:
                    raise CaptureError(f"the overlay {overlay.name} ends inside a data run its map reports")
                read_bytes += got
            if buf == bytes(length):  # all zeros (memcmp against a zero block): never stored
                chunks[i] = None
            else:
                digest = blake3.blake3(buf).hexdigest()
                writer.put(digest, buf)
                chunks[i] = digest
            if progress is not None:
                progress(n + 1, len(ordered))
        writer.commit()
    finally:
        os.close(fd)
    return CaptureResult(DiskManifest(virtual_size, chunk_size, tuple(chunks)), len(dirty), writer.new_chunks,
                         writer.new_bytes, read_bytes)
