"""Export: turn a manifest back into a disk (raw stream, sparse raw file, or qcow2 / vmdk / vpc).

Every chunk is verified against its digest as it is read (ChunkStore.get); a damaged or missing chunk
stops the export with ChunkCorrupt / ChunkMissing rather than producing a silently wrong disk. Zero chunks
are never read: in a raw file they stay holes, in a stream they are a shared zero block.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from stratus import metrics
from stratus.disk import qemu_img
from stratus.domain.manifest import DiskManifest
from stratus.storage.chunkstore import ChunkStore

Progress = Callable[[int, int], None]

EXPORT_FORMATS = ("raw", "qcow2", "vmdk", "vpc")
# qemu-img -o options per export format: vmdk monolithicSparse is what VMware and VirtualBox import as a
# single file; vpc needs force_size so the virtual size stays exact instead of CHS-rounded.
_DEFAULT_OPTIONS: dict[str, dict[str, str]] = {
    "raw": {},
    "qcow2": {},
    "vmdk": {"subformat": "monolithicSparse"},
    "vpc": {"force_size": "on"},
}
# Chunks read (and verified) ahead of the consumer, by this many threads. Chunks are written with O_DIRECT,
# so an export may read them from the device; parallel reads hide its latency. Measured on a 1.5 GiB
# disk of 1 MiB chunks: iter_raw 0.30 s with 4 threads (the chunk read is one exact-size read; reading
# with a 64 MiB bound per chunk, as first written, took 2.9 s).
_READ_AHEAD = 16
_READ_THREADS = 4
_PROGRESS_INTERVAL = 0.25


def _verified_chunks(manifest: DiskManifest, store: ChunkStore) -> Iterator[tuple[int, bytes | memoryview | None]]:
    """(index, bytes or None for a zero chunk) in order, reading a few chunks ahead in threads."""
    threads = max(_READ_THREADS, store.concurrency)
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="export") as pool:
        pending: deque[tuple[int, Future[bytes | memoryview] | None]] = deque()
        try:
            for index, digest in enumerate(manifest.chunks):
                pending.append((index, pool.submit(store.get, digest) if digest is not None else None))
                while len(pending) > max(_READ_AHEAD, 2 * threads):
                    i, fut = pending.popleft()
                    yield i, fut.result() if fut is not None else None
            while pending:
                i, fut = pending.popleft()
                yield i, fut.result() if fut is not None else None
        finally:
            for _, fut in pending:
                if fut is not None:
                    fut.cancel()


def iter_raw(manifest: DiskManifest, store: ChunkStore) -> Iterator[bytes | memoryview]:
    """The disk as raw bytes, one block per chunk (the last may be short); zeros for zero chunks."""
    zeros = bytes(manifest.chunk_size)
    for index, data in _verified_chunks(manifest, store):
        if data is None:
            length = manifest.chunk_range(index)[1]
            yield zeros if length == manifest.chunk_size else zeros[:length]
        else:
            yield data


def materialize_raw(
    manifest: DiskManifest,
    store: ChunkStore,
    dest: str | os.PathLike[str],
    progress: Progress | None = None,
    *,
    fsync: bool = True,
) -> None:
    """Write the disk to ``dest`` as a sparse raw file: truncated to the virtual size, only data chunks
    written, zero chunks left as holes. ``dest`` is replaced if it exists. Fsynced unless ``fsync=False``
    (for a temp file that is about to be converted and deleted)."""
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.ftruncate(fd, manifest.virtual_size)
        last = 0.0
        for index, data in _verified_chunks(manifest, store):
            if data is not None:
                offset, length = manifest.chunk_range(index)
                if len(data) != length:
                    raise ValueError(f"chunk {index} holds {len(data)} bytes; the manifest expects {length}")
                view = memoryview(data)
                while view:
                    n = os.pwrite(fd, view, offset)
                    view, offset = view[n:], offset + n
            now = time.monotonic()
            if progress is not None and now - last >= _PROGRESS_INTERVAL:
                last = now
                progress(min((index + 1) * manifest.chunk_size, manifest.virtual_size), manifest.virtual_size)
        if fsync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(dest)
        raise
    os.close(fd)
    if progress is not None:
        progress(manifest.virtual_size, manifest.virtual_size)


def export_disk(
    manifest: DiskManifest,
    store: ChunkStore,
    dest: str | os.PathLike[str],
    fmt: str,
    *,
    progress: Progress | None = None,
    tmp_dir: str | os.PathLike[str] | None = None,
    options: dict[str, str] | None = None,
) -> None:
    """Write the disk to ``dest`` in ``fmt`` (raw, qcow2, vmdk, vpc). ``options`` are qemu-img ``-o``
    options over the defaults, e.g. ``{"subformat": "streamOptimized"}`` for vmdk.

    Non-raw formats are materialized as a sparse raw temp file (in ``tmp_dir``, default the store's scratch
    directory) and converted by qemu-img; ``progress(done, total)`` counts both steps (total = twice the
    virtual size)."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unsupported export format {fmt!r}; expected one of {', '.join(EXPORT_FORMATS)}")
    if fmt == "raw":
        materialize_raw(manifest, store, dest, progress)
        metrics.EXPORTED_BYTES.inc(manifest.virtual_size)
        return
    vsize = manifest.virtual_size
    scratch = Path(tmp_dir) if tmp_dir is not None else store.scratch_dir
    fd, tmp_name = tempfile.mkstemp(prefix="export-", suffix=".raw", dir=scratch)
    os.close(fd)
    try:
        materialize_raw(
            manifest,
            store,
            tmp_name,
            (lambda done, _total: progress(done, 2 * vsize)) if progress is not None else None,
            fsync=False,  # read back at once by qemu-img and deleted; only dest must be durable
        )
        qemu_img.convert(
            tmp_name,
            "raw",
            dest,
            fmt,
            options={**_DEFAULT_OPTIONS[fmt], **(options or {})},
            progress=(lambda pct: progress(vsize + int(vsize * pct / 100), 2 * vsize)) if progress else None,
        )
        _fsync_path(dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
    metrics.EXPORTED_BYTES.inc(vsize)
    if progress is not None:
        progress(2 * vsize, 2 * vsize)


def _fsync_path(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = ["EXPORT_FORMATS", "export_disk", "iter_raw", "materialize_raw"]
