"""Fault injection against real processes: a worker paused past its lease (SIGSTOP) while another
finishes its task, `kill -9` at random points of import, capture, copy and export, and a store that runs
out of space in the middle of an import. After each fault: `stratus fsck` clean, every image NORMAL with
the right bytes (qemu-img compare against its source) or failed with a reason, the server answering.

`make soak` runs the kill -9 test with more rounds (STRATUS_SOAK_ROUNDS)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from stratus.catalog.db import open_database
from stratus.catalog.models import Image, Task
from stratus.disk import qemu_img
from tests import hostile
from tests.conftest import STRATUS, Account, Server, make_server, new_db_url, wait_for
from tests.e2e.helpers import describe, file_server, import_request, wait_image, wait_task
from tests.e2e.test_crash import trickle_server
from tests.tasks.test_download_resume import FileServer, serving

MiB = 1024 * 1024
ALLOW = {"STRATUS_IMPORT_URL_ALLOW": "127.0.0.2/32"}


# --------------------------------------------------------------------------- helpers


def spawn(srv: Server, *args: str, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [STRATUS, *args, "--data-dir", str(srv.data_dir), "--config", str(srv.config), "--log-level", "info"],
        env=srv.env, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
    )


def end(proc: subprocess.Popen[bytes]) -> None:
    """Stop a process this test started (its own session), by its id."""
    if proc.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGCONT)
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def serve_api_only(srv: Server) -> None:
    srv.proc = spawn(srv, "serve", "--port", str(srv.port), "--no-workers", log=srv.log)
    wait_for(lambda: _answers(srv), timeout=30, what="the API server")


def _answers(srv: Server) -> bool:
    assert srv.proc is not None and srv.proc.poll() is None, srv.log.read_text()[-2000:]
    try:
        httpx.get(srv.url + "/", timeout=0.5)
        return True
    except httpx.TransportError:
        return False


def task_of(srv: Server, image_id: str) -> dict[str, Any] | None:
    db = open_database(srv.env["STRATUS_DATABASE_URL"])
    try:
        with db.read() as s:
            t = s.scalars(select(Task).where(Task.image_id == image_id)).first()
            img = s.get(Image, image_id)
            if t is None:
                return None
            return {"id": t.id, "state": t.state, "owner": t.lease_owner, "attempts": t.attempts,
                    "progress": t.progress, "stage": t.stage, "result": t.result, "error": t.error,
                    "payload": t.payload, "released": getattr(t, "released", 0),
                    "image_state": img.state if img else None,
                    "image_progress": img.progress if img else None,
                    "image_reason": img.state_reason if img else None}
    finally:
        db.dispose()


def owned_by(task: dict[str, Any] | None, proc: subprocess.Popen[bytes]) -> bool:
    return bool(task and task["state"] == "RUNNING" and task["owner"] and f":{proc.pid}:" in task["owner"])


def fsck_clean(srv: Server) -> None:
    res = srv.run("fsck", "--data-dir", str(srv.data_dir), "--config", str(srv.config), "--json", check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def fsck_clean_here(srv: Server) -> None:
    """What `stratus fsck` checks, through the same service function in this process (a CLI process costs
    seconds on a busy machine; the CLI itself runs at the end of each test)."""
    from stratus.config import load_settings
    from stratus.service.context import Services
    from stratus.service.maintenance import fsck_region

    svc = Services.open(load_settings(data_dir=srv.data_dir, config_file=srv.config, env=srv.env))
    try:
        for region in svc.settings.regions:
            report = fsck_region(svc, region.name).report
            assert not report.damaged and not report.missing, (region.name, report)
    finally:
        svc.db.dispose()


def same_bytes_here(srv: Server, region: str, image_id: str, source: Path, fmt: str, tmp: Path) -> bool:
    """The image's system disk, read back from the store verified chunk by chunk in this process, against
    its source (`same_bytes` does it through the API, at a CLI process per image)."""
    from stratus.catalog.models import ImageDisk
    from stratus.config import load_settings
    from stratus.service.context import Services
    from stratus.service.manifests import load_manifest
    from stratus.storage.export import materialize_raw

    svc = Services.open(load_settings(data_dir=srv.data_dir, config_file=srv.config, env=srv.env))
    out = tmp / f"{image_id}.here.raw"
    try:
        with svc.db.read() as s:
            digest = s.scalar(select(ImageDisk.manifest_digest).where(ImageDisk.image_id == image_id,
                                                                       ImageDisk.index == 0))
        assert digest, f"{image_id} is NORMAL without a manifest"
        materialize_raw(load_manifest(svc, region, digest), svc.store(region), out)
        return qemu_img.compare(source, fmt, out, "raw")
    finally:
        out.unlink(missing_ok=True)
        svc.db.dispose()


def same_bytes(srv: Server, acct: Account, image_id: str, source: Path, fmt: str, tmp: Path,
               region: str = "ap-guangzhou") -> bool:
    out = tmp / f"{image_id}.raw"
    srv.run("image", "export", image_id, "-o", str(out), "--region", region, env=acct.env())
    try:
        return qemu_img.compare(source, fmt, out, "raw")
    finally:
        out.unlink(missing_ok=True)


QEMU_FMT = {"raw": "raw", "qcow2": "qcow2", "vmdk-stream": "vmdk", "vhd": "vpc", "vhdx": "vhdx"}


# --------------------------------------------------------------------------- SIGSTOP past the lease


def test_a_paused_worker_writes_nothing_after_it_wakes(tmp_path: Path, db_url: str) -> None:
    """Worker 1 is SIGSTOPped in the middle of a URL import, past its lease; worker 2 takes the task over.
    Worker 1 is SIGCONTed while worker 2 is still at it: it writes nothing visible (the task stays worker
    2's, progress never jumps, worker 2's download is never removed), and the image ends NORMAL with the
    right bytes."""
    assert db_url
    srv = make_server(tmp_path, new_db_url(tmp_path), env_extra=ALLOW)
    srv.config.write_text("workers = 1\n" + srv.config.read_text())
    srv.data_dir.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        serve_api_only(srv)
        acct = srv.account("pause")
        w1 = spawn(srv, "worker", log=tmp_path / "w1.log")
        procs.append(w1)
        src = tmp_path / "disk.raw"  # 6 MiB that must all cross the wire: ~6 s a download
        src.write_bytes(random.Random(7).randbytes(6 * MiB))
        with trickle_server(src, rate=1 * MiB) as url:
            image_id = srv.client(acct).ImportImage(import_request("paused", url)).ImageId
            first = wait_for(lambda: (t := task_of(srv, image_id)) and owned_by(t, w1) and t["progress"] > 3 and t,
                             timeout=60, what="worker 1 to be downloading")
            os.killpg(w1.pid, signal.SIGSTOP)
            w2 = spawn(srv, "worker", log=tmp_path / "w2.log")
            procs.append(w2)
            taken = wait_for(lambda: (t := task_of(srv, image_id)) and owned_by(t, w2) and t, timeout=30,
                             what="worker 2 to take the task over")
            assert taken["attempts"] == first["attempts"] + 1
            stale_dir = srv.data_dir / "tmp" / f"task-{first['id']}-a{first['attempts']}"
            # Worker 2's scratch (per attempt; before fencing, one directory per task was shared).
            candidates = [srv.data_dir / "tmp" / f"task-{taken['id']}-a{taken['attempts']}",
                          srv.data_dir / "tmp" / f"task-{taken['id']}"]
            live_dir = wait_for(lambda: next((d for d in candidates if (d / "disk0.src").exists()
                                              and (d / "disk0.src").stat().st_size > 0), None),
                                timeout=30, what="worker 2's download to start")
            os.killpg(w1.pid, signal.SIGCONT)
            # Watch every write while both run: worker 1 must not show up anywhere.
            last_task_pct, last_image_pct = -1.0, -1.0
            deadline = time.time() + 4
            while time.time() < deadline:
                t = task_of(srv, image_id)
                assert t is not None
                if t["state"] != "RUNNING":
                    break
                assert f":{w2.pid}:" in t["owner"] and t["attempts"] == taken["attempts"], t
                assert t["progress"] >= last_task_pct and t["image_progress"] >= last_image_pct, t
                last_task_pct, last_image_pct = t["progress"], t["image_progress"]
                if not live_dir.exists():  # removed by worker 2 itself only when the task ends
                    now = task_of(srv, image_id)
                    assert now is not None and now["state"] != "RUNNING", "the live execution's scratch was removed"
                    break
                time.sleep(0.05)
            image = wait_image(srv, acct, image_id, timeout=120)
        assert image["ImageState"] == "NORMAL", image["ImageStateReason"]
        finished = task_of(srv, image_id)
        assert finished is not None and finished["state"] == "DONE" and f":{w2.pid}:" in finished["owner"]
        time.sleep(2)  # anything worker 1 still had to write would land now
        assert task_of(srv, image_id) == finished
        assert w1.poll() is None  # it is alive and well, just not writing
        assert "lease" in (tmp_path / "w1.log").read_text()
        assert not stale_dir.exists() and not live_dir.exists()
        assert same_bytes(srv, acct, image_id, src, "raw", tmp_path)
        fsck_clean(srv)
    finally:
        for p in procs:
            end(p)
        srv.stop()


# --------------------------------------------------------------------------- graceful restarts


def test_graceful_restarts_are_not_crashes_and_the_download_resumes(tmp_path: Path, db_url: str) -> None:
    """`stratus serve` is stopped with SIGTERM four times in the middle of a URL import (more than the
    three crashes a task survives): each stop hands the task back without using up an attempt, each
    restart goes on with the download where it stopped (HTTP Range), and the image ends NORMAL."""
    assert db_url
    srv = make_server(tmp_path, new_db_url(tmp_path), env_extra=ALLOW)
    srv.start()
    try:
        acct = srv.account("restarts")
        body = random.Random(5).randbytes(5 * MiB)
        with serving(FileServer(body, cuts=0, slow=True, delay=0.08)) as fs:  # ~0.8 MiB/s
            image_id = srv.client(acct).ImportImage(import_request("restarted", fs.url)).ImageId
            for _ in range(4):
                before = fs.sent
                wait_for(lambda b=before: fs.sent > b + 512 * 1024, timeout=60, what="the download to go on")
                srv.stop()  # SIGTERM: a graceful stop
                task = task_of(srv, image_id)
                assert task is not None and task["state"] == "QUEUED", task
                srv.start()
            image = wait_image(srv, acct, image_id, timeout=120)
        assert image["ImageState"] == "NORMAL", image["ImageStateReason"]
        task = task_of(srv, image_id)
        assert task is not None and task["attempts"] - task["released"] == 1, task  # no crash counted
        ranges = [r for r in fs.requests if r]
        assert len(ranges) >= 3, fs.requests  # each restart asked for the rest only
        assert fs.sent < 1.5 * len(body), (fs.sent, len(body))
        src = tmp_path / "src.raw"
        src.write_bytes(body)
        assert same_bytes(srv, acct, image_id, src, "raw", tmp_path)
    finally:
        srv.stop()


# --------------------------------------------------------------------------- kill -9 everywhere


@pytest.fixture()
def chaos_server(tmp_path: Path) -> Iterator[Server]:
    # The long test runs once, on the suite's catalog (SQLite in `make test`; STRATUS_TEST_DATABASE=
    # postgresql for PostgreSQL); the SIGSTOP and restart tests run on both.
    srv = make_server(tmp_path, new_db_url(tmp_path), env_extra=ALLOW, config_extra=(
        f"sync_bytes_per_second = {8 * MiB}\n"
        "[quotas]\nimages_per_region = 200\n"
        '[[regions]]\nname = "ap-guangzhou"\nzones = ["ap-guangzhou-1"]\n'
        '[[regions]]\nname = "ap-shanghai"\nzones = ["ap-shanghai-1"]\n'
    ))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def _call(srv: Server, acct: Account, action: str, params: dict[str, Any], region: str = "ap-guangzhou") -> Any:
    return srv.common(acct, region).call_json(action, params)["Response"]


def test_kill9_at_random_points_of_import_capture_copy_and_export(chaos_server: Server, tmp_path: Path) -> None:
    srv = chaos_server
    acct = srv.account("chaos")
    rounds = int(os.environ.get("STRATUS_SOAK_ROUNDS", "4"))
    rng = random.Random(20261203)
    web = tmp_path / "web"
    web.mkdir()
    base_src = hostile.make_test_disk(web, "qcow2", 16 * MiB, seed=100)
    formats = ["raw", "qcow2", "vmdk-stream", "vhd"]
    sources = {f"r{n}": hostile.make_test_disk(web, formats[n % 4], 12 * MiB, seed=200 + n) for n in range(rounds)}
    expected: dict[tuple[str, str], tuple[Path, str]] = {}  # (region, image) -> its source and format
    exports: list[tuple[int, str]] = []  # (task, key in the bucket)
    kills = 0
    with file_server(web, "127.0.0.2") as (url, _):
        base = srv.client(acct).ImportImage(import_request("chaos-base", f"{url}/{base_src.name}")).ImageId
        assert wait_image(srv, acct, base)["ImageState"] == "NORMAL"
        expected[("ap-guangzhou", base)] = (base_src, "qcow2")
        run = _call(srv, acct, "RunInstances", {"ImageId": base, "Placement": {"Zone": "ap-guangzhou-1"}})
        [iid] = run["InstanceIdSet"]
        wait_for(lambda: _call(srv, acct, "DescribeInstances", {"InstanceIds": [iid]})["InstanceSet"][0]
                 ["InstanceState"] == "RUNNING", timeout=60, what="the instance")
        for n in range(rounds):
            name = f"r{n}"
            src = sources[name]
            imported = srv.client(acct).ImportImage(import_request(f"chaos-{name}", f"{url}/{src.name}")).ImageId
            expected[("ap-guangzhou", imported)] = (src, QEMU_FMT[formats[n % 4]])
            captured = _call(srv, acct, "CreateImage", {"InstanceId": iid, "ImageName": f"cap-{name}"})["ImageId"]
            expected[("ap-guangzhou", captured)] = (base_src, "qcow2")  # the disk driver never writes the disk
            synced = _call(srv, acct, "SyncImages", {"ImageIds": [base], "DestinationRegions": ["ap-shanghai"],
                                                     "ImageName": f"copy-{name}"})
            copies = _call(srv, acct, "DescribeImages", {"Filters": [{"Name": "image-name",
                                                                       "Values": [f"copy-{name}"]}]},
                           "ap-shanghai")["ImageSet"]
            assert synced is not None and len(copies) == 1
            expected[("ap-shanghai", copies[0]["ImageId"])] = (base_src, "qcow2")
            export = _call(srv, acct, "ExportImages", {"BucketName": "stratus-exports", "ImageIds": [base],
                                                       "ExportFormat": rng.choice(["RAW", "QCOW2", "VHD"]),
                                                       "FileNamePrefixList": [name]})
            exports.append((export["TaskId"], export["CosPaths"][0].lstrip("/")))
            for _ in range(5):  # five kills a round, at random points of the work in flight
                time.sleep(rng.uniform(0.05, 1.2))
                srv.kill9()
                kills += 1
                fsck_clean_here(srv)
                srv.start()
            for region, image_id in [(r, i) for (r, i) in expected if i in (imported, captured)] + [
                    ("ap-shanghai", copies[0]["ImageId"])]:
                wait_image(srv, acct, image_id, region=region, timeout=240)
            wait_task(srv, acct, export["TaskId"], timeout=240)
    assert kills >= 20 or rounds < 4
    fsck_clean(srv)
    outcomes: dict[str, int] = {}
    for (region, image_id), (src, fmt) in expected.items():
        image = describe(srv, acct, image_id, region)
        assert image is not None
        state = image["ImageState"]
        outcomes[state] = outcomes.get(state, 0) + 1
        if state == "NORMAL":
            assert same_bytes_here(srv, region, image_id, src, fmt, tmp_path), f"{image_id} in {region}"
        else:
            assert state in ("IMPORTFAILED", "CREATEFAILED") and image["ImageStateReason"], image
    bucket = srv.data_dir / "regions" / "ap-guangzhou" / "buckets" / "stratus-exports"
    for task_id, key in exports:
        task = wait_task(srv, acct, task_id)
        if task["TaskState"] == "SUCCESS":
            exported = bucket / key
            assert exported.exists(), (task, sorted(p.name for p in bucket.iterdir()))
            fmt = {"raw": "raw", "qcow2": "qcow2", "vhd": "vpc"}[exported.suffix.lstrip(".")]
            assert qemu_img.compare(base_src, "qcow2", exported, fmt), exported
        else:
            assert task["ErrorMessage"], task
    leftovers = [p.name for p in bucket.iterdir() if ".part" in p.name]
    assert not leftovers, leftovers
    assert outcomes.get("NORMAL", 0) >= len(expected) // 2, outcomes  # the faults didn't fail everything


# --------------------------------------------------------------------------- a full store


@contextmanager
def small_filesystem(path: Path, size_mib: int) -> Iterator[Path]:
    """A tmpfs of `size_mib` mounted at `path` (needs root), unmounted after."""
    path.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(path)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"can't mount a small filesystem here: {res.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_store_that_fills_up_fails_that_import_only(tmp_path: Path) -> None:
    srv = make_server(tmp_path, new_db_url(tmp_path), env_extra=ALLOW)
    store = srv.data_dir / "regions" / "ap-guangzhou" / "store"
    with small_filesystem(store, 24):
        srv.start()
        try:
            acct = srv.account("full")
            web = tmp_path / "web"
            web.mkdir()
            small = hostile.make_test_disk(web, "qcow2", 8 * MiB, seed=31)
            big = web / "big.raw"  # incompressible, and larger than the store's filesystem
            big.write_bytes(random.Random(32).randbytes(40 * MiB))
            with file_server(web, "127.0.0.2") as (url, _):
                ok = srv.client(acct).ImportImage(import_request("fits", f"{url}/{small.name}")).ImageId
                assert wait_image(srv, acct, ok)["ImageState"] == "NORMAL"
                too_big = srv.client(acct).ImportImage(import_request("too-big", f"{url}/{big.name}")).ImageId
                failed = wait_image(srv, acct, too_big, timeout=180)
            assert failed["ImageState"] == "IMPORTFAILED"
            reason = failed["ImageStateReason"]
            assert "no space" in reason.lower(), reason
            assert str(srv.data_dir) not in reason, reason  # no server paths in what the owner reads
            assert describe(srv, acct, ok)["ImageState"] == "NORMAL"  # type: ignore[index]
            fsck_clean(srv)
            assert same_bytes(srv, acct, ok, small, "qcow2", tmp_path)
            srv.run("image", "list", env=acct.env())  # the server answers
        finally:
            srv.stop()
