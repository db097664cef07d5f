"""The framing of several chunks in one request or response body of the chunked data API.

A body is a sequence of records, each ``digest (32 bytes, binary BLAKE3) | length (u32 BE) | bytes``.
Batching many 1 MiB chunks per request amortizes the per-request cost (signing, routing, a catalog
round trip) that would otherwise dominate on a fast link. Pure: the receiver verifies every record's
bytes against its digest before trusting it.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator

from stratus.domain.manifest import DIGEST_SIZE, MAX_CHUNK_SIZE

_LEN = struct.Struct(">I")
HEADER_SIZE = DIGEST_SIZE + _LEN.size


class FrameError(ValueError):
    """A body that is not a well-formed sequence of chunk records."""


def encode_header(digest: str, length: int) -> bytes:
    return bytes.fromhex(digest) + _LEN.pack(length)


def encode(records: Iterable[tuple[str, bytes | memoryview]]) -> Iterator[bytes | memoryview]:
    """The pieces of a body holding ``records`` (hex digest, bytes), to write or send in order."""
    for digest, data in records:
        yield encode_header(digest, len(data))
        yield data


def decode(body: bytes | memoryview) -> Iterator[tuple[str, memoryview]]:
    """(hex digest, bytes) of each record in ``body``; FrameError if it is cut short or a length is absurd."""
    view = memoryview(body)
    pos = 0
    while pos < len(view):
        if len(view) - pos < HEADER_SIZE:
            raise FrameError(f"the body ends inside a record header at byte {pos}")
        digest = bytes(view[pos : pos + DIGEST_SIZE]).hex()
        (length,) = _LEN.unpack_from(view, pos + DIGEST_SIZE)
        pos += HEADER_SIZE
        if length > MAX_CHUNK_SIZE or pos + length > len(view):
            raise FrameError(f"record {digest[:16]}… says {length} bytes but the body has {len(view) - pos} left")
        yield digest, view[pos : pos + length]
        pos += length
