"""The chunk-store interface every user of image bytes goes through, and the types it speaks.

Two stores satisfy it: :class:`~stratus.storage.dirstore.DirStore` (files under a directory) and
:class:`~stratus.storage.s3store.S3Store` (objects in an S3 bucket). Ingest, export, capture, copy, gc,
fsck and base materialization only see :class:`ChunkStore`; a region's configuration picks the store
(:func:`stratus.storage.open_store`).

The contract (``tests/storage/store_suite.py`` runs it on both stores):

* chunks are named by the BLAKE3 of their bytes; a digest is validated before it names anything;
* ``put`` refuses bytes that don't hash to the digest and all-zero chunks; ``get`` re-hashes on every
  read (``ChunkCorrupt``, never wrong data; ``ChunkMissing`` if absent);
* a chunk name never exists unless its bytes are durable; in a batch (``writer()``) that holds after
  ``commit()``, which callers run before recording a manifest;
* ``touch`` makes the chunk count as new for gc's grace period, and ``delete(unless_touched_since=…)``
  never removes a chunk touched at or after that time (see each store for how);
* ``present(digests)`` is the batch question a delta copy asks: which of these does the store have
  (touching them), answered without one request per chunk where the store allows.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import blake3

from stratus.domain.manifest import is_digest


class StoreError(Exception):
    """A chunk store operation failed."""


class ZeroChunk(StoreError, ValueError):
    """All-zero chunks are never stored; a manifest records them as None."""


class InvalidDigest(StoreError, ValueError):
    """Not a lowercase hex BLAKE3 digest; no path or key is built from it."""


class StoreUnavailable(StoreError):
    """The store could not be reached (after retries): the reason names the store and the last error."""


class ChunkMissing(StoreError):
    """The store has no chunk with this digest."""

    def __init__(self, digest: str) -> None:
        self.digest = digest
        super().__init__(f"chunk {digest} is missing from the store; `stratus fsck` lists what else is")


class ChunkCorrupt(StoreError):
    """The chunk's bytes don't hash to its name (damaged in the store, or the caller passed wrong bytes)."""

    def __init__(self, digest: str, actual: str | None = None, detail: str = "") -> None:
        self.digest = digest
        self.actual = actual
        msg = f"chunk {digest} is corrupt"
        if actual:
            msg += f" (its bytes hash to {actual})"
        if detail:
            msg += f": {detail}"
        super().__init__(msg + "; run `stratus fsck`, then re-import or re-copy the images that use it")


@dataclass(frozen=True)
class ChunkInfo:
    digest: str
    size: int
    mtime: float  # file mtime (DirStore) or object LastModified (S3Store), seconds since the epoch


@dataclass(frozen=True)
class TempFile:
    """A file in the store that is not a chunk: an interrupted write, a gc leftover or scratch."""

    path: Path
    kind: Literal["write", "trash", "scratch"]
    size: int
    mtime: float
    digest: str | None  # the chunk it belongs to (write/trash), None for scratch


@dataclass(frozen=True)
class StoreStats:
    chunks: int
    bytes: int
    temp_files: int
    temp_bytes: int


def check_digest(digest: object) -> str:
    if not is_digest(digest):
        raise InvalidDigest(f"not a lowercase hex BLAKE3 digest: {digest!r:.80}")
    assert isinstance(digest, str)
    return digest


@lru_cache(maxsize=8)
def zero_digest(length: int) -> str:
    """The digest of ``length`` zero bytes: a chunk that hashes to it is all zeros (and is not stored)."""
    return blake3.blake3(bytes(length)).hexdigest()


def verified_digest(digest: str, data: bytes | bytearray | memoryview) -> str:
    """Check ``data`` may be stored under ``digest``: ChunkCorrupt if it hashes elsewhere, ZeroChunk if
    it is all zeros."""
    check_digest(digest)
    actual = blake3.blake3(data).hexdigest()
    if actual != digest:
        raise ChunkCorrupt(digest, actual, "refusing to store bytes under another digest")
    if digest == zero_digest(len(memoryview(data).cast("B"))):
        raise ZeroChunk("all-zero chunks are never stored; record None in the manifest")
    return digest


class BatchWriter(Protocol):
    """Many chunk writes with one durability barrier (:meth:`commit`); thread-safe."""

    new_chunks: int
    new_bytes: int
    reused_chunks: int

    def put_data(self, data: bytes | bytearray | memoryview) -> tuple[str | None, bool]: ...

    def put(self, digest: str, data: bytes | bytearray | memoryview) -> bool: ...

    def commit(self) -> None: ...

    def __enter__(self) -> BatchWriter: ...

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None: ...


@runtime_checkable
class ChunkStore(Protocol):
    """What ingest, export, capture, copy, gc and fsck need of a store (see the module docstring)."""

    scratch_dir: Path  # local scratch space for conversions and exports
    concurrency: int  # requests worth keeping in flight: a disk saturates with few, an object store needs more

    def has(self, digest: str) -> bool: ...

    def put(self, digest: str, data: bytes | bytearray | memoryview) -> bool: ...

    def get(self, digest: str) -> bytes | memoryview: ...

    def verify(self, digest: str) -> bool: ...

    def stat(self, digest: str) -> ChunkInfo | None: ...

    def touch(self, digest: str) -> bool: ...

    def present(self, digests: Collection[str]) -> dict[str, int]: ...

    def delete(self, digest: str, *, unless_touched_since: float | None = None,
               planned_at: float | None = None) -> bool: ...

    def writer(self, expected: int | None = None, *, conceal_present: bool = False) -> BatchWriter:
        """``conceal_present``: a chunk already in the store costs what a new one would (its bytes written
        durably somewhere and thrown away), so the time a write takes says nothing about what the store held
        (no cross-account oracle through the duration of an import, a capture or a chunk upload)."""
        ...

    def scan(self) -> Iterator[ChunkInfo | TempFile]: ...

    def iter_chunks(self) -> Iterator[ChunkInfo]: ...

    def iter_temp_files(self) -> Iterator[TempFile]: ...

    def stats(self) -> StoreStats: ...

    def remove_temp(self, temp: TempFile) -> bool: ...

    def describe(self) -> str: ...

    def check(self) -> None: ...


__all__ = [
    "BatchWriter",
    "ChunkCorrupt",
    "ChunkInfo",
    "ChunkMissing",
    "ChunkStore",
    "InvalidDigest",
    "StoreError",
    "StoreStats",
    "StoreUnavailable",
    "TempFile",
    "ZeroChunk",
    "check_digest",
    "verified_digest",
    "zero_digest",
]
