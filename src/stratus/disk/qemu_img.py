"""Every qemu-img call Stratus makes goes through this module.

Rules, each a fix for a known attack or failure (see reference/anchors.md §3.4):

- The source format is always explicit (``-f``); qemu-img never probes untrusted bytes (CVE-2026-24708).
- Sources are opened through the ``json:`` pseudo-protocol with ``"backing": null`` and an explicit
  ``"driver": "file"`` protocol node, so no backing file is ever opened (CVE-2015-5163 and the vmdk
  ``parentFileNameHint`` variant) and no filename prefix such as ``nbd:`` can select another protocol.
  Measured on qemu 7.2: ``info``, ``map``, ``check``, ``convert`` and ``compare`` all accept this form for
  raw, qcow2, vmdk and vpc, and ``-f`` plus the ``json:`` driver agree. It does *not* stop a qcow2
  external data file (``"data-file": null`` is silently ignored); only the inspector (disk/inspect.py)
  refuses those, which is why it runs first.
- Each run has a CPU and address-space rlimit (set in the child before exec) and a wall-clock timeout,
  after which the process is killed: a hostile header must not be able to burn a core or the host's RAM.
- Never ``shell=True``; every path is made absolute, so it can't be read as an option or a protocol.

``map_extents`` and what its offsets mean (measured, qemu 7.2, standalone images):

============================  ===============================================================================
format                        ``offset`` of a data extent
============================  ===============================================================================
raw                           the virtual offset itself (file holes: ``data: false, zero: true``)
qcow2                         real host-cluster file offset; **absent for compressed clusters** (``-c``)
qcow2 zero cluster            ``zero: true, data: false`` *with* an offset when the cluster stays
                              allocated (``write -z`` over data): the file there still holds the old bytes
vmdk monolithicSparse         real grain offset in the file
vmdk streamOptimized          absent for every data extent (all grains are deflate-compressed)
vpc (VHD) dynamic             real offset (2 MiB blocks; qemu ignores the per-block sector bitmap on read,
                              so the file bytes are what qemu returns); unallocated blocks report zero
vpc (VHD) fixed               the virtual offset itself (the footer is the last 512 B)
============================  ===============================================================================

Hence the read rule in :attr:`Extent.source`: *zero* wins over an offset, then an offset means "read the file
there", and anything else needs ``convert``. tests/disk/test_qemu_img.py rebuilds every format from the file
at the mapped offsets and compares the bytes with ``convert -O raw``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import selectors
import signal
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Literal

QEMU_IMG = "qemu-img"
PRLIMIT = "prlimit"  # util-linux, in every Debian base system

# qemu driver names Stratus reads and writes. Anything else is a programming error.
DRIVERS = frozenset({"raw", "qcow2", "vmdk", "vpc"})

GiB = 1 << 30


@dataclass(frozen=True)
class Limits:
    """Resource limits for one qemu-img run."""

    cpu_seconds: int
    address_space: int  # bytes, RLIMIT_AS
    timeout: float  # wall-clock seconds; the process is killed after this


# Metadata work on untrusted files (info/map/check). Glance allows `info` 2 s of CPU and 1 GiB; map and
# check walk every L2 table, so they get 30 s. Measured: 64 MiB of address space is enough for info on
# qemu 7.2, 16 MiB is not (qemu aborts creating its threads).
INSPECT_LIMITS = Limits(cpu_seconds=30, address_space=1 * GiB, timeout=120.0)
# Data-moving work (convert/compare), and create (LUKS key setup alone burns >0.5 s of CPU).
CONVERT_LIMITS = Limits(cpu_seconds=3600, address_space=2 * GiB, timeout=4 * 3600.0)

_STDERR_KEEP = 64 * 1024  # bytes of stderr held in memory (tail)
_PROGRESS_RE = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


class QemuImgError(Exception):
    """A qemu-img run failed; ``stderr`` is its short, readable complaint."""

    def __init__(self, subcommand: str, returncode: int | None, stderr: str) -> None:
        self.subcommand = subcommand
        self.returncode = returncode
        self.stderr = stderr
        status = "timed out" if returncode is None else _describe_status(returncode)
        super().__init__(f"qemu-img {subcommand} {status}: {stderr or 'no error message'}")


def _describe_status(returncode: int) -> str:
    if returncode >= 0:
        return f"failed (exit {returncode})"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    if name == "SIGXCPU":
        return "was killed by SIGXCPU (CPU time limit)"
    return f"was killed by {name}"


def _short(stderr: bytes, args: Sequence[str] = ()) -> str:
    """The last few distinct lines of stderr, without the ``qemu-img:`` prefix, at most 500 chars.

    ``json:`` source specs in ``args`` are shown as their plain path: that is what a person recognises.
    """
    text = stderr.decode("utf-8", "replace")
    for arg in args:
        if arg.startswith("json:") and arg in text:
            text = text.replace(arg, json.loads(arg[5:])["file"]["filename"])
    lines: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("qemu-img:"):
            line = line[len("qemu-img:") :].strip()
        if line and line not in lines:
            lines.append(line)
    text = "; ".join(lines[-5:])
    return text if len(text) <= 500 else text[:497] + "..."


@dataclass(frozen=True)
class Extent:
    """One run of ``qemu-img map --output=json`` (depth 0; Stratus only maps standalone images).

    ``offset`` is the byte offset in the *file* where the extent's bytes lie, or None when qemu gives none
    (compressed clusters, unallocated runs). Read rule, in this order (see :attr:`source`):
    ``zero`` → the bytes are zeros, whatever ``offset`` says (a qcow2 zero cluster keeps its stale host
    cluster); ``data`` with an offset → read ``length`` bytes of the file at ``offset``; otherwise the
    bytes can only be had from qemu (``convert``).
    """

    start: int
    length: int
    data: bool
    zero: bool
    offset: int | None
    # Allocated by this image itself; false for a hole that reads through to a backing file (or as zeros).
    present: bool = field(default=True, compare=False)

    @property
    def source(self) -> Literal["zero", "file", "convert"]:
        if self.zero:
            return "zero"
        if self.data and self.offset is not None:
            return "file"
        return "convert"


def source_spec(path: str | os.PathLike[str], fmt: str) -> str:
    """The ``json:`` filename qemu-img opens an untrusted image through (no backing, file protocol)."""
    _check_driver(fmt)
    spec = {
        "driver": fmt,
        "backing": None,
        "file": {"driver": "file", "filename": os.path.abspath(os.fspath(path))},
    }
    return "json:" + json.dumps(spec, separators=(",", ":"))


def _check_driver(fmt: str, allowed: frozenset[str] = DRIVERS) -> None:
    if fmt not in allowed:
        raise ValueError(f"unsupported qemu driver {fmt!r}; expected one of {sorted(allowed)}")


def _abs(path: str | os.PathLike[str]) -> str:
    return os.path.abspath(os.fspath(path))


def _options_arg(options: dict[str, str]) -> str:
    # qemu's option syntax escapes a literal comma by doubling it.
    return ",".join(f"{k}={str(v).replace(',', ',,')}" for k, v in options.items())


def _limited(limits: Limits) -> list[str]:
    """A `prlimit` prefix. prlimit(1) sets the limits in the child itself: a Python preexec_fn would be
    unsafe here, because the server runs qemu-img from worker threads (fork + Python code + threads can
    deadlock). SIGXCPU at the soft CPU limit names the cause; the hard limit one second later backs it."""
    cpu, space = limits.cpu_seconds, limits.address_space
    return [PRLIMIT, f"--cpu={cpu}:{cpu + 1}", f"--as={space}:{space}", "--"]


def _run(
    args: Sequence[str],
    limits: Limits,
    *,
    ok_codes: Sequence[int] = (0,),
    on_stdout: Callable[[bytes], None] | None = None,
    keep_stdout: bool = True,
) -> tuple[int, bytes]:
    """Run ``qemu-img *args`` under ``limits``; return (returncode, stdout) or raise QemuImgError."""
    subcommand = args[0]
    proc = subprocess.Popen(
        [*_limited(limits), QEMU_IMG, *args],
        # glibc reserves 64 MiB of address space per malloc arena, up to 8 per core, one per busy thread:
        # on a loaded machine qemu's I/O threads multiply arenas until RLIMIT_AS refuses a thread stack
        # ("qemu_thread_create: Resource temporarily unavailable") on an image that fits. Two arenas keep the
        # limit about the memory qemu-img really uses.
        env={**os.environ, "MALLOC_ARENA_MAX": "2"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        close_fds=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    out = bytearray()
    err = bytearray()
    deadline = time.monotonic() + limits.timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ, "out")
        sel.register(proc.stderr, selectors.EVENT_READ, "err")
        try:
            while sel.get_map():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    proc.kill()
                    proc.wait()
                    raise QemuImgError(subcommand, None, f"no result after {limits.timeout:g} s; killed")
                for key, _ in sel.select(timeout=remaining):
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        sel.unregister(key.fileobj)
                        continue
                    if key.data == "err":
                        err += chunk
                        del err[:-_STDERR_KEEP]
                        continue
                    if on_stdout is not None:
                        on_stdout(chunk)
                    if keep_stdout:
                        out += chunk
        except BaseException:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            raise
        finally:
            proc.stdout.close()
            proc.stderr.close()
    # Both pipes hit EOF; the process is exiting. Still bounded by the deadline.
    try:
        returncode = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise QemuImgError(subcommand, None, f"no exit after {limits.timeout:g} s; killed") from None
    if returncode not in ok_codes:
        raise QemuImgError(subcommand, returncode, _short(bytes(err), args))
    return returncode, bytes(out)


def _json(subcommand: str, stdout: bytes) -> Any:
    try:
        return json.loads(stdout)
    except ValueError as exc:
        raise QemuImgError(subcommand, 0, f"unparseable JSON output ({exc})") from None


def info(path: str | os.PathLike[str], fmt: str, *, limits: Limits | None = None) -> dict[str, Any]:
    """``qemu-img info --output=json``; the dict has ``virtual-size``, ``format-specific``, and
    ``backing-filename`` / ``data-file`` when the header names other files (they are not opened)."""
    _, out = _run(
        ["info", "-f", fmt, "--output=json", source_spec(path, fmt)],
        limits or INSPECT_LIMITS,
    )
    result = _json("info", out)
    if not isinstance(result, dict):
        raise QemuImgError("info", 0, "JSON output is not an object")
    return result


class ExtentMap:
    """The extents of one ``qemu-img map`` run, in order, spooled to an unlinked temporary file as qemu-img
    prints them: 25 bytes each on disk and one block of them in memory at a time, however many the image
    has (a crafted qcow2 can have millions). Iterate it as often as needed; close it (or use ``with``).

    Facts every caller needs are gathered while spooling: ``count``, ``end`` (the virtual bytes covered),
    ``max_file_end`` (the furthest file byte a data extent reads) and ``needs_convert`` (some data can
    only be had from qemu)."""

    _BLOCK = 4096  # records per read

    def __init__(self, spool: IO[bytes], count: int, end: int, max_file_end: int, needs_convert: bool) -> None:
        self._spool = spool
        self.count, self.end, self.max_file_end, self.needs_convert = count, end, max_file_end, needs_convert

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Extent]:
        spool = self._spool
        pos = 0
        size = _RECORD.size
        while True:
            spool.seek(pos)
            block = spool.read(size * self._BLOCK)
            if not block:
                return
            pos += len(block)
            for start, length, offset, flags in _RECORD.iter_unpack(block):
                yield Extent(start, length, bool(flags & 1), bool(flags & 2), None if offset < 0 else offset,
                             bool(flags & 4))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (list, tuple, ExtentMap)):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # unhashable like the list it equals; object declares a method

    def close(self) -> None:
        self._spool.close()

    def __enter__(self) -> ExtentMap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_RECORD = struct.Struct("<qqqB")  # start, length, offset (-1: none), flags (1 data, 2 zero, 4 present)
_MAX_MAP_LINE = 4096  # one JSON entry; qemu-img prints ~110 bytes


class _MapParser:
    """Parses ``qemu-img map --output=json`` as it arrives and spools each entry; the output is never held
    whole. qemu-img prints one entry per line, so each read's complete lines are parsed together (one
    ``json.loads`` per block, not per entry: ~1 µs an entry) and a line longer than any entry is refused."""

    def __init__(self, spool: IO[bytes], start: int, only_present: bool) -> None:
        self.spool, self.expect, self.only_present = spool, start, only_present
        self.pending = bytearray()
        self.count = self.max_file_end = 0
        self.needs_convert = False
        self.opened = self.closed = False

    def feed(self, data: bytes) -> None:
        self.pending += data
        cut = self.pending.rfind(b"\n")
        if cut >= 0:
            block = bytes(self.pending[:cut])
            del self.pending[: cut + 1]
            self._block(block)
        if len(self.pending) > _MAX_MAP_LINE:
            raise QemuImgError("map", 0, f"an output line is longer than {_MAX_MAP_LINE} bytes")

    def finish(self) -> None:
        self._block(bytes(self.pending))
        self.pending.clear()
        if not self.closed:
            raise QemuImgError("map", 0, "JSON output is not a complete list")

    def _block(self, block: bytes) -> None:
        block = block.strip()
        if not block:
            return
        if self.closed:
            raise QemuImgError("map", 0, "output continues after the end of the list")
        if not self.opened:
            if not block.startswith(b"["):
                raise QemuImgError("map", 0, "JSON output is not a list")
            block, self.opened = block[1:], True
        if block.endswith(b"]"):
            block, self.closed = block[:-1], True
        block = block.rstrip()
        if block.endswith(b","):  # the last entry before the next read's
            block = block[:-1]
        if not block.strip():
            return
        try:
            rows = json.loads(b"[" + block + b"]")
        except ValueError as exc:
            raise QemuImgError("map", 0, f"unparseable JSON output ({exc})") from None
        for row in rows:
            self._row(row)

    def _row(self, row: Any) -> None:
        try:
            start, length = int(row["start"]), int(row["length"])
            data, zero = bool(row["data"]), bool(row["zero"])
            offset = int(row["offset"]) if "offset" in row else None
            present = bool(row.get("present", True))
            depth = int(row.get("depth", 0))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise QemuImgError("map", 0, f"unexpected map entry {row!r:.200} ({exc})") from None
        # The storage layer reads the file at these offsets, so every invariant it relies on is checked.
        if depth != 0:
            raise QemuImgError("map", 0, f"extent at {start} comes from a backing file (depth {depth})")
        if start != self.expect or length <= 0 or (offset is not None and offset < 0):
            raise QemuImgError("map", 0, f"map is not contiguous at {self.expect}: {row!r:.200}")
        self.expect = start + length
        if self.only_present and not (present and (data or zero)):
            return
        if not zero and data:  # the read rule of Extent.source
            if offset is not None:
                self.max_file_end = max(self.max_file_end, offset + length)
            else:
                self.needs_convert = True
        flags = data | zero << 1 | present << 2
        self.spool.write(_RECORD.pack(start, length, -1 if offset is None else offset, flags))
        self.count += 1


def _spool_file(directory: str | os.PathLike[str]) -> IO[bytes]:
    """An unlinked file on the image's own filesystem (a disk, unlike a tmpfs /tmp that is memory), or the
    system's temp directory when that one is not writable."""
    try:
        return tempfile.TemporaryFile(prefix=".qemu-img-map-", dir=directory)
    except OSError:
        return tempfile.TemporaryFile(prefix="qemu-img-map-")


def map_extents(
    path: str | os.PathLike[str],
    fmt: str,
    *,
    start: int | None = None,
    length: int | None = None,
    limits: Limits | None = None,
    force_share: bool = False,
    only_present: bool = False,
    spool_dir: str | os.PathLike[str] | None = None,
) -> ExtentMap:
    """``qemu-img map --output=json``, parsed as it streams, checked to be contiguous from ``start``
    (default 0), and spooled (:class:`ExtentMap`, in ``spool_dir``, by default the image's directory).

    Depth is always 0 because the source is opened with ``backing: null``; anything else is refused.
    ``force_share`` is ``-U`` (read an image a running QEMU holds); ``only_present`` keeps only the
    extents the image itself allocates (data or zero), which for an overlay is what the guest wrote.
    """
    args = ["map", "-f", fmt, "--output=json"]
    if force_share:
        args.insert(1, "-U")
    if start is not None:
        args += ["--start-offset", str(int(start))]
    if length is not None:
        args += ["--max-length", str(int(length))]
    spool = _spool_file(spool_dir if spool_dir is not None else os.path.dirname(_abs(path)))
    try:
        parser = _MapParser(spool, start or 0, only_present)
        _run([*args, source_spec(path, fmt)], limits or INSPECT_LIMITS, on_stdout=parser.feed, keep_stdout=False)
        parser.finish()
        spool.flush()
    except BaseException:
        spool.close()
        raise
    end = parser.expect
    return ExtentMap(spool, parser.count, end, parser.max_file_end, parser.needs_convert)


def convert(
    src: str | os.PathLike[str],
    src_fmt: str,
    dst: str | os.PathLike[str],
    dst_fmt: str,
    *,
    options: dict[str, str] | None = None,
    progress: Callable[[float], None] | None = None,
    sparse: bool = True,
    compress: bool = False,
    limits: Limits | None = None,
) -> None:
    """``qemu-img convert`` src → dst (dst is created or overwritten; removed again if the run fails).

    ``progress(percent)`` is called as qemu-img reports it (0.0 … 100.0). ``sparse=False`` writes zero
    runs out (``-S 0``); by default all-zero 4 KiB runs become holes. vpc output gets ``force_size=on``
    unless given, so the virtual size is exact rather than CHS-rounded. ``compress`` is ``-c``
    (qcow2/vmdk). A vmdk streamOptimized output is ``options={"subformat": "streamOptimized"}``.
    """
    _check_driver(dst_fmt)
    opts = dict(options or {})
    if dst_fmt == "vpc":
        opts.setdefault("force_size", "on")
    dst_path = _abs(dst)
    args = ["convert", "-p", "-f", src_fmt, "-O", dst_fmt]
    if opts:
        args += ["-o", _options_arg(opts)]
    if not sparse:
        args += ["-S", "0"]
    if compress:
        args.append("-c")
    args += [source_spec(src, src_fmt), dst_path]

    last = [-1.0]
    pending = [b""]

    def on_stdout(chunk: bytes) -> None:
        # qemu-img -p writes "    (12.34/100%)\r" repeatedly; a report may straddle two reads.
        buf = pending[0] + chunk
        cut = buf.rfind(b"\r") + 1
        pending[0] = buf[cut:][-256:]
        for match in _PROGRESS_RE.finditer(buf[:cut]):
            pct = float(match.group(1))
            if pct != last[0] and progress is not None:
                last[0] = pct
                progress(pct)

    try:
        _run(args, limits or CONVERT_LIMITS, on_stdout=on_stdout, keep_stdout=False)
    except BaseException:
        # A partial output is worse than none: nobody should mistake it for a finished image.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(dst_path)
        raise


def compare(
    a: str | os.PathLike[str],
    a_fmt: str,
    b: str | os.PathLike[str],
    b_fmt: str,
    *,
    limits: Limits | None = None,
) -> bool:
    """True iff the two images read the same (``qemu-img compare``, non-strict: unallocated == zeros,
    and a longer image matches if its tail reads as zeros). False on exit 1, QemuImgError otherwise."""
    code, _ = _run(
        ["compare", "-f", a_fmt, "-F", b_fmt, source_spec(a, a_fmt), source_spec(b, b_fmt)],
        limits or CONVERT_LIMITS,
        ok_codes=(0, 1),
    )
    return code == 0


def create(
    path: str | os.PathLike[str],
    fmt: str,
    size: int,
    *,
    backing: str | None = None,
    backing_fmt: str | None = None,
    options: dict[str, str] | None = None,
    limits: Limits | None = None,
) -> None:
    """``qemu-img create``. With ``backing``, ``-u`` is passed: qemu-img records the name without
    opening it (Stratus never lets qemu-img open a backing file), so ``backing_fmt`` is required.
    (tests/hostile.py makes the formats Stratus refuses itself.)"""
    _check_driver(fmt, DRIVERS)
    args = ["create", "-q", "-f", fmt]
    if backing is not None:
        if not backing_fmt:
            raise ValueError("backing_fmt is required with backing")
        args += ["-u", "-b", backing, "-F", backing_fmt]
    if options:
        args += ["-o", _options_arg(options)]
    args += [_abs(path), str(int(size))]
    _run(args, limits or CONVERT_LIMITS)


def check(path: str | os.PathLike[str], fmt: str, *, limits: Limits | None = None) -> dict[str, Any] | None:
    """``qemu-img check --output=json`` (metadata consistency), or None when the format has no check
    (raw, vpc). The dict has ``check-errors`` and, when found, ``corruptions`` / ``leaks``; exit codes
    2 (corruptions) and 3 (leaks only) still return the report. Exit 1 ("check not completed", e.g. a
    vmdk grain table pointing past EOF) prints no JSON and raises QemuImgError."""
    args = ["check", "-f", fmt, "--output=json", source_spec(path, fmt)]
    code, out = _run(args, limits or INSPECT_LIMITS, ok_codes=(0, 2, 3, 63))
    if code == 63:  # "This image format does not support checks"
        return None
    result = _json("check", out)
    if not isinstance(result, dict):
        raise QemuImgError("check", code, "JSON output is not an object")
    return result
