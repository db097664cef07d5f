"""cli/diskread.py: a disk image's virtual bytes read in place (raw, or qcow2/vmdk/vhd through qemu-img map),
and the layouts that must be converted instead."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from stratus.cli.diskread import VirtualDisk, mapped

MiB = 1 << 20
SIZE = 24 * MiB


def _raw(path: Path) -> bytes:
    """A sparse raw disk: data in a few runs (one not cluster-aligned), holes elsewhere."""
    with path.open("wb") as f:
        f.truncate(SIZE)
        for offset, n in ((0, MiB), (5 * MiB + 4096, 3 * MiB), (SIZE - 512, 512)):
            f.seek(offset)
            f.write(os.urandom(n))
    return path.read_bytes()


def _virtual_bytes(disk: VirtualDisk, piece: int) -> bytes:
    out = bytearray(disk.size)
    for lo in range(0, disk.size, piece):
        disk.read_into(memoryview(out)[lo : min(lo + piece, disk.size)], lo)
    return bytes(out)


def test_a_raw_file_reads_as_itself_and_its_holes_need_no_read(tmp_path: Path) -> None:
    content = _raw(tmp_path / "d.raw")
    with VirtualDisk.raw(tmp_path / "d.raw") as disk:
        assert disk.size == SIZE
        assert _virtual_bytes(disk, MiB) == content
        assert _virtual_bytes(disk, 3 * MiB + 512) == content  # pieces straddling extents
        assert disk.has_data(0, MiB) and not disk.has_data(2 * MiB, 5 * MiB)
        assert disk.has_data(4 * MiB, 6 * MiB)
    with VirtualDisk.raw(tmp_path / "d.raw", SIZE + MiB) as disk:  # past the end: zeros
        assert _virtual_bytes(disk, MiB) == content + bytes(MiB)


@pytest.mark.parametrize(("fmt", "options"), [("qcow2", []), ("vmdk", []), ("vpc", ["-o", "subformat=dynamic"])])
def test_images_are_read_in_place_through_qemu_img_map(tmp_path: Path, fmt: str, options: list[str]) -> None:
    content = _raw(tmp_path / "d.raw")
    image = tmp_path / f"d.{fmt}"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", fmt, *options, str(tmp_path / "d.raw"), str(image)],
                   check=True)
    disk = mapped("qemu-img", image, fmt)
    assert disk is not None
    with disk:
        assert disk.size >= SIZE  # vhd rounds the size up to its geometry
        assert _virtual_bytes(disk, MiB)[:SIZE] == content
        assert not disk.has_data(2 * MiB, 4 * MiB)  # vhd blocks are 2 MiB: [4, 6) holds data


def test_layouts_that_need_converting_are_not_read_in_place(tmp_path: Path) -> None:
    _raw(tmp_path / "d.raw")
    compressed = tmp_path / "c.qcow2"
    subprocess.run(["qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", str(tmp_path / "d.raw"),
                    str(compressed)], check=True)
    assert mapped("qemu-img", compressed, "qcow2") is None
    overlay = tmp_path / "o.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(compressed), "-F", "qcow2", str(overlay)],
                   check=True)
    assert mapped("qemu-img", overlay, "qcow2") is None  # a backing file: its bytes are in another file
    assert mapped("qemu-img", tmp_path / "d.raw", "qcow2") is None  # not a qcow2 at all
