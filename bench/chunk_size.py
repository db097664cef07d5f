"""Choose the chunk size by measurement: ingest throughput, stored bytes and delta sizes at 1, 2 and 4 MiB.

Usage::

    .venv/bin/python bench/chunk_size.py [--size-mib 1536] [--workdir bench/out/chunk_size] [--seed 1]

Builds a mixed test disk (random data, real /usr file contents, written zeros and holes, laid out in
4 KiB-aligned runs of 64 KiB to 8 MiB, like files on a filesystem), converts it to qcow2, and in the
same run measures the physical limits on this machine (reading the qcow2, ``qemu-img convert`` to raw,
``cp --sparse=always``) so ingest speed is reported as a ratio too. Then for each chunk size it ingests
the qcow2 into an empty store (best of ``--reps``): as shipped (fsync, O_DIRECT, 4 workers), and once
each without fsync, without O_DIRECT and with one worker, to price each choice; then ingests it again
(must write 0 bytes) and ingests four modified copies to measure what a change costs:

* ``contig64``: one 64 MiB contiguous write at a 4 KiB-aligned offset
* ``scatter4M``: 16 writes of 4 MiB at 4 MiB-aligned offsets (64 MiB in all)
* ``4k-in-64M``: 128 random 4 KiB writes inside one 64 MiB region (512 KiB in all)
* ``4k-whole``: 256 random 4 KiB writes across the whole disk (1 MiB in all)
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import blake3

from stratus.disk import qemu_img
from stratus.storage.dirstore import DirStore
from stratus.storage.ingest import ingest_disk

MiB = 1 << 20
KiB = 1 << 10
CHUNK_SIZES = (1 * MiB, 2 * MiB, 4 * MiB)


def usr_blobs(rng: random.Random) -> Iterator[bytes]:
    """Contents of real files under /usr (ELF binaries, libraries, text), endlessly, in a seeded order."""
    files = [
        p
        for root in ("/usr/bin", "/usr/lib/x86_64-linux-gnu", "/usr/share/doc", "/usr/lib/python3")
        for p in Path(root).rglob("*")
        if p.is_file() and not p.is_symlink()
    ]
    files.sort()
    rng.shuffle(files)
    while True:
        for p in files:
            try:
                data = p.read_bytes()
            except OSError:
                continue
            if data:
                yield data


def build_disk(path: Path, size: int, rng: random.Random) -> dict[str, int]:
    """Write the mixed raw disk; returns bytes per kind."""
    blobs = usr_blobs(rng)
    pending = b""
    kinds = {"hole": 0, "zeros": 0, "random": 0, "files": 0}
    with open(path, "wb") as f:
        f.truncate(size)
        pos = 0
        while pos < size:
            length = min(size - pos, rng.randrange(16, 2048) * 4 * KiB)  # 64 KiB .. 8 MiB, 4 KiB-aligned
            kind = rng.choices(["hole", "zeros", "random", "files"], weights=[30, 8, 27, 35])[0]
            kinds[kind] += length
            if kind == "zeros":
                f.seek(pos)
                f.write(bytes(length))
            elif kind == "random":
                f.seek(pos)
                f.write(rng.randbytes(length))
            elif kind == "files":
                while len(pending) < length:
                    pending += next(blobs)
                f.seek(pos)
                f.write(pending[:length])
                pending = pending[length:]
            pos += length
    return kinds


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def settle() -> None:
    # Flush dirty pages from the previous step so it isn't billed to the next one.
    os.sync()
    time.sleep(0.5)


def read_file(path: Path) -> None:
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(4 * MiB)
        while f.readinto(buf):
            pass


def modified_copy(base: Path, dest: Path, scenario: str, size: int, rng: random.Random) -> int:
    """dest = base with the scenario's writes applied; returns bytes written."""
    subprocess.run(["cp", "--sparse=always", str(base), str(dest)], check=True)
    writes: list[tuple[int, int]] = []
    if scenario == "contig64":
        writes = [(rng.randrange(0, (size - 64 * MiB) // (4 * KiB)) * 4 * KiB, 64 * MiB)]
    elif scenario == "scatter4M":
        slots = rng.sample(range(size // (4 * MiB)), 16)
        writes = [(s * 4 * MiB, 4 * MiB) for s in slots]
    elif scenario == "4k-in-64M":
        region = rng.randrange(0, (size - 64 * MiB) // MiB) * MiB
        writes = [(region + rng.randrange(0, 64 * MiB // (4 * KiB)) * 4 * KiB, 4 * KiB) for _ in range(128)]
    elif scenario == "4k-whole":
        writes = [(rng.randrange(0, size // (4 * KiB)) * 4 * KiB, 4 * KiB) for _ in range(256)]
    else:
        raise ValueError(scenario)
    fd = os.open(dest, os.O_WRONLY)
    try:
        for offset, length in writes:
            os.pwrite(fd, rng.randbytes(length), offset)
    finally:
        os.close(fd)
    return sum(length for _, length in writes)


def data_chunks(raw: Path, chunk_size: int) -> list[bytes]:
    """The disk's distinct non-zero chunks, in memory."""
    seen: dict[bytes, bytes] = {}
    zero = bytes(chunk_size)
    with open(raw, "rb") as f:
        while block := f.read(chunk_size):
            if block != zero[: len(block)]:
                seen.setdefault(blake3.blake3(block).digest(), block)
    return list(seen.values())


def write_chunks(store: DirStore, blobs: list[bytes], strategy: str) -> None:
    if strategy.startswith("serial"):
        for b in blobs:
            store.put(blake3.blake3(b).hexdigest(), b)
        return
    with store.writer() as w, ThreadPoolExecutor(4) as pool:
        list(pool.map(w.put_data, blobs))


def fmt_mb(n: float) -> str:
    return f"{n / MiB:,.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1536)
    ap.add_argument("--workdir", type=Path, default=Path(__file__).parent / "out" / "chunk_size")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--reps", type=int, default=2, help="ingest runs per variant; the best counts")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    size = args.size_mib * MiB
    work: Path = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    rng = random.Random(args.seed)
    try:
        raw = work / "disk.raw"
        t = timed(lambda: build_disk(raw, size, rng))
        qcow = work / "disk.qcow2"
        qemu_img.convert(raw, "raw", qcow, "qcow2")
        settle()
        alloc = os.stat(qcow).st_blocks * 512
        fs = subprocess.run(["stat", "-f", "-c", "%T", str(work)], capture_output=True, text=True).stdout.strip()
        print(f"machine: {os.cpu_count()} CPUs, kernel {os.uname().release}, work dir on {fs}")
        print(
            f"test disk: {args.size_mib} MiB virtual, qcow2 file {fmt_mb(os.path.getsize(qcow))} MiB "
            f"({fmt_mb(alloc)} MiB allocated), built in {t:.1f} s"
        )

        # Physical limits, same machine, same run (best of 2; the page cache is warm for all of them).
        limits = {}
        limits["read qcow2"] = min(timed(lambda: read_file(qcow)) for _ in range(2))
        out_raw = work / "conv.raw"
        limits["qemu-img convert qcow2->raw"] = min(
            (timed(lambda: qemu_img.convert(qcow, "qcow2", out_raw, "raw")), settle())[0] for _ in range(2)
        )
        out_raw.unlink()
        cp = work / "cp.qcow2"
        limits["cp --sparse=always qcow2 + sync"] = min(
            (
                timed(lambda: (subprocess.run(["cp", "--sparse=always", str(qcow), str(cp)], check=True), os.sync())),
                cp.unlink(),
                settle(),
            )[0]
            for _ in range(2)
        )
        print("\nphysical limits (best of 2):")
        for name, secs in limits.items():
            print(f"  {name:34s} {secs:6.2f} s  {size / secs / 1e6:8,.0f} MB/s of virtual disk")
        ref = limits["qemu-img convert qcow2->raw"]

        print(
            "\nwriting the disk's data chunks into an empty store, by write strategy (best of "
            f"{args.reps}; chunks already in memory, so this is the store alone):"
        )
        print(f"{'chunk':>6} {'put() serial':>12} {'put() no fsync':>14} {'writer x4':>10} {'writer x4 buffered':>19}")
        for cs in CHUNK_SIZES:
            blobs = data_chunks(raw, cs)
            cells = []
            for strategy in ("serial", "serial-nofsync", "writer", "writer-buffered"):
                best = float("inf")
                for rep in range(args.reps):
                    store = DirStore(
                        work / f"fsync-{cs // MiB}M-{strategy}-{rep}",
                        durable=strategy != "serial-nofsync",
                        direct_io=strategy != "writer-buffered",
                    )
                    settle()
                    t0 = time.perf_counter()
                    write_chunks(store, blobs, strategy)
                    best = min(best, time.perf_counter() - t0)
                cells.append(best)
            print(
                f"{cs // MiB:>4}Mi {cells[0]:12.2f} {cells[1]:14.2f} {cells[2]:10.2f} {cells[3]:19.2f}   "
                f"({len(blobs)} chunks, {fmt_mb(sum(len(b) for b in blobs))} MiB)"
            )
            blobs = []  # free ~1 GB before the next size
        print("  put() serial = DirStore.put per chunk: file fsync + directory fsync each time, one thread;")
        print(
            "  writer x4 = ChunkWriter from 4 threads (file fsync each, directories once at commit), "
            "O_DIRECT unless 'buffered'"
        )

        scenarios = ["contig64", "scatter4M", "4k-in-64M", "4k-whole"]
        copies = {}
        written = {}
        for sc in scenarios:
            copies[sc] = work / f"mod-{sc}.raw"
            written[sc] = modified_copy(raw, copies[sc], sc, size, random.Random(f"{args.seed}-{sc}"))
        settle()

        rows: list[dict[str, Any]] = []
        for cs in CHUNK_SIZES:
            row: dict[str, Any] = {"chunk": cs}
            variants = (
                ("nofsync", {"durable": False}, 4),
                ("buffered", {"direct_io": False}, 4),
                ("1worker", {}, 1),
                ("ingest", {}, 4),
            )
            for label, opts, workers in variants:
                best = float("inf")
                for rep in range(args.reps):
                    # Stores are deleted only at the end: ext4 without a journal (this machine) skips inodes
                    # freed in the last ~30 s when allocating, which made runs after an rmtree 2x slower.
                    store_dir = work / f"store-{cs // MiB}M-{label}-{rep}"
                    store = DirStore(store_dir, **opts)
                    settle()
                    t0 = time.perf_counter()
                    res = ingest_disk(qcow, "qcow2", store, cs, workers=workers)
                    best = min(best, time.perf_counter() - t0)
                row[label] = best
                if label != "ingest":
                    continue
                assert res.method == "direct"
                row["chunks"] = res.new_chunks
                row["stored"] = store.stats().bytes
                row["data"] = res.data_bytes
                row["zero_chunks"] = res.manifest.chunks.count(None)
                row["manifest_json"] = len(res.manifest.to_json())
                t0 = time.perf_counter()
                again = ingest_disk(qcow, "qcow2", store, cs)
                row["again"] = time.perf_counter() - t0
                assert again.new_bytes == 0 and again.manifest == res.manifest
                for sc in scenarios:
                    delta = ingest_disk(copies[sc], "raw", store, cs)
                    row[sc] = delta.new_bytes
            rows.append(row)
            settle()

        print(
            f"\ningest of the qcow2 ({args.size_mib} MiB virtual) into an empty store, seconds, best of "
            f"{args.reps}; as shipped = fsync + O_DIRECT + 4 workers; other columns change one thing:"
        )
        hdr = (
            f"{'chunk':>6} {'ingest s':>8} {'MB/s':>7} {'x conv':>6} {'no-fsync':>8} {'buffered':>8} "
            f"{'1-worker':>8} {'again s':>7} {'chunks':>7} {'stored MiB':>10} {'zero ch':>7} {'manifest':>9}"
        )
        print(hdr)
        for r in rows:
            secs = float(r["ingest"])
            print(
                f"{int(r['chunk']) // MiB:>4}Mi {secs:8.2f} {size / secs / 1e6:7,.0f} {ref / secs:6.2f} "
                f"{r['nofsync']:8.2f} {r['buffered']:8.2f} {r['1worker']:8.2f} {r['again']:7.2f} {r['chunks']:>7} "
                f"{fmt_mb(r['stored']):>10} {r['zero_chunks']:>7} {r['manifest_json']:>9,}"
            )
        print("  (x conv = qemu-img convert qcow2->raw time / ingest time; > 1 means ingest is faster)")

        print("\ndelta stored when the disk changes (MiB of new chunk bytes):")
        print(f"{'scenario':>10} {'written':>8} " + " ".join(f"{cs // MiB:>5}Mi" for cs in CHUNK_SIZES))
        for sc in scenarios:
            cells = " ".join(f"{fmt_mb(int(r[sc])):>7}" for r in rows)
            print(f"{sc:>10} {fmt_mb(written[sc]):>8} {cells}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
