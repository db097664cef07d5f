"""Ingest and export against real qemu-img: every format in, every format out, compared by qemu-img.

The oracle for ingest is independent of it: qemu-img converts the source to raw, and the test hashes
that raw file chunk by chunk itself. The oracle for export is ``qemu-img compare`` plus the virtual size.
"""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import blake3
import pytest

from stratus.disk import qemu_img
from stratus.domain.manifest import DiskManifest
from stratus.storage import dirstore as dirstore_mod
from stratus.storage import ingest as ingest_mod
from stratus.storage.dirstore import ChunkCorrupt, ChunkMissing, DirStore
from stratus.storage.export import export_disk, iter_raw, materialize_raw
from stratus.storage.ingest import IngestCancelled, UnsafeImage, ingest_disk

KiB = 1 << 10
MiB = 1 << 20
RAW_SIZE = 7 * MiB + 12345  # not chunk-aligned, not even sector-aligned: qemu rounds it up to 512


@dataclass(frozen=True)
class Source:
    name: str
    path: Path
    fmt: str
    method: str  # how ingest must read it


def _write(f, offset: int, data: bytes) -> None:  # type: ignore[no-untyped-def]
    f.seek(offset)
    f.write(data)


def build_raw(path: Path) -> None:
    """A disk of real mixed content. Per 1 MiB chunk:
    0 random 300000 B then hole | 1 written zeros (allocated!) | 2 text | 3 hole | 4 same text as 2 |
    5 4 KiB random amid written zeros | 6 random at 6 MiB (ELF-ish header + bytes) | 7 (short tail) random."""
    text = b"".join(f"line {i}: the quick brown fox jumps over the lazy dog\n".encode() for i in range(20000))
    with open(path, "wb") as f:
        f.truncate(RAW_SIZE)
        _write(f, 0, os.urandom(300_000))
        _write(f, 1 * MiB, bytes(MiB))
        _write(f, 2 * MiB, text[:MiB])
        _write(f, 4 * MiB, text[:MiB])
        _write(f, 5 * MiB, bytes(MiB))
        _write(f, 5 * MiB + 200 * KiB, os.urandom(4 * KiB))
        _write(f, 6 * MiB, b"\x7fELF" + os.urandom(100_000))
        _write(f, 7 * MiB + 1000, os.urandom(5000))


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Source]:
    d = tmp_path_factory.mktemp("images")
    raw = d / "disk.raw"
    build_raw(raw)
    # Guard: chunk 1 really is *written* zeros (allocated in the file), or the zero test below is vacuous.
    fd = os.open(raw, os.O_RDONLY)
    try:
        assert os.lseek(fd, 1 * MiB, os.SEEK_DATA) == 1 * MiB
    finally:
        os.close(fd)
    out = {"raw": Source("raw", raw, "raw", "direct")}
    specs = [
        ("qcow2", "qcow2", {}, False, "direct"),
        ("qcow2-compressed", "qcow2", {}, True, "converted"),
        ("vmdk", "vmdk", {"subformat": "monolithicSparse"}, False, "direct"),
        ("vmdk-stream", "vmdk", {"subformat": "streamOptimized"}, False, "converted"),
        ("vpc", "vpc", {"force_size": "on"}, False, "direct"),
        ("vpc-fixed", "vpc", {"subformat": "fixed", "force_size": "on"}, False, "direct"),
    ]
    for name, fmt, opts, compress, method in specs:
        path = d / f"disk.{name}"
        qemu_img.convert(raw, "raw", path, fmt, options=opts, compress=compress)
        out[name] = Source(name, path, fmt, method)
    return out


def reference_manifest(source: Source, chunk_size: int, scratch: Path) -> DiskManifest:
    """Independent of ingest: qemu-img makes raw, we hash it chunk by chunk."""
    raw = scratch / "reference.raw"
    qemu_img.convert(source.path, source.fmt, raw, "raw")
    vsize = int(qemu_img.info(source.path, source.fmt)["virtual-size"])
    chunks: list[str | None] = []
    with open(raw, "rb") as f:
        for offset in range(0, vsize, chunk_size):
            block = f.read(min(chunk_size, vsize - offset))
            block += bytes(min(chunk_size, vsize - offset) - len(block))  # qemu's rounded-up tail
            chunks.append(None if block.count(0) == len(block) else blake3.blake3(block).hexdigest())
    raw.unlink()
    return DiskManifest(virtual_size=vsize, chunk_size=chunk_size, chunks=tuple(chunks))


@pytest.fixture
def store(tmp_path: Path) -> DirStore:
    return DirStore(tmp_path / "store")


NAMES = ["raw", "qcow2", "qcow2-compressed", "vmdk", "vmdk-stream", "vpc", "vpc-fixed"]


@pytest.mark.parametrize("chunk_size", [64 * KiB, 1 * MiB])
@pytest.mark.parametrize("name", NAMES)
def test_ingest_matches_reference(
    images: dict[str, Source], store: DirStore, tmp_path: Path, name: str, chunk_size: int
) -> None:
    src = images[name]
    result = ingest_disk(src.path, src.fmt, store, chunk_size)
    assert result.method == src.method
    ref = reference_manifest(src, chunk_size, tmp_path)
    if name == "vpc-fixed":
        # qemu-img ignores force_size for fixed VHDs and rounds the size to CHS geometry.
        assert ref.virtual_size >= images["raw"].path.stat().st_size
    else:
        assert ref.virtual_size == -(-RAW_SIZE // 512) * 512
    assert result.manifest == ref
    assert result.data_bytes == ref.data_bytes
    for d in ref.data_digests():
        assert store.get(d)  # durable and verified
    if chunk_size == MiB:
        # chunk 1 (written zeros) and 3 (hole) are not stored; chunk 4 repeats chunk 2
        assert [i for i, d in enumerate(ref.chunks) if d is None] == [1, 3]
        assert ref.chunks[2] == ref.chunks[4]
        assert result.new_chunks == 5 and result.reused_chunks == 1


def test_every_format_gives_the_same_manifest(images: dict[str, Source], store: DirStore) -> None:
    digests = {
        name: ingest_disk(images[name].path, images[name].fmt, store, MiB).manifest.digest()
        for name in NAMES
        if name != "vpc-fixed"  # CHS-rounded size: a different disk
    }
    assert len(set(digests.values())) == 1, digests


def test_second_import_writes_nothing(images: dict[str, Source], store: DirStore) -> None:
    src = images["qcow2"]
    first = ingest_disk(src.path, src.fmt, store, MiB)
    assert first.new_bytes > 0
    before = {c.digest: c for c in store.iter_chunks()}
    second = ingest_disk(src.path, src.fmt, store, MiB)
    assert (second.new_chunks, second.new_bytes) == (0, 0)
    assert second.reused_chunks == first.manifest.stored_chunks
    assert second.manifest == first.manifest
    after = {c.digest: c for c in store.iter_chunks()}
    assert after.keys() == before.keys()
    # Reused chunks are touched, so gc's grace period protects them until the manifest is recorded.
    assert all(after[d].mtime >= before[d].mtime for d in after)
    # And another format of the same disk reuses everything too.
    third = ingest_disk(images["vmdk-stream"].path, "vmdk", store, MiB)
    assert third.new_bytes == 0


@pytest.mark.parametrize("out_fmt", ["raw", "qcow2", "vmdk", "vmdk-stream", "vpc"])
@pytest.mark.parametrize("name", [n for n in NAMES if n != "vpc-fixed"])
def test_export_round_trip(images: dict[str, Source], store: DirStore, tmp_path: Path, name: str, out_fmt: str) -> None:
    src = images[name]
    manifest = ingest_disk(src.path, src.fmt, store, MiB).manifest
    fmt, options = ("vmdk", {"subformat": "streamOptimized"}) if out_fmt == "vmdk-stream" else (out_fmt, None)
    dest = tmp_path / f"out.{out_fmt}"
    calls: list[tuple[int, int]] = []
    export_disk(manifest, store, dest, fmt, options=options, progress=lambda d, t: calls.append((d, t)))
    assert qemu_img.compare(images["raw"].path, "raw", dest, fmt)
    info = qemu_img.info(dest, fmt)
    assert info["virtual-size"] == manifest.virtual_size
    if out_fmt == "vmdk-stream":
        assert info["format-specific"]["data"]["create-type"] == "streamOptimized"
    assert calls[-1][0] == calls[-1][1] and calls == sorted(calls)
    assert list(store.scratch_dir.iterdir()) == []  # temp raw removed
    # The exported file ingests back to the very same manifest.
    assert ingest_disk(dest, fmt, store, MiB).manifest == manifest


def test_compare_detects_a_difference(images: dict[str, Source], tmp_path: Path) -> None:
    # Guards the round-trip tests: qemu_img.compare is not a rubber stamp.
    other = tmp_path / "other.raw"
    shutil.copy(images["raw"].path, other)
    with open(other, "r+b") as f:
        _write(f, 3 * MiB + 5, b"!")
    assert not qemu_img.compare(images["raw"].path, "raw", other, "raw")


def test_iter_raw_and_materialize(images: dict[str, Source], store: DirStore, tmp_path: Path) -> None:
    manifest = ingest_disk(images["qcow2"].path, "qcow2", store, MiB).manifest
    expected = images["raw"].path.read_bytes()
    expected += bytes(manifest.virtual_size - len(expected))
    blocks = list(iter_raw(manifest, store))
    assert [len(b) for b in blocks] == [manifest.chunk_range(i)[1] for i in range(manifest.chunk_count)]
    assert b"".join(blocks) == expected
    dest = tmp_path / "m.raw"
    dest.write_bytes(b"old content that must go" * 1000)
    materialize_raw(manifest, store, dest)
    assert dest.read_bytes() == expected
    # Sparse: the zero chunks (1 and 3) are holes, not written zeros.
    fd = os.open(dest, os.O_RDONLY)
    try:
        assert os.lseek(fd, 1 * MiB, os.SEEK_DATA) == 2 * MiB
        assert os.lseek(fd, 3 * MiB, os.SEEK_DATA) == 4 * MiB
    finally:
        os.close(fd)
    assert dest.stat().st_blocks * 512 <= manifest.data_bytes + 64 * KiB


def test_iter_raw_short_zero_tail(store: DirStore, tmp_path: Path) -> None:
    data = os.urandom(64 * KiB)
    d = blake3.blake3(data).hexdigest()
    store.put(d, data)
    manifest = DiskManifest(virtual_size=64 * KiB + 512, chunk_size=64 * KiB, chunks=(d, None))
    assert [len(b) for b in iter_raw(manifest, store)] == [64 * KiB, 512]
    assert b"".join(iter_raw(manifest, store)) == data + bytes(512)
    export_disk(manifest, store, tmp_path / "t.qcow2", "qcow2")
    assert qemu_img.info(tmp_path / "t.qcow2", "qcow2")["virtual-size"] == 64 * KiB + 512


def test_ingest_returns_only_after_the_directories_are_synced(
    images: dict[str, Source], store: DirStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every chunk the manifest names must be durable under its name when ingest returns: its directory
    was fsynced (the caller records the manifest right after)."""
    synced: list[Path] = []
    real = dirstore_mod._fsync_dir

    def spy(path: Path) -> None:
        synced.append(Path(path))
        real(path)

    monkeypatch.setattr(dirstore_mod, "_fsync_dir", spy)
    manifest = ingest_disk(images["qcow2"].path, "qcow2", store, 64 * KiB).manifest
    leaves = {store.path_for(d).parent for d in manifest.data_digests()}
    assert leaves and leaves <= set(synced)


def test_export_stops_on_a_damaged_chunk(images: dict[str, Source], store: DirStore, tmp_path: Path) -> None:
    manifest = ingest_disk(images["raw"].path, "raw", store, MiB).manifest
    victim = store.path_for(manifest.chunks[2])  # type: ignore[arg-type]
    victim.chmod(0o644)
    with open(victim, "r+b") as f:
        _write(f, 100, b"X")
    for fmt in ("raw", "qcow2"):
        dest = tmp_path / f"bad.{fmt}"
        with pytest.raises(ChunkCorrupt):
            export_disk(manifest, store, dest, fmt)
        assert not dest.exists()  # no half-written disk left behind
    with pytest.raises(ChunkCorrupt):
        list(iter_raw(manifest, store))
    victim.unlink()
    with pytest.raises(ChunkMissing):
        materialize_raw(manifest, store, tmp_path / "missing.raw")


def test_progress_and_workers_do_not_change_the_result(images: dict[str, Source], tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    a = ingest_disk(images["qcow2"].path, "qcow2", DirStore(tmp_path / "a"), 64 * KiB, workers=1)
    b = ingest_disk(
        images["qcow2"].path,
        "qcow2",
        DirStore(tmp_path / "b"),
        64 * KiB,
        workers=8,
        progress=lambda d, t: calls.append((d, t)),
    )
    assert a.manifest == b.manifest
    assert calls[-1] == (b.manifest.virtual_size, b.manifest.virtual_size)
    assert calls == sorted(calls)


def test_converted_progress_covers_both_halves(images: dict[str, Source], store: DirStore) -> None:
    calls: list[tuple[int, int]] = []
    r = ingest_disk(images["vmdk-stream"].path, "vmdk", store, MiB, progress=lambda d, t: calls.append((d, t)))
    assert r.method == "converted"
    assert {t for _, t in calls} == {2 * r.manifest.virtual_size}
    assert calls[-1][0] == 2 * r.manifest.virtual_size


def test_cancel_and_resume(images: dict[str, Source], store: DirStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingest_mod, "_STOP_INTERVAL", 0.0)  # poll before every chunk
    src = images["qcow2"]
    polls = 0

    def stop_after_five() -> bool:
        nonlocal polls
        polls += 1
        return polls > 5

    with pytest.raises(IngestCancelled) as cancelled:
        ingest_disk(src.path, src.fmt, store, 64 * KiB, should_stop=stop_after_five)
    done = cancelled.value.done
    assert len(done) == 5
    for d in done:
        assert d is None or store.get(d)  # what it reports done is really stored
    full = ingest_disk(src.path, src.fmt, store, 64 * KiB, already=done)
    assert full.manifest == ingest_disk(src.path, src.fmt, DirStore(store.root.parent / "fresh"), 64 * KiB).manifest
    assert full.manifest.chunks[:5] == done


def test_resume_rereads_a_chunk_gone_meanwhile(images: dict[str, Source], store: DirStore) -> None:
    src = images["raw"]
    manifest = ingest_disk(src.path, src.fmt, store, MiB).manifest
    store.delete(manifest.chunks[0])  # type: ignore[arg-type]
    again = ingest_disk(src.path, src.fmt, store, MiB, already=manifest.chunks[:3])
    assert again.manifest == manifest
    assert again.new_chunks == 1 and store.get(manifest.chunks[0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="already"):
        ingest_disk(src.path, src.fmt, store, MiB, already=["nope"])


def test_should_stop_is_throttled(images: dict[str, Source], store: DirStore) -> None:
    polls = 0

    def never() -> bool:
        nonlocal polls
        polls += 1
        return False

    result = ingest_disk(images["raw"].path, "raw", store, 64 * KiB, should_stop=never)
    assert result.manifest.chunk_count > 100 and 1 <= polls < 10


def test_cancel_during_conversion_cleans_up(images: dict[str, Source], store: DirStore) -> None:
    with pytest.raises(IngestCancelled):
        ingest_disk(images["vmdk-stream"].path, "vmdk", store, MiB, should_stop=lambda: True)
    assert list(store.scratch_dir.iterdir()) == []
    assert list(store.iter_chunks()) == []


def test_read_error_fails_the_ingest_and_leaves_no_temp(
    images: dict[str, Source], store: DirStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.preadv
    calls = 0

    def failing_preadv(fd: int, buffers: list, offset: int) -> int:  # type: ignore[type-arg]
        nonlocal calls
        calls += 1
        if calls == 3:
            raise OSError(errno.EIO, "injected read error")
        return real(fd, buffers, offset)

    monkeypatch.setattr(ingest_mod.os, "preadv", failing_preadv)
    with pytest.raises(OSError, match="injected"):
        ingest_disk(images["qcow2"].path, "qcow2", store, 64 * KiB)
    assert calls >= 3
    assert list(store.iter_temp_files()) == []


def test_refuses_images_that_name_other_files(images: dict[str, Source], tmp_path: Path, store: DirStore) -> None:
    overlay = tmp_path / "overlay.qcow2"
    qemu_img.create(overlay, "qcow2", RAW_SIZE, backing=str(images["qcow2"].path), backing_fmt="qcow2")
    with pytest.raises(UnsafeImage, match="backing file"):
        ingest_disk(overlay, "qcow2", store, MiB)

    flat = tmp_path / "flat.vmdk"
    qemu_img.convert(images["raw"].path, "raw", flat, "vmdk", options={"subformat": "monolithicFlat"})
    with pytest.raises(UnsafeImage, match="vmdk extent"):
        ingest_disk(flat, "vmdk", store, MiB)

    with_data_file = tmp_path / "df.qcow2"
    qemu_img.create(with_data_file, "qcow2", MiB, options={"data_file": str(tmp_path / "df.data")})
    with pytest.raises(UnsafeImage, match="data file"):
        ingest_disk(with_data_file, "qcow2", store, MiB)
    assert list(store.iter_chunks()) == []


def test_raw_with_data_up_to_an_odd_eof(store: DirStore, tmp_path: Path) -> None:
    # qemu rounds the size up to 512 and reads the bytes past EOF as zeros; so must we.
    path = tmp_path / "odd.raw"
    path.write_bytes(os.urandom(MiB + 100))
    src = Source("odd", path, "raw", "direct")
    result = ingest_disk(path, "raw", store, 64 * KiB)
    assert result.method == "direct"
    assert result.manifest.virtual_size == MiB + 512
    assert result.manifest == reference_manifest(src, 64 * KiB, tmp_path)


def test_file_shrinking_under_ingest_is_an_error(
    images: dict[str, Source], store: DirStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "shrinks.raw"
    shutil.copy(images["raw"].path, path)
    real_map = qemu_img.map_extents

    def map_then_truncate(*args: object, **kwargs: object) -> list[qemu_img.Extent]:
        extents = real_map(*args, **kwargs)  # type: ignore[arg-type]
        os.truncate(path, 3 * MiB)
        return extents

    monkeypatch.setattr(ingest_mod.qemu_img, "map_extents", map_then_truncate)
    with pytest.raises(ingest_mod.IngestError):
        ingest_disk(path, "raw", store, MiB)


def test_bad_chunk_size_refused(images: dict[str, Source], store: DirStore) -> None:
    with pytest.raises(ValueError, match="chunk size"):
        ingest_disk(images["raw"].path, "raw", store, 3 * MiB)
