"""Disk manifests: how one disk's bytes are kept in a chunk store.

A disk of ``virtual_size`` bytes is cut into aligned chunks of ``chunk_size`` bytes (the last one may be
short). Each chunk is either all zeros (``None``: never stored) or the BLAKE3 digest of its bytes, under
which the store keeps it. A manifest is immutable and content-addressed.

**The digest** (the manifest's name everywhere: image disks, instance disks, base files) is the BLAKE3 of
the canonical JSON form (keys sorted, no spaces, lowercase hex, ``null`` for a zero chunk)::

    {"chunk_size":1048576,"chunks":["af13…",null,…],"hash":"blake3","version":1,"virtual_size":10737418240}

It is computed by streaming that text into the hasher, never by building it, so it stays the same as
when manifests were stored as JSON and no reference had to change.

**The stored form** (``encode``/``decode``, what the catalog keeps) is binary::

    b"SMF2" | virtual_size u64 BE | chunk_size u32 BE | bitmap, 1 bit per chunk (LSB first, 1 = data)
            | 32-byte digest of each data chunk, in order

so a TiB of virtual disk at 1 MiB chunks costs 128 KiB of bitmap plus 32 bytes per data chunk (32 MiB
when every chunk holds data), against ~67 MiB of hex JSON. In memory a manifest is the same bytes plus a
rank index (8 bytes per 4096 chunks); :attr:`DiskManifest.chunks` decodes hex digests one at a time.

Pure: no I/O. Every bound is checked before use (a manifest may come from a file or an upload).
"""

from __future__ import annotations

import json
import re
import struct
from array import array
from collections.abc import Iterable, Iterator, Sequence
from functools import cached_property
from typing import overload

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
# The largest CVM cloud disk (32000 GiB). Bounds the manifest too: 32 M entries at 1 MiB (1 GiB in memory).
MAX_VIRTUAL_SIZE = 32000 * (1 << 30)

FORMAT_VERSION = 1
HASH_NAME = "blake3"
DIGEST_SIZE = 32
ZERO_DIGEST = bytes(DIGEST_SIZE)  # never a data chunk's digest (refused when decoding)
_KEYS = frozenset({"chunk_size", "chunks", "hash", "version", "virtual_size"})
_MAGIC = b"SMF2"
_HEADER = struct.Struct(">4sQI")
_HASH_BATCH = 8192  # chunks per hasher update while streaming the canonical JSON


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


def _check_virtual_size(size: object) -> int:
    size = _strict_int("virtual_size", size)
    if not 0 < size <= MAX_VIRTUAL_SIZE:
        raise ValueError(f"manifest virtual_size {size} is out of range (1 .. {MAX_VIRTUAL_SIZE})")
    return size


class ChunkList(Sequence[str | None]):
    """The chunks of a manifest as hex digests (None for zeros), decoded on access."""

    __slots__ = ("_m",)

    def __init__(self, manifest: DiskManifest) -> None:
        self._m = manifest

    def __len__(self) -> int:
        return self._m.chunk_count

    @overload
    def __getitem__(self, index: int) -> str | None: ...
    @overload
    def __getitem__(self, index: slice) -> tuple[str | None, ...]: ...
    def __getitem__(self, index: int | slice) -> str | None | tuple[str | None, ...]:
        if isinstance(index, slice):
            return tuple(self[i] for i in range(*index.indices(len(self))))
        if index < 0:
            index += len(self)
        raw = self._m.raw_digest(index)
        return None if raw is None else raw.hex()

    def __iter__(self) -> Iterator[str | None]:
        for raw in self._m.iter_raw():
            yield None if raw is None else raw.hex()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ChunkList):
            return self._m == other._m
        if isinstance(other, (tuple, list)):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._m)

    def __repr__(self) -> str:
        return f"ChunkList({len(self)} chunks)"


class ManifestBuilder:
    """Appends chunks in disk order (a raw 32-byte digest, or None for zeros) into the compact form:
    what ingest and capture build a manifest with, at 1 bit per chunk plus 32 bytes per data chunk."""

    def __init__(self, virtual_size: int, chunk_size: int) -> None:
        self.virtual_size = _check_virtual_size(virtual_size)
        self.chunk_size = check_chunk_size(chunk_size)
        self.count = chunk_count(self.virtual_size, chunk_size)
        self._bits = bytearray((self.count + 7) // 8)
        self._data = bytearray()
        self._next = 0

    def __len__(self) -> int:
        return self._next

    def append(self, raw: bytes | None) -> None:
        i = self._next
        if i >= self.count:
            raise ValueError(f"manifest is full: {self.count} chunks")
        if raw is not None:
            if len(raw) != DIGEST_SIZE or raw == ZERO_DIGEST:
                raise ValueError(f"manifest chunk {i} is not a 32-byte BLAKE3 digest")
            self._bits[i >> 3] |= 1 << (i & 7)
            self._data += raw
        self._next = i + 1

    def append_hex(self, digest: str | None) -> None:
        if digest is not None and not is_digest(digest):
            raise ValueError(f"manifest chunk {self._next} is not a lowercase hex BLAKE3 digest: {digest!r:.80}")
        self.append(None if digest is None else bytes.fromhex(digest))

    def prefix(self) -> tuple[str | None, ...]:
        """The chunks appended so far, as hex (what a cancelled ingest hands back to resume with)."""
        partial = DiskManifest._from_parts(self.virtual_size, self.chunk_size, bytes(self._bits), bytes(self._data))
        return tuple(None if raw is None else raw.hex() for raw in partial.iter_raw())[: self._next]

    def build(self) -> DiskManifest:
        if self._next != self.count:
            raise ValueError(
                f"manifest has {self._next} chunks; virtual_size {self.virtual_size} at chunk_size "
                f"{self.chunk_size} needs {self.count}"
            )
        return DiskManifest._from_parts(self.virtual_size, self.chunk_size, bytes(self._bits), bytes(self._data))


_RANK_BLOCK = 4096  # chunks per entry of the rank index (512 bytes of bitmap)


class DiskManifest:
    """One disk: its size, its chunk size and, per aligned chunk, a digest or None (all zeros).

    Build it from hex digests (``DiskManifest(size, chunk_size, chunks)``, for small disks and tests),
    with a :class:`ManifestBuilder` (ingest, capture), or from the catalog's bytes (:meth:`decode`).
    In memory it is the stored form: a bitmap (1 bit per chunk), the data chunks' digests packed, and a
    rank index (8 bytes per 4096 chunks) to find chunk i's digest."""

    def __init__(self, virtual_size: int, chunk_size: int, chunks: Iterable[str | None] = ()) -> None:
        builder = ManifestBuilder(virtual_size, chunk_size)
        n = 0
        for digest in chunks:
            if n == builder.count:
                n += 1
                break
            builder.append_hex(digest)
            n += 1
        if n != builder.count:
            raise ValueError(
                f"manifest has {n if n <= builder.count else 'more'} chunks; virtual_size {virtual_size} at "
                f"chunk_size {chunk_size} needs {builder.count}"
            )
        built = builder.build()
        self._init(built.virtual_size, built.chunk_size, built._bits, built._data)

    def _init(self, virtual_size: int, chunk_size: int, bits: bytes, data: bytes) -> None:
        self.virtual_size = virtual_size
        self.chunk_size = chunk_size
        self._bits = bits
        self._data = data
        rank = array("Q")
        total = 0
        step = _RANK_BLOCK // 8
        for off in range(0, len(bits), step):
            rank.append(total)
            total += int.from_bytes(bits[off : off + step], "little").bit_count()
        if total * DIGEST_SIZE != len(data):
            raise ValueError(f"manifest holds {len(data)} bytes of digests; its bitmap needs {total * DIGEST_SIZE}")
        self._rank = rank
        self.stored_chunks = total

    @classmethod
    def _from_parts(cls, virtual_size: int, chunk_size: int, bits: bytes, data: bytes) -> DiskManifest:
        self = cls.__new__(cls)
        self._init(virtual_size, chunk_size, bits, data)
        return self

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DiskManifest):
            return NotImplemented
        return (self.virtual_size, self.chunk_size, self._bits, self._data) == (
            other.virtual_size, other.chunk_size, other._bits, other._data)

    def __hash__(self) -> int:
        return hash((self.virtual_size, self.chunk_size, self._bits, self._data))

    def __repr__(self) -> str:
        return (f"DiskManifest(virtual_size={self.virtual_size}, chunk_size={self.chunk_size}, "
                f"{self.chunk_count} chunks)")

    # --- chunks

    @property
    def chunks(self) -> ChunkList:
        return ChunkList(self)

    @property
    def memory_bytes(self) -> int:
        """What this manifest holds in memory (bitmap, digests, rank index), about its catalog size."""
        return len(self._bits) + len(self._data) + self._rank.itemsize * len(self._rank)

    def raw_digest(self, index: int) -> bytes | None:
        """The 32-byte digest of chunk ``index``, or None for a zero chunk."""
        if not 0 <= index < self.chunk_count:
            raise IndexError(f"chunk index {index} out of range 0..{self.chunk_count - 1}")
        if not self._bits[index >> 3] >> (index & 7) & 1:
            return None
        pos = self._position(index)
        return self._data[pos : pos + DIGEST_SIZE]

    def _position(self, index: int) -> int:
        """Where chunk ``index``'s digest would start in the packed digests (its rank times 32)."""
        bits = self._bits
        block = index // _RANK_BLOCK
        lo = block * (_RANK_BLOCK // 8)
        before = int.from_bytes(bits[lo : index >> 3], "little").bit_count()
        before += (bits[index >> 3] & ((1 << (index & 7)) - 1)).bit_count()
        return (self._rank[block] + before) * DIGEST_SIZE

    def iter_raw(self, start: int = 0) -> Iterator[bytes | None]:
        """Every chunk from ``start`` on, in order: its 32-byte digest or None."""
        bits, data, n = self._bits, self._data, self.chunk_count
        pos = self._position(start) if 0 < start < n else 0
        for byte_index in range(start >> 3, len(bits)):
            byte = bits[byte_index]
            lo = max(byte_index * 8, start)
            hi = min(byte_index * 8 + 8, n)
            if not byte:
                yield from (None,) * (hi - lo)
                continue
            for i in range(lo, hi):
                if byte >> (i & 7) & 1:
                    yield data[pos : pos + DIGEST_SIZE]
                    pos += DIGEST_SIZE
                else:
                    yield None

    def iter_data_digests_raw(self) -> Iterator[bytes]:
        """The raw digest of every data chunk, in disk order (repeats included)."""
        data = self._data
        for off in range(0, len(data), DIGEST_SIZE):
            yield data[off : off + DIGEST_SIZE]

    # --- the stored form

    def encode(self) -> bytes:
        """The binary form the catalog keeps (see the module docstring)."""
        return _HEADER.pack(_MAGIC, self.virtual_size, self.chunk_size) + self._bits + self._data

    @classmethod
    def decode(cls, body: bytes | bytearray | memoryview) -> DiskManifest:
        """Parse the binary form; anything malformed raises ValueError."""
        body = bytes(body)
        if len(body) < _HEADER.size or body[:4] != _MAGIC:
            raise ValueError("manifest is not in the binary SMF2 form")
        _magic, size, chunk_size = _HEADER.unpack_from(body)
        _check_virtual_size(size)
        check_chunk_size(chunk_size)
        n = chunk_count(size, chunk_size)
        nbits = (n + 7) // 8
        bits = body[_HEADER.size : _HEADER.size + nbits]
        if len(bits) != nbits:
            raise ValueError("manifest bitmap is cut short")
        if n % 8 and bits[-1] >> (n % 8):
            raise ValueError("manifest bitmap marks chunks past the end of the disk")
        data = body[_HEADER.size + nbits :]
        if len(data) % DIGEST_SIZE:
            raise ValueError("manifest digests are cut short")
        for off in range(0, len(data), DIGEST_SIZE):
            if data[off : off + DIGEST_SIZE] == ZERO_DIGEST:
                raise ValueError(f"manifest digest {off // DIGEST_SIZE} is all zeros")
        return cls._from_parts(size, chunk_size, bits, data)

    # --- the canonical JSON (the digest's definition; also how manifests were once stored)

    def to_json(self) -> bytes:
        """The canonical JSON form (sorted keys, no whitespace, ASCII). Builds it whole: for small disks."""
        return b"".join(self._json_pieces())

    def _json_pieces(self) -> Iterator[bytes]:
        """The canonical JSON in pieces. Eight chunks (one bitmap byte) at a time: a full byte's digests are
        hexed in one call, an empty byte is eight nulls."""
        yield b'{"chunk_size":%d,"chunks":[' % self.chunk_size
        bits, data, n = self._bits, self._data, self.chunk_count
        full_bytes = n >> 3
        nulls8 = b",".join([b"null"] * 8)
        items: list[bytes] = []
        pos = 0
        pos_started = False  # a piece of the list was yielded: the next one starts with a comma
        for byte_index in range(full_bytes):
            byte = bits[byte_index]
            if byte == 0:
                items.append(nulls8)
            elif byte == 0xFF:
                items.append(b'"' + data[pos : pos + 256].hex(",", 32).replace(",", '","').encode("ascii") + b'"')
                pos += 256
            else:
                for k in range(8):
                    if byte >> k & 1:
                        items.append(b'"' + data[pos : pos + DIGEST_SIZE].hex().encode("ascii") + b'"')
                        pos += DIGEST_SIZE
                    else:
                        items.append(b"null")
            if len(items) >= _HASH_BATCH:
                yield (b"," if pos_started else b"") + b",".join(items)
                items, pos_started = [], True
        for i in range(full_bytes * 8, n):
            if bits[i >> 3] >> (i & 7) & 1:
                items.append(b'"' + data[pos : pos + DIGEST_SIZE].hex().encode("ascii") + b'"')
                pos += DIGEST_SIZE
            else:
                items.append(b"null")
        if items:
            yield (b"," if pos_started else b"") + b",".join(items)
        yield b'],"hash":"%s","version":%d,"virtual_size":%d}' % (
            HASH_NAME.encode(), FORMAT_VERSION, self.virtual_size)

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
            chunks=chunks,
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
        hasher = blake3.blake3()
        for piece in self._json_pieces():
            hasher.update(piece)
        return hasher.hexdigest()

    def data_digests(self) -> frozenset[str]:
        """The distinct digests this manifest references, as hex (for small disks and tests)."""
        return frozenset(raw.hex() for raw in set(self.iter_data_digests_raw()))

    @property
    def chunk_count(self) -> int:
        return chunk_count(self.virtual_size, self.chunk_size)

    @property
    def data_bytes(self) -> int:
        """Bytes of the disk in non-zero chunks (short last chunk counted at its real length)."""
        total = self.stored_chunks * self.chunk_size
        last = self.chunk_count - 1
        if self._bits[last >> 3] >> (last & 7) & 1:
            total -= self.chunk_size - self.chunk_range(last)[1]
        return total

    def chunk_range(self, index: int) -> tuple[int, int]:
        """(offset, length) of chunk ``index`` in the disk; the last chunk may be short."""
        if not 0 <= index < self.chunk_count:
            raise IndexError(f"chunk index {index} out of range 0..{self.chunk_count - 1}")
        offset = index * self.chunk_size
        return offset, min(self.chunk_size, self.virtual_size - offset)
