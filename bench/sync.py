"""SyncImages on this machine (issue 4): bytes that cross between region stores, and time against cp.

Usage::

    .venv/bin/python bench/sync.py [--quick] [--out bench/results-sync.md] [--workdir DIR] [--keep]
                                   [--wait-idle SECONDS]

What it does (see bench/README.md, "What `sync.py` measures"):

1. Builds bench/run.py's test disk (4 GiB virtual, ~1.2 GiB of data, qcow2) and imports it into ap-guangzhou of
   a real server with two regions (two store directories on the same filesystem).
2. References: the image as a sparse raw file (``qemu-img convert -O raw``, in a directory of its own on the
   same filesystem), then ``cp --sparse=always`` of that file into another directory (the **reference**: the
   image's bytes moved between two directories), the same followed by an fsync of the copy, and
   ``cp -r`` of the source store's chunks directory (the same bytes as the store keeps them: one file per
   chunk); ``cp --sparse=always`` of a file holding only the changed bytes, for the delta copies.
3. SyncImages of the image to ap-shanghai: call → NORMAL in ap-shanghai (DescribeImages every 50 ms), and the
   bytes that crossed (DescribeTasks ``Result.BytesCopied`` of the task the SyncImages answer names).
4. One instance per variant (disk driver) from the image; each changes 64 MiB of its disk (qemu-io on its
   overlay: contiguous; 16 × 4 MiB at 1 MiB-aligned offsets; 16 × 4 MiB at 4 KiB-aligned offsets); CreateImage;
   SyncImages of each captured image to ap-shanghai, where the base's chunks already are: bytes that crossed
   (target ≤ 1.1 × the change) and time.

The server is stopped by its pid, in a ``finally``; the work dir (bench/out/sync-*) is deleted unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from instances import (  # noqa: E402
    VARIANTS,
    Api,
    change_extents,
    chunks_touched,
    create_image,
    elapsed,
    extra_facts,
    fmt_b,
    fmt_ms,
    image_manifest,
    import_image,
    make_server,
    read_verify_all,
    render,
    run_instances,
    start_server,
    stop_all,
    system_overlay,
    terminate,
    wait_idle,
    wait_running,
    write_change,
)
from run import (  # noqa: E402
    REGION,
    SPLIT_REGION,
    GiB,
    MiB,
    Row,
    allocated,
    best_of,
    chunk_stats,
    fmt_rate,
    fmt_s,
    fsync_file,
    log,
    machine_facts,
    make_qcow2,
    rm,
    task_split,
    timed,
    wait_image,
)

SRC, DST = REGION, SPLIT_REGION  # ap-guangzhou → ap-shanghai


@dataclass(frozen=True)
class Sizes:
    virtual: int
    data: int
    change: int
    pieces: int
    reps: int


FULL = Sizes(virtual=4 * GiB, data=1229 * MiB, change=64 * MiB, pieces=16, reps=3)
QUICK = Sizes(virtual=512 * MiB, data=150 * MiB, change=16 * MiB, pieces=4, reps=1)


DIAG_TASK_POINTS = "copy_chunks with the task's durability points (every 1 % of the image's bytes), no catalog"


def copy_breakdown(order: list[str], src: Any, root: Path, present: list[str], present_from: Any, reps: int
                   ) -> dict[str, float]:
    """copy_chunks of ``order`` from ``src`` into a scratch store at ``root`` that already holds ``present``
    (hard links to ``present_from``'s chunk files), best of ``reps`` after one untimed run: as the sync task
    calls it (a durability point every 1 % of the bytes, a progress callback that does nothing), with
    copy_chunks' default points (64 MiB), and without fsync or O_DIRECT."""
    from stratus.storage.copy import copy_chunks
    from stratus.storage.dirstore import DirStore

    total = sum(src.path_for(d).stat().st_size for d in order)
    out: dict[str, float] = {}
    for label, kw, every in ((DIAG_TASK_POINTS, {}, max(1, total // 100)),
                             ("copy_chunks with its default durability points (64 MiB)", {}, 64 * MiB),
                             ("… no fsync, no O_DIRECT", {"durable": False, "direct_io": False}, 64 * MiB)):
        times = []
        for _ in range(reps + 1):
            shutil.rmtree(root, ignore_errors=True)
            store = DirStore(root, **kw)
            for d in present:
                dest = store.path_for(d)
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.link(present_from.path_for(d), dest)
            os.sync()
            times.append(elapsed(lambda store=store, every=every: copy_chunks(
                order, src, store, progress=lambda _p: None, report_every_bytes=every)))
        out[label] = min(times[1:])
    shutil.rmtree(root, ignore_errors=True)
    return out


def sync_one(server: Any, api_src: Api, client_dst: Any, image_id: str, name: str) -> dict[str, Any]:
    """SyncImages SRC → DST of one image: time to NORMAL in DST, and what the task says crossed."""
    os.sync()  # no writeback of earlier work during the timed copy
    wall0, t0 = time.time(), time.perf_counter()
    resp = api_src("SyncImages", {"ImageIds": [image_id], "DestinationRegions": [DST], "ImageSetRequired": True,
                                  "ImageName": name})
    t_resp = time.perf_counter() - t0
    [entry] = resp["ImageSet"]
    copy_id, task_id = entry["ImageId"], entry["TaskId"]
    t = wait_image(client_dst, copy_id, busy="SYNCING", interval=0.05) - t0
    [task] = api_src("DescribeTasks", {"TaskIds": [task_id]})["TaskSet"]
    for _ in range(200):  # the image turns NORMAL a moment before the runner records the task SUCCESS
        if task["TaskState"] in ("SUCCESS", "FAILED"):
            break
        time.sleep(0.02)
        [task] = api_src("DescribeTasks", {"TaskIds": [task_id]})["TaskSet"]
    assert task["TaskState"] == "SUCCESS", task
    split = task_split(server.finished_task("id = ?", [task_id]))
    src_disks = api_src("DescribeImages", {"ImageIds": [image_id]})["ImageSet"][0]["DiskSet"]
    dst_disks = Api(server, DST)("DescribeImages", {"ImageIds": [copy_id]})["ImageSet"][0]["DiskSet"]
    same = [d["ManifestDigest"] for d in src_disks] == [d["ManifestDigest"] for d in dst_disks]
    seen_lag = t - (server.image_normal_at(copy_id) - wall0)
    return {"copy_id": copy_id, "task_id": task_id, "time": t, "response": t_resp, "result": task["Result"],
            "seen_lag": seen_lag,
            "queued": max(0.0, split.get("queued", 0.0)), "run": split.get("run", 0.0),
            "task_created": split.get("created_at", wall0) - wall0, "same_manifests": same}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes for a smoke run (~1 min)")
    ap.add_argument("--out", default=None, help="markdown report (default bench/results-sync.md; "
                    "--quick: bench/out/results-sync-quick.md)")
    ap.add_argument("--workdir", default=None, help="parent of the temp work dir (default bench/out)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--wait-idle", type=float, default=0, metavar="SECONDS")
    args = ap.parse_args(argv)
    if args.wait_idle:
        wait_idle(args.wait_idle)
    sizes = QUICK if args.quick else FULL
    out = Path(args.out) if args.out else (HERE / "out" / "results-sync-quick.md" if args.quick
                                           else HERE / "results-sync.md")
    parent = Path(args.workdir) if args.workdir else HERE / "out"
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="sync-", dir=parent))
    log(f"work dir {work}")
    rows: list[Row] = []
    notes: list[str] = []
    results: dict[str, Any] = {"sizes": sizes.__dict__}
    facts = extra_facts(machine_facts(work))
    results["facts"] = facts
    server = None
    ids: list[str] = []
    try:
        log(f"building the test disk ({sizes.virtual / GiB:.2f} GiB virtual, {sizes.data / MiB:.0f} MiB data)")
        src, kinds = make_qcow2(work, "disk", sizes.virtual, sizes.data, args.seed)
        server = make_server(work, "server", regions=(SRC, DST))
        log(f"starting stratus serve on port {server.port}")
        start_server(server)
        api = Api(server, SRC)
        client_src, client_dst = server.client(SRC), server.client(DST)
        image_id, t_import = import_image(server, src, "sync-base", region=SRC)
        src_store = server.data_dir / "regions" / SRC / "store"
        dst_store = server.data_dir / "regions" / DST / "store"
        stored = chunk_stats(src_store)
        notes.append(
            f"Image: qcow2 {sizes.virtual / GiB:.2f} GiB virtual, {src.stat().st_size / MiB:,.0f} MiB file; data "
            f"written {kinds['zeros'] / MiB:,.0f} MiB zeros, {kinds['random'] / MiB:,.0f} MiB random, "
            f"{kinds['text'] / MiB:,.0f} MiB text (bench/run.py's builder); imported into {SRC} in {t_import:.1f} s: "
            f"{stored[0]:,} chunks, {fmt_b(stored[1])} in its store (zero chunks are not stored).")

        # ---- references
        log("references: cp --sparse=always of the image as raw, cp -r of the store's chunks")
        ref_src, ref_dst = work / "ref-src", work / "ref-dst"
        ref_src.mkdir()
        ref_dst.mkdir()
        raw = ref_src / "image.raw"
        timed(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(src), str(raw)])
        raw_alloc = allocated(raw)
        raw_out = ref_dst / "image.raw"
        cp = best_of(sizes.reps, lambda: timed(["cp", "--sparse=always", str(raw), str(raw_out)])[0],
                     before=lambda: (rm(raw_out), os.sync()))
        cp_sync = best_of(sizes.reps, lambda: timed(["cp", "--sparse=always", str(raw), str(raw_out)])[0]
                          + fsync_file(raw_out), before=lambda: (rm(raw_out), os.sync()))
        rm(raw_out)
        rm(raw)
        chunks_out = ref_dst / "chunks"
        cpr = best_of(sizes.reps, lambda: timed(["cp", "-r", str(src_store / "chunks"), str(chunks_out)])[0],
                      before=lambda: (shutil.rmtree(chunks_out, ignore_errors=True), os.sync()))
        shutil.rmtree(chunks_out, ignore_errors=True)
        change_file = ref_src / "change.raw"
        change_file.write_bytes(os.urandom(sizes.change))
        change_out = ref_dst / "change.raw"
        cp_change = best_of(sizes.reps, lambda: timed(["cp", "--sparse=always", str(change_file),
                                                       str(change_out)])[0], before=lambda: (rm(change_out), os.sync()))
        rm(change_out)
        rm(change_file)
        cp_best = min(cp)
        results["reference"] = {"cp_sparse": cp, "cp_sparse_fsync": cp_sync, "cp_r_chunks": cpr,
                                "cp_change": cp_change, "raw_allocated": raw_alloc}
        ref = f"{fmt_s(cp_best)} (cp --sparse=always of the image's raw file)"
        rows += [
            Row("reference", "cp --sparse=always of the image as a raw file (dir → dir, same fs; best of "
                f"{sizes.reps})", fmt_s(cp_best), f"{fmt_b(raw_alloc)} allocated; {fmt_rate(raw_alloc, cp_best)}"),
            Row("reference", "… the same, then fsync of the copy (durable, like a sync)", fmt_s(min(cp_sync)), ref,
                min(cp_sync) / cp_best),
            Row("reference", f"cp -r of the {SRC} store's chunks directory ({stored[0]:,} files)", fmt_s(min(cpr)),
                ref, min(cpr) / cp_best),
            Row("reference", f"cp --sparse=always of a file holding only the {fmt_b(sizes.change)} change",
                fmt_s(min(cp_change)), fmt_rate(sizes.change, min(cp_change))),
        ]

        # ---- 1. the base image
        log(f"SyncImages of the base image {SRC} → {DST}")
        before = chunk_stats(dst_store)
        first = sync_one(server, api, client_dst, image_id, "sync-base")
        grown = chunk_stats(dst_store)[1] - before[1]
        results["base"] = {**first, "dst_store_grown": grown}
        r = first["result"]
        sec = f"SyncImages, base image ({fmt_b(sizes.virtual)})"
        rows += [
            Row(sec, f"SyncImages → NORMAL in {DST} (DescribeImages every 50 ms)", fmt_s(first["time"]), ref,
                first["time"] / cp_best),
            Row(sec, "… SyncImages call; task queued → running; task run (copy + manifests + NORMAL); "
                "NORMAL → seen by the poll",
                f"{fmt_ms(first['response'])}; {fmt_ms(first['queued'])}; {fmt_s(first['run'])}; "
                f"{fmt_ms(first['seen_lag'])}", "", first["run"] / cp_best),
            Row(sec, "bytes that crossed (DescribeTasks Result.BytesCopied)",
                f"{fmt_b(r['BytesCopied'])} ({r['ChunksCopied']:,} chunks)",
                f"image: {fmt_b(r['BytesTotal'])} in {r['ChunksTotal']:,} distinct chunks; {DST} store grew "
                f"{fmt_b(grown)}; {fmt_rate(r['BytesCopied'], first['time'])}", r["BytesCopied"] / r["BytesTotal"]),
            Row(sec, "copy's manifests = source's", "yes" if first["same_manifests"] else "NO", "", None, "same",
                first["same_manifests"]),
        ]

        # where the copy's time goes: the storage layer alone, in this process (no task, no catalog)
        from stratus.storage.dirstore import DirStore

        manifest = image_manifest(server, api, image_id, SRC)
        base_order = list(dict.fromkeys(d for d in manifest.chunks if d is not None))
        srcs, dsts = DirStore(src_store), DirStore(dst_store)
        os.sync()
        t_read = read_verify_all(srcs, base_order)
        diag = copy_breakdown(base_order, srcs, work / "scratch-store", [], dsts, sizes.reps)
        t_touch = min(elapsed(lambda: [dsts.touch(d) and dsts.path_for(d).stat() for d in base_order])
                      for _ in range(sizes.reps))
        results["base"]["diagnostics"] = {"read_verify": t_read, "touch_present": t_touch, **diag}
        sec = "SyncImages, base image, where the time goes (in-process, no task, no catalog)"
        at_points = diag[DIAG_TASK_POINTS]
        rows += [
            Row(sec, f"read + BLAKE3-verify every chunk of the image ({len(base_order):,}; DirStore.get, 4 threads)",
                fmt_s(t_read), fmt_rate(stored[1], t_read), t_read / cp_best),
            *[Row(sec, label, fmt_s(t), "", t / cp_best) for label, t in diag.items()],
            Row(sec, "the task's run minus copy_chunks with its durability points: catalog writes at each point "
                "(lease renewal, checkpoint, SyncPercent) and the manifests", fmt_s(first["run"] - at_points), "",
                (first["run"] - at_points) / cp_best),
            Row(sec, f"touch + stat of every chunk already in {DST} (what a delta copy does for present chunks)",
                fmt_ms(t_touch), f"{len(base_order):,} chunks"),
        ]

        # ---- 2. images captured from instances of it
        log(f"one instance per variant ({len(VARIANTS)}), change {fmt_b(sizes.change)} each, CreateImage")
        ids = run_instances(api, image_id, len(VARIANTS), InstanceName="sync-{R:1}")
        _, found, _ = wait_running(api, ids)
        results["delta"] = {}
        for n, (variant, inst) in enumerate(zip(VARIANTS, found, strict=True)):
            extents = change_extents(variant, sizes.virtual, sizes.change, sizes.pieces, args.seed + n)
            touched = chunks_touched(extents)
            write_change(system_overlay(server, inst), extents, work)
            captured, t_cap, _, _ = create_image(api, client_src, inst["InstanceId"], f"captured-{n}")
            log(f"{variant}: SyncImages of the captured image ({touched} chunks touched)")
            before = chunk_stats(dst_store)
            one = sync_one(server, api, client_dst, captured, f"captured-{n}")
            grown = chunk_stats(dst_store)[1] - before[1]
            cap_order = list(dict.fromkeys(d for d in image_manifest(server, api, captured, SRC).chunks
                                           if d is not None))
            present = [d for d in cap_order if d in set(base_order)]
            diag = copy_breakdown(cap_order, srcs, work / "scratch-store", present, dsts, sizes.reps)
            results["delta"][variant] = {**one, "dst_store_grown": grown, "touched": touched, "capture": t_cap,
                                         "extents": extents, "diagnostics": diag}
            r = one["result"]
            ratio_bytes = r["BytesCopied"] / sizes.change
            sec = f"SyncImages, captured image, {fmt_b(sizes.change)} changed, {variant}"
            rows += [
                Row(sec, "bytes that crossed (DescribeTasks Result.BytesCopied) / the change",
                    f"{fmt_b(r['BytesCopied'])} ({r['ChunksCopied']} chunks)",
                    f"change {fmt_b(sizes.change)} touching {touched} chunks of 1 MiB; {r['ChunksPresent']:,} chunks "
                    f"({fmt_b(r['BytesPresent'])}) already in {DST}; its store grew {fmt_b(grown)}",
                    ratio_bytes, "≤ 1.1×", ratio_bytes <= 1.1),
                Row(sec, f"SyncImages → NORMAL in {DST}", fmt_s(one["time"]),
                    f"{ref}; cp of the change alone {fmt_s(min(cp_change))} "
                    f"({one['time'] / min(cp_change):.1f}×)", one["time"] / cp_best),
                Row(sec, "… SyncImages call; task queued → running; task run; NORMAL → seen by the poll",
                    f"{fmt_ms(one['response'])}; {fmt_ms(one['queued'])}; {fmt_ms(one['run'])}; "
                    f"{fmt_ms(one['seen_lag'])}"),
                Row(sec, f"… in-process, into a scratch store holding the {len(present):,} chunks {DST} has "
                    f"(best of {sizes.reps})", "; ".join(f"{k}: {fmt_ms(v)}" for k, v in diag.items()),
                    f"task run − copy_chunks at the task's points: {fmt_ms(one['run'] - diag[DIAG_TASK_POINTS])}"),
                Row(sec, "copy's manifests = source's", "yes" if one["same_manifests"] else "NO", "", None, "same",
                    one["same_manifests"]),
            ]
        terminate(api, ids)
        ids = []
    finally:
        if ids and server is not None:
            try:
                terminate(Api(server, SRC), ids, timeout=60)
            except Exception as exc:  # the server is stopped next either way
                log(f"terminate failed: {exc}")
        stop_all(server, "last-server-sync.log")
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    facts["load average at end"] = " / ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1/5/15 min)"
    notes += [
        f"Reference (the denominator of every time ratio): `cp --sparse=always` of a sparse raw file holding the "
        f"image (made by `qemu-img convert -O raw`; {fmt_b(results['reference']['raw_allocated'])} allocated) "
        f"from one directory into another on the same filesystem as the two region stores; best of {sizes.reps} "
        "after one untimed run, page cache warm, no fsync. It moves the image's data once, with no hashing.",
        "Stratus's time runs from the SyncImages call to the copy seen NORMAL in the destination; the task "
        "re-hashes every chunk it reads (BLAKE3), writes missing chunks with O_DIRECT and fsyncs them, and "
        "touches (utime) every chunk the destination already has.",
        "`sync` (os.sync) runs before every timed SyncImages and every reference run, so no earlier writeback "
        "overlaps it.",
        "The `cp -r` of the chunks directory ran before the first SyncImages, so the source store's chunks "
        "(written with O_DIRECT at import) were in the page cache for the copy too.",
        "Bytes crossed are the task's own count (DescribeTasks Result.BytesCopied, an extension); "
        "the destination store's growth (sum of chunk file sizes) is given beside it as a check.",
        "Variants of the 64 MiB change: contiguous at a 1 MiB boundary; 16 × 4 MiB, one in each 16th of the "
        "disk, at 1 MiB-aligned offsets; the same at 4 KiB-aligned offsets (a 4 MiB run then straddles 5 "
        "chunks, so 80 chunks change). The bytes are random (qemu-io write -s), so no chunk deduplicates.",
    ]
    intro = [f"{'Smoke run (--quick): sizes shrunk, numbers not comparable. ' if args.quick else ''}"
             f"SyncImages {SRC} → {DST}: two region stores of one server, on one filesystem; one run each."]
    report = render("Stratus benchmark: SyncImages" + (" (--quick)" if args.quick else ""), facts, intro, rows, notes)
    print(report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    (HERE / "out").mkdir(exist_ok=True)
    (HERE / "out" / ("results-sync-quick.json" if args.quick else "results-sync.json")).write_text(
        json.dumps(results, indent=2, default=str))
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
