"""Capture: the manifest of an instance disk, from its base's manifest and what the instance changed.

The overlay's allocation map (depth-0 extents: what the instance wrote, including writes of zeros)
names the chunks that changed. Only those are rebuilt: the base's bytes of the chunk (a verified read
from the store, never the host file), the overlay's data read straight from the qcow2 file at the
offsets the map gives, zeros where the instance wrote zeros. Every other chunk keeps the base's
digest. The cost is O(bytes changed), not O(disk size).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import blake3

from stratus.disk.qemu_img import Extent
from stratus.domain.manifest import DiskManifest, ManifestBuilder, chunk_count
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


def _dirty_chunks(extents: Iterable[Extent], virtual_size: int, chunk_size: int,
                  overlay: Path) -> Iterator[tuple[int, list[Extent]]]:
    """Each chunk an extent touches, in order, with the extents over it: one pass over the map (the map is
    sorted and contiguous), holding only the extents of the current chunk."""
    current: int | None = None
    over: list[Extent] = []
    for e in extents:
        if not (e.data or e.zero) or e.length == 0 or e.start >= virtual_size:
            continue
        if e.data and not e.zero and e.offset is None:
            raise CaptureError(f"the overlay {overlay.name} holds compressed data at {e.start}; "
                               "capture reads overlays written by QEMU, which never compresses")
        end = min(e.start + e.length, virtual_size)
        for i in range(e.start // chunk_size, (end - 1) // chunk_size + 1):
            if i != current:
                if current is not None:
                    yield current, over
                current, over = i, []
            over.append(e)
    if current is not None:
        yield current, over


def capture_disk(
    overlay: Path,
    extents: Iterable[Extent],
    virtual_size: int,
    base: DiskManifest | None,
    store: ChunkStore,
    chunk_size: int,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> CaptureResult:
    """The manifest of `overlay` (a qcow2 whose depth-0 `extents` are given, in order) on top of `base`.

    Memory is bounded by the manifests' compact form and one chunk: the extents are walked once,
    the new manifest is built in disk order."""
    if base is not None:
        chunk_size = base.chunk_size  # keep the base's chunking, so unchanged chunks keep their digests
    count = chunk_count(virtual_size, chunk_size)
    builder = ManifestBuilder(virtual_size, chunk_size)
    base_chunks = base.iter_raw() if base is not None else iter(())
    # The base's short tail chunk, when the disk grew, now covers a full chunk: rebuild it.
    tail = (base.virtual_size // chunk_size if base is not None and base.virtual_size % chunk_size
            and base.virtual_size < virtual_size else None)
    writer = store.writer(conceal_present=True)  # no oracle: a capture takes as long whatever the store held
    read_bytes = changed = 0
    fd = os.open(overlay, os.O_RDONLY)

    def rebuild(i: int, old: bytes | None, over: Sequence[Extent]) -> None:
        nonlocal read_bytes
        start = i * chunk_size
        length = min(chunk_size, virtual_size - start)
        buf = bytearray(length)
        if old is not None:
            prior = store.get(old.hex())  # verified read
            buf[: min(len(prior), length)] = prior[:length]
        view = memoryview(buf)
        for e in over:
            lo, hi = max(e.start, start), min(e.start + e.length, start + length)
            if lo >= hi:
                continue
            if e.zero:
                view[lo - start: hi - start] = bytes(hi - lo)
                continue
            assert e.offset is not None
            got = os.preadv(fd, [view[lo - start: hi - start]], e.offset + (lo - e.start))
            if got != hi - lo:
                raise CaptureError(f"the overlay {overlay.name} ends inside a data run its map reports")
            read_bytes += got
        if buf == bytes(length):  # all zeros (memcmp against a zero block): never stored
            builder.append(None)
        else:
            digest = blake3.blake3(buf).digest()
            writer.put(digest.hex(), buf)
            builder.append(digest)

    try:
        dirty = _dirty_chunks(extents, virtual_size, chunk_size, overlay)
        next_dirty = next(dirty, None)
        for i in range(count):
            old = next(base_chunks, None)
            if next_dirty is not None and next_dirty[0] == i:
                rebuild(i, old, next_dirty[1])
                next_dirty = next(dirty, None)
                changed += 1
            elif i == tail:
                rebuild(i, old, ())
                changed += 1
            else:
                builder.append(old)
            if progress is not None and i % 4096 == 0:
                progress(i, count)
        writer.commit()
    finally:
        os.close(fd)
    return CaptureResult(builder.build(), changed, writer.new_chunks, writer.new_bytes, read_bytes)
