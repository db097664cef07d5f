"""DiskManifest: canonical JSON, strict parsing, bounds, derived facts."""

from __future__ import annotations

import json

import blake3
import pytest

from stratus.domain.manifest import (
    DIGEST_RE,
    MAX_CHUNK_SIZE,
    MAX_VIRTUAL_SIZE,
    MIN_CHUNK_SIZE,
    DiskManifest,
    MiB,
    is_digest,
)

D1 = blake3.blake3(b"one").hexdigest()
D2 = blake3.blake3(b"two").hexdigest()


def make(virtual_size: int = 3 * MiB + 512, chunk_size: int = MiB, chunks: tuple = (D1, None, D2, D1)):
    return DiskManifest(virtual_size=virtual_size, chunk_size=chunk_size, chunks=chunks)


def test_canonical_json_is_exact_and_round_trips() -> None:
    m = make()
    expected = (
        f'{{"chunk_size":1048576,"chunks":["{D1}",null,"{D2}","{D1}"],"hash":"blake3","version":1,'
        '"virtual_size":3146240}'
    ).encode()
    assert m.to_json() == expected
    assert DiskManifest.from_json(expected) == m
    assert DiskManifest.from_json(expected.decode()) == m


def test_digest_is_blake3_of_canonical_json_and_names_content() -> None:
    m = make()
    assert m.digest() == blake3.blake3(m.to_json()).hexdigest()
    assert make().digest() == m.digest()
    assert make(chunks=(D1, None, D2, D2)).digest() != m.digest()
    assert make(chunks=(D1, None, D2, None)).digest() != m.digest()


def test_derived_facts() -> None:
    m = make()
    assert m.chunk_count == 4
    assert m.stored_chunks == 3  # D1 counted at both positions
    assert m.data_digests() == {D1, D2}
    assert m.chunk_range(0) == (0, MiB)
    assert m.chunk_range(2) == (2 * MiB, MiB)
    assert m.chunk_range(3) == (3 * MiB, 512)  # short last chunk
    assert m.data_bytes == 2 * MiB + 512  # chunks 0, 2 and the 512-byte tail
    with pytest.raises(IndexError):
        m.chunk_range(4)
    with pytest.raises(IndexError):
        m.chunk_range(-1)


def test_chunks_list_becomes_tuple() -> None:
    m = DiskManifest(virtual_size=MiB, chunk_size=MiB, chunks=[D1])  # type: ignore[arg-type]
    assert m.chunks == (D1,)
    hash(m)  # frozen and hashable, so it can key a cache


@pytest.mark.parametrize("chunk_size", [MIN_CHUNK_SIZE, 2 * MiB, MAX_CHUNK_SIZE])
def test_chunk_size_bounds_accepted(chunk_size: int) -> None:
    m = DiskManifest(virtual_size=chunk_size * 2, chunk_size=chunk_size, chunks=(None, D1))
    assert DiskManifest.from_json(m.to_json()) == m


@pytest.mark.parametrize("chunk_size", [MIN_CHUNK_SIZE // 2, MAX_CHUNK_SIZE * 2, 3 * MiB, MiB + 1, 0, -MiB])
def test_chunk_size_out_of_bounds_refused(chunk_size: int) -> None:
    with pytest.raises(ValueError, match="chunk size"):
        DiskManifest(virtual_size=MiB, chunk_size=chunk_size, chunks=(None,))


@pytest.mark.parametrize("virtual_size", [0, -1, MAX_VIRTUAL_SIZE + 1])
def test_virtual_size_bounds(virtual_size: int) -> None:
    with pytest.raises(ValueError, match="virtual_size"):
        DiskManifest(virtual_size=virtual_size, chunk_size=MiB, chunks=())


@pytest.mark.parametrize("chunks", [(D1,), (D1, None, D2), (D1, None, D2, D1, None)])
def test_chunk_count_must_match_size(chunks: tuple) -> None:
    with pytest.raises(ValueError, match="needs 4"):
        make(chunks=chunks)


@pytest.mark.parametrize(
    "bad",
    [
        D1.upper(),
        D1[:-1],
        D1 + "0",
        D1 + "\n",  # `$` would accept this; the pattern must not
        "g" * 64,
        "",
        123,
        b"a" * 64,
        ["a" * 64],
    ],
)
def test_bad_digests_refused(bad: object) -> None:
    assert not is_digest(bad)
    with pytest.raises(ValueError, match="digest"):
        make(chunks=(D1, None, bad, D1))


def test_digest_re() -> None:
    assert DIGEST_RE.match(D1)
    assert not DIGEST_RE.match(D1 + "\n")
    assert is_digest(D1)


def _doc(**changes: object) -> dict:
    doc = json.loads(make().to_json())
    doc.update(changes)
    return doc


def _dump(doc: object) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[]", "JSON object"),
        (_dump(_doc(extra=1)), "keys"),
        (_dump({k: v for k, v in _doc().items() if k != "hash"}), "keys"),
        (_dump(_doc(version=2)), "version"),
        (_dump(_doc(version="1")), "version"),
        (_dump(_doc(hash="sha256")), "hash"),
        (_dump(_doc(chunk_size=True)), "chunk_size must be an integer"),
        (_dump(_doc(chunk_size=1048576.0)), "chunk_size must be an integer"),
        (_dump(_doc(virtual_size="3146240")), "virtual_size must be an integer"),
        (_dump(_doc(chunks="abc")), "chunks must be a list"),
        (_dump(_doc(chunks=[D1, None, D2])), "needs 4"),
        (_dump(_doc(chunks=[D1, None, D2, 7])), "digest"),
        (_dump(_doc(chunk_size=3 * MiB)), "chunk size"),
        # Valid content, non-canonical spelling: refused so that one disk has one manifest digest.
        (json.dumps(_doc(), sort_keys=True).encode(), "canonical"),
        (json.dumps(dict(reversed(_doc().items())), separators=(",", ":")).encode(), "canonical"),
        (make().to_json() + b"\n", "canonical"),
    ],
)
def test_from_json_is_strict(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DiskManifest.from_json(data)


def test_json_of_non_sorted_keys_only_differs_in_order() -> None:
    # Guards the canonical-form test above: the non-canonical input really holds the same manifest.
    loose = json.dumps(dict(reversed(_doc().items())), separators=(",", ":"))
    assert json.loads(loose) == json.loads(make().to_json())
    assert loose.encode() != make().to_json()


def test_binary_form_round_trips_and_keeps_the_json_digest() -> None:
    m = make()
    body = m.encode()
    assert body.startswith(b"SMF2") and len(body) == 16 + 1 + 3 * 32  # header, 4 bits, three data digests
    back = DiskManifest.decode(body)
    assert back == m and back.chunks == m.chunks
    assert back.digest() == blake3.blake3(m.to_json()).hexdigest()  # the digest did not change definition


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b"SMF1" + b[4:], "SMF2"),
        (lambda b: b[:16], "cut short"),
        (lambda b: b[:-1], "digests"),
        (lambda b: b + b"\x01" * 32, "bitmap needs"),
        (lambda b: b[:16] + bytes([b[16] | 0x10]) + b[17:], "past the end"),
        (lambda b: b[:17] + bytes(32) + b[49:], "all zeros"),
    ],
)
def test_binary_form_is_strict(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        DiskManifest.decode(mutate(make().encode()))


def test_random_access_and_iteration_agree_on_a_large_sparse_manifest() -> None:
    import random

    from stratus.domain.manifest import ManifestBuilder

    rng = random.Random(7)
    n = 3 * 4096 + 77  # several rank blocks and a ragged end
    expected = [rng.randbytes(32) if rng.random() < 0.1 else None for _ in range(n)]
    builder = ManifestBuilder(n * 65536 - 100, 65536)
    for raw in expected:
        builder.append(raw)
    m = builder.build()
    assert list(m.iter_raw()) == expected
    assert list(m.iter_raw(5000)) == expected[5000:]
    assert all(m.raw_digest(i) == expected[i] for i in range(0, n, 13))
    assert m.memory_bytes < n // 8 + 32 * sum(1 for r in expected if r) + 64


@pytest.mark.parametrize("count", [1, 7, 8, 9, 8 * 8192, 8 * 8192 + 3, 70_001])
def test_streamed_canonical_json_matches_json_dumps(count: int) -> None:
    """The digest streams the canonical JSON in pieces (fast paths for runs of 8 data or zero chunks); it
    must be byte for byte what json.dumps makes of the same document."""
    import random

    from stratus.domain.manifest import ManifestBuilder

    rng = random.Random(count)
    builder = ManifestBuilder(count * 65536, 65536)
    chunks = []
    for i in range(count):
        kind = (i // 8) % 3  # whole bytes of data, of zeros, and mixed ones
        raw = rng.randbytes(32) if kind == 0 or (kind == 2 and rng.random() < 0.5) else None
        builder.append(raw)
        chunks.append(None if raw is None else raw.hex())
    m = builder.build()
    doc = {"chunk_size": 65536, "chunks": chunks, "hash": "blake3", "version": 1, "virtual_size": count * 65536}
    expected = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    assert m.to_json() == expected
    assert m.digest() == blake3.blake3(expected).hexdigest()
