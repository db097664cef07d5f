"""Instances on this machine (issue 3), each path against the physical limit measured in the same run.

Usage::

    .venv/bin/python bench/instances.py [--quick] [--out bench/results-instances.md] [--workdir DIR] [--keep]
                                        [--wait-idle SECONDS] [--skip-qemu]

What it does (see bench/README.md, "What `instances.py` measures"):

1. **RunInstances × 100, disk driver.** A test disk built like bench/run.py's (4 GiB virtual, ~1.2 GiB of data
   in a qcow2) is imported; RunInstances of 100 instances, DescribeInstances polled every 50 ms until all are
   RUNNING; twice: the first batch materializes the base, the second finds it there. Bytes on disk per
   instance (st_blocks of every instance dir) and of the base. Splits from the catalog (task created /
   started / finished) and from file change times (the base's rename, the overlays' renames). References:
   ``qemu-img create -f qcow2 -b BASE -F raw`` × 100 in a loop, ``cp`` of the base, and
   ``qemu-img convert -O raw`` of the source qcow2 (what materializing the base is).
2. **CreateImage of a 64 MiB change on a 10 GiB image** (~2.5 GiB of data): one instance per variant
   (contiguous; 16 × 4 MiB scattered at 1 MiB-aligned offsets; 16 × 4 MiB at 4 KiB-aligned offsets), the
   change written with ``qemu-io write -s`` (random bytes) into its overlay, CreateImage → NORMAL (50 ms
   polls), against ``qemu-img convert -O raw`` of the overlay chain; new chunk bytes in the store.
3. **The qemu driver** (a second server with ``STRATUS_COMPUTE=qemu``): RunInstances of the tiny bootable
   image (src/stratus/compute/tinyimage.py) with UserData, until ``STRATUS-USERDATA-DONE`` is on the console
   (GetInstanceConsoleOutput every 50 ms); 3 launches, best and median; against the same QEMU command line
   run bare (no Stratus: overlay, seed and kernel prepared beforehand), time to the same marker.

Everything lives in one work directory under bench/out/ (deleted unless ``--keep``). Servers are stopped by
their process id (their own session); every VM is killed by the pid in its pid file (after checking its
command line names the instance) in ``finally`` blocks, never by name.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import run as bench  # noqa: E402
from run import (  # noqa: E402
    REGION,
    GiB,
    KiB,
    MiB,
    Row,
    Server,
    allocated,
    best_of,
    chunk_stats,
    fmt_rate,
    fmt_s,
    log,
    machine_facts,
    make_qcow2,
    rm,
    task_split,
    timed,
    wait_image,
)

ZONE = f"{REGION}-1"
USER_DATA = b"#!/bin/sh\necho written-by-user-data > $ROOT/marker\n"
MARKER = "STRATUS-USERDATA-DONE"
POLL = 0.05


# --------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class Sizes:
    virtual: int  # part 1 image
    data: int
    count: int  # instances per batch
    cap_virtual: int  # part 2 image
    cap_data: int
    change: int  # bytes changed before CreateImage
    pieces: int  # of the scattered variants
    vm_launches: int
    reps: int


FULL = Sizes(virtual=4 * GiB, data=1229 * MiB, count=100, cap_virtual=10 * GiB, cap_data=2560 * MiB,
             change=64 * MiB, pieces=16, vm_launches=3, reps=3)
QUICK = Sizes(virtual=512 * MiB, data=150 * MiB, count=100, cap_virtual=1 * GiB, cap_data=256 * MiB,
              change=16 * MiB, pieces=4, vm_launches=1, reps=1)


# --------------------------------------------------------------------------- shared helpers (bench/sync.py too)


@dataclass
class EnvServer(Server):
    """bench/run.py's Server, with extra environment for the server and CLI (e.g. STRATUS_COMPUTE=qemu)."""

    extra_env: dict[str, str] = field(default_factory=dict)

    def env(self, with_creds: bool = True) -> dict[str, str]:
        return {**super().env(with_creds), **self.extra_env}


def make_server(work: Path, name: str, regions: Sequence[str] = (REGION,), extra_env: dict[str, str] | None = None,
                config_extra: str = "") -> EnvServer:
    """A server (not started) with its own data dir, config, log, CLI cache and bytecode cache under ``work``."""
    base = work / name
    data_dir = base / "data"
    data_dir.mkdir(parents=True)
    (base / "cache").mkdir()
    config = base / "stratus.toml"
    config.write_text("".join(f'[[regions]]\nname = "{r}"\nzones = ["{r}-1"]\n' for r in regions)
                      + "[quotas]\nimages_per_region = 100000\ninstances_per_region = 100000\n" + config_extra)
    return EnvServer(data_dir=data_dir, config=config, log_path=base / "server.log",
                     db_url=f"sqlite:///{data_dir / 'catalog.db'}", cache_dir=base / "cache",
                     pycache=work / "pycache", extra_env=dict(extra_env or {}))


def start_server(server: EnvServer) -> float:
    """Warm the bytecode cache, start the server, create the bench account; returns the start time."""
    timed([sys.executable, "-c", "import stratus.cli.main, stratus.api.app, stratus.service.runtime, "
           "tencentcloud.cvm.v20170312.cvm_client"], env=server.env(False))
    t = server.start()
    # An operator: bench/sync.py reads a copy's BytesCopied, a store-level figure DescribeTasks shows operators only.
    server.creds = server.create_account("bench", operator=True)
    return t


class Api:
    """CVM calls as JSON through the SDK's CommonClient (keep-alive), so extensions (TaskId, Result) survive."""

    def __init__(self, server: Server, region: str = REGION) -> None:
        from tencentcloud.common import credential
        from tencentcloud.common.common_client import CommonClient
        from tencentcloud.common.profile.client_profile import ClientProfile
        from tencentcloud.common.profile.http_profile import HttpProfile

        profile = ClientProfile(httpProfile=HttpProfile(endpoint=server.endpoint, protocol="http", keepAlive=True,
                                                        reqTimeout=120))
        self.client = CommonClient("cvm", "2017-03-12",
                                   credential.Credential(server.creds["SecretId"], server.creds["SecretKey"]),
                                   region, profile=profile)
        self.region = region

    def __call__(self, action: str, params: dict[str, Any]) -> dict[str, Any]:
        return self.client.call_json(action, params)["Response"]


def import_image(server: Server, path: Path, name: str, region: str = REGION, fmt: str | None = None
                 ) -> tuple[str, float]:
    """`stratus image import --whole-file` (upload + ImportImage → NORMAL); returns the image id and the time."""
    args = ["image", "import", str(path), "--name", name, "--region", region, "--whole-file"]
    if fmt:
        args += ["--format", fmt]
    t, res = server.cli(*args)
    return res.stdout.strip().splitlines()[-1], t


def host_dir(server: Server, region: str = REGION) -> Path:
    return server.data_dir / "regions" / region / "host"


def instance_dir(server: Server, iid: str, region: str = REGION) -> Path:
    return host_dir(server, region) / "instances" / iid


def run_instances(api: Api, image_id: str, count: int, **extra: Any) -> list[str]:
    params = {"ImageId": image_id, "InstanceCount": count, "Placement": {"Zone": f"{api.region}-1"}, **extra}
    return api("RunInstances", params)["InstanceIdSet"]


def describe_instances(api: Api, ids: list[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for k in range(0, len(ids), 100):
        out += api("DescribeInstances", {"InstanceIds": ids[k:k + 100], "Limit": 100})["InstanceSet"]
    return out


def wait_running(api: Api, ids: list[str], interval: float = POLL, timeout: float = 600
                 ) -> tuple[float, list[dict[str, Any]], list[float]]:
    """Poll DescribeInstances until every instance is RUNNING (its operation done); returns the perf_counter
    time that was first seen, the instances, and the latency of each poll."""
    deadline = time.time() + timeout
    lat: list[float] = []
    while time.time() < deadline:
        t0 = time.perf_counter()
        found = describe_instances(api, ids)
        lat.append(time.perf_counter() - t0)
        failed = [i for i in found if i["InstanceState"] == "LAUNCH_FAILED"]
        if failed:
            raise RuntimeError(f"{failed[0]['InstanceId']} LAUNCH_FAILED: {failed[0].get('LatestOperationErrorMsg')}")
        if len(found) == len(ids) and all(i["InstanceState"] == "RUNNING" and i["LatestOperationState"] != "OPERATING"
                                          for i in found):
            return time.perf_counter(), found, lat
        time.sleep(interval)
    raise RuntimeError(f"{len(ids)} instances not RUNNING after {timeout}s")


def terminate(api: Api, ids: list[str], timeout: float = 300) -> float:
    """TerminateInstances (100 per call) and wait until DescribeInstances no longer shows them."""
    t0 = time.perf_counter()
    for k in range(0, len(ids), 100):
        api("TerminateInstances", {"InstanceIds": ids[k:k + 100]})
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not describe_instances(api, ids):
            return time.perf_counter() - t0
        time.sleep(POLL)
    raise RuntimeError(f"{len(ids)} instances not terminated after {timeout}s")


def dir_usage(path: Path) -> tuple[int, int]:
    """(bytes allocated by the directory and everything in it, as `du -s`; of that, by files only)."""
    total = files = allocated(path)
    files = 0
    for dirpath, dirs, names in os.walk(path):
        for d in dirs:
            total += allocated(Path(dirpath) / d)
        for n in names:
            a = os.lstat(os.path.join(dirpath, n)).st_blocks * 512
            total += a
            files += a
    return total, files


VARIANTS = ("contiguous", "scattered, 1 MiB-aligned", "scattered, 4 KiB-aligned")


def change_extents(variant: str, vsize: int, total: int, pieces: int, seed: int) -> list[tuple[int, int]]:
    """Where the "guest" writes ``total`` bytes: one run at a 1 MiB boundary a third into the disk, or
    ``pieces`` equal runs, one in each equal slice of the disk, at a random offset aligned to 1 MiB or 4 KiB."""
    if variant == "contiguous":
        return [(vsize // 3 // MiB * MiB, total)]
    align = MiB if "1 MiB" in variant else 4 * KiB
    rng = random.Random(seed)
    piece = total // pieces
    slot = vsize // pieces
    out = []
    for i in range(pieces):
        room = slot - piece - MiB  # keep a chunk of margin so runs never touch
        off = i * slot + rng.randrange(0, room // align) * align
        if align < MiB and off % MiB == 0:
            off += 4 * KiB  # the unaligned variant is never accidentally aligned
        out.append((off, piece))
    return out


def chunks_touched(extents: Sequence[tuple[int, int]], chunk: int = MiB) -> int:
    touched: set[int] = set()
    for off, length in extents:
        touched.update(range(off // chunk, (off + length - 1) // chunk + 1))
    return len(touched)


def write_change(overlay: Path, extents: Sequence[tuple[int, int]], scratch: Path) -> None:
    """The guest's writes: random bytes at each extent, through qemu-io on the overlay (qcow2)."""
    cmd = ["qemu-io", "-f", "qcow2"]
    files = []
    for n, (off, length) in enumerate(extents):
        src = scratch / f"change-{n}.bin"
        src.write_bytes(os.urandom(length))
        files.append(src)
        cmd += ["-c", f"write -q -s {src} {off} {length}"]
    try:
        subprocess.run([*cmd, str(overlay)], check=True, capture_output=True)
    finally:
        for f in files:
            rm(f)


def system_overlay(server: Server, inst: dict[str, Any]) -> Path:
    return instance_dir(server, inst["InstanceId"]) / f"{inst['SystemDisk']['DiskId']}.qcow2"


def create_image(api: Api, client: Any, iid: str, name: str) -> tuple[str, float, float, float]:
    """CreateImage → NORMAL (DescribeImages every 50 ms); returns the image id, the time, the wall-clock time of
    the call and the call's own latency."""
    wall0, t0 = time.time(), time.perf_counter()
    image_id = api("CreateImage", {"InstanceId": iid, "ImageName": name})["ImageId"]
    t_call = time.perf_counter() - t0
    return image_id, wait_image(client, image_id, busy="CREATING", interval=POLL) - t0, wall0, t_call


def task_result(task: dict[str, Any] | None) -> dict[str, Any]:
    return json.loads(task["result"]) if task and task.get("result") else {}


def image_manifest(server: Server, api: Api, image_id: str, region: str = REGION) -> Any:
    """The system disk's manifest of an image (DescribeImages' DiskSet extension names it; the catalog holds it)."""
    import sqlite3

    from stratus.service.manifests import parse_manifest

    digest = api("DescribeImages", {"ImageIds": [image_id]})["ImageSet"][0]["DiskSet"][0]["ManifestDigest"]
    con = sqlite3.connect(f"file:{server.db_path}?mode=ro", uri=True)
    try:
        body = con.execute("SELECT body FROM manifests WHERE region = ? AND digest = ?", [region, digest]).fetchone()[0]
    finally:
        con.close()
    return parse_manifest(digest, bytes(body))


def read_verify_all(store: Any, digests: Sequence[str], workers: int = 4) -> float:
    """Time to read and re-hash every chunk (DirStore.get), in ``workers`` threads as export and copy do."""
    from concurrent.futures import ThreadPoolExecutor

    t = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(lambda d: len(store.get(d)), digests):
            pass
    return time.perf_counter() - t


def pid_alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "zombie" not in status.lower()


def kill_vms(root: Path) -> list[int]:
    """SIGKILL every VM whose pid file is under ``root`` (qemu.pid, and launcher.pid: the `timeout` process
    that leads its group), only if that process's command line names the instance (``stratus-<id>``)."""
    killed = []
    if not root.exists():
        return killed
    for name in ("qemu.pid", "launcher.pid"):
        for pidfile in root.rglob(name):
            try:
                pid = int(pidfile.read_text().strip())
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except (OSError, ValueError):
                continue
            if f"stratus-{pidfile.parent.name}".encode() not in cmdline.split(b"\0"):
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
    return killed


def stop_all(server: Server | None, log_name: str) -> None:
    """Stop the server by its pid, kill any VM it left (by pid file), keep its log in bench/out/."""
    if server is None:
        return
    try:
        server.stop()
    finally:
        killed = kill_vms(server.data_dir / "regions")
        if killed:
            log(f"killed VMs left running: {killed}")
        with contextlib.suppress(OSError):
            (HERE / "out").mkdir(exist_ok=True)
            shutil.copyfile(server.log_path, HERE / "out" / log_name)


def render(title: str, facts: dict[str, str], intro: list[str], rows: list[Row], notes: list[str]) -> str:
    """The report, in bench/run.py's table format (Section | Measurement | Value | Reference | Ratio | Target)."""
    lines = [f"# {title}", ""]
    lines += ["| Machine | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in facts.items()] + [""]
    lines += intro + ["", "| Section | Measurement | Value | Reference | Ratio | Target | |",
                      "|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r.ratio:.2f}×" if r.ratio is not None else ""
        mark = "" if r.ok is None else ("ok" if r.ok else "**MISS**")
        lines.append(f"| {r.section} | {r.what} | {r.value} | {r.reference} | {ratio} | {r.target} | {mark} |")
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def fmt_b(n: float) -> str:
    if abs(n) >= GiB:
        return f"{n / GiB:,.2f} GiB"
    if abs(n) >= MiB:
        return f"{n / MiB:,.1f} MiB"
    if abs(n) >= KiB:
        return f"{n / KiB:,.0f} KiB"
    return f"{n:,.0f} B"


def fmt_ms(t: float) -> str:
    return f"{t * 1000:,.0f} ms"


def wait_idle(seconds: float) -> None:
    deadline = time.time() + seconds
    while os.getloadavg()[0] >= 0.5 and time.time() < deadline:
        log(f"waiting for the machine to go idle (load {os.getloadavg()[0]:.2f})")
        time.sleep(15)


def extra_facts(facts: dict[str, str]) -> dict[str, str]:
    facts["qemu-system"] = (bench._run_text(["qemu-system-x86_64", "--version"]).splitlines() or ["?"])[0]
    facts["load average at start"] = " / ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1/5/15 min)"
    return facts


# --------------------------------------------------------------------------- 1. RunInstances × N


def launch_batch(server: Server, api: Api, image_id: str, count: int, label: str) -> dict[str, Any]:
    """One RunInstances of ``count`` instances until all are seen RUNNING, with the splits."""
    prev = server.tasks("kind = 'launch'", [])
    prev_id = prev[-1]["id"] if prev else 0
    bases = host_dir(server) / "bases"
    bases_before = {p.name for p in bases.glob("*.raw")} if bases.exists() else set()
    os.sync()  # no writeback of earlier work (the test disk, the import) during the timed launch
    wall0, t0 = time.time(), time.perf_counter()
    ids = run_instances(api, image_id, count, InstanceName=f"{label}-{{R:1}}")
    t_resp = time.perf_counter() - t0
    t_seen, found, lat = wait_running(api, ids)
    total = t_seen - t0
    task = server.finished_task("kind = 'launch' AND id > ?", [prev_id])
    split = task_split(task)
    new_bases = [p for p in bases.glob("*.raw") if p.name not in bases_before]
    base = next(iter(sorted(bases.glob("*.raw"))))
    base_ready = os.stat(base).st_ctime  # the rename of the finished base
    overlays = [system_overlay(server, i) for i in found]
    overlays_done = max(os.stat(p).st_ctime for p in overlays)
    usage = [dir_usage(instance_dir(server, i)) for i in ids]
    started = split["created_at"] + split.get("queued", 0.0)
    return {
        "ids": ids, "total": total, "response": t_resp, "polls": len(lat), "poll_mean": statistics.fmean(lat),
        "task_created": split["created_at"] - wall0, "queued": split.get("queued", 0.0),
        "base": max(0.0, base_ready - started) if new_bases else 0.0,
        "overlays": overlays_done - max(started, base_ready if new_bases else started),
        "after_overlays": split["finished_at"] - overlays_done,
        "seen_after_done": total - (split["finished_at"] - wall0),
        "run": split.get("run", 0.0), "built_base": bool(new_bases), "base_path": str(base),
        "du": [u[0] for u in usage], "files": [u[1] for u in usage],
    }


def part_launch(server: Server, api: Api, work: Path, sizes: Sizes, seed: int, rows: list[Row], notes: list[str],
                results: dict[str, Any]) -> list[str]:
    log(f"part 1: building the test disk ({sizes.virtual / GiB:.2f} GiB virtual, {sizes.data / MiB:.0f} MiB data)")
    t0 = time.perf_counter()
    src, kinds = make_qcow2(work, "disk", sizes.virtual, sizes.data, seed)
    build_s = time.perf_counter() - t0
    image_id, t_import = import_image(server, src, "launch-image")
    results["launch_image"] = {"kinds": kinds, "file": src.stat().st_size, "build_s": build_s, "import_s": t_import}
    notes.append(f"Part 1 image: qcow2 {sizes.virtual / GiB:.2f} GiB virtual, {src.stat().st_size / MiB:,.0f} MiB "
                 f"file; data written {kinds['zeros'] / MiB:,.0f} MiB zeros (allocated), {kinds['random'] / MiB:,.0f}"
                 f" MiB random, {kinds['text'] / MiB:,.0f} MiB text (bench/run.py's builder); imported in "
                 f"{t_import:.1f} s.")

    log(f"part 1: RunInstances × {sizes.count}, first batch (materializes the base)")
    first = launch_batch(server, api, image_id, sizes.count, "first")
    log(f"  all RUNNING after {first['total']:.2f} s")
    log(f"part 1: RunInstances × {sizes.count}, second batch (base already there)")
    second = launch_batch(server, api, image_id, sizes.count, "second")
    log(f"  all RUNNING after {second['total']:.2f} s")
    base = Path(first["base_path"])
    base_alloc, base_size = allocated(base), base.stat().st_size

    # references, with the base Stratus made (read only)
    log("part 1: references (qemu-img create × N, cp of the base, qemu-img convert)")
    ref_dir = work / "ref-overlays"
    ref_dir.mkdir()
    gib = max(50, -(-sizes.virtual // GiB))

    def create_loop() -> float:
        for p in ref_dir.iterdir():
            p.unlink()
        os.sync()
        t = time.perf_counter()
        for n in range(sizes.count):
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw",
                            str(ref_dir / f"ov-{n}.qcow2"), f"{gib}G"], check=True)
        return time.perf_counter() - t

    create = best_of(sizes.reps, create_loop)
    qemu_img_overlay = max(allocated(p) for p in ref_dir.iterdir())
    shutil.rmtree(ref_dir)
    cp_out = work / "cp-base.raw"
    cp = best_of(sizes.reps, lambda: timed(["cp", str(base), str(cp_out)])[0],
                 before=lambda: (rm(cp_out), os.sync()))
    cp_alloc = allocated(cp_out)
    rm(cp_out)
    conv_out = work / "convert-base.raw"
    conv = best_of(sizes.reps, lambda: timed(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(src),
                                               str(conv_out)])[0], before=lambda: (rm(conv_out), os.sync()))
    rm(conv_out)
    results["launch"] = {"first": {k: v for k, v in first.items() if k != "ids"},
                         "second": {k: v for k, v in second.items() if k != "ids"},
                         "base": {"allocated": base_alloc, "size": base_size},
                         "reference": {"qemu_img_create_loop": create, "cp_base": cp, "convert": conv,
                                       "qemu_img_overlay_bytes": qemu_img_overlay}}
    c_best, cp_best, conv_best = min(create), min(cp), min(conv)
    n = sizes.count
    for label, b in (("first batch (materializes the base)", first), ("second batch (base already there)", second)):
        sec = f"RunInstances × {n}, {label.split(' (')[0]}"
        rows.append(Row(sec, f"RunInstances → all {n} RUNNING ({label}; DescribeInstances every 50 ms)",
                        fmt_s(b["total"]), f"{fmt_s(c_best)} (qemu-img create × {n})", b["total"] / c_best,
                        "≤ 3 s", b["total"] <= 3.0))
        rows += [
            Row(sec, "… RunInstances call (request transaction: 100 instances + disks + task)", fmt_ms(b["response"])),
            Row(sec, "… task queued → running", fmt_ms(b["queued"])),
        ]
        if b["built_base"]:
            rows.append(Row(sec, "… base materialized (task start → base renamed into place)", fmt_s(b["base"]),
                            f"{fmt_s(conv_best)} (qemu-img convert -O raw of the image); cp of the base "
                            f"{fmt_s(cp_best)}", b["base"] / conv_best))
        rows += [
            Row(sec, f"… {n} overlays created (→ last overlay renamed)", fmt_ms(b["overlays"]),
                f"{fmt_s(c_best)} (qemu-img create × {n})", b["overlays"] / c_best),
            Row(sec, "… last overlay → task done (states RUNNING)", fmt_ms(b["after_overlays"])),
            Row(sec, "… task done → seen RUNNING by the poll", fmt_ms(b["seen_after_done"]),
                f"{b['polls']} polls, {fmt_ms(b['poll_mean'])} each ({n} instances per answer)"),
            Row(sec, "extra bytes on disk per instance (du of its dir: max / mean)",
                f"{fmt_b(max(b['du']))} / {fmt_b(statistics.fmean(b['du']))}",
                f"files only {fmt_b(max(b['files']))}; a qemu-img-made overlay {fmt_b(qemu_img_overlay)}",
                None, "≤ 1 MiB", max(b["du"]) <= MiB),
        ]
    rows += [
        Row("base", "base materialized once (sparse raw, 0444)", f"{fmt_b(base_alloc)} allocated",
            f"{fmt_b(base_size)} virtual; cp of it: {fmt_b(cp_alloc)} allocated"),
        Row("reference", f"qemu-img create -f qcow2 -b BASE -F raw × {n} (a loop, best of {sizes.reps})",
            fmt_s(c_best), f"{fmt_ms(c_best / n)} each"),
        Row("reference", "cp of the base (coreutils, sparse-aware)", fmt_s(cp_best), fmt_rate(base_alloc, cp_best)),
        Row("reference", "qemu-img convert -f qcow2 -O raw of the imported image", fmt_s(conv_best),
            fmt_rate(sum(kinds.values()), conv_best) + " of data"),
    ]
    # where the base's time goes: the storage layer alone, in this process (no task, no catalog)
    from stratus.storage.dirstore import DirStore
    from stratus.storage.export import materialize_raw

    manifest = image_manifest(server, api, image_id)
    store = DirStore(server.data_dir / "regions" / REGION / "store")
    scratch = work / "materialize.raw"
    os.sync()
    t_read = read_verify_all(store, sorted(manifest.data_digests()))

    def clean() -> None:
        rm(scratch)
        os.sync()

    mat = best_of(sizes.reps, lambda: elapsed(lambda: materialize_raw(manifest, store, scratch)), before=clean)
    pairs: list[tuple[float, float]] = []

    def nosync_then_fsync() -> float:
        t = elapsed(lambda: materialize_raw(manifest, store, scratch, fsync=False))
        pairs.append((t, bench.fsync_file(scratch)))
        return t

    best_of(sizes.reps, nosync_then_fsync, before=clean)
    rm(scratch)
    t_mat = min(mat)
    t_nosync, t_sync_after = min(pairs[1:])
    results["launch"]["diagnostics"] = {"read_verify": t_read, "materialize": mat, "materialize_nofsync_fsync": pairs}
    sec = "base, where the time goes (in-process, page cache warm now)"
    rows += [
        Row(sec, f"read + BLAKE3-verify every chunk ({len(manifest.data_digests()):,}; DirStore.get, 4 threads)",
            fmt_s(t_read), fmt_rate(manifest.data_bytes, t_read), t_read / conv_best),
        Row(sec, f"materialize_raw (what ensure_base runs), fsync; best of {sizes.reps}", fmt_s(t_mat),
            f"{fmt_s(conv_best)} (qemu-img convert); all runs {', '.join(f'{x:.2f}' for x in mat)} s",
            t_mat / conv_best),
        Row(sec, "materialize_raw without fsync; then the fsync of the file",
            f"{fmt_s(t_nosync)}; {fmt_s(t_sync_after)}", "", t_nosync / conv_best),
    ]
    if first["built_base"]:
        share = first["base"] / first["total"]
        notes.append(f"First batch: {first['base']:.2f} s of its {first['total']:.2f} s ({100 * share:.0f} %) is "
                     f"the base's materialization; without it the batch is {first['total'] - first['base']:.2f} s.")
    return first["ids"] + second["ids"]


# --------------------------------------------------------------------------- 2. CreateImage


def part_capture(server: Server, api: Api, work: Path, sizes: Sizes, seed: int, rows: list[Row],
                 notes: list[str], results: dict[str, Any]) -> list[str]:
    log(f"part 2: building the capture disk ({sizes.cap_virtual / GiB:.0f} GiB virtual, "
        f"{sizes.cap_data / MiB:.0f} MiB data)")
    src, kinds = make_qcow2(work, "capdisk", sizes.cap_virtual, sizes.cap_data, seed + 2)
    image_id, t_import = import_image(server, src, "capture-image")
    rm(src)
    notes.append(f"Part 2 image: {sizes.cap_virtual / GiB:.0f} GiB virtual, {sum(kinds.values()) / MiB:,.0f} MiB "
                 f"of data written ({kinds['zeros'] / MiB:,.0f} MiB zeros, {kinds['random'] / MiB:,.0f} MiB random, "
                 f"{kinds['text'] / MiB:,.0f} MiB text); imported in {t_import:.1f} s.")
    log("part 2: one instance per variant (disk driver)")
    t0 = time.perf_counter()
    ids = run_instances(api, image_id, len(VARIANTS), InstanceName="capture-{R:1}")
    _, found, _ = wait_running(api, ids)
    t_launch = time.perf_counter() - t0
    notes.append(f"Part 2 launch of {len(ids)} instances (materializes the {sizes.cap_virtual / GiB:.0f} GiB base): "
                 f"{t_launch:.2f} s (not a target).")
    client = server.client(REGION)
    store = server.data_dir / "regions" / REGION / "store"
    results["capture"] = {}
    for variant, inst in zip(VARIANTS, found, strict=True):
        overlay = system_overlay(server, inst)
        extents = change_extents(variant, sizes.cap_virtual, sizes.change, sizes.pieces, seed)
        touched = chunks_touched(extents)
        write_change(overlay, extents, work)
        log(f"part 2: {variant}: CreateImage ({touched} chunks touched)")
        before = chunk_stats(store)
        os.sync()
        name = f"captured-{variant.split(',')[0]}-{len(results['capture'])}"
        new_id, t_cap, wall0, t_call = create_image(api, client, inst["InstanceId"], name)
        seen_lag = t_cap - (server.image_normal_at(new_id) - wall0)
        after = chunk_stats(store)
        task = server.finished_task("kind = 'capture' AND image_id = ?", [new_id])
        split = task_split(task)
        res = task_result(task).get("disks", {})
        disk_res = next(iter(res.values()), {})
        diag = capture_breakdown(server, api, image_id, overlay, inst["SystemDisk"]["DiskSize"] * GiB, work,
                                 sizes.reps)
        conv = convert_reference(overlay, work / "ref-capture.raw", sizes.reps, durable=False)
        conv_sync = convert_reference(overlay, work / "ref-capture.raw", sizes.reps, durable=True)
        conv_best = min(conv)
        added = after[1] - before[1]
        results["capture"][variant] = {"time": t_cap, "task": split, "result": disk_res, "convert": conv,
                                       "convert_fsync": conv_sync, "store_added": added,
                                       "chunks_added": after[0] - before[0], "touched": touched, "extents": extents,
                                       "breakdown": diag, "call": t_call, "seen_lag": seen_lag}
        sec = f"CreateImage, {fmt_b(sizes.change)} changed, {variant}"
        ratio = t_cap / conv_best
        rows += [
            Row(sec, "CreateImage → NORMAL (DescribeImages every 50 ms)", fmt_s(t_cap),
                f"{fmt_s(conv_best)} (qemu-img convert -O raw of overlay + base); {conv_best / t_cap:,.0f}× faster",
                ratio, "≥ 20× faster (≤ 0.05×)", ratio <= 0.05),
            Row(sec, "… CreateImage call; task queued → running; task run; image NORMAL → seen by the poll",
                f"{fmt_ms(t_call)}; {fmt_ms(max(0.0, split.get('queued', 0.0)))}; {fmt_ms(split.get('run', 0.0))}; "
                f"{fmt_ms(seen_lag)}"),
            Row(sec, "… against qemu-img convert, then fsync of its output (durable, like the capture)",
                fmt_s(t_cap), f"{fmt_s(min(conv_sync))}; {min(conv_sync) / t_cap:,.0f}× faster",
                t_cap / min(conv_sync)),
            Row(sec, f"… task run, in-process stages (best of {sizes.reps})",
                "; ".join(f"{k} {fmt_ms(v)}" for k, v in diag.items())),
            Row(sec, "bytes the capture added to the store",
                f"{fmt_b(added)} ({after[0] - before[0]} chunks)",
                f"change {fmt_b(sizes.change)} touching {touched} chunks of 1 MiB; task: "
                f"{disk_res.get('changed_chunks', '?')} chunks rebuilt, {fmt_b(disk_res.get('read_bytes', 0))} read "
                f"from the overlay", added / sizes.change),
        ]
    return ids


def convert_reference(overlay: Path, out: Path, reps: int, *, durable: bool) -> list[float]:
    """qemu-img convert -O raw of the overlay (read through its base), best-of runs; + fsync if durable."""

    def once() -> float:
        t = timed(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(overlay), str(out)])[0]
        return t + (bench.fsync_file(out) if durable else 0.0)

    try:
        return best_of(reps, once, before=lambda: (rm(out), os.sync()))
    finally:
        rm(out)


def capture_breakdown(server: Server, api: Api, image_id: str, overlay: Path, vsize: int, work: Path,
                      reps: int) -> dict[str, float]:
    """Where a capture's time goes, in this process: the stages CaptureHandler runs, on the same overlay, into
    scratch stores seeded with the base chunks the capture reads (so every rebuilt chunk is written anew)."""
    from stratus.compute.overlays import changed_extents
    from stratus.domain.manifest import DiskManifest
    from stratus.storage.capture import capture_disk
    from stratus.storage.dirstore import DirStore

    base = image_manifest(server, api, image_id)
    body = base.encode()
    real = DirStore(server.data_dir / "regions" / REGION / "store")
    out: dict[str, float] = {}
    out["parse base manifest"] = elapsed(lambda: DiskManifest.decode(body))
    extents = changed_extents(overlay)
    out["qemu-img map"] = min(elapsed(lambda: changed_extents(overlay)) for _ in range(reps))
    dirty: set[int] = set()
    for e in extents:
        if e.data or e.zero:
            last = (min(e.start + e.length, vsize) - 1) // base.chunk_size
            dirty.update(range(e.start // base.chunk_size, last + 1))
    result = None
    root = work / "capture-scratch"
    for label, kw in (("capture_disk (durable, O_DIRECT)", {}),
                      ("capture_disk (no fsync, page cache)", {"durable": False, "direct_io": False})):
        times = []
        for _ in range(reps + 1):  # the first run untimed
            shutil.rmtree(root, ignore_errors=True)
            scratch = DirStore(root, **kw)
            for i in dirty:
                if i < len(base.chunks) and base.chunks[i] is not None:
                    scratch.put(base.chunks[i], real.get(base.chunks[i]))
            os.sync()
            t = time.perf_counter()
            result = capture_disk(overlay, extents, vsize, base, scratch, base.chunk_size)
            times.append(time.perf_counter() - t)
        out[label] = min(times[1:])
    shutil.rmtree(root, ignore_errors=True)
    assert result is not None
    out["manifest to_json + digest"] = elapsed(lambda: DiskManifest(result.manifest.virtual_size,
                                                                    result.manifest.chunk_size,
                                                                    result.manifest.chunks).digest())
    return out


def elapsed(fn: Any) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# --------------------------------------------------------------------------- 3. the qemu driver


def console_text(api: Api, iid: str) -> str:
    out = api("GetInstanceConsoleOutput", {"InstanceId": iid})
    return base64.b64decode(out.get("Output") or "").decode("utf-8", "replace")


def last_printk(text: str, before: str) -> float | None:
    """The last kernel timestamp ("[    1.234567]") before ``before`` on the console: guest-side boot time."""
    head = text.split(before, 1)[0]
    stamps = re.findall(r"^\[\s*(\d+\.\d+)\]", head, re.M)
    return float(stamps[-1]) if stamps else None


def vm_launch(server: Server, api: Api, image_id: str, n: int) -> dict[str, Any]:
    prev = server.tasks("kind = 'launch'", [])
    prev_id = prev[-1]["id"] if prev else 0
    user_data = base64.b64encode(USER_DATA).decode()
    os.sync()
    wall0, t0 = time.time(), time.perf_counter()
    [iid] = run_instances(api, image_id, 1, InstanceType="S5.SMALL1", SystemDisk={"DiskSize": 1},
                          UserData=user_data, InstanceName=f"vm-{n}")
    t_resp = time.perf_counter() - t0
    seen: dict[str, float] = {}
    deadline = time.time() + 180
    text = ""
    while time.time() < deadline:
        if "running" not in seen:
            [inst] = describe_instances(api, [iid])
            if inst["InstanceState"] == "LAUNCH_FAILED":
                raise RuntimeError(f"{iid} LAUNCH_FAILED: {inst.get('LatestOperationErrorMsg')}")
            if inst["InstanceState"] == "RUNNING":
                seen["running"] = time.perf_counter() - t0
        text = console_text(api, iid)
        now = time.perf_counter() - t0
        if text and "console" not in seen:
            seen["console"] = now
        if "STRATUS-BOOT-OK" in text and "boot_ok" not in seen:
            seen["boot_ok"] = now
        if MARKER in text:
            seen["marker"] = now
            break
        time.sleep(POLL)
    else:
        raise RuntimeError(f"{MARKER} not on the console of {iid} after 180 s:\n{text[-2000:]}")
    seen.setdefault("running", seen["marker"])
    task = server.finished_task("kind = 'launch' AND id > ?", [prev_id])
    split = task_split(task)
    wd = instance_dir(server, iid)
    qemu_pid_at = os.stat(wd / "qemu.pid").st_mtime - wall0 if (wd / "qemu.pid").exists() else None
    ok = f"{MARKER} rc=0" in text
    return {"id": iid, "response": t_resp, **seen, "task_created": split["created_at"] - wall0,
            "queued": split.get("queued", 0.0), "run": split.get("run", 0.0),
            "task_done": split["finished_at"] - wall0, "qemu_pid_written": qemu_pid_at,
            "guest_kernel_s": last_printk(text, "STRATUS-BOOT-OK"), "rc0": ok}


def bare_qemu(server: Server, work: Path, n: int, append: str = "") -> float:
    """The same QEMU command line the driver builds (stratus.compute.qemu_driver.build_argv), run directly:
    overlay on the same base, seed and kernel made beforehand; Popen → marker on the console file."""
    from stratus.compute import boot
    from stratus.compute.driver import VmSpec
    from stratus.compute.qemu_driver import CONSOLE_LOG, SEED_ISO, build_argv
    from stratus.compute.seed import make_nocloud_seed

    bases = host_dir(server) / "bases"
    base = next(iter(sorted(bases.glob("*.raw"))))
    found = boot.extract_kernel(base, bases / f"{base.name[:-4]}.boot")
    assert found is not None, "the tiny image should boot directly"
    kernel, initrd, cmdline = found
    cmdline = cmdline + append
    wd = work / f"bare-{n}"
    shutil.rmtree(wd, ignore_errors=True)
    wd.mkdir()
    disk = wd / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw", str(disk), "1G"],
                   check=True)
    make_nocloud_seed(wd / SEED_ISO, instance_id=f"bench-bare-{n}", hostname="bare", user_data=USER_DATA)
    spec = VmSpec(instance_id=f"bench-bare-{n}", workdir=wd, disks=[disk], memory_mib=1024, cpus=1,
                  user_data=USER_DATA, hostname="bare", kernel=kernel, initrd=initrd, cmdline=cmdline, max_seconds=300)
    argv = build_argv(spec, with_seed=True)
    console = wd / CONSOLE_LOG
    os.sync()
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=wd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            if console.exists() and MARKER.encode() in console.read_bytes():
                return time.perf_counter() - t0
            if proc.poll() is not None:
                raise RuntimeError(f"bare qemu exited {proc.returncode}")
            time.sleep(0.02)
        raise RuntimeError("bare qemu: no marker after 180 s")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: `timeout` and QEMU
        proc.wait(30)
        shutil.rmtree(wd, ignore_errors=True)


def part_qemu(work: Path, sizes: Sizes, rows: list[Row], notes: list[str], results: dict[str, Any]) -> None:
    from stratus.compute import tinyimage

    missing = tinyimage.missing_tools()
    if missing:
        rows.append(Row("qemu driver", "skipped", f"missing {missing}"))
        return
    server = make_server(work, "qemu-server", extra_env={"STRATUS_COMPUTE": "qemu"})
    ids: list[str] = []
    try:
        log("part 3: starting a server with STRATUS_COMPUTE=qemu")
        start_server(server)
        api = Api(server)
        root = tinyimage.build_tiny_root_image(work / "tiny")
        image_id, _ = import_image(server, root, "tiny", fmt="raw")
        launches = []
        for n in range(sizes.vm_launches):
            log(f"part 3: launch {n + 1}/{sizes.vm_launches}")
            one = vm_launch(server, api, image_id, n)
            launches.append(one)
            ids.append(one["id"])
            log(f"  {MARKER} after {one['marker']:.2f} s")
            terminate(api, [one["id"]])
            ids.remove(one["id"])
        log("part 3: reference: the same QEMU command line, bare")
        bare = best_of(sizes.reps, lambda: bare_qemu(server, work, 0))
        log("part 3: diagnostic: bare, with `quiet` on the kernel command line")
        bare_quiet = best_of(sizes.reps, lambda: bare_qemu(server, work, 1, " quiet"))
    finally:
        if ids:
            with contextlib.suppress(Exception):
                terminate(Api(server), ids, timeout=60)
        stop_all(server, "last-server-instances-qemu.log")
    marks = [x["marker"] for x in launches]
    best, med = min(marks), statistics.median(marks)
    bare_best = min(bare)
    results["qemu"] = {"launches": launches, "bare": bare, "bare_quiet": bare_quiet}
    sec = "qemu driver (TCG)"
    rows += [
        Row(sec, f"RunInstances → {MARKER} on the console, best of {len(marks)}", fmt_s(best),
            f"{fmt_s(bare_best)} (the same QEMU command line run bare, best of {len(bare)})", best / bare_best,
            "≤ 5 s", best <= 5.0),
        Row(sec, f"… median of {len(marks)} ({', '.join(f'{m:.2f}' for m in marks)} s; the first materializes the "
            "base and extracts the kernel)", fmt_s(med), "", med / bare_best, "≤ 5 s", med <= 5.0),
        Row(sec, "diagnostic: the same bare command line with `quiet` added to the kernel command line (the "
            "driver's is `root=/dev/vda rw console=ttyS0`; every console byte is an emulated UART write under TCG)",
            fmt_s(min(bare_quiet)), f"{fmt_s(bare_best)} without", min(bare_quiet) / bare_best),
    ]
    for n, x in enumerate(launches):
        parts = [f"call {fmt_ms(x['response'])}", f"queued {fmt_ms(x['queued'])}",
                 f"task run {fmt_ms(x['run'])} (→ RUNNING)"]
        if x["qemu_pid_written"] is not None:
            parts.append(f"QEMU wrote its pid at {x['qemu_pid_written']:.2f} s")
        parts += [f"first console output seen {x.get('console', 0):.2f} s",
                  f"STRATUS-BOOT-OK {x.get('boot_ok', 0):.2f} s", f"marker {x['marker']:.2f} s"]
        if x["guest_kernel_s"] is not None:
            parts.append(f"last kernel timestamp before BOOT-OK {x['guest_kernel_s']:.2f} s (guest clock)")
        rows.append(Row(sec, f"launch {n + 1}: where the time went", "; ".join(parts), "" if x["rc0"] else "rc≠0"))


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes for a smoke run (~1 min)")
    ap.add_argument("--out", default=None, help="markdown report (default bench/results-instances.md; "
                    "--quick: bench/out/results-instances-quick.md)")
    ap.add_argument("--workdir", default=None, help="parent of the temp work dir (default bench/out)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--wait-idle", type=float, default=0, metavar="SECONDS")
    ap.add_argument("--skip-qemu", action="store_true", help="skip part 3 (the qemu driver)")
    args = ap.parse_args(argv)
    if args.wait_idle:
        wait_idle(args.wait_idle)
    sizes = QUICK if args.quick else FULL
    out = Path(args.out) if args.out else (HERE / "out" / "results-instances-quick.md" if args.quick
                                           else HERE / "results-instances.md")
    parent = Path(args.workdir) if args.workdir else HERE / "out"
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="instances-", dir=parent))
    log(f"work dir {work}")
    rows: list[Row] = []
    notes: list[str] = []
    results: dict[str, Any] = {"sizes": sizes.__dict__}
    facts = extra_facts(machine_facts(work))
    results["facts"] = facts
    server: EnvServer | None = None
    try:
        server = make_server(work, "disk-server")
        log(f"starting stratus serve (disk driver) on port {server.port}")
        start_server(server)
        api = Api(server)
        ids = part_launch(server, api, work, sizes, args.seed, rows, notes, results)
        log(f"terminating {len(ids)} instances")
        t_term = terminate(api, ids)
        rows.append(Row("cleanup", f"TerminateInstances of the {len(ids)} (→ gone from DescribeInstances)",
                        fmt_s(t_term)))
        ids = part_capture(server, api, work, sizes, args.seed, rows, notes, results)
        terminate(api, ids)
        stop_all(server, "last-server-instances.log")
        server = None
        if not args.skip_qemu:
            part_qemu(work, sizes, rows, notes, results)
    finally:
        stop_all(server, "last-server-instances.log")
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    facts["load average at end"] = " / ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1/5/15 min)"
    notes += [
        "Ratios are Stratus's time over the reference's time measured in this run (lower is better); for "
        "CreateImage the target ≥ 20× faster is a ratio ≤ 0.05.",
        "Splits come from the catalog (tasks.created_at/started_at/finished_at) and from file change times "
        "(ctime of the base and of each overlay: both are renamed into place when complete); the poll sees "
        "RUNNING up to one poll interval plus one DescribeInstances call after the task is done.",
        "Page cache warm for the references (each ran once untimed first); the server's chunks were written "
        "with O_DIRECT at import, so the base's materialization may read them from the device. `sync` (os.sync) "
        "runs before every timed Stratus operation and every reference run, so no earlier writeback overlaps it.",
        "The qemu driver's VMs run under TCG (-accel tcg), 1 vCPU, 1 GiB (S5.SMALL1); the guest is a Debian "
        "cloud kernel with a busybox initramfs (src/stratus/compute/tinyimage.py) whose /init runs the user data.",
    ]
    intro = [f"{'Smoke run (--quick): sizes shrunk, numbers not comparable. ' if args.quick else ''}"
             f"Disk driver for parts 1-2, qemu driver for part 3; one run each; best of {sizes.reps} for "
             "references after one untimed run."]
    report = render("Stratus benchmark: instances" + (" (--quick)" if args.quick else ""), facts, intro, rows, notes)
    print(report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    (HERE / "out").mkdir(exist_ok=True)
    (HERE / "out" / ("results-instances-quick.json" if args.quick else "results-instances.json")).write_text(
        json.dumps(results, indent=2, default=str))
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
