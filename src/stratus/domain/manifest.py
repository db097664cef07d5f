"""Disk manifests: how one disk's bytes are kept in a chunk store.

A disk of ``virtual_size`` bytes is cut into aligned chunks of ``chunk_size`` bytes (the last one may be
short). Each chunk is either all zeros (``None``: never stored) or the lowercase hex BLAKE3 digest of its
bytes, under which the store keeps it. A manifest is immutable and itself content-addressed: its digest is
the BLAKE3 of its canonical JSON, which is the only form :meth:`DiskManifest.from_json` accepts, so the
same disk content always has the same manifest digest.

Canonical JSON (keys sorted, no spaces, ``null`` for a zero chunk)::

    {"chunk_size":4194304,"chunks":["af13…",null,…],"hash":"blake3","version":1,"virtual_size":10737418240}

Pure: no I/O. Every bound is checked before use (a manifest may come from a file or an upload).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cached_property

import blake3

DIGEST_RE = re.compile(r"^[0-9a-f]{64}\Z")

KiB = 1 << 10
MiB = 1 << 20
MIN_CHUNK_SIZE = 64 * KiB
MAX_CHUNK_SIZE = 64 * MiB
# Chosen by bench/chunk_size.py: at 1, 2 and 4 MiB ingest runs at the same speed (~2 GB/s of virtual
# disk); 1 MiB stores ~20 % less (more zero runs skipped) and a capture of scattered small writes is ~3x
# smaller than at 4 MiB, for 3-4x the chunk files and manifest entries.
DEFAULT_CHUNK_SIZE = 1 * MiB
# The largest CVM cloud disk (32000 GiB). Bounds the manifest too: 8 M entries (~530 MB JSON) at 4 MiB.
MAX_VIRTUAL_SIZE = 32000 * (1 << 30)

FORMAT_VERSION = 1
HASH_NAME = "blake3"
_KEYS = frozenset({"chunk_size", "chunks", "hash", "version", "virtual_size"})


def is_digest(value: object) -> bool:
    """True iff ``value`` is a lowercase hex BLAKE3 digest (64 characters)."""
    return isinstance(value, str) and DIGEST_RE.match(value) is not None


def chunk_count(virtual_size: int, chunk_size: int) -> int:
    return -(-virtual_size // chunk_size)


def _strict_int(name: str, value: object) -> int:
    # bool is an int subclass; a manifest saying "chunk_size": true is malformed, not 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"manifest {name} must be an integer, not {type(value).__name__}")
    return value


def check_chunk_size(chunk_size: int) -> int:
    """Return ``chunk_size`` if it is a power of two in [64 KiB, 64 MiB], else raise ValueError."""
    _strict_int("chunk_size", chunk_size)
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE or chunk_size & (chunk_size - 1):
        raise ValueError(
            f"chunk size {chunk_size} must be a power of two between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE}"
        )
    return chunk_size


@dataclass(frozen=True)
class DiskManifest:
    """One disk: its size, its chunk size and, per aligned chunk, a digest or None (all zeros)."""

    virtual_size: int
    chunk_size: int
    chunks: tuple[str | None, ...]

    def __post_init__(self) -> None:
        size = _strict_int("virtual_size", self.virtual_size)
        if not 0 < size <= MAX_VIRTUAL_SIZE:
            raise ValueError(f"manifest virtual_size {size} is out of range (1 .. {MAX_VIRTUAL_SIZE})")
        check_chunk_size(self.chunk_size)
        if not isinstance(self.chunks, tuple):
            # A list would make the frozen dataclass mutable through the back door.
            object.__setattr__(self, "chunks", tuple(self.chunks))
        expected = chunk_count(size, self.chunk_size)
        if len(self.chunks) != expected:
            raise ValueError(
                f"manifest has {len(self.chunks)} chunks; virtual_size {size} at chunk_size "
                f"{self.chunk_size} needs {expected}"
            )
        for index, digest in enumerate(self.chunks):
            if digest is not None and not is_digest(digest):
                raise ValueError(f"manifest chunk {index} is not a lowercase hex BLAKE3 digest: {digest!r:.80}")

    # --- serialization

    def to_json(self) -> bytes:
        """The canonical JSON form (sorted keys, no whitespace, ASCII)."""
        doc = {
            "chunk_size": self.chunk_size,
            "chunks": list(self.chunks),
            "hash": HASH_NAME,
            "version": FORMAT_VERSION,
            "virtual_size": self.virtual_size,
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("ascii")

    @classmethod
    def from_json(cls, data: bytes | str) -> DiskManifest:
        """Parse and validate a manifest; anything but the canonical form raises ValueError."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"manifest is not valid JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise ValueError("manifest must be a JSON object")
        if set(doc) != _KEYS:
            raise ValueError(f"manifest keys must be exactly {sorted(_KEYS)}, got {sorted(doc)!r:.200}")
        if _strict_int("version", doc["version"]) != FORMAT_VERSION:
            raise ValueError(f"unsupported manifest version {doc['version']}; this build reads {FORMAT_VERSION}")
        if doc["hash"] != HASH_NAME:
            raise ValueError(f"unsupported manifest hash {doc['hash']!r:.40}; this build reads {HASH_NAME!r}")
        chunks = doc["chunks"]
        if not isinstance(chunks, list):
            raise ValueError("manifest chunks must be a list")
        manifest = cls(
            virtual_size=_strict_int("virtual_size", doc["virtual_size"]),
            chunk_size=_strict_int("chunk_size", doc["chunk_size"]),
            chunks=tuple(chunks),
        )
        # Only one byte string per manifest, so digest() names the content, not a spelling of it.
        if manifest.to_json() != data:
            raise ValueError("manifest JSON is not in canonical form (sorted keys, no whitespace)")
        return manifest

    # --- derived facts

    def digest(self) -> str:
        """BLAKE3 of the canonical JSON: the manifest's content address."""
        return self._digest

    @cached_property
    def _digest(self) -> str:
        return blake3.blake3(self.to_json()).hexdigest()

    def data_digests(self) -> frozenset[str]:
        """The distinct digests this manifest references (what gc must keep)."""
        return frozenset(d for d in self.chunks if d is not None)

    @property
    def chunk_count(self) -> int:
        return len(self.chunks)

    @property
    def stored_chunks(self) -> int:
        """Chunk positions that hold data (a digest repeated at two positions counts twice)."""
        return sum(1 for d in self.chunks if d is not None)

    @property
    def data_bytes(self) -> int:
        """Bytes of the disk in non-zero chunks (short last chunk counted at its real length)."""
        return sum(self.chunk_range(i)[1] for i, d in enumerate(self.chunks) if d is not None)

    def chunk_range(self, index: int) -> tuple[int, int]:
        """(offset, length) of chunk ``index`` in the disk; the last chunk may be short."""
        if not 0 <= index < len(self.chunks):
            raise IndexError(f"chunk index {index} out of range 0..{len(self.chunks) - 1}")
        offset = index * self.chunk_size
        return offset, min(self.chunk_size, self.virtual_size - offset)
