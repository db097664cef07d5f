"""qemu_img against the real qemu-img (7.2): the json: source form, rlimits, and what map offsets mean.

The map tests are the contract the storage layer relies on: reading the file at the mapped offsets gives
the virtual disk's bytes. Each rebuild is compared with ``convert -O raw`` *and* with the raw disk the image
was made from, and each test also asserts that the file path was really exercised (not everything fell
back to convert), or it would pass vacuously.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from stratus.disk import qemu_img
from stratus.disk.qemu_img import Extent, Limits, QemuImgError
from tests import hostile

SIZE = 4 * hostile.MiB
SEED = 11


@pytest.fixture(scope="module")
def disks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("disks")
    return {fmt: hostile.make_test_disk(d, fmt, SIZE, SEED) for fmt in hostile.TEST_FORMATS}


@pytest.fixture(scope="module")
def reference(disks: dict[str, Path]) -> bytes:
    return disks["raw"].read_bytes()


def _driver(fmt: str) -> str:
    return hostile.TEST_FORMATS[fmt][0]


def _to_raw(path: Path, driver: str, out: Path) -> bytes:
    qemu_img.convert(path, driver, out, "raw")
    return out.read_bytes()


def _rebuild(path: Path, extents: list[Extent], fallback: bytes) -> tuple[bytes, dict[str, int]]:
    """Virtual bytes from the file at mapped offsets; ``fallback`` (convert output) only for 'convert'."""
    size = path.stat().st_size
    out = bytearray()
    used = {"zero": 0, "file": 0, "convert": 0}
    with open(path, "rb") as f:
        for ext in extents:
            used[ext.source] += ext.length
            if ext.source == "zero":
                out += bytes(ext.length)
            elif ext.source == "file":
                assert ext.offset is not None and ext.offset + ext.length <= size
                f.seek(ext.offset)
                out += f.read(ext.length)
            else:
                out += fallback[ext.start : ext.start + ext.length]
    return bytes(out), used


# --- the json: source form -----------------------------------------------------------------------------


def test_source_spec_forbids_backing_and_pins_the_file_protocol(tmp_path: Path) -> None:
    spec = qemu_img.source_spec(tmp_path / 'we"ird\\name.qcow2', "qcow2")
    assert spec.startswith("json:")
    parsed = json.loads(spec[5:])
    assert parsed == {
        "driver": "qcow2",
        "backing": None,
        "file": {"driver": "file", "filename": str(tmp_path / 'we"ird\\name.qcow2')},
    }
    with pytest.raises(ValueError):
        qemu_img.source_spec(tmp_path / "x", "qed")


@pytest.mark.parametrize("fmt", list(hostile.TEST_FORMATS))
def test_info_reads_every_format_through_json(disks: dict[str, Path], fmt: str) -> None:
    info = qemu_img.info(disks[fmt], _driver(fmt))
    assert info["format"] == _driver(fmt)
    assert info["virtual-size"] == SIZE  # vpc too: convert defaults to force_size=on


def test_qcow2_backing_file_is_never_read(tmp_path: Path) -> None:
    secret = tmp_path / "host-secret.raw"
    secret.write_bytes(b"top secret host data\n".ljust(hostile.MiB, b"!"))
    image = hostile.qcow2_with_backing(tmp_path, str(secret))
    # Oracle: plain qemu-img really would copy the host file (else this test proves nothing).
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", image, tmp_path / "leak.raw"], check=True)
    assert (tmp_path / "leak.raw").read_bytes().startswith(b"top secret")

    info = qemu_img.info(image, "qcow2")
    assert info["backing-filename"] == str(secret)  # reported, for the gate, but not opened
    out = tmp_path / "safe.raw"
    qemu_img.convert(image, "qcow2", out, "raw")
    assert out.read_bytes() == bytes(hostile.MiB)
    assert qemu_img.map_extents(image, "qcow2") == [Extent(0, hostile.MiB, False, True, None)]


def test_vmdk_parent_is_never_read(tmp_path: Path, disks: dict[str, Path], reference: bytes) -> None:
    image = hostile.vmdk_with_parent(tmp_path, str(disks["vmdk"]))
    subprocess.run(["qemu-img", "convert", "-f", "vmdk", "-O", "raw", image, tmp_path / "leak.raw"], check=True)
    assert (tmp_path / "leak.raw").read_bytes() == reference[: hostile.MiB]  # the oracle leaks the parent

    out = tmp_path / "safe.raw"
    qemu_img.convert(image, "vmdk", out, "raw")
    assert out.read_bytes() == bytes(hostile.MiB)


def test_protocol_prefixes_and_shell_characters_in_paths_are_just_file_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    odd = tmp_path / "nbd:localhost:10809"
    shutil.copy(hostile.make_raw_disk(tmp_path / "src.raw", hostile.MiB, 1), odd)
    monkeypatch.chdir(tmp_path)
    # Oracle: given the bare relative name, qemu-img takes it as an NBD URL.
    plain = subprocess.run(["qemu-img", "info", "-f", "raw", odd.name], capture_output=True, text=True)
    assert plain.returncode != 0
    assert qemu_img.info(odd.name, "raw")["virtual-size"] == hostile.MiB

    shell = tmp_path / "a b;touch pwned;$(touch pwned2).raw"
    shutil.copy(odd, shell)
    assert qemu_img.info(shell, "raw")["virtual-size"] == hostile.MiB
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()


# --- map offsets: the storage layer's contract ---------------------------------------------------------

# Formats whose every data byte can be read straight from the file, and where, measured on qemu 7.2.
DIRECT = {"raw": "identity", "vhd-fixed": "identity", "qcow2": "mapped", "vmdk": "mapped", "vhd": "mapped"}


@pytest.mark.parametrize("fmt", list(hostile.TEST_FORMATS))
def test_reading_the_file_at_mapped_offsets_gives_the_virtual_disk(
    tmp_path: Path, disks: dict[str, Path], reference: bytes, fmt: str
) -> None:
    path = disks[fmt]
    extents = qemu_img.map_extents(path, _driver(fmt))
    converted = _to_raw(path, _driver(fmt), tmp_path / "out.raw")
    assert converted == reference

    rebuilt, used = _rebuild(path, extents, converted)
    assert rebuilt == reference
    assert sum(used.values()) == SIZE

    if fmt in DIRECT:
        assert used["convert"] == 0 and used["file"] > 0
        if DIRECT[fmt] == "identity":
            assert all(e.offset == e.start for e in extents if e.source == "file")
    elif fmt == "qcow2-compressed":
        # Incompressible (random) clusters are stored plain and keep an offset; compressed ones have none.
        assert used["convert"] > 0 and used["file"] > 0
    elif fmt == "vmdk-stream":
        # Every grain is deflated: nothing can be read in place.
        assert used["file"] == 0 and used["convert"] > 0
    else:  # pragma: no cover - a new test format needs its expectation written down
        pytest.fail(f"no expectation for {fmt}")


def test_qcow2_with_written_zeros_keeps_them_as_data(tmp_path: Path, disks: dict[str, Path], reference: bytes) -> None:
    image = tmp_path / "dense.qcow2"
    qemu_img.convert(disks["raw"], "raw", image, "qcow2", sparse=False)  # -S 0: zeros are written out
    extents = qemu_img.map_extents(image, "qcow2")
    rebuilt, used = _rebuild(image, extents, b"")  # no fallback allowed
    assert rebuilt == reference
    assert used == {"zero": 0, "file": SIZE, "convert": 0}


@pytest.mark.skipif(shutil.which("qemu-io") is None, reason="needs qemu-io to write zero clusters")
def test_qcow2_zero_clusters_win_over_their_stale_offset(tmp_path: Path, disks: dict[str, Path]) -> None:
    image = tmp_path / "zeroed.qcow2"
    shutil.copy(disks["qcow2"], image)
    # 'write -z' over allocated random data keeps the host cluster (with its old bytes) and sets the
    # zero flag: map says zero=True *with* an offset.
    region = (64 * 1024, 128 * 1024)
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"write -z {region[0]} {region[1]}", image],
        check=True,
        capture_output=True,
    )
    extents = qemu_img.map_extents(image, "qcow2")
    stale = [e for e in extents if e.zero and e.offset is not None and not e.data]
    assert stale, extents
    with open(image, "rb") as f:
        f.seek(stale[0].offset or 0)
        assert f.read(stale[0].length) != bytes(stale[0].length)  # reading the offset would be wrong

    converted = _to_raw(image, "qcow2", tmp_path / "out.raw")
    assert converted[region[0] : region[0] + region[1]] == bytes(region[1])
    rebuilt, used = _rebuild(image, extents, b"")
    assert rebuilt == converted and used["convert"] == 0


def test_map_start_and_length_cover_exactly_the_window(disks: dict[str, Path], reference: bytes) -> None:
    start, length = 3 * 64 * 1024 + 512, 1000 * 1024
    extents = list(qemu_img.map_extents(disks["qcow2"], "qcow2", start=start, length=length))
    assert extents[0].start == start
    assert sum(e.length for e in extents) == length
    rebuilt, _ = _rebuild(disks["qcow2"], extents, b"")
    assert rebuilt == reference[start : start + length]


# --- convert / compare / check / create ------------------------------------------------------------------


def test_convert_reports_progress_to_100(tmp_path: Path, disks: dict[str, Path]) -> None:
    seen: list[float] = []
    qemu_img.convert(disks["raw"], "raw", tmp_path / "p.qcow2", "qcow2", progress=seen.append)
    assert seen and seen[-1] == 100.0
    assert seen == sorted(seen)


def test_convert_to_vpc_keeps_the_exact_size(tmp_path: Path, disks: dict[str, Path]) -> None:
    out = tmp_path / "o.vhd"
    qemu_img.convert(disks["raw"], "raw", out, "vpc")
    assert qemu_img.info(out, "vpc")["virtual-size"] == SIZE
    plain = tmp_path / "chs.vhd"
    qemu_img.convert(disks["raw"], "raw", plain, "vpc", options={"force_size": "off"})
    assert qemu_img.info(plain, "vpc")["virtual-size"] != SIZE  # CHS rounding: why force_size is the default


def test_convert_stream_optimized_vmdk(tmp_path: Path, disks: dict[str, Path]) -> None:
    out = tmp_path / "s.vmdk"
    qemu_img.convert(disks["qcow2"], "qcow2", out, "vmdk", options={"subformat": "streamOptimized"})
    assert qemu_img.info(out, "vmdk")["format-specific"]["data"]["create-type"] == "streamOptimized"
    assert qemu_img.compare(out, "vmdk", disks["raw"], "raw")


def test_failed_convert_leaves_no_output(tmp_path: Path) -> None:
    dst = tmp_path / "out.qcow2"
    dst.write_bytes(b"old")
    with pytest.raises(QemuImgError) as err:
        qemu_img.convert(tmp_path / "missing.raw", "raw", dst, "qcow2")
    assert not dst.exists()
    assert "missing.raw" in err.value.stderr and "json:" not in str(err.value)


@pytest.mark.parametrize("fmt", list(hostile.TEST_FORMATS))
def test_compare_identical_across_formats(disks: dict[str, Path], fmt: str) -> None:
    assert qemu_img.compare(disks[fmt], _driver(fmt), disks["raw"], "raw") is True


def test_compare_different_and_error(tmp_path: Path, disks: dict[str, Path]) -> None:
    changed = tmp_path / "changed.raw"
    data = bytearray(disks["raw"].read_bytes())
    data[SIZE // 2 + 20000] ^= 0xFF
    changed.write_bytes(bytes(data))
    assert qemu_img.compare(disks["qcow2"], "qcow2", changed, "raw") is False
    with pytest.raises(QemuImgError):
        qemu_img.compare(tmp_path / "missing.qcow2", "qcow2", changed, "raw")


def test_check(tmp_path: Path, disks: dict[str, Path]) -> None:
    report = qemu_img.check(disks["qcow2"], "qcow2")
    assert report is not None and report["check-errors"] == 0 and "corruptions" not in report
    assert qemu_img.check(disks["vmdk-stream"], "vmdk") is not None
    assert qemu_img.check(disks["raw"], "raw") is None
    assert qemu_img.check(disks["vhd"], "vpc") is None
    cut = hostile.truncated(disks["qcow2"], tmp_path, 70000)
    damaged = qemu_img.check(cut, "qcow2")
    assert damaged is not None and damaged["corruptions"] > 0


def test_create_with_backing_records_it_without_opening_it(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        qemu_img.create(tmp_path / "a.qcow2", "qcow2", hostile.MiB, backing="/nonexistent")
    qemu_img.create(tmp_path / "a.qcow2", "qcow2", hostile.MiB, backing="/nonexistent/base.raw", backing_fmt="raw")
    assert qemu_img.info(tmp_path / "a.qcow2", "qcow2")["backing-filename"] == "/nonexistent/base.raw"


# --- resource limits ---------------------------------------------------------------------------------------


def _fake_qemu_img(tmp_path: Path, body: str, monkeypatch: pytest.MonkeyPatch) -> None:
    script = tmp_path / "fake-qemu-img"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    monkeypatch.setattr(qemu_img, "QEMU_IMG", str(script))


def test_wall_clock_timeout_kills(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_qemu_img(tmp_path, "exec sleep 30", monkeypatch)
    began = time.monotonic()
    with pytest.raises(QemuImgError, match="killed"):
        qemu_img.info(tmp_path / "x", "raw", limits=Limits(cpu_seconds=30, address_space=1 << 30, timeout=0.5))
    assert time.monotonic() - began < 5


def test_cpu_limit_kills(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_qemu_img(tmp_path, "while :; do :; done", monkeypatch)
    with pytest.raises(QemuImgError, match="SIGXCPU"):
        qemu_img.info(tmp_path / "x", "raw", limits=Limits(cpu_seconds=1, address_space=1 << 30, timeout=20))


def test_address_space_limit_applies(disks: dict[str, Path]) -> None:
    with pytest.raises(QemuImgError):
        qemu_img.info(disks["qcow2"], "qcow2", limits=Limits(cpu_seconds=30, address_space=16 << 20, timeout=20))
    assert qemu_img.info(disks["qcow2"], "qcow2")["virtual-size"] == SIZE  # the default 1 GiB is enough


def test_map_of_many_extents_streams_into_a_spool(tmp_path: Path) -> None:
    """A crafted, valid qcow2 whose clusters alternate allocated / unallocated: the map's extents are
    parsed as qemu-img prints them and spooled to disk; Python's heap stays small however many there are,
    and what comes back is exactly qemu-img's JSON."""
    import tracemalloc

    from tests.e2e.test_memory import fragmented_qcow2

    image = fragmented_qcow2(tmp_path / "frag.qcow2", 50_000)
    expected = json.loads(subprocess.run(["qemu-img", "map", "--output=json", "-f", "qcow2", str(image)],
                                         capture_output=True, check=True).stdout)
    assert len(expected) == 100_000
    tracemalloc.start()
    try:
        extents = qemu_img.map_extents(image, "qcow2", spool_dir=tmp_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    with extents:
        # ~10 MB of JSON and 100k entries; a list of dicts would take ~60 MB.
        assert peak < 4 << 20, peak
        assert len(extents) == 100_000 and extents.end == 100_000 * 512
        assert not extents.needs_convert and extents.max_file_end <= image.stat().st_size
        got = [(e.start, e.length, e.data, e.zero, e.offset, e.present) for e in extents]
        assert got == [(r["start"], r["length"], r["data"], r["zero"], r.get("offset"), r["present"])
                       for r in expected]
        assert list(tmp_path.iterdir()) == [image]  # the spool is an unlinked file


@pytest.mark.parametrize(
    ("output", "message"),
    [
        (b'{"start": 0}', "not a list"),
        (b'[{ "start": 0, "length": 512, "depth": 0, "present": true, "zero": true, "data": false},\n', "complete"),
        (b"[" + b" " * 5000, "longer than"),
        (b'[{ "start": 0, "length": 512, "depth": 1, "present": true, "zero": true, "data": false}]\n', "backing"),
        (b'[{ "start": 512, "length": 512, "depth": 0, "present": true, "zero": true, "data": false}]\n', "contiguous"),
        (b'[{ "start": 0, "length": 512, "depth": 0, "present": true, "zero": true, "data": false}]\n[',
         "after the end"),
        (b'[{ "start": 0, "length": "x", "depth": 0, "present": true, "zero": true, "data": false}]\n', "unexpected"),
        (b"[{ nope }]\n", "unparseable"),
    ],
)
def test_map_parser_refuses_malformed_output(output: bytes, message: str) -> None:
    import io

    parser = qemu_img._MapParser(io.BytesIO(), 0, False)
    with pytest.raises(QemuImgError, match=message):
        for i in range(0, len(output), 7):  # a report may straddle reads anywhere
            parser.feed(output[i : i + 7])
        parser.finish()
