"""domain/chunkframes.py: chunk records at page-aligned offsets, and refusals of malformed bodies."""

import os

import blake3
import pytest

from stratus.domain import chunkframes
from stratus.domain.chunkframes import ALIGN, FrameError


def _record(data: bytes) -> tuple[str, bytes]:
    return blake3.blake3(data).hexdigest(), data


def test_records_round_trip_with_every_chunk_at_an_aligned_offset() -> None:
    records = [_record(os.urandom(n)) for n in (1 << 20, 512, 3 * ALIGN + 7, 1 << 20)]
    body = b"".join(chunkframes.encode(records))
    assert len(body) == chunkframes.body_size(len(d) for _, d in records)
    view = memoryview(body)
    decoded = list(chunkframes.decode(view))
    assert [(d, bytes(v)) for d, v in decoded] == records
    for _digest, chunk in decoded:  # where each chunk starts within the body
        assert body.index(bytes(chunk[:64])) % ALIGN == 0


def test_write_header_builds_the_same_body_in_place() -> None:
    records = [_record(os.urandom(n)) for n in (5000, ALIGN)]
    buf = memoryview(bytearray(chunkframes.body_size(len(d) for _, d in records)))
    pos = 0
    for digest, data in records:
        pos = chunkframes.write_header(buf, pos, digest, len(data))
        buf[pos : pos + len(data)] = data
        pos += chunkframes.padded(len(data))
    assert bytes(buf[:pos]) == b"".join(chunkframes.encode(records))


@pytest.mark.parametrize("cut", [10, ALIGN + 100])
def test_a_body_cut_short_is_refused(cut: int) -> None:
    body = b"".join(chunkframes.encode([_record(os.urandom(2 * ALIGN))]))
    with pytest.raises(FrameError):
        list(chunkframes.decode(body[:cut]))


def test_an_absurd_length_is_refused() -> None:
    header = chunkframes.encode_header("ab" * 32, 1 << 31)
    with pytest.raises(FrameError):
        list(chunkframes.decode(header + bytes(ALIGN)))
