"""The client side of chunked import and export (`stratus image import/export`, the default path).

The disk is read here, as raw (qcow2, vmdk and vhd through this machine's qemu-img), cut into the
region's chunks and hashed with BLAKE3; zero chunks are never sent or fetched. Import sends the
manifest first and then only the chunks the server says it needs; export fetches the manifest and only
the chunks the output file (a `.part` left by an interrupted run) or a `--base` file lack. Both spread the
transfer over a few keep-alive connections, several chunks per request (domain/chunkframes.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import functools
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import blake3

from stratus.cli import bulk, diskread
from stratus.cli.bulk import Answer, BulkConnection
from stratus.cli.common import EXIT_FAILED, EXIT_REFUSED, Endpoint, console, die
from stratus.cli.dataclient import bytes_progress, error_message, refused
from stratus.cli.diskread import VirtualDisk
from stratus.cli.resume import Unfinished
from stratus.domain import chunkframes
from stratus.domain.manifest import DiskManifest, chunk_count

CONNECTIONS = 8  # keep-alive connections in flight: enough to overlap hashing, the network and fsync
BATCH_BYTES = 8 * 1024 * 1024  # chunks per request: 4-8 MiB over 8 connections moved fastest here (1-16 MiB tried)
HASH_WORKERS = 4
_MAGICS = ((0, b"QFI\xfb", "qcow2"), (0, b"KDMV", "vmdk"), (0, b"# Disk DescriptorFile", "vmdk"),
           (0, b"conectix", "vpc"))
_QEMU_FORMATS = {"RAW": "raw", "QCOW2": "qcow2", "VMDK": "vmdk", "VHD": "vpc"}


@dataclass
class Transfer:
    """What crossed the network for the chunked part of a transfer (the bench reads these)."""

    data_bytes: int = 0  # bytes of the disk in non-zero chunks
    chunks: int = 0  # non-zero chunks
    sent_chunks: int = 0
    sent_bytes: int = 0  # chunk bytes on the wire
    seconds: dict[str, float] = field(default_factory=dict)  # where the time went, by phase

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


def _get(conn: BulkConnection, ep: Endpoint, path: str) -> Answer:
    return conn.call("GET", path, ep.signed_headers("GET", path))


def _post(conn: BulkConnection, ep: Endpoint, path: str, body: bytes, content_type: str = "application/json"
          ) -> Answer:
    return conn.call("POST", path, ep.signed_headers("POST", path, body=body, content_type=content_type), body)


# --------------------------------------------------------------------------- reading a disk


def client_format(path: Path, declared: str | None) -> str:
    """The qemu driver to read ``path`` with: the declared format, else its magic (raw if none)."""
    with path.open("rb") as f:
        head = f.read(64)
    found = next((name for off, magic, name in _MAGICS if head[off : off + len(magic)] == magic), "raw")
    if not declared:
        return found
    fmt = _QEMU_FORMATS.get(declared.upper())
    if fmt is None:
        die(f"--format must be RAW, QCOW2, VMDK or VHD, not {declared!r}", EXIT_REFUSED)
    if fmt != "raw" and fmt != found:
        # Declared RAW is sent as it is: the server's gate refuses any other format hiding in a raw disk.
        label = {v: k for k, v in _QEMU_FORMATS.items()}
        die(f"format_mismatch: {path.name} was declared {declared.upper()} but the file is {label[found]}; "
            f"declare {label[found]} or import a {declared.upper()} file", EXIT_FAILED)
    return fmt


QEMU_IMG_INSTALL = "apt install qemu-utils, brew install qemu"


def can_convert_here(fmt: str, what: str, instead: str) -> bool:
    """Whether the chunked path can take ``fmt`` on this machine: raw always, other formats only through a
    local qemu-img. Without one, says so and what happens instead (the caller falls back to --whole-file)."""
    if fmt == "raw" or shutil.which("qemu-img") is not None:
        return True
    what = what.replace("{fmt}", "vhd" if fmt == "vpc" else fmt)  # not format(): a file name may hold braces
    console.print(f"{what}, and this machine has no qemu-img to convert it: will {instead}. "
                  f"Install qemu-img ({QEMU_IMG_INSTALL}) to move only the chunks that are missing.",
                  highlight=False, markup=False)
    return False


@contextlib.contextmanager
def open_disk(path: Path, fmt: str, stats: Transfer | None = None) -> Iterator[VirtualDisk]:
    """The virtual disk in ``path``: the file itself if raw; a qcow2/vmdk/vhd read in place through this
    machine's qemu-img map, or converted by it to a temporary raw file where its layout needs that."""
    if fmt == "raw":
        with VirtualDisk.raw(path) as disk:
            yield disk
        return
    qemu_img = shutil.which("qemu-img")
    if qemu_img is None:
        die(f"{path.name} is a {fmt} image: reading it here needs qemu-img ({QEMU_IMG_INSTALL}), or import it "
            "with --whole-file to let the server convert it", EXIT_FAILED)
    in_place = diskread.mapped(qemu_img, path, fmt)
    if in_place is not None:
        with in_place:
            yield in_place
        return
    with console.status(f"converting {path.name} ({fmt}) to raw with qemu-img"), \
            (stats.phase("convert") if stats else contextlib.nullcontext()), \
            diskread.converted(qemu_img, path, fmt) as (raw, error):
        if raw is None:
            die(f"qemu-img could not read {path.name} as {fmt}: {error}", EXIT_FAILED)
        with VirtualDisk.raw(raw) as disk:
            yield disk


def hash_chunks(disk: VirtualDisk, chunk_size: int, progress: Callable[[int], None] | None = None
                ) -> list[str | None]:
    """The BLAKE3 of each chunk of the disk (None: all zeros)."""
    size = disk.size
    n = chunk_count(size, chunk_size)
    zeros = bytes(chunk_size)
    local = threading.local()

    def one(index: int) -> str | None:
        lo = index * chunk_size
        length = min(chunk_size, size - lo)
        if not disk.has_data(lo, lo + length):
            return None
        buf: bytearray | None = getattr(local, "buf", None)
        if buf is None:
            buf = local.buf = bytearray(chunk_size)
        view = memoryview(buf)[:length]
        disk.read_into(view, lo)
        if view == zeros[:length] if length < chunk_size else buf == zeros:
            return None
        return blake3.blake3(view).hexdigest()

    digests: list[str | None] = [None] * n
    with ThreadPoolExecutor(HASH_WORKERS) as pool:
        for index, digest in enumerate(pool.map(one, range(n), chunksize=16)):
            digests[index] = digest
            if progress is not None:
                progress(min(chunk_size, size - index * chunk_size))
    return digests


def _batches(items: list[tuple[str, int]], limit: int) -> Iterator[list[tuple[str, int]]]:
    """(digest, length) pairs grouped so that each group's lengths add up to at most ``limit`` (at least one)."""
    batch: list[tuple[str, int]] = []
    total = 0
    for item in items:
        if batch and total + item[1] > limit:
            yield batch
            batch, total = [], 0
        batch.append(item)
        total += item[1]
    if batch:
        yield batch


class _Worker(threading.local):
    """A transfer thread's keep-alive connection and its batch buffer, made on first use."""

    conn: BulkConnection | None = None
    buf: memoryview | None = None


def _parallel(batches: list[list[tuple[str, int]]], work: Callable[[BulkConnection, memoryview, list[tuple[str, int]]],
              None], ep: Endpoint) -> None:
    """Run ``work`` over the batches on CONNECTIONS threads, each with its own keep-alive connection and a
    page-aligned buffer big enough for any batch (a batch is retried whole after a transport error)."""
    local = _Worker()
    opened: list[BulkConnection] = []
    size = max((chunkframes.body_size(n for _, n in batch) for batch in batches), default=0)

    def run(batch: list[tuple[str, int]]) -> None:
        if local.conn is None:
            local.conn, local.buf = BulkConnection(ep.url), bulk.buffer(size)
            opened.append(local.conn)
        assert local.buf is not None
        for attempt in range(4):
            try:
                work(local.conn, local.buf, batch)
                return
            except bulk.Refused as exc:
                die(f"the server refused a batch: {error_message(exc.response)}", EXIT_REFUSED)
            except bulk.TransportError as exc:
                if attempt == 3:
                    die(f"transfer interrupted ({exc}); run the same command again to resume", EXIT_FAILED)

    try:
        with ThreadPoolExecutor(CONNECTIONS) as pool:
            for _ in pool.map(run, batches):
                pass
    finally:
        for conn in opened:
            conn.close()


# --------------------------------------------------------------------------- import


UNFINISHED = Unfinished("chunked-uploads.json")


def _post_manifest(client: BulkConnection, ep: Endpoint, upload_id: str, body: bytes) -> Answer:
    return _post(client, ep, f"/uploads/{upload_id}/manifest", body, "application/octet-stream")


def _create_upload(client: BulkConnection, ep: Endpoint, name: str, size: int) -> dict[str, object]:
    body = json.dumps({"Size": size, "Name": name, "Format": "RAW"}).encode()
    r = _post(client, ep, "/uploads", body)
    if r.status_code != 200:
        refused("upload", r)
    return r.json()["Response"]


def import_chunked(ep: Endpoint, path: Path, declared: str | None) -> tuple[str, Transfer]:
    """Send the disk in ``path`` as a chunked upload (resuming one this machine started); returns the
    upload id, complete, for ImportImage."""
    stats = Transfer()
    with open_disk(path, client_format(path, declared), stats) as disk, BulkConnection(ep.url) as client:
        size = disk.size
        if size % 512:
            if size < 1 << 20:
                die(f"{path.name} is {size} bytes and has no disk image header: this is not a disk image; import "
                    "the disk itself (e.g. the .qcow2 or .raw file)", EXIT_FAILED)
            die(f"a raw disk is whole 512-byte sectors but {path.name} has {size} bytes; pad it with "
                f"`truncate -s %512 {path.name}`", EXIT_FAILED)
        key = Unfinished.key(ep, path, ep.region)
        info = _recalled_upload(client, ep, UNFINISHED.recall(key))
        if info is None:
            info = _create_upload(client, ep, path.name, size)
            UNFINISHED.remember(key, str(info["UploadId"]))
        upload_id, chunk_size = str(info["UploadId"]), int(info.get("ChunkSize") or 0)  # type: ignore[call-overload]
        if not chunk_size:
            die("this server does not take chunked uploads; import with --whole-file", EXIT_REFUSED)
        with stats.phase("hash"), bytes_progress() as progress:
            bar = progress.add_task(f"hash {path.name}", total=size)
            digests = hash_chunks(disk, chunk_size, lambda n: progress.advance(bar, n))
        manifest = DiskManifest(size, chunk_size, digests)
        body = manifest.encode()
        stats.chunks = manifest.stored_chunks
        stats.data_bytes = manifest.data_bytes
        r = _post_manifest(client, ep, upload_id, body)
        if r.status_code == 409:  # the remembered upload holds another manifest (the file changed in place)
            upload_id = str(_create_upload(client, ep, path.name, size)["UploadId"])
            UNFINISHED.remember(key, upload_id)
            r = _post_manifest(client, ep, upload_id, body)
        if r.status_code != 200:
            refused("upload", r)
        where = {d: i for i, d in reversed(list(enumerate(digests))) if d is not None}
        for _round in range(3):
            needed = r.json()["Response"]["Needed"]
            if not needed:
                break
            with stats.phase("send"):
                _send(ep, disk, upload_id, manifest, [(d, where[d]) for d in needed], stats, path.name)
            r = _post_manifest(client, ep, upload_id, body)
            if r.status_code != 200:
                refused("upload", r)
        else:
            die(f"the server still needs {len(r.json()['Response']['Needed'])} chunks; run the command again",
                EXIT_FAILED)
    UNFINISHED.remember(key, None)
    return upload_id, stats


def _recalled_upload(client: BulkConnection, ep: Endpoint, upload_id: str | None) -> dict[str, object] | None:
    """The upload an interrupted run of this command created, if the server still has it unfinished."""
    if upload_id is None:
        return None
    r = _get(client, ep, f"/uploads/{upload_id}")
    if r.status_code != 200 or r.json()["Response"]["State"] != "UPLOADING":
        return None
    console.print(f"resuming upload {upload_id}")
    return r.json()["Response"]


def _send(ep: Endpoint, disk: VirtualDisk, upload_id: str, manifest: DiskManifest, needed: list[tuple[str, int]],
          stats: Transfer, label: str) -> None:
    lengths = {d: manifest.chunk_range(i)[1] for d, i in needed}
    index = dict(needed)
    path = f"/uploads/{upload_id}/chunks"
    lock = threading.Lock()
    with bytes_progress() as progress:
        bar = progress.add_task(f"send {label}", total=sum(lengths.values()))

        def work(conn: BulkConnection, buf: memoryview, batch: list[tuple[str, int]]) -> None:
            # The batch is built in the thread's aligned buffer: headers, then each chunk read in place.
            pos = 0
            for digest, n in batch:
                pos = chunkframes.write_header(buf, pos, digest, n)
                start = manifest.chunk_range(index[digest])[0]
                try:
                    disk.read_into(buf[pos : pos + n], start)
                except OSError:
                    die(f"{label} changed while it was being sent; run the command again", EXIT_FAILED)
                end = pos + chunkframes.padded(n)
                buf[pos + n : end] = bytes(end - pos - n)
                pos = end
            headers = ep.signed_headers("POST", path, body=None, content_type="application/octet-stream")
            conn.request("POST", path, headers, buf[:pos])
            sent = sum(n for _, n in batch)
            with lock:
                stats.sent_chunks += len(batch)
                stats.sent_bytes += sent
            progress.advance(bar, sent)

        _parallel(list(_batches([(d, lengths[d]) for d, _ in needed], BATCH_BYTES)), work, ep)


# --------------------------------------------------------------------------- export


_FALLOC_FL_KEEP_SIZE, _FALLOC_FL_PUNCH_HOLE = 0x01, 0x02


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _zero_range(fd: int, offset: int, length: int) -> None:
    """Make a range of the output zeros again (a resumed file or a base had data there): punch a hole."""
    libc = _libc()
    mode = _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE
    if libc.fallocate(fd, mode, ctypes.c_long(offset), ctypes.c_long(length)) != 0:
        os.pwrite(fd, bytes(length), offset)


class _Output:
    """The output file of an export. Whole pages go with O_DIRECT where the filesystem allows it: the file is
    written once, and filling the page cache with it costs more CPU than the disk write (on the VMs
    measured, twice the time of the whole fetch), and makes the final fsync long. The rest (the short last
    chunk, holes) goes through the page cache."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            self.direct: int | None = os.open(path, os.O_WRONLY | getattr(os, "O_DIRECT", 0))
        except OSError:
            self.direct = None
        self._local = threading.local()

    def write(self, data: memoryview, offset: int) -> None:
        """Write ``data`` (from a page-aligned buffer when it can go direct) at ``offset``."""
        if self.direct is not None and not (offset | len(data)) % chunkframes.ALIGN:
            try:
                os.pwrite(self.direct, data, offset)
                return
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self.direct = None  # this filesystem (tmpfs, some FUSE) refuses O_DIRECT: the page cache
        os.pwrite(self.fd, data, offset)

    def copy(self, src: int, src_offset: int, offset: int, length: int) -> None:
        """Copy a chunk from another file (a --base) through an aligned buffer of this thread."""
        buf: memoryview | None = getattr(self._local, "buf", None)
        if buf is None or len(buf) < length:
            buf = self._local.buf = bulk.buffer(length)
        view = buf[:length]
        n = os.preadv(src, [view], src_offset)
        if n < length:
            view[n:] = bytes(length - n)
        self.write(view, offset)

    def zero(self, offset: int, length: int) -> None:
        _zero_range(self.fd, offset, length)

    def close(self) -> None:
        os.close(self.fd)
        if self.direct is not None:
            os.close(self.direct)


def export_chunked(ep: Endpoint, image_id: str, output: Path, fmt: str, base: Path | None) -> Transfer:
    """Write the image's system disk to ``output``: fetch only the chunks that neither an interrupted
    earlier run (``output``.part) nor ``base`` hold; convert locally unless ``fmt`` is raw."""
    stats = Transfer()
    with BulkConnection(ep.url) as client:
        path = f"/images/{image_id}/disks/0/manifest"
        r = _get(client, ep, path)
        if r.status_code != 200:
            refused("export", r)
        manifest = DiskManifest.decode(r.content)
    size, chunk_size = manifest.virtual_size, manifest.chunk_size
    stats.chunks, stats.data_bytes = manifest.stored_chunks, manifest.data_bytes
    part = output.with_name(output.name + (".part" if fmt == "raw" else ".raw.part"))
    have: list[str | None] = []
    if part.exists():
        with VirtualDisk.raw(part, min(size, part.stat().st_size)) as disk:
            have = hash_chunks(disk, chunk_size)
        console.print(f"resuming {part.name}")
    from_base: dict[str, int] = {}
    if base is not None:
        with stats.phase("hash base"), bytes_progress() as progress:
            bar = progress.add_task(f"hash {base.name}", total=base.stat().st_size)
            with VirtualDisk.raw(base) as disk:
                base_digests = hash_chunks(disk, chunk_size, lambda n: progress.advance(bar, n))
        if fmt == "raw" and not have and output.exists() and os.path.samefile(base, output):
            # Updating a file in place (`--base FILE -o FILE`): it becomes the part, and only the chunks that
            # differ are written, not a copy of the whole disk.
            os.replace(output, part)
            have, base = base_digests, None
        else:
            from_base = {d: i for i, d in reversed(list(enumerate(base_digests))) if d is not None}
    out = _Output(part)
    try:
        os.ftruncate(out.fd, size)
        with stats.phase("local"):
            fetch = _fill_locally(out, manifest, have, base, from_base)
        with stats.phase("fetch"):
            _fetch(ep, image_id, manifest, out, fetch, stats, output.name)
        with stats.phase("fsync"):
            os.fsync(out.fd)
    finally:
        out.close()
    if fmt == "raw":
        part.replace(output)
        return stats
    qemu_img = shutil.which("qemu-img")
    if qemu_img is None:
        die(f"converting to {fmt} needs qemu-img on this machine ({QEMU_IMG_INSTALL}); the raw disk is in "
            f"{part}", EXIT_FAILED)
    target = _QEMU_FORMATS[fmt.upper()]
    tmp = output.with_name(output.name + ".tmp")
    with console.status(f"converting to {fmt} with qemu-img"):
        done = subprocess.run([qemu_img, "convert", "-f", "raw", "-O", target, str(part), str(tmp)],
                              capture_output=True, text=True)
    if done.returncode != 0:
        die(f"qemu-img could not convert the raw disk {part}: {done.stderr.strip()[:500]}", EXIT_FAILED)
    tmp.replace(output)
    part.unlink()
    return stats


def _fill_locally(out: _Output, manifest: DiskManifest, have: list[str | None], base: Path | None,
                  from_base: dict[str, int]) -> dict[str, list[int]]:
    """Bring the output to the manifest where that needs no network (zero chunks become holes, chunks
    in ``base`` are copied); returns the chunks still to fetch, by digest, with the indexes they fill."""
    fetch: dict[str, list[int]] = {}
    base_fd = os.open(base, os.O_RDONLY) if base is not None else None
    try:
        for index, digest in enumerate(manifest.chunks):
            lo, length = manifest.chunk_range(index)
            old = have[index] if index < len(have) else None
            if digest == old:
                continue
            if digest is None:
                out.zero(lo, length)
            elif digest in from_base and base_fd is not None:
                out.copy(base_fd, from_base[digest] * manifest.chunk_size, lo, length)
            else:
                fetch.setdefault(digest, []).append(index)
    finally:
        if base_fd is not None:
            os.close(base_fd)
    return fetch


def _fetch(ep: Endpoint, image_id: str, manifest: DiskManifest, out: _Output, fetch: dict[str, list[int]],
           stats: Transfer, label: str) -> None:
    lengths = {d: manifest.chunk_range(ix[0])[1] for d, ix in fetch.items()}
    path = f"/images/{image_id}/chunks"
    lock = threading.Lock()
    with bytes_progress() as progress:
        bar = progress.add_task(f"fetch {label}", total=sum(lengths.values()))

        def work(conn: BulkConnection, buf: memoryview, batch: list[tuple[str, int]]) -> None:
            body = json.dumps({"Digests": [d for d, _ in batch]}).encode()
            n = conn.request("POST", path, ep.signed_headers("POST", path, body=body), body, into=buf)
            got = 0
            for digest, data in chunkframes.decode(buf[:n]):
                if digest not in fetch or blake3.blake3(data).hexdigest() != digest:
                    die(f"chunk {digest} arrived damaged; run the command again", EXIT_FAILED)
                for index in fetch[digest]:
                    out.write(data, manifest.chunk_range(index)[0])
                got += len(data)
            if got != sum(n for _, n in batch):
                die("the server sent fewer chunks than asked; run the command again", EXIT_FAILED)
            with lock:
                stats.sent_chunks += len(batch)
                stats.sent_bytes += got
            progress.advance(bar, got)

        _parallel(list(_batches(list(lengths.items()), BATCH_BYTES)), work, ep)
