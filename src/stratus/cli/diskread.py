"""A disk image's virtual bytes, read on the client for a chunked import.

A raw file is its own virtual disk (holes read as zeros, found with SEEK_DATA/SEEK_HOLE). A qcow2, vmdk or
vhd keeps each data cluster as it is, uncompressed, at an offset of its file that ``qemu-img map`` tells:
those are read straight from the file, with no conversion (which would write and read the whole disk
again). An image that doesn't lay out that way (compressed clusters, encryption, a backing file, an
external data file, a multi-file vmdk) is converted by qemu-img to a temporary raw file instead.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Extent:
    """``length`` virtual bytes from ``start``: at ``offset`` of the file, or zeros (offset None)."""

    start: int
    length: int
    offset: int | None


def data_runs(fd: int, size: int) -> list[tuple[int, int]]:
    """[(start, end)] of the file's data (SEEK_DATA/SEEK_HOLE): holes are zero chunks, never read."""
    runs: list[tuple[int, int]] = []
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError:
            break
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        runs.append((start, end))
        offset = end
    return runs


class VirtualDisk:
    """The virtual bytes of a disk image file, by its data extents (sorted, not overlapping)."""

    def __init__(self, path: Path, size: int, extents: list[Extent]) -> None:
        self.path, self.size = path, size
        self.extents = [e for e in extents if e.offset is not None and e.length > 0]
        self._starts = [e.start for e in self.extents]
        self.fd = os.open(path, os.O_RDONLY)

    @classmethod
    def raw(cls, path: Path, size: int | None = None) -> VirtualDisk:
        """A raw file (its first ``size`` bytes; past the file's end reads as zeros)."""
        fd = os.open(path, os.O_RDONLY)
        try:
            file_size = os.fstat(fd).st_size
            size = file_size if size is None else size
            runs = data_runs(fd, min(file_size, size))
        finally:
            os.close(fd)
        return cls(path, size, [Extent(start, end - start, start) for start, end in runs])

    def has_data(self, lo: int, hi: int) -> bool:
        """Whether any stored byte lies in [lo, hi) (else the range is zeros without a read)."""
        i = bisect.bisect_right(self._starts, lo) - 1
        if i >= 0 and self.extents[i].start + self.extents[i].length > lo:
            return True
        return i + 1 < len(self.extents) and self.extents[i + 1].start < hi

    def read_into(self, view: memoryview, offset: int) -> None:
        """Fill ``view`` with the virtual bytes at ``offset``; OSError if the file is cut short (it changed)."""
        end = offset + len(view)
        pos = offset
        i = max(0, bisect.bisect_right(self._starts, offset) - 1)
        while pos < end:
            e = self.extents[i] if i < len(self.extents) else None
            if e is None or e.start >= end:
                view[pos - offset :] = bytes(end - pos)
                return
            e_end = e.start + e.length
            if e_end <= pos:
                i += 1
                continue
            if e.start > pos:
                view[pos - offset : e.start - offset] = bytes(e.start - pos)
                pos = e.start
            stop = min(e_end, end)
            assert e.offset is not None
            want = stop - pos
            if os.preadv(self.fd, [view[pos - offset : stop - offset]], e.offset + (pos - e.start)) != want:
                raise OSError(f"{self.path} is shorter than its image says: it changed while being read")
            pos = stop
            i += 1

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> VirtualDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def mapped(qemu_img: str, path: Path, fmt: str) -> VirtualDisk | None:
    """``path`` read through ``qemu-img map`` when every data cluster is stored as it is in the file itself;
    None when the image needs converting (or qemu-img can't read it: the conversion says why)."""
    info = _json([qemu_img, "info", "-f", fmt, "--output=json", str(path)])
    if not isinstance(info, dict) or info.get("encrypted") or info.get("backing-filename"):
        return None
    specific = (info.get("format-specific") or {}).get("data") or {}
    if specific.get("data-file"):
        return None
    extents = _json([qemu_img, "map", "-f", fmt, "--output=json", str(path)])
    if not isinstance(extents, list):
        return None
    found: list[Extent] = []
    for e in extents:
        if e.get("depth", 0) != 0 or e.get("compressed"):
            return None
        if not e.get("data"):
            continue  # zeros (unallocated or zero clusters)
        if "offset" not in e or e.get("filename", str(path)) != str(path):
            return None  # the bytes are elsewhere (another extent file): convert
        found.append(Extent(int(e["start"]), int(e["length"]), int(e["offset"])))
    return VirtualDisk(path, int(info["virtual-size"]), sorted(found, key=lambda x: x.start))


def _json(cmd: list[str]) -> object:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return None
    try:
        return json.loads(done.stdout)
    except ValueError:
        return None


@contextlib.contextmanager
def converted(qemu_img: str, path: Path, fmt: str) -> Iterator[tuple[Path | None, str]]:
    """A sparse raw conversion of ``path`` by qemu-img in a temporary directory: (raw, "") or (None, error)."""
    with tempfile.TemporaryDirectory(prefix="stratus-import-") as tmp:
        raw = Path(tmp) / "disk.raw"
        done = subprocess.run([qemu_img, "convert", "-f", fmt, "-O", "raw", str(path), str(raw)],
                              capture_output=True, text=True)
        yield (raw, "") if done.returncode == 0 else (None, done.stderr.strip()[:500])

