"""Builders for hostile and normal disk images, for tests (unit and end-to-end); test-only, not shipped.

Each builder takes a target directory, writes one file there and returns its path. Hostile files are made
the way an attacker would: a real qemu-img image, then a few bytes patched (offsets are from the format
specs: qcow2 docs/interop/qcow2.txt, VMDK 5.0 "Virtual Disk Format", VHD spec 1.0, LUKS1 on-disk format).
Formats Stratus reads are made through :mod:`stratus.disk.qemu_img`; the ones only an attacker sends (qed, luks,
vdi, vhdx, an encrypted qcow2) through `_create_foreign`, so the product's qemu-img wrapper has no switch that
exists only for tests. Images are small (MiBs) on purpose.
"""

from __future__ import annotations

import os
import random
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

from stratus.disk import qemu_img

MiB = 1 << 20

# make_test_disk formats: name -> (qemu driver, -o options, compress (-c))
TEST_FORMATS: dict[str, tuple[str, dict[str, str], bool]] = {
    "raw": ("raw", {}, False),
    "qcow2": ("qcow2", {}, False),
    "qcow2-compressed": ("qcow2", {}, True),
    "vmdk": ("vmdk", {"subformat": "monolithicSparse"}, False),
    "vmdk-stream": ("vmdk", {"subformat": "streamOptimized"}, False),
    "vhd": ("vpc", {"force_size": "on"}, False),
    "vhd-fixed": ("vpc", {"force_size": "on", "subformat": "fixed"}, False),
}
_SUFFIX = {"raw": "raw", "qcow2": "qcow2", "vmdk": "vmdk", "vpc": "vhd"}


def _create_foreign(path: Path, fmt: str, size: int, *, options: dict[str, str] | None = None,
                    objects: tuple[str, ...] = ()) -> None:
    """`qemu-img create` of a format (or option) stratus.disk.qemu_img refuses to write: trusted input, so no
    prlimit, only a timeout."""
    args = ["qemu-img", "create", "-q", "-f", fmt]
    for obj in objects:
        args += ["--object", obj]
    if options:
        args += ["-o", ",".join(f"{k}={v}" for k, v in options.items())]
    subprocess.run([*args, str(path), str(size)], check=True, capture_output=True, timeout=120)


def _patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _read(path: Path, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


def _text(rng: random.Random, n: int) -> bytes:
    words = [b"stratus", b"image", b"cloud", b"disk", b"sector", b"kernel", b"boot", b"fstab"]
    out = bytearray()
    line = 0
    while len(out) < n:
        out += b"%06d " % line + b" ".join(rng.choice(words) for _ in range(9)) + b"\n"
        line += 1
    return bytes(out[:n])


def make_raw_disk(path: Path, size: int, seed: int) -> Path:
    """A raw disk with real mixed content, deterministic in ``seed``.

    Layout (S = size): text at [0, 32K) (so no format magic or MBR signature at the start), random at
    [64K, 64K+S/8), *written* zeros (allocated) at [S/4, S/4+S/8), 7000 random bytes at the unaligned
    offset S/2+12345, text at [S/2+192K, +S/16), random in the last 4 KiB; everything else is a hole.
    """
    if size % (64 * 1024) or size < MiB:
        raise ValueError("size must be a multiple of 64 KiB and at least 1 MiB")
    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in (
            (0, _text(rng, 32 * 1024)),
            (64 * 1024, rng.randbytes(size // 8)),
            (size // 4, bytes(size // 8)),
            (size // 2 + 12345, rng.randbytes(7000)),
            (size // 2 + 192 * 1024, _text(rng, size // 16)),
            (size - 4096, rng.randbytes(4096)),
        ):
            f.seek(offset)
            f.write(data)
    return path


def make_test_disk(dir: Path | str, fmt: str, size: int, seed: int = 0) -> Path:
    """The :func:`make_raw_disk` content converted to ``fmt`` (a :data:`TEST_FORMATS` key).

    Same ``size`` and ``seed`` give the same virtual bytes in every format.
    """
    driver, options, compress = TEST_FORMATS[fmt]
    dir = Path(dir)
    raw = make_raw_disk(dir / f"disk-{seed}-{size}.raw.src", size, seed)
    if fmt == "raw":
        return raw.rename(dir / f"disk-{seed}-{size}.raw")
    out = dir / f"disk-{seed}-{size}.{fmt}.{_SUFFIX[driver]}"
    try:
        qemu_img.convert(raw, "raw", out, driver, options=options, compress=compress)
    finally:
        raw.unlink()
    return out


# qemu benchmarks PBKDF2 for >500 ms of CPU before writing any LUKS header, whatever iter-time says, and
# with SHA-NI sha256 its first 2^15-iteration probe can read as 0 ms and fail ("Unable to get accurate CPU
# usage"); sha512 is slow enough to measure. Such images are built once per process, then copied.
_LUKS_OPTIONS = {"iter-time": "10", "hash-alg": "sha512"}
_built: dict[str, bytes] = {}


def _slow_build(key: str, path: Path, build: Callable[[], None]) -> Path:
    if key in _built:
        path.write_bytes(_built[key])
    else:
        build()
        _built[key] = path.read_bytes()
    return path


# --- qcow2 -------------------------------------------------------------------------------------------------

_QCOW2_INCOMPAT = 72  # u64 BE incompatible-features bitmap (v3)
_QCOW2_HEADER_LENGTH = 100  # u32 BE (v3); header extensions start there
_QCOW2_EXT_DATA_FILE = 0x44415441  # "DATA"


def _qcow2(dir: Path | str, name: str, size: int = MiB, **kw: object) -> Path:
    path = Path(dir) / name
    qemu_img.create(path, "qcow2", size, **kw)  # type: ignore[arg-type]
    return path


def qcow2_with_backing(dir: Path | str, backing: str = "/etc/passwd") -> Path:
    """qcow2 whose header names ``backing`` (raw) as its backing file (CVE-2015-5163)."""
    return _qcow2(dir, "backing.qcow2", backing=backing, backing_fmt="raw")


def qcow2_with_data_file(dir: Path | str, target: str | None = None) -> Path:
    """qcow2 with an external data file (CVE-2024-32498).

    qemu-img truncates the data file it is given at create time, so the image is made against a scratch
    file in ``dir`` (filled with a marker) and, when ``target`` is given, the header's data-file
    extension is then rewritten to name ``target`` (e.g. a host file) instead.
    """
    dir = Path(dir)
    scratch = dir / "data-file.raw"
    path = _qcow2(dir, "data-file.qcow2", options={"data_file": str(scratch), "data_file_raw": "on"})
    _patch(scratch, 0, b"stratus-data-file-marker\n")
    if target is not None:
        _rewrite_qcow2_extension(path, _QCOW2_EXT_DATA_FILE, target.encode())
    return path


def _rewrite_qcow2_extension(path: Path, ext_type: int, payload: bytes) -> None:
    (header_length,) = struct.unpack(">I", _read(path, _QCOW2_HEADER_LENGTH, 4))
    area = _read(path, header_length, 4096)
    exts: list[tuple[int, bytes]] = []
    pos = 0
    while True:
        typ, length = struct.unpack_from(">II", area, pos)
        if typ == 0:
            break
        exts.append((typ, area[pos + 8 : pos + 8 + length]))
        pos += 8 + (length + 7) // 8 * 8
    old_end = pos + 8
    exts = [(t, payload if t == ext_type else d) for t, d in exts]
    out = bytearray()
    for typ, data in [*exts, (0, b"")]:
        out += struct.pack(">II", typ, len(data)) + data + bytes(-len(data) % 8)
    _patch(path, header_length, bytes(out) + bytes(max(0, old_end - len(out))))


def qcow2_unknown_feature(dir: Path | str, bit: int = 5) -> Path:
    """qcow2 v3 with an incompatible-feature bit qemu 7.2 doesn't define (bits 0-4 are known)."""
    path = _qcow2(dir, f"unknown-feature-{bit}.qcow2")
    (features,) = struct.unpack(">Q", _read(path, _QCOW2_INCOMPAT, 8))
    _patch(path, _QCOW2_INCOMPAT, struct.pack(">Q", features | (1 << bit)))
    return path


def qcow2_truncated_header(dir: Path | str, length: int = 100) -> Path:
    """A qcow2 cut inside its 512-byte header: it must not pass as a raw disk."""
    path = _qcow2(dir, "truncated.qcow2")
    os.truncate(path, length)
    return path


def qcow2_huge(dir: Path | str, virtual_size: int) -> Path:
    """A tiny qcow2 file claiming ``virtual_size`` bytes (CVE-2013-2096: expanding it fills the host)."""
    return _qcow2(dir, "huge.qcow2", size=virtual_size)


def qcow2_encrypted(dir: Path | str) -> Path:
    """qcow2 with built-in LUKS encryption (passes the oslo inspector; unusable without the key)."""
    path = Path(dir) / "encrypted.qcow2"
    return _slow_build(
        "qcow2-encrypted",
        path,
        lambda: _create_foreign(
            path,
            "qcow2",
            MiB,
            objects=("secret,id=sec0,data=stratus",),
            options={
                "encrypt.format": "luks",
                "encrypt.key-secret": "sec0",
                **{f"encrypt.{k}": v for k, v in _LUKS_OPTIONS.items()},
            },
        ),
    )


def truncated(src: Path | str, dir: Path | str, length: int) -> Path:
    """A copy of ``src`` cut to ``length`` bytes (an upload that stopped early)."""
    src = Path(src)
    out = Path(dir) / f"cut-{length}-{src.name}"
    out.write_bytes(_read(src, 0, length))
    return out


# --- vmdk --------------------------------------------------------------------------------------------------


def vmdk_flat_pointing_at(dir: Path | str, host_file: str) -> Path:
    """A monolithicFlat descriptor whose extent is ``host_file`` (CVE-2022-47951)."""
    sectors = max(1, -(-os.path.getsize(host_file) // 512))
    path = Path(dir) / "flat-descriptor.vmdk"
    path.write_text(
        "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n"
        'createType="monolithicFlat"\n\n# Extent description\n'
        f'RW {sectors} FLAT "{host_file}" 0\n\n# The Disk Data Base\n#DDB\n\n'
        'ddb.virtualHWVersion = "4"\nddb.adapterType = "ide"\n'
    )
    return path


def vmdk_monolithic_flat(dir: Path | str) -> Path:
    """A legitimate two-file monolithicFlat vmdk from qemu-img; still refused (not self-contained)."""
    path = Path(dir) / "legit-flat.vmdk"
    qemu_img.create(path, "vmdk", MiB, options={"subformat": "monolithicFlat"})
    return path


def vmdk_with_parent(dir: Path | str, parent: str) -> Path:
    """A monolithicSparse vmdk whose embedded descriptor names ``parent`` via parentFileNameHint.

    The oslo inspector passes this (the hint is a plain key=value line); qemu opens the parent as a
    backing file and reads unallocated grains from it. parentCID is set to the parent's CID when the
    parent is a sparse vmdk, so that the read really happens.
    """
    path = Path(dir) / "with-parent.vmdk"
    qemu_img.create(path, "vmdk", MiB)
    parent_cid = _vmdk_cid(Path(parent)) or "fffffffe"
    desc_sec, desc_num = struct.unpack("<QQ", _read(path, 28, 16))
    desc = _read(path, desc_sec * 512, desc_num * 512).split(b"\0")[0]
    desc = desc.replace(
        b"parentCID=ffffffff",
        b'parentCID=%s\nparentFileNameHint="%s"' % (parent_cid.encode(), parent.encode()),
    )
    _patch(path, desc_sec * 512, desc.ljust(desc_num * 512, b"\0"))
    return path


def _vmdk_cid(path: Path) -> str | None:
    try:
        head = _read(path, 0, 64)
        if not head.startswith(b"KDMV"):
            return None
        desc_sec, desc_num = struct.unpack("<QQ", head[28:44])
        desc = _read(path, desc_sec * 512, desc_num * 512).decode("ascii", "replace")
    except (OSError, struct.error):
        return None
    for line in desc.splitlines():
        if line.startswith("CID="):
            return line[4:].strip()
    return None


# --- vhd (vpc) ---------------------------------------------------------------------------------------------


def _vhd_footer_offsets(path: Path) -> list[int]:
    size = path.stat().st_size
    return [off for off in (0, size - 512) if _read(path, off, 8) == b"conectix"]


def _vhd_set(path: Path, field_offset: int, value: bytes) -> None:
    """Set a footer field in every footer copy and fix the checksum (one's complement of the byte sum)."""
    for off in _vhd_footer_offsets(path):
        footer = bytearray(_read(path, off, 512))
        footer[field_offset : field_offset + len(value)] = value
        footer[64:68] = bytes(4)
        footer[64:68] = struct.pack(">I", ~sum(footer) & 0xFFFFFFFF)
        _patch(path, off, bytes(footer))


def vhd_differencing(dir: Path | str) -> Path:
    """A dynamic VHD re-typed as differencing (disk type 4): it would need a parent disk."""
    path = Path(dir) / "differencing.vhd"
    qemu_img.create(path, "vpc", 4 * MiB, options={"force_size": "on"})
    _vhd_set(path, 60, struct.pack(">I", 4))
    return path


def vhd_size_mismatch(dir: Path | str) -> Path:
    """A dynamic VHD whose "original size" (what the inspector reads) differs from its "current size"
    (what qemu uses for qemu-made images): the two readers disagree about the disk."""
    path = Path(dir) / "size-mismatch.vhd"
    qemu_img.create(path, "vpc", 4 * MiB, options={"force_size": "on"})
    _vhd_set(path, 40, struct.pack(">Q", 64 * MiB))
    return path


# --- other formats -----------------------------------------------------------------------------------------


def qed(dir: Path | str) -> Path:
    """A QED image (the inspector bans the format outright)."""
    path = Path(dir) / "image.qed"
    _create_foreign(path, "qed", MiB)
    return path


def luks(dir: Path | str, version: int = 1) -> Path:
    """A qemu-made LUKS1 volume; ``version=2`` patches the header's version field to look like LUKS2."""
    path = Path(dir) / f"luks{version}.img"
    _slow_build(
        "luks1",
        path,
        lambda: _create_foreign(
            path,
            "luks",
            MiB,
            objects=("secret,id=sec0,data=stratus",),
            options={"key-secret": "sec0", **_LUKS_OPTIONS},
        ),
    )
    if version != 1:
        _patch(path, 6, struct.pack(">H", version))
    return path


def vdi(dir: Path | str) -> Path:
    path = Path(dir) / "image.vdi"
    _create_foreign(path, "vdi", MiB)
    return path


def vhdx(dir: Path | str) -> Path:
    path = Path(dir) / "image.vhdx"
    _create_foreign(path, "vhdx", MiB)
    return path


def iso(dir: Path | str, blocks: int = 64) -> Path:
    """A minimal ISO 9660 image: a primary volume descriptor at 32 KiB, 2048-byte blocks."""
    path = Path(dir) / "image.iso"
    with open(path, "wb") as f:
        f.truncate(blocks * 2048)
    pvd = bytearray(2048)
    pvd[0:7] = b"\x01CD001\x01"
    pvd[80:88] = struct.pack("<I", blocks) + struct.pack(">I", blocks)
    pvd[128:132] = struct.pack("<H", 2048) + struct.pack(">H", 2048)
    _patch(path, 32 * 1024, bytes(pvd))
    _patch(path, 34 * 1024, b"\xffCD001\x01")  # volume descriptor set terminator
    return path


def _protective_mbr() -> bytes:
    # One 0xEE partition starting at CHS 0/2/0, LBA 1: what the gpt inspector's mbr check wants.
    entry = struct.pack("<B3BB3BII", 0x00, 0x00, 0x02, 0x00, 0xEE, 0xFF, 0xFF, 0xFF, 1, 0xFFFFFFFF)
    return entry + bytes(48) + b"\x55\xaa"


def multi_format(dir: Path | str, kind: str = "qcow2+gpt") -> Path:
    """A file that is two formats at once: one header hidden in another.

    ``qcow2+gpt``: a valid qcow2 with an MBR boot signature at byte 510 (the qcow2 header extensions end
    just before it, so qemu still reads the qcow2). ``qcow2+iso``: a valid qcow2 with an ISO primary
    volume descriptor in the unused rest of cluster 0. ``iso+gpt``: an ISO with a protective MBR, the
    shape of a hybrid (USB-bootable) installer ISO.
    """
    dir = Path(dir)
    if kind == "iso+gpt":
        path = iso(dir)
        _patch(path, 446, _protective_mbr())
        return path.rename(dir / "hybrid.iso")
    path = _qcow2(dir, f"multi-{kind.replace('+', '-')}.qcow2")
    if kind == "qcow2+gpt":
        # Only the signature: bytes 446-509 hold qcow2's feature-name table, which must stay intact.
        if _read(path, 510, 2) != bytes(2):
            raise RuntimeError("qcow2 header extensions reach byte 510; cannot build qcow2+gpt")
        _patch(path, 510, b"\x55\xaa")
    elif kind == "qcow2+iso":
        pvd = _read(iso(dir), 32 * 1024, 4 * 1024)
        os.unlink(dir / "image.iso")
        _patch(path, 32 * 1024, pvd)
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return path


def mbr_disk(dir: Path | str, size: int = 4 * MiB, seed: int = 0) -> Path:
    """A raw disk with a GPT protective MBR (detected as "gpt"; accepted as raw)."""
    path = make_raw_disk(Path(dir) / "mbr.raw", size, seed)
    _patch(path, 446, _protective_mbr())
    return path
