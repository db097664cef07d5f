"""A chunk store in a local directory.

Layout (every chunk checkable with ``b3sum``: its file name is the BLAKE3 of its bytes)::

    root/
      chunks/ab/cd/abcd…(64 hex)       a chunk, read-only (0444)
      chunks/ab/cd/tmp.abcd….<rand>     a chunk being written (removed by gc when stale)
      chunks/ab/cd/gc.abcd….<rand>      a chunk gc is deleting (restored by gc if left behind)
      tmp/                              scratch space on the same filesystem (conversions, exports)

Rules:

* A digest is validated before any path is built from it, so no name can reach outside ``chunks/``.
* A chunk name never exists unless its bytes are durable: bytes go to a temp file in the chunk's own
  directory, which is fsynced and then renamed. The rename (the directory entry) becomes durable at the
  directory fsync: at once in :meth:`DirStore.put`, at :meth:`ChunkWriter.commit` in a batch. Whoever
  records a manifest must commit first.
* Whole-page chunks are written with O_DIRECT: written once and read rarely, they should not evict the page
  cache, and on the reference machine buffered writes of fresh pages ran at a third of the speed
  (bench/chunk_size.py). Where O_DIRECT is refused (EINVAL), writes fall back to the page cache.
* All-zero chunks are never stored (:class:`ZeroChunk`); manifests record them as None.
* Every read re-hashes (:meth:`DirStore.get`); a mismatch is :class:`ChunkCorrupt`, never data.
* :meth:`DirStore.touch` refreshes a chunk's mtime; gc spares chunks younger than its grace period. Deletion
  under gc (:meth:`DirStore.delete` with ``unless_touched_since``) first renames the chunk away and only then
  looks at its mtime, so a concurrent ``touch`` either lands before (the chunk is kept) or fails with the
  chunk missing (and the writer writes it again). There is no window in which a chunk someone has just
  touched disappears.

DirStore satisfies :class:`~stratus.storage.chunkstore.ChunkStore`; the S3 store beside it is
:mod:`stratus.storage.s3store`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import mmap
import os
import secrets
import stat
import threading
from collections.abc import Collection, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import blake3

from stratus import metrics
from stratus.domain.manifest import MAX_CHUNK_SIZE, is_digest
from stratus.storage.chunkstore import (
    ChunkBatch,
    ChunkCorrupt,
    ChunkInfo,
    ChunkMissing,
    Data,
    InvalidDigest,
    StoreError,
    StoreStats,
    TempFile,
    ZeroChunk,
    check_digest,
    temp_files,
    verified_digest,
    zero_digest,
)

TEMP_PREFIX = "tmp."  # a chunk being written: tmp.<digest>.<rand>
TRASH_PREFIX = "gc."  # a chunk gc is deleting: gc.<digest>.<rand>
_CHUNK_MODE = 0o444  # chunks are immutable; read-only files guard against accidental in-place edits
# O_DIRECT needs buffer address, length and file offset aligned to the device's logical block; a page
# covers every device we know of.
_DIRECT_ALIGN = mmap.PAGESIZE


def _buffer_address(data: bytes | bytearray | memoryview) -> int | None:
    """Address of a writable buffer's first byte (for O_DIRECT alignment), None if it can't be had."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(data))
    except (TypeError, ValueError):  # read-only (bytes) or empty
        return None


# Directory fsyncs of all writers share these threads (not a new pool per commit: a batch of chunks commits
# every few milliseconds during an upload).
_DIR_SYNCERS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="dirsync")


def _read_all(fd: int, size: int) -> bytes:
    data = os.read(fd, size)  # one read of the exact size: no over-allocation per chunk
    while len(data) < size:
        more = os.read(fd, size - len(data))
        if not more:
            break
        data += more
    return data


def _read_direct(fd: int, size: int) -> memoryview:
    """Read an O_DIRECT descriptor into a page-aligned slice of a new buffer: the disk writes straight into
    it, where a buffered read costs a page-cache fill and a kernel copy (most of the server's CPU in an
    export, measured). Chunks are written with O_DIRECT too, so the page cache rarely has them anyway."""
    span = -(-size // _DIRECT_ALIGN) * _DIRECT_ALIGN
    raw = bytearray(span + _DIRECT_ALIGN)
    start = -(_buffer_address(raw) or 0) % _DIRECT_ALIGN
    view = memoryview(raw)[start : start + span]
    got = 0
    while got < size:
        n = os.preadv(fd, [view[got:]], got)
        if n == 0:
            break
        got += n
    return view[: min(got, size)]


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make the entries of a directory (names created, renamed or removed in it) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_fsync_dir = fsync_dir


def durable_replace(src: str | os.PathLike[str], dest: str | os.PathLike[str]) -> None:
    """Rename a finished file over ``dest`` so that, after a crash, ``dest`` holds either the old file or
    the whole new one: the bytes are fsynced before the rename, the directory after it."""
    fd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(src, dest)
    fsync_dir(os.path.dirname(os.path.abspath(dest)))


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data).cast("B")
    while view:
        written = os.write(fd, view)
        view = view[written:]


class DirStore:
    """Chunks as files under ``root`` (created if missing). See the module docstring for the layout."""

    def __init__(self, root: Path | str, *, durable: bool = True, direct_io: bool = True) -> None:
        # durable=False skips every fsync: only for scratch stores (benchmarks pricing fsync).
        # direct_io=False writes through the page cache (see the module docstring for why not by default).
        self.root = Path(root)
        self.chunks_dir = self.root / "chunks"
        self.scratch_dir = self.root / "tmp"
        self.durable = durable
        self.concurrency = 4  # two cores busy while others wait on fsync (bench/chunk_size.py)
        self.direct_io = direct_io
        self._local = threading.local()
        for d in (self.root, self.chunks_dir, self.scratch_dir):
            d.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"DirStore({str(self.root)!r})"

    def describe(self) -> str:
        return f"directory {self.root}"

    def check(self) -> None:
        """Nothing to check at start: the directories exist (made in __init__)."""

    # --- paths

    def path_for(self, digest: str) -> Path:
        """Where chunk ``digest`` lives (whether or not it exists)."""
        d = check_digest(digest)
        return self.chunks_dir / d[:2] / d[2:4] / d

    def _ensure_dir(self, digest: str, dirty: set[Path]) -> Path:
        """Create chunks/ab/cd as needed; a directory we create makes its parent dirty (needs fsync)."""
        leaf = self.chunks_dir / digest[:2] / digest[2:4]
        if leaf.is_dir():  # a lookup; mkdir would take the parent's lock even when the dir exists
            return leaf
        for path in (leaf.parent, leaf):
            try:
                path.mkdir()
            except FileExistsError:
                continue
            dirty.add(path.parent)
        return leaf

    # --- the store verbs

    def has(self, digest: str) -> bool:
        return self.path_for(digest).is_file()

    def put(self, digest: str, data: bytes | bytearray | memoryview) -> bool:
        """Store ``data`` under ``digest`` durably; True if newly written, False if it was already there
        (then its mtime is refreshed, see :meth:`touch`). Raises ChunkCorrupt if ``data`` doesn't hash to
        ``digest`` (nothing is written), ZeroChunk if it is all zeros."""
        verified_digest(digest, data)
        if self.touch(digest):
            return False
        dirty: set[Path] = set()
        self._write(digest, data, dirty)
        self._sync_dirs(dirty)
        return True

    def get(self, digest: str) -> bytes | memoryview:
        """The chunk's bytes, re-hashed: ChunkMissing if absent, ChunkCorrupt if they don't match."""
        path = self.path_for(digest)
        flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW
        direct = self.direct_io and hasattr(os, "O_DIRECT")
        try:
            try:
                fd = os.open(path, flags | (os.O_DIRECT if direct else 0))
            except OSError as exc:
                if not direct or exc.errno != errno.EINVAL:
                    raise
                direct, fd = False, os.open(path, flags)  # this filesystem refuses O_DIRECT
        except FileNotFoundError:
            raise ChunkMissing(digest) from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # chunks are regular files; a symlink is someone's mischief
                raise ChunkCorrupt(digest, None, "it is a symbolic link") from None
            raise
        try:
            size = os.fstat(fd).st_size
            if size > MAX_CHUNK_SIZE:  # bounded: a chunk file can't legitimately be larger
                raise ChunkCorrupt(digest, None, f"file is larger than the largest chunk ({MAX_CHUNK_SIZE} B)")
            data: bytes | memoryview | None = None
            if direct:
                try:
                    data = _read_direct(fd, size)
                except OSError as exc:  # opened, but its reads refuse O_DIRECT (some FUSE filesystems)
                    if exc.errno != errno.EINVAL:
                        raise
                    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT)
            if data is None:
                data = _read_all(fd, size)
        finally:
            os.close(fd)
        actual = blake3.blake3(data).hexdigest()
        if actual != digest:
            metrics.CHUNK_VERIFY_FAILURES.inc()
            raise ChunkCorrupt(digest, actual)
        return data

    def verify(self, digest: str) -> bool:
        """Re-hash the stored chunk: True if intact, False if damaged; ChunkMissing if absent."""
        path = self.path_for(digest)
        try:
            size = path.stat().st_size
            if size > MAX_CHUNK_SIZE:
                return False
            hasher = blake3.blake3()
            if size:  # mmap of an empty file fails; an empty chunk can only be damage anyway
                hasher.update_mmap(path)
        except FileNotFoundError:
            raise ChunkMissing(digest) from None
        return hasher.hexdigest() == digest

    def touch(self, digest: str) -> bool:
        """Refresh the chunk's mtime so gc's grace period protects it; False if the chunk is missing."""
        try:
            os.utime(self.path_for(digest))
        except FileNotFoundError:
            return False
        return True

    def stat(self, digest: str) -> ChunkInfo | None:
        """Size and mtime of the chunk, None if it is missing."""
        try:
            st = self.path_for(digest).stat()
        except FileNotFoundError:
            return None
        return ChunkInfo(digest, st.st_size, st.st_mtime)

    def present(self, digests: Collection[str]) -> dict[str, int]:
        """The sizes of the chunks of ``digests`` the store has, each touched (see :meth:`touch`).

        A chunk gc is deleting right now (renamed away) reads as missing: the caller writes it again, the
        safe side. On a directory one touch and one stat per chunk is as cheap as any listing.
        """
        found: dict[str, int] = {}
        for digest in dict.fromkeys(check_digest(d) for d in digests):
            if self.touch(digest) and (info := self.stat(digest)) is not None:
                found[digest] = info.size
        return found

    def delete(self, digest: str, *, unless_touched_since: float | None = None,
               planned_at: float | None = None) -> bool:
        """Remove a chunk; True if this call removed it.

        With ``unless_touched_since`` (a time.time() value) the chunk survives if its mtime is at or after
        that time, checked *after* the chunk has been renamed away, so a concurrent :meth:`touch` can't slip
        between the check and the unlink (see the module docstring). ``planned_at`` is for stores without
        an mtime (S3Store); a directory doesn't need it.
        """
        path = self.path_for(digest)
        if unless_touched_since is None:
            try:
                path.unlink()
            except FileNotFoundError:
                return False
            return True
        trash = path.with_name(f"{TRASH_PREFIX}{digest}.{secrets.token_hex(4)}")
        try:
            os.rename(path, trash)
        except FileNotFoundError:
            return False
        try:
            recent = trash.stat().st_mtime >= unless_touched_since
        except FileNotFoundError:  # another gc restored it meanwhile
            return False
        if recent:
            os.rename(trash, path)  # a writer may have re-created it meanwhile: same bytes, either is fine
            return False
        trash.unlink()
        return True

    def writer(self, expected: int | None = None, *, conceal_present: bool = False) -> ChunkWriter:
        """A batch writer: chunk files are fsynced as written, their directories once at commit().
        (``expected``, the number of chunks the batch may write, matters to object stores only;
        ``conceal_present``: see :meth:`ChunkStore.writer`.)"""
        return ChunkWriter(self, conceal_present=conceal_present)

    # --- listing

    def scan(self) -> Iterator[ChunkInfo | TempFile]:
        """Every chunk and every temp/trash/scratch file in the store; ignores anything else."""
        for top in _scandir_sorted(self.chunks_dir):
            if not (top.is_dir(follow_symlinks=False) and _is_hex(top.name, 2)):
                continue
            for mid in _scandir_sorted(top.path):
                if not (mid.is_dir(follow_symlinks=False) and _is_hex(mid.name, 2)):
                    continue
                prefix = top.name + mid.name
                for entry in _scandir_sorted(mid.path):
                    item = _classify(entry, prefix)
                    if item is not None:
                        yield item
        for entry in _scandir_sorted(self.scratch_dir):
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue  # scratch users make files, never directories
            yield TempFile(Path(entry.path), "scratch", st.st_size, st.st_mtime, None)

    def iter_chunks(self) -> Iterator[ChunkInfo]:
        for item in self.scan():
            if isinstance(item, ChunkInfo):
                yield item

    def iter_temp_files(self) -> Iterator[TempFile]:
        return temp_files(self.scan())

    def stats(self) -> StoreStats:
        return StoreStats.of(self.scan())

    def remove_temp(self, temp: TempFile) -> bool:
        """Clean up a leftover: delete an interrupted write or scratch file, restore a gc trash file
        (restoring is always safe: gc keeps a chunk one more round rather than losing one)."""
        if temp.kind == "trash":
            assert temp.digest is not None
            target = self.path_for(temp.digest)
            try:
                if target.exists():
                    temp.path.unlink()
                else:
                    os.rename(temp.path, target)
            except FileNotFoundError:
                return False
            return True
        try:
            temp.path.unlink()
        except FileNotFoundError:
            return False
        return True

    # --- internals shared with ChunkWriter

    def _write(self, digest: str, data: bytes | bytearray | memoryview, dirty: set[Path]) -> None:
        """Write one chunk (fsync, rename); adds the directories whose fsync makes it durable to ``dirty``."""
        leaf = self._ensure_dir(digest, dirty)
        tmp = leaf / f"{TEMP_PREFIX}{digest}.{secrets.token_hex(4)}"
        view = memoryview(data).cast("B")
        try:
            direct = self._direct_view(view)
            if direct is not None:
                try:
                    self._write_file(tmp, direct, os.O_DIRECT)
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
                    self.direct_io = False  # this filesystem refuses O_DIRECT (tmpfs, some FUSE): buffered
                    with contextlib.suppress(FileNotFoundError):
                        tmp.unlink()
                    direct = None
            if direct is None:
                self._write_file(tmp, view, 0)
            os.rename(tmp, leaf / digest)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        dirty.add(leaf)

    def write_decoy(self, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` as durably as a new chunk (same path: O_DIRECT where it works, fsync), then delete
        it: what a present chunk costs a writer that must not reveal it was present. A crash leaves a
        scratch file, which gc sweeps."""
        tmp = self.scratch_dir / f"{TEMP_PREFIX}decoy.{secrets.token_hex(8)}"
        view = memoryview(data).cast("B")
        try:
            direct = self._direct_view(view)
            try:
                self._write_file(tmp, direct if direct is not None else view, os.O_DIRECT if direct is not None else 0)
            except OSError as exc:
                if direct is None or exc.errno != errno.EINVAL:
                    raise
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                self._write_file(tmp, view, 0)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def _write_file(self, tmp: Path, view: memoryview, extra_flags: int) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | extra_flags
        fd = os.open(tmp, flags, _CHUNK_MODE)
        try:
            _write_all(fd, view)
            if self.durable:
                os.fsync(fd)  # bytes durable *before* the name exists
        finally:
            os.close(fd)

    def _direct_view(self, view: memoryview) -> memoryview | None:
        """``view`` itself, or a copy in an aligned per-thread buffer, if it can be written with O_DIRECT."""
        n = len(view)
        if not self.direct_io or n == 0 or n % _DIRECT_ALIGN:
            return None  # the short last chunk of a disk goes through the page cache
        address = _buffer_address(view)
        if address is not None and address % _DIRECT_ALIGN == 0:
            return view
        buf: mmap.mmap | None = getattr(self._local, "buf", None)
        if buf is None or len(buf) < n:
            buf = self._local.buf = mmap.mmap(-1, n)  # anonymous mmap: page-aligned
        aligned = memoryview(buf)[:n]
        aligned[:] = view
        return aligned

    def _sync_dirs(self, dirs: Iterable[Path]) -> None:
        if not self.durable:
            return
        # Children before parents is not required for correctness (all are synced before returning), but
        # deepest first lets the filesystem commit one journal transaction for most of them.
        ordered = sorted(dirs, key=lambda p: len(p.parts), reverse=True)
        if len(ordered) <= 4:
            for d in ordered:
                _fsync_dir(d)
            return
        list(_DIR_SYNCERS.map(_fsync_dir, ordered))


class ChunkWriter(ChunkBatch):
    """Writes many chunks with one durability barrier: :meth:`commit`.

    Thread-safe: many threads may call :meth:`put_data` at once. Each chunk file is fsynced before it gets
    its name (so a name never points at lost bytes); the directory entries become durable at
    :meth:`commit`, which the caller must call before recording anything that references the chunks.
    Digests already written or touched through this writer are not touched again.
    """

    def __init__(self, store: DirStore, *, conceal_present: bool = False) -> None:
        super().__init__(conceal_present=conceal_present, write_decoy=store.write_decoy)
        self.store = store
        self._dirty: set[Path] = set()

    def _present(self, digest: str) -> bool:
        return self.store.touch(digest)

    def _write(self, digest: str, data: Data) -> None:
        dirty: set[Path] = set()
        self.store._write(digest, data, dirty)
        with self._lock:
            self._dirty |= dirty

    def commit(self) -> None:
        """Make every chunk put so far durable under its name (fsync the directories touched)."""
        with self._lock:
            dirty, self._dirty = self._dirty, set()
        self.store._sync_dirs(dirty)


def _scandir_sorted(path: str | os.PathLike[str]) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            return sorted(it, key=lambda e: e.name)
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        return []


_HEX = frozenset("0123456789abcdef")


def _is_hex(name: str, length: int) -> bool:
    return len(name) == length and set(name) <= _HEX


def _classify(entry: os.DirEntry[str], prefix: str) -> ChunkInfo | TempFile | None:
    name = entry.name
    try:
        st = entry.stat(follow_symlinks=False)
    except FileNotFoundError:
        return None  # removed while we listed
    if not stat.S_ISREG(st.st_mode):
        return None
    if is_digest(name):
        # A valid digest in the wrong directory is not reachable by path_for(): not a chunk.
        return ChunkInfo(name, st.st_size, st.st_mtime) if name.startswith(prefix) else None
    for marker, kind in ((TEMP_PREFIX, "write"), (TRASH_PREFIX, "trash")):
        if name.startswith(marker):
            digest = name[len(marker) : len(marker) + 64]
            if is_digest(digest) and digest.startswith(prefix):
                # kind is "write" or "trash" (the tuple above); mypy widens the loop variable to str
                return TempFile(Path(entry.path), kind, st.st_size, st.st_mtime, digest)  # type: ignore[arg-type]
    return None


__all__ = [
    "durable_replace",
    "fsync_dir",
    "ChunkCorrupt",
    "ChunkInfo",
    "ChunkMissing",
    "ChunkWriter",
    "DirStore",
    "InvalidDigest",
    "StoreError",
    "StoreStats",
    "TempFile",
    "ZeroChunk",
    "check_digest",
    "zero_digest",
]
