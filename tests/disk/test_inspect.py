"""The inspection gate, against real hostile files built by tests/hostile.py.

Layer 2 and 3 checks (qemu-img info/check) are tested by switching layer 1 off for one test, so a real
hostile file reaches real qemu-img: a layer-2 test that still passed with layer 2 removed would be vacuous,
so each asserts that qemu-img info was actually consulted.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from oslo_utils.imageutils import format_inspector as fi

from stratus.disk import inspect, qemu_img
from stratus.disk.inspect import ImageRejected, Inspection, inspect_file
from tests import hostile

MiB = hostile.MiB
SIZE = 4 * MiB
LIMIT = 64 * MiB


@pytest.fixture(autouse=True)
def _quiet_inspector() -> None:
    logging.getLogger("oslo_utils.imageutils.format_inspector").setLevel(logging.CRITICAL)


@pytest.fixture(scope="module")
def disks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("disks")
    return {fmt: hostile.make_test_disk(d, fmt, SIZE, 3) for fmt in hostile.TEST_FORMATS}


@pytest.fixture
def host_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Stands in for a host file such as /etc/shadow (outside the upload's directory)."""
    path = tmp_path_factory.mktemp("host") / "shadow"
    path.write_text("root:$6$secret:19000:0:99999:7:::\n")
    return str(path)


def refused(path: Path, **kw: Any) -> ImageRejected:
    kw.setdefault("max_virtual_size", LIMIT)
    with pytest.raises(ImageRejected) as err:
        inspect_file(path, **kw)
    exc = err.value
    # Every refusal is one sentence that names its reasons.
    assert exc.message == str(exc)
    assert exc.message.startswith(f"Image refused ({', '.join(exc.reasons)}): ")
    assert exc.message.endswith(".") and "\n" not in exc.message
    return exc


@pytest.fixture
def qemu_info_calls(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    calls: list[Path] = []
    real = qemu_img.info

    def spy(path: Path, fmt: str, **kw: Any) -> dict[str, Any]:
        calls.append(Path(path))
        return real(path, fmt, **kw)

    monkeypatch.setattr(qemu_img, "info", spy)
    return calls


# --- accepted images -----------------------------------------------------------------------------------

ACCEPTED_AS = {
    "raw": ("raw", "raw"),
    "qcow2": ("qcow2", "qcow2"),
    "qcow2-compressed": ("qcow2", "qcow2"),
    "vmdk": ("vmdk", "vmdk"),
    "vmdk-stream": ("vmdk", "vmdk"),
    "vhd": ("vhd", "vpc"),
}


@pytest.mark.parametrize("fmt", list(ACCEPTED_AS))
def test_normal_images_are_accepted(disks: dict[str, Path], fmt: str) -> None:
    path = disks[fmt]
    name, driver = ACCEPTED_AS[fmt]
    warnings = (inspect.NO_BOOT_SECTOR,) if fmt == "raw" else ()  # the test disk starts with text, no MBR
    assert inspect_file(path, max_virtual_size=LIMIT) == Inspection(name, driver, SIZE, path.stat().st_size,
                                                                    warnings)
    assert inspect_file(path, declared=name.upper(), max_virtual_size=SIZE).virtual_size == SIZE


def test_declared_accepts_any_case_and_vpc_alias(disks: dict[str, Path]) -> None:
    for declared in ("vhd", "VHD", "Vpc", " vpc "):
        assert inspect_file(disks["vhd"], declared=declared, max_virtual_size=LIMIT).format == "vhd"


def test_fixed_vhd_is_raw_unless_declared_vhd(disks: dict[str, Path]) -> None:
    path = disks["vhd-fixed"]
    size = path.stat().st_size
    assert size == SIZE + 512
    # Undeclared: the inspector's verdict (raw); the footer is the disk's last sector.
    assert inspect_file(path, max_virtual_size=LIMIT) == Inspection("raw", "raw", size, size, (inspect.NO_BOOT_SECTOR,))
    assert inspect_file(path, declared="raw", max_virtual_size=LIMIT).format == "raw"
    # Declared VHD with a valid fixed footer: read through qemu's vpc driver, footer excluded.
    assert inspect_file(path, declared="VHD", max_virtual_size=LIMIT) == Inspection("vhd", "vpc", SIZE, size)


def test_fixed_vhd_footer_must_be_valid(tmp_path: Path, disks: dict[str, Path]) -> None:
    path = tmp_path / "bad-footer.vhd"
    data = bytearray(disks["vhd-fixed"].read_bytes())
    data[-512 + 48 : -512 + 56] = struct.pack(">Q", SIZE - 512)  # size no longer matches; checksum stale too
    path.write_bytes(bytes(data))
    assert refused(path, declared="VHD").reasons == ["format_mismatch"]


def test_partitioned_raw_disk_is_raw(tmp_path: Path) -> None:
    path = hostile.mbr_disk(tmp_path)
    assert fi.detect_file_format(str(path)).NAME == "gpt"  # not vacuous: the inspector calls it gpt
    assert inspect_file(path, declared="RAW", max_virtual_size=LIMIT) == Inspection("raw", "raw", SIZE, SIZE)


def test_bad_mbr_is_refused(tmp_path: Path) -> None:
    path = hostile.mbr_disk(tmp_path)
    with open(path, "r+b") as f:
        f.seek(446)
        f.write(b"\x42")  # boot flag must be 0x00 or 0x80
    assert refused(path).reasons == ["mbr"]


@pytest.mark.parametrize("kind", ["iso", "iso+gpt"])
def test_iso_only_with_allow_iso(tmp_path: Path, kind: str) -> None:
    path = hostile.iso(tmp_path) if kind == "iso" else hostile.multi_format(tmp_path, "iso+gpt")
    assert refused(path).reasons == ["unsupported_format"]
    size = path.stat().st_size
    assert inspect_file(path, max_virtual_size=LIMIT, allow_iso=True) == Inspection("raw", "raw", size, size)


# --- hostile images: one reason each ---------------------------------------------------------------------

Builder = Callable[[Path, str], Path]

HOSTILE: dict[str, tuple[Builder, list[str]]] = {
    "qcow2 backing /etc/passwd": (
        lambda d, h: hostile.qcow2_with_backing(d, "/etc/passwd"),
        ["backing_file"],
    ),
    "qcow2 backing host file": (lambda d, h: hostile.qcow2_with_backing(d, h), ["backing_file"]),
    "qcow2 data file": (lambda d, h: hostile.qcow2_with_data_file(d), ["data_file"]),
    "qcow2 data file on host": (lambda d, h: hostile.qcow2_with_data_file(d, h), ["data_file"]),
    "vmdk flat on host file": (lambda d, h: hostile.vmdk_flat_pointing_at(d, h), ["descriptor"]),
    "vmdk flat on /etc/hostname": (
        lambda d, h: hostile.vmdk_flat_pointing_at(d, "/etc/hostname" if Path("/etc/hostname").exists() else h),
        ["descriptor"],
    ),
    "vmdk legit monolithicFlat": (lambda d, h: hostile.vmdk_monolithic_flat(d), ["descriptor"]),
    "qed": (lambda d, h: hostile.qed(d), ["banned"]),
    "luks1": (lambda d, h: hostile.luks(d), ["luks"]),
    "luks2 header": (lambda d, h: hostile.luks(d, version=2), ["version", "luks"]),
    "qcow2 encrypted": (lambda d, h: hostile.qcow2_encrypted(d), ["encrypted"]),
    "qcow2 + mbr": (lambda d, h: hostile.multi_format(d, "qcow2+gpt"), ["multiple_formats"]),
    "qcow2 + iso": (lambda d, h: hostile.multi_format(d, "qcow2+iso"), ["multiple_formats"]),
    "qcow2 unknown feature bit 5": (lambda d, h: hostile.qcow2_unknown_feature(d, 5), ["unknown_features"]),
    "qcow2 unknown feature bit 63": (lambda d, h: hostile.qcow2_unknown_feature(d, 63), ["unknown_features"]),
    "qcow2 truncated header": (lambda d, h: hostile.qcow2_truncated_header(d), ["truncated"]),
    "qcow2 huge": (lambda d, h: hostile.qcow2_huge(d, 1 << 40), ["virtual_size"]),
    "vhd differencing": (lambda d, h: hostile.vhd_differencing(d), ["backing_file"]),
    "vhd size disagreement": (lambda d, h: hostile.vhd_size_mismatch(d), ["qemu_info_mismatch"]),
    "vdi": (lambda d, h: hostile.vdi(d), ["unsupported_format"]),
    "vhdx": (lambda d, h: hostile.vhdx(d), ["unsupported_format"]),
}


# Refused by qemu-img's reading (layer 2); every other case must be refused before qemu-img opens the file.
LAYER_TWO = {"vhd size disagreement"}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_image_is_refused(tmp_path: Path, host_file: str, qemu_info_calls: list[Path], case: str) -> None:
    build, reasons = HOSTILE[case]
    exc = refused(build(tmp_path, host_file))
    assert exc.reasons == reasons
    assert bool(qemu_info_calls) == (case in LAYER_TWO)


def test_vmdk_parent_hint_is_refused_although_the_inspector_passes_it(
    tmp_path: Path, disks: dict[str, Path], qemu_info_calls: list[Path]
) -> None:
    path = hostile.vmdk_with_parent(tmp_path, str(disks["vmdk"]))
    fi.detect_file_format(str(path)).safety_check()  # oslo.utils 10.2 finds nothing wrong
    assert refused(path).reasons == ["backing_file"]
    assert qemu_info_calls == []  # caught before qemu-img opened it


def test_qcow2_with_extended_l2_is_refused_as_unknown_feature(tmp_path: Path) -> None:
    # A surprise worth pinning: the inspector's known-feature mask stops below bit 4 (extended L2).
    path = tmp_path / "ext-l2.qcow2"
    qemu_img.create(path, "qcow2", MiB, options={"extended_l2": "on"})
    assert refused(path).reasons == ["unknown_features"]


def test_backing_file_message_says_how_to_flatten(tmp_path: Path) -> None:
    exc = refused(hostile.qcow2_with_backing(tmp_path))
    assert "`qemu-img convert -O qcow2 in.qcow2 out.qcow2`" in exc.message


# --- files that start like a format but aren't one: never raw --------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "length"),
    [("qcow2", 100), ("qcow2", 511), ("vmdk", 300), ("vmdk", 5000), ("vmdk-stream", 2000), ("vhd", 200)],
)
def test_cut_inside_the_header_is_truncated(tmp_path: Path, disks: dict[str, Path], fmt: str, length: int) -> None:
    path = hostile.truncated(disks[fmt], tmp_path, length)
    assert fi.detect_file_format(str(path)).NAME in ("raw", "vmdk", "vhd")
    assert refused(path).reasons == ["truncated"]


@pytest.mark.parametrize("builder", [hostile.qed, hostile.vhdx, hostile.luks, hostile.vdi])
def test_cut_inside_other_headers_is_truncated(tmp_path: Path, builder: Callable[[Path], Path]) -> None:
    path = hostile.truncated(builder(tmp_path), tmp_path, 300)
    assert refused(path).reasons == ["truncated"]


def _patched(src: Path, dst: Path, offset: int, data: bytes) -> Path:
    buf = bytearray(src.read_bytes())
    buf[offset : offset + len(data)] = data
    dst.write_bytes(bytes(buf))
    return dst


def test_vmdk_magic_with_bad_version_is_corrupt_not_raw(tmp_path: Path, disks: dict[str, Path]) -> None:
    path = _patched(disks["vmdk"], tmp_path / "v9.vmdk", 4, struct.pack("<I", 9))
    assert refused(path).reasons == ["corrupt_header"]


def test_vmdk_text_descriptor_without_create_type_is_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "desc.vmdk"
    path.write_text('# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\nRW 2048 SPARSE "x.vmdk"\n')
    assert refused(path).reasons == ["corrupt_header"]


def test_vhd_with_unknown_disk_type_is_corrupt(tmp_path: Path, disks: dict[str, Path]) -> None:
    path = tmp_path / "type9.vhd"
    path.write_bytes(disks["vhd"].read_bytes())
    hostile._vhd_set(path, 60, struct.pack(">I", 9))
    assert refused(path).reasons == ["corrupt_header"]


@pytest.mark.parametrize("fmt", ["qcow2", "vmdk", "qcow2-compressed"])
def test_cut_after_the_header_is_refused(tmp_path: Path, disks: dict[str, Path], fmt: str) -> None:
    size = disks[fmt].stat().st_size
    # Mid-file: qemu-img check sees tables pointing past EOF.
    assert refused(hostile.truncated(disks[fmt], tmp_path, size // 2)).reasons == ["corrupt"]
    # One byte short: check is happy (it looks where clusters start), the map bounds check is not.
    assert refused(hostile.truncated(disks[fmt], tmp_path, size - 1)).reasons == ["truncated"]


def test_cut_dynamic_vhd_is_refused(tmp_path: Path, disks: dict[str, Path]) -> None:
    size = disks["vhd"].stat().st_size
    # qemu reads only the footer at the start, so a cut anywhere (even inside the trailing footer copy,
    # which leaves every data block intact) is caught by the missing copy at the end.
    for cut in (size // 2, size - 4096, size - 1):
        assert refused(hostile.truncated(disks["vhd"], tmp_path, cut)).reasons == ["truncated"]


# --- size, declaration and format rules ------------------------------------------------------------------


def test_virtual_size_limit_is_inclusive(disks: dict[str, Path]) -> None:
    assert inspect_file(disks["qcow2"], max_virtual_size=SIZE).virtual_size == SIZE
    exc = refused(disks["qcow2"], max_virtual_size=SIZE - 1)
    assert exc.reasons == ["virtual_size"] and str(SIZE) in exc.message


def test_raw_virtual_size_is_the_file_size_not_bytes_read(tmp_path: Path) -> None:
    path = hostile.make_raw_disk(tmp_path / "big.raw", 8 * MiB, 1)
    assert fi.detect_file_format(str(path)).virtual_size < 8 * MiB  # the inspector's number is bytes read
    assert inspect_file(path, max_virtual_size=LIMIT).virtual_size == 8 * MiB
    assert refused(path, max_virtual_size=8 * MiB - 1).reasons == ["virtual_size"]


@pytest.mark.parametrize(
    ("fmt", "declared"),
    [("qcow2", "RAW"), ("raw", "QCOW2"), ("vmdk", "VHD"), ("vhd", "VMDK"), ("vmdk-stream", "qcow2")],
)
def test_declared_format_must_match(disks: dict[str, Path], fmt: str, declared: str) -> None:
    exc = refused(disks[fmt], declared=declared)
    assert exc.reasons == ["format_mismatch"]
    label = {"raw": "raw", "qcow2": "qcow2", "vmdk": "VMDK", "vhd": "VHD"}[declared.lower()]
    assert f"declared {label} but the file is" in exc.message


@pytest.mark.parametrize("declared", ["iso", "vdi", "qed", "ami", ""])
def test_unknown_declared_format(disks: dict[str, Path], declared: str) -> None:
    exc = refused(disks["raw"], declared=declared)
    assert exc.reasons == ["unsupported_format"] and "RAW, QCOW2, VMDK or VHD" in exc.message


def test_empty_and_unaligned_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.raw"
    empty.touch()
    assert refused(empty).reasons == ["empty"]
    odd = tmp_path / "odd.raw"
    odd.write_bytes(b"x" * (inspect.NOT_A_DISK_BELOW + 1000))
    exc = refused(odd)
    assert exc.reasons == ["unaligned_size"] and "truncate -s %512" in exc.message
    zero = tmp_path / "zero.qcow2"
    qemu_img.create(zero, "qcow2", 0)
    assert refused(zero).reasons == ["empty"]


def test_not_a_regular_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        inspect_file(tmp_path, max_virtual_size=LIMIT)


# --- layers 2 and 3: qemu-img's own reading, with layer 1 switched off ------------------------------------


@pytest.fixture
def no_layer_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fi.FileInspector, "safety_check", lambda self: None)
    monkeypatch.setattr(inspect, "_extra_checks", lambda path, inspector, refusal: None)


@pytest.mark.parametrize(
    ("build", "reasons"),
    [
        (lambda d, h: hostile.qcow2_with_backing(d, h), ["backing_file"]),
        (lambda d, h: hostile.qcow2_with_data_file(d, h), ["data_file"]),
        (lambda d, h: hostile.qcow2_encrypted(d), ["encrypted"]),
    ],
)
def test_qemu_info_layer_catches_what_layer_one_would(
    tmp_path: Path,
    host_file: str,
    no_layer_one: None,
    qemu_info_calls: list[Path],
    build: Builder,
    reasons: list[str],
) -> None:
    path = build(tmp_path, host_file)
    assert refused(path).reasons == reasons
    assert qemu_info_calls == [path]


def test_qemu_info_layer_catches_vmdk_parent(
    tmp_path: Path, disks: dict[str, Path], no_layer_one: None, qemu_info_calls: list[Path]
) -> None:
    path = hostile.vmdk_with_parent(tmp_path, str(disks["vmdk"]))
    assert refused(path).reasons == ["backing_file"]
    assert qemu_info_calls == [path]


def test_qemu_info_layer_checks_vmdk_create_type(monkeypatch: pytest.MonkeyPatch, disks: dict[str, Path]) -> None:
    real = qemu_img.info

    def flat(path: Path, fmt: str, **kw: Any) -> dict[str, Any]:
        info = real(path, fmt, **kw)
        info["format-specific"]["data"]["create-type"] = "monolithicFlat"
        return info

    monkeypatch.setattr(qemu_img, "info", flat)
    assert refused(disks["vmdk"]).reasons == ["descriptor"]


# --- failing closed ----------------------------------------------------------------------------------------


def test_an_exception_inside_an_inspector_check_is_a_failure(
    monkeypatch: pytest.MonkeyPatch, disks: dict[str, Path]
) -> None:
    def broken(self: object) -> None:
        raise RuntimeError("bug in a check")

    monkeypatch.setattr(fi.QcowInspector, "check_backing_file", broken)
    assert refused(disks["qcow2"]).reasons == ["backing_file"]


def test_an_exception_in_stratus_checks_is_a_refusal(monkeypatch: pytest.MonkeyPatch, disks: dict[str, Path]) -> None:
    def broken(*args: object) -> None:
        raise KeyError("surprise")

    monkeypatch.setattr(inspect, "_extra_checks", broken)
    exc = refused(disks["qcow2"])
    assert exc.reasons == ["inspection_error"] and "KeyError" in exc.message


def test_qemu_img_failure_is_a_refusal(monkeypatch: pytest.MonkeyPatch, disks: dict[str, Path]) -> None:
    def failing(path: Path, fmt: str, **kw: Any) -> dict[str, Any]:
        raise qemu_img.QemuImgError("info", 1, "Could not open: Invalid argument")

    monkeypatch.setattr(qemu_img, "info", failing)
    exc = refused(disks["qcow2"])
    assert exc.reasons == ["qemu_info_failed"] and "Invalid argument" in exc.message


def test_a_small_file_that_is_no_disk_is_called_that(tmp_path: Path) -> None:
    """A text file is "not a disk image", not a raw disk to pad (issue 11)."""
    note = tmp_path / "notes.txt"
    note.write_text("remember to import the real disk\n")
    exc = refused(note)
    assert exc.reasons == ["not_a_disk"]
    assert "this is not a disk image" in exc.message and "truncate" not in exc.message


def test_raw_without_boot_sector_is_accepted_with_a_warning(tmp_path: Path) -> None:
    bare = tmp_path / "bare.raw"
    bare.write_bytes(bytes(MiB))
    assert inspect_file(bare, max_virtual_size=LIMIT).warnings == (inspect.NO_BOOT_SECTOR,)
    assert inspect_file(hostile.mbr_disk(tmp_path), max_virtual_size=LIMIT).warnings == ()
