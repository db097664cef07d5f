"""Direct kernel boot: take the kernel and initramfs out of an image's own root filesystem.

An image whose system disk is a bare ext2/3/4 filesystem (no partition table, so no boot loader) can still
boot: QEMU loads the kernel and initramfs itself (``-kernel``/``-initrd``/``-append``) if we hand them over.
They are read with ``debugfs`` (e2fsprogs), never by mounting the untrusted filesystem: a mount would put the
host kernel's ext4 driver in front of hostile bytes, while debugfs is an ordinary process that runs under
``prlimit`` (CPU, memory, file size) and a wall-clock timeout. Everything else boots from firmware (SeaBIOS
and the image's own boot loader), and :func:`extract_kernel` returns None for it.

Where kernels live: ``/boot/vmlinuz`` + ``/boot/initrd.img`` (Ubuntu, and this project's test image), else
``/vmlinuz`` + ``/initrd.img`` (Debian's default symlinks). Each is usually a symlink to the versioned file;
symlinks are followed inside the filesystem, at most :data:`MAX_LINKS` deep.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import subprocess
import uuid
from pathlib import Path

from stratus.compute.driver import ComputeError
from stratus.disk.qemu_img import PRLIMIT, Limits

DEBUGFS = "debugfs"
CMDLINE = "root=/dev/vda rw console=ttyS0"
KERNEL_FILE, INITRD_FILE = "vmlinuz", "initrd.img"
CANDIDATES = (("/boot/vmlinuz", "/boot/initrd.img"), ("/vmlinuz", "/initrd.img"))
MAX_LINKS = 8
MAX_BOOT_FILE = 512 << 20  # bytes; a kernel is ~15 MiB and a fat initramfs ~100 MiB
DEBUGFS_LIMITS = Limits(cpu_seconds=60, address_space=1 << 30, timeout=120.0)

_EXT_MAGIC_OFFSET = 1024 + 0x38  # s_magic in the superblock, which starts 1 KiB into the device
_EXT_MAGIC = b"\x53\xef"
# Names we pass to debugfs: its command parser splits on blanks and quotes, so anything else is refused
# rather than escaped.
_SAFE_COMPONENT = re.compile(r"[A-Za-z0-9._+~-]+")
_TYPE_RE = re.compile(r"Type: (\w+)")
_SIZE_RE = re.compile(r"\bSize: (\d+)")
_FAST_LINK_RE = re.compile(r'Fast link dest: "(.*)"')


def is_bare_ext(path: Path) -> bool:
    """True if the disk starts with an ext2/3/4 superblock (a filesystem on the whole disk)."""
    try:
        with open(path, "rb") as f:
            f.seek(_EXT_MAGIC_OFFSET)
            return f.read(2) == _EXT_MAGIC
    except OSError:
        return False


def extract_kernel(base_raw: Path, dest_dir: Path) -> tuple[Path, Path, str] | None:
    """(kernel, initrd, cmdline) dumped from ``base_raw`` into ``dest_dir``, or None if the disk isn't a bare
    ext filesystem with a kernel and an initramfs. Cached: a ``dest_dir`` that holds both is reused as is."""
    kernel, initrd = dest_dir / KERNEL_FILE, dest_dir / INITRD_FILE
    if kernel.is_file() and initrd.is_file():
        return kernel, initrd, CMDLINE
    if not is_bare_ext(base_raw):
        return None
    for kernel_name, initrd_name in CANDIDATES:
        found_kernel = _resolve(base_raw, kernel_name)
        found_initrd = _resolve(base_raw, initrd_name) if found_kernel else None
        if found_kernel and found_initrd:
            break
    else:
        return None
    dest_dir.mkdir(parents=True, exist_ok=True)
    _dump(base_raw, found_kernel[0], found_kernel[1], kernel)
    if not _is_bzimage(kernel):
        kernel.unlink()
        return None
    _dump(base_raw, found_initrd[0], found_initrd[1], initrd)
    return kernel, initrd, CMDLINE


def _is_bzimage(path: Path) -> bool:
    # The x86 boot protocol's header magic "HdrS" at 0x202 (Documentation/arch/x86/boot.rst).
    with open(path, "rb") as f:
        f.seek(0x202)
        return f.read(4) == b"HdrS"


def _debugfs(image: Path, request: str, cwd: Path | None = None) -> tuple[str, str]:
    """Run one debugfs request read-only (``-c``: no bitmaps are read) under limits; (stdout, stderr)."""
    lim = DEBUGFS_LIMITS
    argv = [
        PRLIMIT,
        f"--cpu={lim.cpu_seconds}:{lim.cpu_seconds + 1}",
        f"--as={lim.address_space}:{lim.address_space}",
        f"--fsize={MAX_BOOT_FILE}:{MAX_BOOT_FILE}",
        "--",
        DEBUGFS,
        "-c",
        "-R",
        request,
        os.path.abspath(image),
    ]
    try:
        proc = subprocess.run(
            argv, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, timeout=lim.timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise ComputeError(f"debugfs {request.split()[0]} on {image.name} took over {lim.timeout:g} s") from None
    except FileNotFoundError:
        raise ComputeError("debugfs is not installed (Debian package e2fsprogs)") from None
    if proc.returncode != 0:
        raise ComputeError(f"debugfs {request.split()[0]} on {image.name} failed (exit {proc.returncode})")
    # debugfs exits 0 even when the request failed; callers read its messages.
    return proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")


def _resolve(image: Path, path: str) -> tuple[str, int] | None:
    """Follow symlinks from ``path`` to a regular file: (its path, its size), or None."""
    for _ in range(MAX_LINKS + 1):
        if not all(_SAFE_COMPONENT.fullmatch(part) for part in path.strip("/").split("/")):
            return None
        out, _ = _debugfs(image, f"stat {path}")
        kind = _TYPE_RE.search(out)
        if kind is None:
            return None  # not found, or an unreadable inode
        if kind.group(1) == "regular":
            size = _SIZE_RE.search(out)
            if size is None or not 0 < int(size.group(1)) <= MAX_BOOT_FILE:
                return None
            return path, int(size.group(1))
        if kind.group(1) != "symlink":
            return None
        fast = _FAST_LINK_RE.search(out)
        if fast is not None:
            target = fast.group(1)
        else:
            # A slow symlink keeps its target in a data block, which `cat` prints.
            target = _debugfs(image, f"cat {path}")[0].rstrip("\0\n")
            if "\n" in target or not target:
                return None
        # Resolve inside the filesystem: relative to the link's directory, ".." clamped at the root.
        path = posixpath.normpath(posixpath.join(posixpath.dirname(path), target))
    return None


def _dump(image: Path, src: str, size: int, dest: Path) -> None:
    """Copy one file out of the filesystem to ``dest`` (written under a temporary name, then renamed)."""
    # Unique per caller: two launches of the same image may extract into the same cache at once.
    tmp_name = f".{dest.name}.{uuid.uuid4().hex}.tmp"
    tmp = dest.with_name(tmp_name)
    try:
        _, err = _debugfs(image, f"dump {src} {tmp_name}", cwd=dest.parent)
        if not tmp.is_file() or tmp.stat().st_size != size:
            message = err.strip().splitlines()[-1] if err.strip() else "no output"
            raise ComputeError(f"could not read {src} from the image's filesystem: {message}")
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
