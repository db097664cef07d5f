"""The S3 chunk store (issue 9) against the physical limit of the same object store in the same run.

Usage::

    .venv/bin/python bench/s3.py [--quick] [--out bench/results-s3.md] [--keep]

It starts the tests' Swift s3api server (tests/s3server.py: a temp dir, free loopback ports, stopped by PID),
builds bench/run.py's mixed test disk (qcow2, 4 GiB virtual, ~1.2 GiB of data; ``--quick``: 512 MiB / 160 MiB),
and measures, in this process (the storage layer the import, export and sync tasks call):

1. the limit: boto3 ``upload_file`` / ``download_file`` of the qcow2 as one multipart object, default
   TransferConfig;
2. import (``ingest_disk`` into an empty bucket prefix; again at 4 MiB chunks), export (``materialize_raw``
   to a local raw file) and a region copy (``copy_chunks`` into a second bucket), each with its S3 requests counted;
3. objects and requests per GiB stored;
4. how the store finds which of a 10 GiB image's 10,240 chunks it lacks: LIST by prefix (what ``present``
   does) against one HEAD per chunk (timed on 256 HEADs, scaled);
5. throughput with 1 and 2 imports at once (two fresh prefixes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from run import machine_facts, make_qcow2  # noqa: E402
from tests.s3server import ACCESS_KEY, SECRET_KEY, SwiftS3  # noqa: E402

from stratus.storage.copy import copy_chunks  # noqa: E402
from stratus.storage.export import materialize_raw  # noqa: E402
from stratus.storage.ingest import ingest_disk  # noqa: E402
from stratus.storage.s3store import S3Store  # noqa: E402

MiB, GiB = 1 << 20, 1 << 30


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results-s3.md"))
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args(argv)
    os.environ.update({"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY})
    (HERE / "out").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="s3-", dir=HERE / "out"))
    vsize, data = (512 * MiB, 160 * MiB) if args.quick else (4 * GiB, 1229 * MiB)
    swift = SwiftS3(work / "swift")
    results: dict[str, Any] = {"virtual": vsize, "data_target": data}
    try:
        log("starting Swift s3api")
        t, _ = timed(swift.start)
        results["swift_start_s"] = t
        a, b = swift.create_bucket("bench-a"), swift.create_bucket("bench-b")
        log(f"building the test disk ({vsize / GiB:.2f} GiB virtual, {data / MiB:.0f} MiB data)")
        qcow2, _kinds = make_qcow2(work, "disk", vsize, data, seed=9)
        file_size = qcow2.stat().st_size
        results["file_size"] = file_size
        client = swift.client()

        log("limit: boto3 upload_file / download_file, one multipart object, default TransferConfig")
        results["limit_upload_s"], _ = timed(lambda: client.upload_file(str(qcow2), a, "limit/disk.qcow2"))
        back = work / "limit.qcow2"
        results["limit_download_s"], _ = timed(lambda: client.download_file(a, "limit/disk.qcow2", str(back)))
        back.unlink()

        def store(bucket: str, prefix: str) -> S3Store:
            return S3Store(bucket=bucket, endpoint_url=swift.endpoint_url, prefix=prefix,
                           scratch_dir=work / "scratch", quiet=lambda since: True)

        src = store(a, "chunks/")
        log("import (ingest_disk) into an empty prefix")
        t, res = timed(lambda: ingest_disk(qcow2, "qcow2", src))
        manifest = res.manifest
        results.update(import_s=t, import_requests=src.requests, stored_chunks=res.new_chunks,
                       stored_bytes=res.new_bytes, method=res.method)
        log(f"  {t:.1f} s, {res.new_chunks} chunks, {src.requests} requests")

        log("import at 4 MiB chunks (a region's chunk_size) into an empty prefix")
        big = store(a, "chunks4/")
        t, res4 = timed(lambda: ingest_disk(qcow2, "qcow2", big, 4 * MiB))
        results.update(import4_s=t, import4_requests=big.requests, import4_chunks=res4.new_chunks)

        log("re-import of the same disk (every chunk present)")
        before = src.requests
        t, res2 = timed(lambda: ingest_disk(qcow2, "qcow2", src))
        results.update(reimport_s=t, reimport_requests=src.requests - before, reimport_new=res2.new_chunks)

        log("export (materialize_raw)")
        before = src.requests
        out = work / "export.raw"
        t, _ = timed(lambda: materialize_raw(manifest, src, out))
        results.update(export_s=t, export_requests=src.requests - before)
        out.unlink()

        log("region copy (copy_chunks into a second bucket)")
        dst = store(b, "chunks/")
        before = src.requests
        digests = [d for d in manifest.chunks if d is not None]
        t, cres = timed(lambda: copy_chunks(digests, src, dst))
        results.update(copy_s=t, copy_requests=dst.requests + src.requests - before,
                       copy_bytes=cres.bytes_copied)

        log("finding the missing chunks of a 10 GiB image (10,240 digests)")
        fake = [os.urandom(32).hex() for _ in range(10_240 - len(set(digests)))] + list(set(digests))
        before = dst.requests
        t, found = timed(lambda: dst.present(fake))
        results.update(present_list_s=t, present_list_requests=dst.requests - before,
                       present_found=len(found), store_chunks=len(set(digests)))
        sample = fake[:256]
        with ThreadPoolExecutor(16) as pool:
            t, _ = timed(lambda: list(pool.map(dst.stat, sample)))
        results.update(head_256_s=t, head_10240_s_est=t * 10_240 / 256)

        log("throughput: 1 and 2 imports at once")
        for n in (1, 2):
            stores = [store(a, f"tp{n}-{i}-{uuid.uuid4().hex[:6]}/") for i in range(n)]
            errors: list[BaseException] = []

            def run(s: S3Store, errors: list[BaseException] = errors) -> None:
                try:
                    ingest_disk(qcow2, "qcow2", s)
                except BaseException as exc:  # reported below
                    errors.append(exc)

            threads = [threading.Thread(target=run, args=(s,)) for s in stores]
            t0 = time.perf_counter()
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            if errors:
                raise errors[0]
            results[f"concurrent_{n}_s"] = time.perf_counter() - t0
        results["facts"] = machine_facts(work)
    finally:
        swift.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    (HERE / "out" / "results-s3.json").write_text(json.dumps(results, indent=2))
    Path(args.out).write_text(render(results))
    log(f"wrote {args.out}")
    return 0


def render(r: dict[str, Any]) -> str:
    stored_gib = r["stored_bytes"] / GiB
    file_mib = r["file_size"] / MiB

    def rate(t: float) -> str:
        return f"{file_mib / t:.0f} MiB/s"

    up, down = r["limit_upload_s"], r["limit_download_s"]
    rows = [
        ("limit: boto3 upload_file of the qcow2 (multipart)", up, rate(up), "1.00×", ""),
        ("limit: boto3 download_file", down, rate(down), "1.00×", ""),
        ("import (ingest into the bucket)", r["import_s"], rate(r["import_s"]), f"{r['import_s'] / up:.2f}× upload",
         f"{r['import_requests']} requests"),
        ("import at 4 MiB chunks (region `chunk_size`)", r["import4_s"], rate(r["import4_s"]),
         f"{r['import4_s'] / up:.2f}× upload", f"{r['import4_requests']} requests"),
        ("re-import (all chunks present)", r["reimport_s"], rate(r["reimport_s"]),
         f"{r['reimport_s'] / up:.2f}× upload",
         f"{r['reimport_requests']} requests, {r['reimport_new']} new chunks"),
        ("export (raw, verified reads)", r["export_s"], rate(r["export_s"]), f"{r['export_s'] / down:.2f}× download",
         f"{r['export_requests']} requests"),
        ("region copy (bucket to bucket)", r["copy_s"], rate(r["copy_s"]),
         f"{r['copy_s'] / (up + down):.2f}× download+upload", f"{r['copy_requests']} requests"),
    ]
    lines = [
        "# S3 chunk store benchmark (bench/s3.py)",
        "",
        f"Swift s3api on loopback, started by the run ({r['swift_start_s']:.0f} s). Test disk: qcow2, "
        f"{r['virtual'] / GiB:.2f} GiB virtual, {file_mib:.0f} MiB file, "
        f"{r['stored_chunks']} chunks / {stored_gib:.2f} GiB stored (ingest {r['method']}).",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in r["facts"].items()),
        "",
        "| path | time | rate (file bytes) | vs limit | S3 requests |",
        "|---|---|---|---|---|",
        *[f"| {a} | {t:.1f} s | {rt} | {x} | {q} |" for a, t, rt, x, q in rows],
        "",
        f"Objects per GiB stored: {r['stored_chunks'] / stored_gib:.0f} (one per 1 MiB chunk). Requests per GiB "
        f"stored: import {r['import_requests'] / stored_gib:.0f}, export {r['export_requests'] / stored_gib:.0f}, "
        f"copy {r['copy_requests'] / stored_gib:.0f}.",
        "",
        f"Missing chunks of a 10 GiB image (10,240 digests, {r['store_chunks']} of them in a store of "
        f"{r['store_chunks']} chunks): LIST by prefix {r['present_list_s']:.2f} s in "
        f"{r['present_list_requests']} requests; one HEAD per chunk would take {r['head_10240_s_est']:.0f} s "
        f"(256 HEADs, 16 in flight: {r['head_256_s']:.1f} s) and 10,240 requests.",
        "",
        f"Concurrent imports: 1 import {r['concurrent_1_s']:.1f} s ({rate(r['concurrent_1_s'])}); 2 at once "
        f"{r['concurrent_2_s']:.1f} s ({2 * file_mib / r['concurrent_2_s']:.0f} MiB/s together).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
