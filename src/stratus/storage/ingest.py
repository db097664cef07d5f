"""Ingest: read a disk image as a raw virtual disk, cut it into aligned chunks, store what the store lacks.

Two ways in, chosen per image:

* **direct** (raw, uncompressed qcow2, vmdk monolithicSparse, vpc): ``qemu-img map`` says where each run of
  guest data lies in the file, so the chunks are read straight from the file at those offsets (zeros where
  the map says zero), with no conversion and no temp file.
* **converted** (any data run without a file offset: compressed qcow2, vmdk streamOptimized): qemu-img
  converts to a sparse raw file in the store's scratch space, which is then ingested directly.

All-zero chunks (holes, zero clusters, and written zeros alike) become ``None`` and are never stored.
Chunks already in the store are not rewritten, only touched (so gc's grace period covers them until the
caller records the manifest). Reading, hashing and writing overlap in a small thread pool: pread, BLAKE3
and fsync all release the GIL. Only the caller's image file is read: an image whose header names another
file (backing file, qcow2 data file, vmdk extent elsewhere) is refused; disk/inspect.py refuses those
earlier, this is the second lock on the same door.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from stratus import metrics
from stratus.disk import qemu_img
from stratus.domain.manifest import (
    DEFAULT_CHUNK_SIZE,
    DiskManifest,
    ManifestBuilder,
    check_chunk_size,
    chunk_count,
    is_digest,
)
from stratus.storage.chunkstore import ChunkStore

Progress = Callable[[int, int], None]
Method = Literal["direct", "converted"]

# Four workers keep two cores busy while others wait on fsync or a read (bench/chunk_size.py).
DEFAULT_WORKERS = 4
_PROGRESS_INTERVAL = 0.25  # seconds between progress calls
_STOP_INTERVAL = 0.25  # seconds between should_stop() polls: it may be a database read


class IngestError(Exception):
    """The image could not be ingested."""


class UnsafeImage(IngestError):
    """The image's header makes qemu read other files ({detail}); Stratus only reads the file it was given."""

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(
            f"refusing to ingest: the image header names another file ({detail}); "
            "flatten it first (qemu-img convert -O qcow2) and import the result"
        )


class IngestCancelled(IngestError):
    """``should_stop()`` asked to stop. ``done`` holds the digests of the leading chunks that are already
    durable in the store; pass it as ``already=`` to resume the same file later."""

    def __init__(self, done: Sequence[str | None]) -> None:
        self.done = tuple(done)
        super().__init__(f"ingest cancelled after {len(self.done)} chunks")


@dataclass(frozen=True)
class IngestResult:
    manifest: DiskManifest
    new_chunks: int  # chunk files written by this ingest
    new_bytes: int  # their bytes: what this ingest added to the store
    reused_chunks: int  # data chunks the store already had (or that repeat within the disk)
    data_bytes: int  # bytes of the disk in non-zero chunks
    method: Method


# A piece of one chunk: (offset in chunk, length, file offset or None for zeros).
_Piece = tuple[int, int, int | None]


@contextlib.contextmanager
def _damaged_file_is_ingest_error() -> Iterator[None]:
    """A QemuImgError as an IngestError: the gate let the file through, but qemu-img can't read all of it
    (found by fuzzing: a mutated streamOptimized vmdk whose grain qemu fails to read during the
    conversion). That is the file's fault, so it is refused with qemu's words, like every other refusal."""
    try:
        yield
    except qemu_img.QemuImgError as exc:
        raise IngestError(
            f"qemu-img could not read the image ({exc.stderr or exc}); the file is damaged, export it again"
        ) from exc


@_damaged_file_is_ingest_error()
def ingest_disk(
    path: str | os.PathLike[str],
    qemu_format: str,
    store: ChunkStore,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    *,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    already: Sequence[str | None] | None = None,
    tmp_dir: str | os.PathLike[str] | None = None,
    workers: int | None = None,
) -> IngestResult:
    """Store the disk in ``path`` (qemu driver ``qemu_format``, never probed) and return its manifest.

    Every chunk the manifest names is durable in ``store`` when this returns. ``progress(done, total)``
    is called every ~0.25 s and at the end; for a converted image the conversion counts as the first
    half of ``total``. ``should_stop()`` is polled between chunks, at most every 0.25 s (and during a
    conversion); when it returns True, :class:`IngestCancelled` is raised. ``already`` resumes an
    interrupted ingest of the *same file* (``IngestCancelled.done``): those chunks are only touched, or
    re-read if gone meanwhile. ``tmp_dir`` holds the raw file of a conversion (default: the store's
    scratch directory).
    """
    check_chunk_size(chunk_size)
    workers = workers or store.concurrency
    path = Path(path)
    info = qemu_img.info(path, qemu_format)
    _refuse_other_files(path, qemu_format, info)
    vsize = int(info["virtual-size"])
    if vsize <= 0:
        raise IngestError(f"{path.name}: the disk's virtual size is {vsize}; nothing to import")
    scratch = Path(tmp_dir) if tmp_dir is not None else store.scratch_dir
    # The map is spooled to disk as it is parsed: a crafted image's millions of extents never sit in memory.
    with qemu_img.map_extents(path, qemu_format, spool_dir=scratch) as extents:
        _check_coverage(extents, vsize)
        direct = _direct_readable(path, qemu_format, info, extents)
        if direct:
            return _chunk_it(path, extents, "direct", 0, vsize, store, chunk_size, progress, should_stop,
                             already, workers)

    # Some guest data only qemu can decode: convert to a sparse raw file next to the store.
    fd, tmp_name = tempfile.mkstemp(prefix="ingest-", suffix=".raw", dir=scratch)
    os.close(fd)
    tmp = Path(tmp_name)
    try:

        def on_convert(percent: float) -> None:
            if should_stop is not None and should_stop():
                raise IngestCancelled(())
            if progress is not None:
                progress(int(vsize * percent / 100), 2 * vsize)

        qemu_img.convert(path, qemu_format, tmp, "raw", progress=on_convert)
        with qemu_img.map_extents(tmp, "raw", spool_dir=scratch) as raw_extents:
            _check_coverage(raw_extents, vsize)
            return _chunk_it(tmp, raw_extents, "converted", vsize, vsize, store, chunk_size, progress,
                             should_stop, already, workers)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _chunk_it(raw_path: Path, raw_extents: Iterable[qemu_img.Extent], method: Method, base: int, vsize: int,
              store: ChunkStore, chunk_size: int, progress: Progress | None, should_stop: Callable[[], bool] | None,
              already: Sequence[str | None] | None, workers: int) -> IngestResult:
    return _ingest_raw_layout(
        raw_path,
        vsize,
        raw_extents,
        store=store,
        chunk_size=chunk_size,
        method=method,
        progress=_scaled(progress, base, vsize + base),
        should_stop=should_stop,
        already=already,
        workers=workers,
    )


def _scaled(progress: Progress | None, base: int, total: int) -> Progress | None:
    """Report chunking progress as the part of ``total`` after ``base`` (a conversion came first)."""
    if progress is None:
        return None
    return lambda done, _vsize: progress(base + done, total)


def _refuse_other_files(path: Path, fmt: str, info: dict[str, Any]) -> None:
    if info.get("backing-filename") or info.get("full-backing-filename"):
        raise UnsafeImage(f"backing file {info.get('backing-filename')!r:.200}")
    specific = (info.get("format-specific") or {}).get("data") or {}
    if fmt == "qcow2" and specific.get("data-file"):
        raise UnsafeImage(f"qcow2 data file {specific.get('data-file')!r:.200}")
    if fmt == "vmdk":
        for ext in specific.get("extents") or []:
            name = ext.get("filename")
            if not isinstance(name, str) or not _same_file(name, path):
                raise UnsafeImage(f"vmdk extent {name!r:.200}")


def _same_file(name: str, path: Path) -> bool:
    try:
        return os.path.samefile(name, path)
    except OSError:
        return False


def _check_coverage(extents: qemu_img.ExtentMap, vsize: int) -> None:
    if extents.end != vsize:
        raise IngestError(f"qemu-img map covers {extents.end} bytes but the virtual size is {vsize}")


def _direct_readable(path: Path, fmt: str, info: dict[str, Any], extents: qemu_img.ExtentMap) -> bool:
    """True iff every data run can be read from ``path`` itself at the offset the map gives (see the
    table in disk/qemu_img.py): the format keeps guest bytes verbatim in this one file."""
    if extents.needs_convert:
        return False
    specific = (info.get("format-specific") or {}).get("data") or {}
    if fmt == "qcow2":
        if info.get("encrypted") or specific.get("encrypt"):
            return False  # offsets of encrypted clusters point at ciphertext
    elif fmt == "vmdk":
        exts = specific.get("extents") or []
        if specific.get("create-type") != "monolithicSparse" or len(exts) != 1 or exts[0].get("compressed"):
            return False
    elif fmt not in ("raw", "vpc"):
        return False
    # A data run past EOF is something only qemu can interpret, so let it. (qemu rounds a raw file's size
    # up to 512 B, but maps the part past EOF as zero, so raw stays direct.)
    return extents.max_file_end <= path.stat().st_size


def _chunk_pieces(extents: Iterable[qemu_img.Extent], vsize: int, chunk_size: int) -> Iterator[list[_Piece]]:
    """For each chunk in order, its pieces; an all-zero chunk yields an empty list (nothing to read).
    One pass over the extents, holding one chunk's pieces."""
    it = iter(extents)
    ext = next(it, None)
    for index in range(chunk_count(vsize, chunk_size)):
        c0 = index * chunk_size
        c1 = min(c0 + chunk_size, vsize)
        pieces: list[_Piece] = []
        has_data = False
        while ext is not None:
            e0, e1 = ext.start, ext.start + ext.length
            if e0 >= c1:
                break
            lo, hi = max(e0, c0), min(e1, c1)
            if hi > lo:
                if ext.source == "file":
                    assert ext.offset is not None
                    pieces.append((lo - c0, hi - lo, ext.offset + (lo - e0)))
                    has_data = True
                else:
                    pieces.append((lo - c0, hi - lo, None))
            if e1 > c1:
                break  # this extent continues into the next chunk
            ext = next(it, None)
        yield pieces if has_data else []


def _ingest_raw_layout(
    path: Path,
    vsize: int,
    extents: Iterable[qemu_img.Extent],
    *,
    store: ChunkStore,
    chunk_size: int,
    method: Method,
    progress: Progress | None,
    should_stop: Callable[[], bool] | None,
    already: Sequence[str | None] | None,
    workers: int,
) -> IngestResult:
    n_chunks = chunk_count(vsize, chunk_size)
    if already is not None and (len(already) > n_chunks or not all(d is None or is_digest(d) for d in already)):
        raise ValueError("`already` is not a chunk-digest prefix of this disk")
    zero_view = memoryview(bytes(chunk_size))
    local = threading.local()
    # No oracle: a chunk another account already stored costs this import what a new one would.
    writer = store.writer(expected=n_chunks, conceal_present=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    with contextlib.suppress(OSError):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)

    def work(index: int, pieces: list[_Piece]) -> str | None:
        view: memoryview | None = getattr(local, "view", None)
        if view is None:
            # One reusable buffer per worker thread; an anonymous mmap is page-aligned, so the store can
            # write it with O_DIRECT without a copy.
            view = local.view = memoryview(mmap.mmap(-1, chunk_size))
        view = view[: min(chunk_size, vsize - index * chunk_size)]
        for rel, size, file_off in pieces:
            if file_off is None:
                view[rel : rel + size] = zero_view[:size]
            else:
                _read_exact(fd, view[rel : rel + size], file_off)
        # Written zeros are zeros too: put_data recognises them by digest and stores nothing.
        digest, _new = writer.put_data(view)
        return digest

    done = ManifestBuilder(vsize, chunk_size)  # 1 bit per chunk + 32 bytes per data chunk
    last_report = 0.0
    last_poll = -_STOP_INTERVAL  # poll before the first chunk

    def stop_requested() -> bool:
        nonlocal last_poll
        now = time.monotonic()
        if should_stop is None or now - last_poll < _STOP_INTERVAL:
            return False
        last_poll = now
        return should_stop()

    def report(force: bool = False) -> None:
        nonlocal last_report
        now = time.monotonic()
        if progress is not None and (force or now - last_report >= _PROGRESS_INTERVAL):
            last_report = now
            progress(min(len(done) * chunk_size, vsize), vsize)

    pending: deque[Future[str | None] | str | None] = deque()
    window = max(1, workers) * 2  # bounds memory and the work lost to a cancellation
    try:
        with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="ingest") as pool:
            try:
                for index, pieces in enumerate(_chunk_pieces(extents, vsize, chunk_size)):
                    if stop_requested():
                        _drain(pending, done)
                        writer.commit()
                        raise IngestCancelled(done.prefix())
                    if already is not None and index < len(already):
                        prior = already[index]
                        # Resumed chunks count as reused (by the manifest), like any chunk already present.
                        if prior is None or store.touch(prior):
                            pending.append(prior)
                            continue
                    if not pieces:
                        pending.append(None)
                    else:
                        pending.append(pool.submit(work, index, pieces))
                    while len(pending) > window or (pending and not isinstance(pending[0], Future)):
                        _append(done, _result(pending.popleft()))
                        report()
                _drain(pending, done)
            except BaseException:
                for item in pending:
                    if isinstance(item, Future):
                        item.cancel()
                raise
        writer.commit()  # the barrier: after this every digest in the manifest is durable
    finally:
        os.close(fd)
    report(force=True)
    manifest = done.build()
    metrics.INGESTED_BYTES.inc(manifest.data_bytes)
    return IngestResult(
        manifest=manifest,
        new_chunks=writer.new_chunks,
        new_bytes=writer.new_bytes,
        reused_chunks=manifest.stored_chunks - writer.new_chunks,
        data_bytes=manifest.data_bytes,
        method=method,
    )


def _result(item: Future[str | None] | str | None) -> str | None:
    return item.result() if isinstance(item, Future) else item


def _append(done: ManifestBuilder, digest: str | None) -> None:
    done.append(None if digest is None else bytes.fromhex(digest))


def _drain(pending: deque[Future[str | None] | str | None], done: ManifestBuilder) -> None:
    while pending:
        _append(done, _result(pending.popleft()))


def _read_exact(fd: int, view: memoryview, offset: int) -> None:
    while view:
        n = os.preadv(fd, [view], offset)
        if n == 0:  # checked against the file size up front; the file shrank under us
            raise IngestError(f"the image file ends at {offset}, inside a data run its map reports")
        view = view[n:]
        offset += n


__all__ = [
    "DEFAULT_WORKERS",
    "IngestCancelled",
    "IngestError",
    "IngestResult",
    "UnsafeImage",
    "ingest_disk",
]
