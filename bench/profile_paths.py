"""Where the time goes in import, export and the data API: in-process splits of the paths bench/run.py times.

Usage::

    .venv/bin/python bench/profile_paths.py [--quick] [--file DISK.qcow2] [--workdir DIR] [--keep]

Builds the same test disk as bench/run.py (or uses ``--file``), then times, each best of ``--reps``:

* the references again (qemu-img convert qcow2→raw; raw read rate of the file);
* the import task's stages in-process: ``inspect_file`` (inspector + qemu-img info/check/map), then
  ``ingest_disk`` into an empty store as shipped, and with one knob changed at a time (no fsync, no O_DIRECT,
  1/2/8 workers), plus the bare costs of its parts on this data (pread, BLAKE3, O_DIRECT write + fsync);
* export in-process: ``materialize_raw`` (read + verify + sparse write + fsync) and ``iter_raw`` alone;
* the data API against a real server: upload with the CLI's own function (no process start), upload with
  curl (a fast client), download with httpx (as the CLI does, to a file) and with curl to /dev/null;
* a cProfile of the import task's main thread and of one in-process upload (top functions by own time).

Prints a markdown report; nothing outside the work directory is written (deleted unless ``--keep``).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402

from stratus.disk import qemu_img  # noqa: E402
from stratus.disk.inspect import inspect_file  # noqa: E402
from stratus.storage.dirstore import DirStore  # noqa: E402
from stratus.storage.export import iter_raw, materialize_raw  # noqa: E402
from stratus.storage.ingest import ingest_disk  # noqa: E402

MiB, GiB = bench.MiB, bench.GiB
lines: list[str] = []


def emit(line: str = "") -> None:
    print(line, flush=True)
    lines.append(line)


def best(reps: int, fn: Callable[[], Any], before: Callable[[], None] | None = None,
         after: Callable[[], None] | None = None) -> tuple[float, Any]:
    """Untimed warm-up, then ``reps`` timed runs; returns (best seconds, last result)."""
    times, result = [], None
    for i in range(reps + 1):
        if before:
            before()
        t0 = time.perf_counter()
        result = fn()
        dt = time.perf_counter() - t0
        if after:
            after()
        if i:
            times.append(dt)
    return min(times), result


def fresh_store(root: Path, **kw: Any) -> DirStore:
    shutil.rmtree(root, ignore_errors=True)
    return DirStore(root, **kw)


def top_functions(prof: cProfile.Profile, n: int = 14) -> list[str]:
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(n)
    out = []
    for line in s.getvalue().splitlines():
        if line.strip() and (line.strip()[0].isdigit() or line.strip().startswith("ncalls")):
            out.append(line.rstrip())
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--file", help="an existing qcow2 to use instead of building one")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--skip-http", action="store_true")
    ap.add_argument("--describe-only", action="store_true", help="only the DescribeImages query profile")
    ap.add_argument("--describe-http", action="store_true",
                    help="only DescribeImages through HTTP: SDK vs a bare signed POST vs client-side parsing")
    args = ap.parse_args()
    sizes = bench.QUICK if args.quick else bench.FULL
    parent = Path(args.workdir) if args.workdir else bench.HERE / "out"
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="prof-", dir=parent))
    server: bench.Server | None = None
    try:
        if args.describe_only:
            profile_describe(work, sizes.images)
            return 0
        if args.describe_http:
            profile_describe_http(work, sizes.images, sizes.calls)
            return 0
        if args.file:
            src = Path(args.file)
        else:
            bench.log("building the test disk")
            src, _kinds = bench.make_qcow2(work, "disk", sizes.virtual, sizes.data, 1)
        size = src.stat().st_size
        info = qemu_img.info(src, "qcow2")
        vsize = int(info["virtual-size"])
        extents = qemu_img.map_extents(src, "qcow2")
        data = sum(e.length for e in extents if e.source == "file")
        emit(f"# Profile of the import/export paths ({'quick' if args.quick else 'full'} sizes)")
        emit()
        emit(f"disk: {src.name}, {vsize / GiB:.2f} GiB virtual, file {size / MiB:,.0f} MiB, "
             f"{data / MiB:,.0f} MiB mapped data in {len(extents)} extents; load {os.getloadavg()[0]:.2f}")
        emit()
        emit(f"| What | Best of {args.reps} | Rate | × convert |")
        emit("|---|---|---|---|")
        out_raw = work / "ref.raw"
        t_conv, _ = best(args.reps, lambda: subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw",
                                                             str(src), str(out_raw)], check=True),
                         before=lambda: out_raw.unlink(missing_ok=True))
        out_raw.unlink(missing_ok=True)

        def row(what: str, t: float, nbytes: int | None = None) -> None:
            rate = f"{nbytes / MiB / t:,.0f} MiB/s" if nbytes and t > 0 else ""
            emit(f"| {what} | {t * 1000:,.0f} ms | {rate} | {t / t_conv:.2f}× |")

        row("qemu-img convert -f qcow2 -O raw", t_conv, data)

        # ---- import task stages
        t, _ = best(args.reps, lambda: inspect_file(src, max_virtual_size=2048 * GiB))
        row("inspect_file (inspector + qemu-img info/check/map)", t)
        t, _ = best(args.reps, lambda: qemu_img.info(src, "qcow2"))
        row("… qemu-img info alone", t)
        t, _ = best(args.reps, lambda: qemu_img.check(src, "qcow2"))
        row("… qemu-img check alone", t)
        t, _ = best(args.reps, lambda: qemu_img.map_extents(src, "qcow2"))
        row("… qemu-img map alone", t)

        from stratus.config import load_settings

        chunk = load_settings(data_dir=work / "unused", env={}).regions[0].chunk_size
        (work / "unused").exists() and shutil.rmtree(work / "unused", ignore_errors=True)
        emit(f"| (chunk size: the default region's, {chunk // MiB} MiB) | | | |")
        store_root = work / "store"
        variants: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
            ("ingest_disk as shipped (fsync, O_DIRECT, 4 workers)", {}, {}),
            ("ingest_disk durable=False (no fsync)", {"durable": False}, {}),
            ("ingest_disk direct_io=False (page cache)", {"direct_io": False}, {}),
            ("ingest_disk 1 worker", {}, {"workers": 1}),
            ("ingest_disk 2 workers", {}, {"workers": 2}),
            ("ingest_disk 8 workers", {}, {"workers": 8}),
        ]
        if chunk != 4 * MiB:
            variants.append(("ingest_disk with 4 MiB chunks", {}, {"chunk_size": 4 * MiB}))
        ingest_results: dict[str, Any] = {}
        for label, store_kw, kw in variants:
            kw = {"chunk_size": chunk, **kw}
            t, res = best(args.reps, lambda store_kw=store_kw, kw=kw: ingest_disk(
                src, "qcow2", DirStore(store_root, **store_kw), **kw),
                before=lambda: fresh_store(store_root))
            ingest_results[label] = res
            row(f"{label} → {res.new_chunks} chunks, {res.new_bytes / MiB:,.0f} MiB", t, data)
        fresh_store(store_root)
        res = ingest_disk(src, "qcow2", DirStore(store_root), chunk_size=chunk)
        t, _ = best(args.reps, lambda: ingest_disk(src, "qcow2", DirStore(store_root), chunk_size=chunk))
        row(f"ingest_disk again, all chunks present (reused {res.reused_chunks + res.new_chunks})", t, data)
        stored = res.new_bytes
        emit()
        emit(f"ingest wrote {res.new_chunks} chunks, {stored / MiB:,.0f} MiB for {data / MiB:,.0f} MiB of mapped "
             f"data ({res.data_bytes / MiB:,.0f} MiB in non-zero chunks), method {res.method}")
        emit()
        stage_accounting(src, store_root, chunk)

        # ---- the parts of ingest, bare
        emit(f"| Part of ingest, bare | Best of {args.reps} | Rate | × convert |")
        emit("|---|---|---|---|")
        import mmap

        import blake3

        fd = os.open(src, os.O_RDONLY)
        file_runs = [(e.offset, e.length) for e in extents if e.source == "file"]

        def pread_all() -> int:
            buf = memoryview(mmap.mmap(-1, chunk))
            n = 0
            for off, length in file_runs:
                while length:
                    k = os.preadv(fd, [buf[: min(length, chunk)]], off)
                    n += k
                    off += k
                    length -= k
            return n

        t, _ = best(args.reps, pread_all)
        row(f"pread of every mapped run (1 thread, {chunk // MiB} MiB reads)", t, data)
        blob = os.urandom(chunk)
        nchunks = max(1, stored // chunk)

        def hash_n(n: int, max_threads: int = 1) -> None:
            for _ in range(n):
                blake3.blake3(blob, max_threads=max_threads).digest()

        t, _ = best(args.reps, lambda: hash_n(nchunks))
        row(f"BLAKE3 of {nchunks} × {chunk // MiB} MiB (1 thread)", t, nchunks * chunk)
        with ThreadPoolExecutor(2) as pool:
            t, _ = best(args.reps, lambda: list(pool.map(lambda _: hash_n(1), range(nchunks))))
        row(f"BLAKE3 of {nchunks} × {chunk // MiB} MiB (2 threads)", t, nchunks * chunk)

        wdir = work / "writes"
        abuf = mmap.mmap(-1, chunk)
        abuf.write(blob)

        def write_chunks(flags: int, do_fsync: bool, threads: int) -> None:
            def one(i: int) -> None:
                f = os.open(wdir / f"c{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL | flags, 0o444)
                try:
                    os.write(f, abuf)
                    if do_fsync:
                        os.fsync(f)
                finally:
                    os.close(f)

            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(one, range(nchunks)))

        def reset_w() -> None:
            shutil.rmtree(wdir, ignore_errors=True)
            wdir.mkdir()

        for label, flags, fs, th in (("O_DIRECT + fsync, 4 threads", os.O_DIRECT, True, 4),
                                     ("O_DIRECT + fsync, 1 thread", os.O_DIRECT, True, 1),
                                     ("O_DIRECT, no fsync, 4 threads", os.O_DIRECT, False, 4),
                                     ("buffered + fsync, 4 threads", 0, True, 4),
                                     ("buffered, no fsync, 4 threads", 0, False, 4)):
            t, _ = best(args.reps, lambda flags=flags, fs=fs, th=th: write_chunks(flags, fs, th), before=reset_w)
            row(f"write {nchunks} × {chunk // MiB} MiB files, {label}", t, nchunks * chunk)
        shutil.rmtree(wdir, ignore_errors=True)
        os.close(fd)
        emit()

        # ---- export
        emit(f"| Export, in-process | Best of {args.reps} | Rate | × convert |")
        emit("|---|---|---|---|")
        manifest = res.manifest
        store = DirStore(store_root)
        exp = work / "export.raw"
        t, _ = best(args.reps, lambda: materialize_raw(manifest, store, exp),
                    before=lambda: exp.unlink(missing_ok=True))
        row("materialize_raw (read + verify + sparse write + fsync)", t, res.data_bytes)
        t, _ = best(args.reps, lambda: materialize_raw(manifest, store, exp, fsync=False),
                    before=lambda: exp.unlink(missing_ok=True))
        row("materialize_raw, fsync=False", t, res.data_bytes)
        t_fs = bench.fsync_file(exp)
        emit(f"| … fsync of that file right after | {t_fs * 1000:,.0f} ms | | |")
        exp.unlink(missing_ok=True)
        t, _ = best(args.reps, lambda: sum(len(b) for b in iter_raw(manifest, store)))
        row(f"iter_raw to nowhere (read + verify + {vsize / GiB:.1f} GiB of zero blocks)", t, vsize)

        def read_chunks() -> None:
            for d in manifest.chunks:
                if d is not None:
                    store.path_for(d).read_bytes()

        t, _ = best(args.reps, read_chunks)
        row("read every chunk file, no verify (1 thread)", t, res.data_bytes)
        emit()

        # ---- the data API
        if not args.skip_http:
            run_http(work, src, size, vsize, t_conv)
    finally:
        if server is not None:
            server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def stage_accounting(src: Path, store_root: Path, chunk: int) -> None:
    """One ingest into an empty store with its internals wrapped in timers: thread-seconds per stage (the
    workers overlap, so stages can sum to more than the wall time)."""
    import collections

    import stratus.storage.dirstore as ds
    import stratus.storage.ingest as ing

    acc: dict[str, float] = collections.defaultdict(float)
    calls: dict[str, int] = collections.defaultdict(int)
    lock = threading.Lock()
    patched: list[tuple[Any, str, Any]] = []

    def wrap(owner: Any, name: str, label: str) -> None:
        fn = getattr(owner, name, None)
        if fn is None:
            return

        def timed_fn(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                with lock:
                    acc[label] += time.perf_counter() - t0
                    calls[label] += 1

        patched.append((owner, name, fn))
        setattr(owner, name, timed_fn)

    wrap(ing, "_read_exact", "read (preadv)")
    wrap(ds.ChunkWriter, "put_data", "put_data total (hash + touch + write)")
    wrap(ds.DirStore, "touch", "touch (utime, ENOENT for new chunks)")
    wrap(ds.DirStore, "_ensure_dir", "mkdir chunks/ab/cd")
    wrap(ds.DirStore, "_write_file", "open + write + fsync + close")
    wrap(ds.DirStore, "_direct_view", "align buffer for O_DIRECT")
    wrap(ds.DirStore, "_sync_dirs", "commit: fsync directories")
    wrap(ds.os, "rename", "rename tmp → chunk")
    wrap(ds.os, "fsync", "… of which fsync (files and dirs)")
    fresh_store(store_root)
    try:
        t0 = time.perf_counter()
        ingest_disk(src, "qcow2", DirStore(store_root), chunk_size=chunk)
        wall = time.perf_counter() - t0
    finally:
        for owner, name, fn in reversed(patched):
            setattr(owner, name, fn)
    emit(f"Ingest stage accounting (one run, wall {wall * 1000:,.0f} ms; thread-seconds, workers overlap):")
    emit()
    emit("| Stage | Thread-time | Calls | Per call |")
    emit("|---|---|---|---|")
    for label, secs in acc.items():
        emit(f"| {label} | {secs * 1000:,.0f} ms | {calls[label]:,} | {secs / max(1, calls[label]) * 1e6:,.0f} µs |")
    total = acc.get("put_data total (hash + touch + write)", 0.0)
    rest = sum(acc.get(k, 0.0) for k in ("touch (utime, ENOENT for new chunks)", "mkdir chunks/ab/cd",
                                          "open + write + fsync + close", "align buffer for O_DIRECT",
                                          "rename tmp → chunk"))
    n = calls.get("put_data total (hash + touch + write)", 1)
    emit(f"| = BLAKE3 + zero check + bookkeeping (put_data minus the above) | {(total - rest) * 1000:,.0f} ms | "
         f"{n:,} | {(total - rest) / n * 1e6:,.0f} µs |")
    emit()


def profile_describe(work: Path, n: int) -> None:
    """describe_images() in-process against a catalog of n images: time per filter, the SQL it runs and
    SQLite's plan for it, and a cProfile."""
    from sqlalchemy import event

    from stratus.api.cvm import shapes
    from stratus.catalog import migrate
    from stratus.catalog.db import open_database
    from stratus.catalog.models import Account
    from stratus.config import load_settings
    from stratus.service.context import Caller, Services
    from stratus.service.image_describe import describe_images

    data_dir = work / "data"
    url = f"sqlite:///{data_dir / 'catalog.db'}"
    db = open_database(url)
    migrate.upgrade(db)
    with db.write() as s:
        s.add(Account(id="100000000001", name="bench"))
    db.dispose()
    t0 = time.perf_counter()
    bench.populate_catalog(url, "100000000001", n, 1)
    emit(f"# describe_images() in-process, {n:,} images (inserted in {time.perf_counter() - t0:.1f} s)")
    emit()
    settings = load_settings(data_dir=data_dir, env={"STRATUS_DATABASE_URL": url})
    svc = Services.open(settings)
    caller = Caller("100000000001")
    statements: list[str] = []

    @event.listens_for(svc.db.read_engine, "before_cursor_execute")
    def _log(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if statement.split()[0].upper() == "SELECT":
            statements.append((statement, parameters))

    cases = {
        "PRIVATE_IMAGE": [{"Name": "image-type", "Values": ["PRIVATE_IMAGE"]}],
        "image-name web": [{"Name": "image-name", "Values": ["web"]}],
        "no filter": None,
    }
    emit("| Case | p50 | p90 | query only p50 | shaping p50 | statements |")
    emit("|---|---|---|---|---|---|")
    for label, filters in cases.items():
        q_times, s_times = [], []
        for _ in range(300):
            t0 = time.perf_counter()
            page = describe_images(svc, caller, "ap-guangzhou", filters=filters, limit=20)
            t1 = time.perf_counter()
            [shapes.image(img, caller) for img in page.images]
            t2 = time.perf_counter()
            q_times.append((t1 - t0) * 1000)
            s_times.append((t2 - t1) * 1000)
        statements.clear()
        describe_images(svc, caller, "ap-guangzhou", filters=filters, limit=20)
        tot = [a + b for a, b in zip(q_times, s_times, strict=True)]
        emit(f"| {label} | {bench.pct(tot, .5):.2f} ms | {bench.pct(tot, .9):.2f} ms | "
             f"{bench.pct(q_times, .5):.2f} ms | {bench.pct(s_times, .5):.2f} ms | {len(statements)} |")
        # time each statement alone, with its plan
        raw = svc.db.read_engine.raw_connection()
        try:
            cur = raw.cursor()
            for stmt, params in statements:
                t0 = time.perf_counter()
                for _ in range(50):
                    cur.execute(stmt, params).fetchall()
                per = (time.perf_counter() - t0) / 50 * 1000
                plan = " ; ".join(r[3] for r in cur.execute("EXPLAIN QUERY PLAN " + stmt, params).fetchall())
                emit(f"|   {per:.2f} ms | `{' '.join(stmt.split())[:110]}…` | plan: {plan[:200]} | | | |")
        finally:
            raw.close()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(200):
        page = describe_images(svc, caller, "ap-guangzhou", filters=cases["PRIVATE_IMAGE"], limit=20)
        [shapes.image(img, caller) for img in page.images]
    prof.disable()
    emit()
    emit("cProfile, 200 × describe_images(PRIVATE_IMAGE) + shaping (top by own time):")
    emit("```")
    for line in top_functions(prof, 14):
        emit(line)
    emit("```")
    svc.db.dispose()


def profile_describe_http(work: Path, n: int, calls: int) -> None:
    """Where a DescribeImages call's time goes between the SDK and the server: the SDK call, the same request
    as a bare signed POST (httpx, keep-alive), and the SDK's client-side work (sign, parse, build models)."""
    import httpx
    from tencentcloud.cvm.v20170312 import models

    from stratus.api.cvm.signing import sign

    data_dir = work / "data"
    data_dir.mkdir()
    config = work / "stratus.toml"
    config.write_text("[quotas]\nimages_per_region = 100000\n")
    (work / "cache").mkdir(exist_ok=True)
    server = bench.Server(data_dir=data_dir, config=config, log_path=work / "server.log",
                          db_url=f"sqlite:///{data_dir / 'catalog.db'}", cache_dir=work / "cache")
    server.start()
    try:
        server.creds = server.create_account("prof")
        bench.populate_catalog(server.db_url, server.creds["AccountId"], n, 1)
        client = server.client()
        emit(f"# DescribeImages over HTTP, {n:,} images, {calls} calls each after 100 warm-up")
        emit()
        emit("| Call | p50 | p90 | p99 | response bytes |")
        emit("|---|---|---|---|---|")
        http = httpx.Client(base_url=server.url)
        cases = {
            "DescribeRegions": {},
            "DescribeImages PRIVATE_IMAGE": {"Limit": 20, "Filters": [{"Name": "image-type",
                                                                       "Values": ["PRIVATE_IMAGE"]}]},
            "DescribeImages image-name web": {"Limit": 20, "Filters": [{"Name": "image-name", "Values": ["web"]}]},
            "DescribeImages Limit 0 PRIVATE_IMAGE (count only)": {
                "Limit": 0, "Filters": [{"Name": "image-type", "Values": ["PRIVATE_IMAGE"]}]},
        }
        for label, params in cases.items():
            action = label.split()[0]
            req = getattr(models, action + "Request")()
            req.from_json_string(json.dumps(params))
            fn = getattr(client, action)
            sdk = bench.latency(lambda fn=fn, req=req: fn(req), calls, 100)
            body = json.dumps(params).encode()

            def bare(action: str = action, body: bytes = body) -> bytes:
                headers = sign(server.creds["SecretId"], server.creds["SecretKey"], method="POST",
                               host=server.endpoint, path="/", query="", content_type="application/json", body=body)
                headers.update({"X-TC-Action": action, "X-TC-Version": "2017-03-12", "X-TC-Region": "ap-guangzhou"})
                r = http.post("/", content=body, headers=headers)
                return r.content

            raw = bare()
            b = bench.latency(bare, calls, 100)
            emit(f"| {label}, SDK CvmClient | {sdk['p50']:.2f} ms | {sdk['p90']:.2f} ms | {sdk['p99']:.2f} ms | "
                 f"{len(raw):,} |")
            emit(f"| {label}, bare signed POST (httpx) | {b['p50']:.2f} ms | {b['p90']:.2f} ms | {b['p99']:.2f} ms | |")

            def parse(raw: bytes = raw, action: str = action) -> None:
                m = getattr(models, action + "Response")()
                m._deserialize(json.loads(raw)["Response"])

            pz = bench.latency(parse, calls, 20)
            emit(f"| {label}, SDK client-side parse (json + models) | {pz['p50']:.2f} ms | {pz['p90']:.2f} ms | | |")
        from tencentcloud.common import credential  # noqa: F401

        def sign_only() -> None:
            sign(server.creds["SecretId"], server.creds["SecretKey"], method="POST", host=server.endpoint, path="/",
                 query="", content_type="application/json", body=b"{}")

        sg = bench.latency(sign_only, calls, 20)
        emit(f"| TC3 signing of one request (stratus.api.cvm.signing) | {sg['p50']:.3f} ms | | | |")
    finally:
        server.stop()


def run_http(work: Path, src: Path, size: int, vsize: int, t_conv: float) -> None:
    data_dir = work / "data"
    data_dir.mkdir()
    config = work / "stratus.toml"
    config.write_text("")
    (work / "cache").mkdir(exist_ok=True)
    server = bench.Server(data_dir=data_dir, config=config, log_path=work / "server.log",
                          db_url=f"sqlite:///{data_dir / 'catalog.db'}", cache_dir=work / "cache")
    server.start()
    try:
        server.creds = server.create_account("prof")
        env = server.env()
        os.environ.update({k: env[k] for k in ("TENCENTCLOUD_SECRET_ID", "TENCENTCLOUD_SECRET_KEY",
                                               "STRATUS_ENDPOINT", "XDG_CACHE_HOME", "NO_PROXY")})
        from stratus.cli.common import Endpoint
        from stratus.cli.wholefile import upload_file

        ep = Endpoint(server.url, "ap-guangzhou")
        emit("| Data API | Best of 3 | Rate | × convert |")
        emit("|---|---|---|---|")

        def row(what: str, t: float, nbytes: int | None = None) -> None:
            rate = f"{nbytes / MiB / t:,.0f} MiB/s" if nbytes and t > 0 else ""
            emit(f"| {what} | {t * 1000:,.0f} ms | {rate} | {t / t_conv:.2f}× |")

        t, _ = best(3, lambda: upload_file(ep, src))
        row("upload_file() in-process (the CLI's upload, no process start)", t, size)

        import httpx

        def curl_upload() -> None:
            client = httpx.Client(base_url=ep.url)
            body = json.dumps({"Size": size, "Name": src.name}).encode()
            r = client.post("/uploads", content=body, headers=ep.signed_headers("POST", "/uploads", body=body))
            uid = r.json()["Response"]["UploadId"]
            headers = ep.signed_headers("PUT", f"/uploads/{uid}", query="offset=0", body=None,
                                        content_type="application/octet-stream")
            cmd = ["curl", "-sS", "-f", "-o", "/dev/null", "-X", "PUT", "-T", str(src),
                   f"{ep.url}/uploads/{uid}?offset=0"]
            for k, v in headers.items():
                cmd += ["-H", f"{k}: {v}"]
            subprocess.run(cmd, check=True)

        t, _ = best(3, curl_upload)
        row("upload with curl -T (fast client; server side alone)", t, size)

        # upload profile (client side, main thread)
        prof = cProfile.Profile()
        prof.enable()
        upload_file(ep, src)
        prof.disable()
        emit()
        emit("cProfile, upload_file() client (top by own time):")
        emit("```")
        for line in top_functions(prof, 8):
            emit(line)
        emit("```")
        emit()

        # an export to download: import, then export through the SDK
        _, res = server.cli("image", "import", str(src), "--name", "prof", "--whole-file")
        image_id = res.stdout.strip().splitlines()[-1]
        exp = work / "dl.raw"
        _, res = server.cli("image", "export", image_id, "--format", "raw", "-o", str(exp), "--whole-file")
        exp.unlink(missing_ok=True)
        bucket = data_dir / "regions" / "ap-guangzhou" / "buckets" / "stratus-exports"
        key = next(p for p in bucket.rglob("*") if p.is_file()).relative_to(bucket).as_posix()
        path = f"/buckets/stratus-exports/{key}"
        emit("| Data API, download | Best of 3 | Rate | × convert |")
        emit("|---|---|---|---|")

        def httpx_download(to_file: bool) -> None:
            with httpx.Client(base_url=ep.url, timeout=60) as client, client.stream(
                    "GET", path, headers=ep.signed_headers("GET", path)) as r:
                r.raise_for_status()
                if to_file:
                    with exp.open("wb") as f:
                        for block in r.iter_bytes(1 << 20):
                            f.write(block)
                else:
                    for _ in r.iter_raw():
                        pass

        t, _ = best(3, lambda: httpx_download(True), after=lambda: exp.unlink(missing_ok=True))
        row("httpx stream → file (as the CLI's export)", t, vsize)
        t, _ = best(3, lambda: httpx_download(False))
        row("httpx stream → nowhere (iter_raw)", t, vsize)

        def curl_download() -> None:
            cmd = ["curl", "-sS", "-f", "-o", "/dev/null", f"{ep.url}{path}"]
            for k, v in ep.signed_headers("GET", path).items():
                cmd += ["-H", f"{k}: {v}"]
            subprocess.run(cmd, check=True)

        t, _ = best(3, curl_download)
        row("curl → /dev/null (server side alone)", t, vsize)
        src_file = bucket / key
        t, _ = best(3, lambda: subprocess.run(["cp", "--sparse=never", str(src_file), str(exp)], check=True),
                    after=lambda: exp.unlink(missing_ok=True))
        row("cp --sparse=never of the exported file (writing every zero)", t, vsize)
        t, _ = best(3, lambda: subprocess.run(["cp", "--sparse=always", str(src_file), str(exp)], check=True),
                    after=lambda: exp.unlink(missing_ok=True))
        row("cp --sparse=always of the exported file", t, vsize)

        prof = cProfile.Profile()
        prof.enable()
        httpx_download(True)
        prof.disable()
        exp.unlink(missing_ok=True)
        emit()
        emit("cProfile, httpx download → file (top by own time):")
        emit("```")
        for line in top_functions(prof, 8):
            emit(line)
        emit("```")
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
