"""The framing of several chunks in one request or response body of the chunked data API.

A body is a sequence of records. Each record is a header block of ``ALIGN`` bytes (the binary BLAKE3
digest, 32 bytes, then the length as a u32 BE, then zeros) followed by the chunk's bytes, padded with
zeros to a multiple of ``ALIGN``. Every chunk therefore starts at a multiple of ``ALIGN`` from the start
of the body: a receiver that reads the body into a page-aligned buffer can hand each chunk to an
O_DIRECT write as it is, with no copy (0.4% more bytes on the wire for 1 MiB chunks).

Batching many chunks per request amortizes the per-request cost (signing, routing, a catalog round trip)
that would otherwise dominate on a fast link. Pure: the receiver verifies every record's bytes against
its digest before trusting it.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator

from stratus.domain.manifest import DIGEST_SIZE, MAX_CHUNK_SIZE

ALIGN = 4096  # the O_DIRECT alignment of the filesystems we write to (and the page size)
_LEN = struct.Struct(">I")
HEADER_SIZE = ALIGN
_HEADER_USED = DIGEST_SIZE + _LEN.size
_PADDING = bytes(ALIGN)


class FrameError(ValueError):
    """A body that is not a well-formed sequence of chunk records."""


def padded(length: int) -> int:
    """``length`` rounded up to a multiple of ALIGN."""
    return -(-length // ALIGN) * ALIGN


def record_size(length: int) -> int:
    """The bytes a record of a ``length``-byte chunk takes in a body."""
    return HEADER_SIZE + padded(length)


def body_size(lengths: Iterable[int]) -> int:
    return sum(record_size(n) for n in lengths)


def encode_header(digest: str, length: int) -> bytes:
    return bytes.fromhex(digest) + _LEN.pack(length) + _PADDING[_HEADER_USED:]


def encode(records: Iterable[tuple[str, bytes | memoryview]]) -> Iterator[bytes | memoryview]:
    """The pieces of a body holding ``records`` (hex digest, bytes), to write or send in order."""
    for digest, data in records:
        n = len(data)
        yield encode_header(digest, n)
        yield data
        if padded(n) != n:
            yield _PADDING[: padded(n) - n]


def write_header(buf: memoryview, pos: int, digest: str, length: int) -> int:
    """Write a record header into ``buf`` at ``pos``; returns where the chunk's bytes go."""
    buf[pos : pos + DIGEST_SIZE] = bytes.fromhex(digest)
    _LEN.pack_into(buf, pos + DIGEST_SIZE, length)
    buf[pos + _HEADER_USED : pos + HEADER_SIZE] = _PADDING[_HEADER_USED:]
    return pos + HEADER_SIZE


def decode(body: bytes | bytearray | memoryview) -> Iterator[tuple[str, memoryview]]:
    """(hex digest, bytes) of each record in ``body``; FrameError if it is cut short or a length is absurd."""
    view = memoryview(body).cast("B")
    pos = 0
    while pos < len(view):
        if len(view) - pos < HEADER_SIZE:
            raise FrameError(f"the body ends inside a record header at byte {pos}")
        digest = bytes(view[pos : pos + DIGEST_SIZE]).hex()
        (length,) = _LEN.unpack_from(view, pos + DIGEST_SIZE)
        pos += HEADER_SIZE
        if length > MAX_CHUNK_SIZE or pos + padded(length) > len(view):
            raise FrameError(f"record {digest[:16]}… says {length} bytes but the body has {len(view) - pos} left")
        yield digest, view[pos : pos + length]
        pos += padded(length)
