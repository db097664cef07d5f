"""Many processes on one catalog (issue 9): two API processes (`serve --no-workers`) and two compute hosts
(`worker --host`) on PostgreSQL, chunks in a real Swift s3api bucket, every process sharing one data
directory (uploads live there: docs/operations.md). An upload through one API process is imported through
the other; an import and a copy survive `kill -9` of the worker running them (the other host takes them
over after the 3 s lease); ten instances spread over both hosts, each launched by its own host; a host
whose worker stops is shown DOWN, its instance can still be terminated, and its disks go when it returns.

PostgreSQL only: several processes writing one SQLite file is not a supported deployment."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from stratus.catalog.db import open_database
from stratus.catalog.models import ImageDisk, Task
from tests.conftest import DATABASE, Account, Server, free_port, make_server, new_db_url, wait_for
from tests.e2e.helpers import import_request, wait_image
from tests.e2e.test_crash import trickle_server
from tests.e2e.test_faults import _answers, end, spawn
from tests.e2e.test_s3 import GZ, SH, s3_regions
from tests.s3server import SwiftS3

pytestmark = pytest.mark.skipif(DATABASE != "postgresql", reason="several processes on one catalog: PostgreSQL")

MiB = 1024 * 1024


class Cluster:
    """The processes of one deployment; every one is ended by its id when the test ends."""

    def __init__(self, tmp: Path, srv: Server) -> None:
        self.tmp, self.srv = tmp, srv
        self.procs: list[subprocess.Popen[bytes]] = []
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.apis: list[Server] = []

    def api(self, n: int) -> Server:
        api = Server(self.srv.data_dir, free_port(), self.srv.env, self.srv.config, self.tmp / f"api{n}.log",
                     accounts=self.srv.accounts)
        api.proc = spawn(api, "serve", "--port", str(api.port), "--no-workers", log=api.log)
        self.procs.append(api.proc)
        wait_for(lambda: _answers(api), timeout=30, what=f"API process {n}")
        self.apis.append(api)
        return api

    def worker(self, host: str) -> subprocess.Popen[bytes]:
        proc = spawn(self.srv, "worker", "--host", host, "--compute", "disk", log=self.tmp / f"{host}.log")
        self.procs.append(proc)
        self.workers[host] = proc
        return proc

    def kill9(self, host: str) -> None:
        proc = self.workers.pop(host)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def close(self) -> None:
        for proc in self.procs:
            end(proc)


@contextmanager
def cluster(tmp: Path, swift: SwiftS3) -> Iterator[Cluster]:
    gz, sh = (swift.create_bucket(f"mp-{n}-{os.getpid()}-{random.randrange(1 << 30)}") for n in ("gz", "sh"))
    # 3 s leases (make_server): a host is DOWN 3 s after its last heartbeat. Copies paced so one is caught.
    srv = make_server(tmp, new_db_url(tmp),
                      config_extra="sync_bytes_per_second = 2097152\n" + s3_regions(swift, gz, sh),
                      env_extra={"STRATUS_IMPORT_URL_ALLOW": "127.0.0.2/32", **swift.env()})
    srv.config.write_text("workers = 1\n" + srv.config.read_text())
    srv.data_dir.mkdir(parents=True, exist_ok=True)
    c = Cluster(tmp, srv)
    try:
        yield c
    finally:
        c.close()


def task_row(url: str, **where: Any) -> Task | None:
    db = open_database(url)
    try:
        with db.read() as s:
            q = select(Task).order_by(Task.id.desc())
            for name, value in where.items():
                q = q.where(getattr(Task, name) == value)
            return s.scalars(q).first()
    finally:
        db.dispose()


def running_on(url: str, procs: dict[str, subprocess.Popen[bytes]], **where: Any) -> str | None:
    """The host whose worker holds the (newest) task matching `where`, once it has made some progress."""
    task = task_row(url, **where)
    if task is None or task.state != "RUNNING" or task.progress < 5 or not task.lease_owner:
        return None
    return next((h for h, p in procs.items() if f":{p.pid}:" in task.lease_owner), None)


def hosts_state(api: Server, operator: Account) -> dict[str, dict[str, Any]]:
    found = api.common(operator).call_json("DescribeComputeHosts", {})["Response"]["HostSet"]
    return {h["HostName"]: h for h in found}


def instances(api: Server, acct: Account, ids: list[str]) -> dict[str, dict[str, Any]]:
    resp = api.common(acct).call_json("DescribeInstances", {"InstanceIds": ids, "Limit": 100})["Response"]
    return {i["InstanceId"]: i for i in resp["InstanceSet"]}


def test_two_api_processes_and_two_hosts_behave_as_one_service(tmp_path: Path, db_url: str, swift: SwiftS3) -> None:
    assert db_url
    with cluster(tmp_path, swift) as c:
        url = c.srv.env["STRATUS_DATABASE_URL"]
        a, b = c.api(1), c.api(2)
        c.worker("h1"), c.worker("h2")
        acct = a.account("alice")
        operator = a.account("ops", operator=True)
        wait_for(lambda: {h for h, v in hosts_state(b, operator).items() if v["HostState"] == "UP"} == {"h1", "h2"},
                 timeout=30, what="both hosts to be UP")

        # An upload through API process 1, imported through API process 2: uploads live where all can read.
        small = tmp_path / "small.raw"
        small.write_bytes(random.Random(1).randbytes(3 * MiB))
        upload_url = a.run("image", "upload", str(small), env=acct.env()).stdout.strip()
        uploaded = b.client(acct).ImportImage(import_request("uploaded", upload_url)).ImageId
        assert wait_image(a, acct, uploaded, timeout=60)["ImageState"] == "NORMAL"

        # kill -9 of the worker in the middle of an import: the other host finishes it after the lease.
        src = tmp_path / "disk.raw"
        src.write_bytes(random.Random(2).randbytes(6 * MiB))
        with trickle_server(src, rate=2 * MiB) as source_url:
            image_id = a.client(acct).ImportImage(import_request("killed", source_url)).ImageId
            victim = wait_for(lambda: running_on(url, c.workers, image_id=image_id, kind="import"), timeout=60,
                              what="a worker to be importing")
            c.kill9(victim)
            image = wait_image(b, acct, image_id, timeout=90)  # watched through the other API process
        assert image["ImageState"] == "NORMAL", image.get("ImageStateReason")
        task = task_row(url, image_id=image_id, kind="import")
        assert task is not None and task.attempts == 2 and task.state == "DONE", task
        assert f":{c.workers[next(iter(c.workers))].pid}:" in (task.lease_owner or "")
        c.worker(victim)  # the host comes back

        # ... and in the middle of a copy (SyncImages, paced at 2 MiB/s).
        copy = b.common(acct).call_json("SyncImages", {"ImageIds": [image_id], "DestinationRegions": [SH],
                                                       "ImageSetRequired": True})["Response"]["ImageSet"][0]
        victim = wait_for(lambda: running_on(url, c.workers, image_id=copy["ImageId"], kind="sync"), timeout=60,
                          what="a worker to be copying")
        c.kill9(victim)
        copied = wait_image(a, acct, copy["ImageId"], region=SH, timeout=90)
        assert copied["ImageState"] == "NORMAL", copied.get("ImageStateReason")
        db = open_database(url)
        try:
            with db.read() as s:
                digests = {i: s.scalar(select(ImageDisk.manifest_digest).where(ImageDisk.image_id == i))
                           for i in (image_id, copy["ImageId"])}
        finally:
            db.dispose()
        assert digests[image_id] and digests[image_id] == digests[copy["ImageId"]]  # the same bytes arrived
        sync = task_row(url, image_id=copy["ImageId"], kind="sync")
        assert sync is not None and sync.attempts == 2 and sync.state == "DONE"
        c.worker(victim)
        wait_for(lambda: all(v["HostState"] == "UP" for v in hosts_state(a, operator).values()), timeout=30,
                 what="both hosts UP again")

        # Ten instances through API 2: spread over both hosts, each launched by its own host's worker.
        ids = b.common(acct).call_json("RunInstances", {
            "ImageId": image_id, "InstanceCount": 10, "Placement": {"Zone": f"{GZ}-1"},
            "SystemDisk": {"DiskSize": 1}})["Response"]["InstanceIdSet"]
        found = wait_for(lambda: (got := instances(a, acct, ids)) and all(
            i["InstanceState"] == "RUNNING" for i in got.values()) and got, timeout=60, what="10 RUNNING")
        on = {h: sorted(i for i, v in found.items() if v["ComputeHost"] == h) for h in ("h1", "h2")}
        assert len(on["h1"]) == len(on["h2"]) == 5, on  # spread evenly, no capacity set
        host_root = c.srv.data_dir / "regions" / GZ / "host" / "hosts"
        for host, mine in on.items():
            for iid in mine:
                assert list((host_root / host / "instances" / iid).glob("disk-*.qcow2")), (host, iid)
            assert list((host_root / host / "bases").glob("*.raw")), f"{host} has no base of its own"
        db = open_database(url)
        try:
            with db.read() as s:
                launches = s.scalars(select(Task).where(Task.kind == "launch")).all()
        finally:
            db.dispose()
        assert {t.host for t in launches} == {"h1", "h2"}
        for t in launches:
            assert f":{c.workers[t.host].pid}:" in (t.lease_owner or ""), (t.host, t.lease_owner)

        # Host h2's worker stops: h2 is DOWN, h1 is not affected, and h2's instance can still be terminated.
        c.kill9("h2")
        wait_for(lambda: hosts_state(b, operator)["h2"]["HostState"] == "DOWN", timeout=20, what="h2 DOWN")
        listed = json.loads(c.srv.run("host", "list", "--json", "--data-dir", str(c.srv.data_dir), "--config",
                                      str(c.srv.config)).stdout)
        assert {h["HostName"]: h["HostState"] for h in listed} == {"h1": "UP", "h2": "DOWN"}
        gone = on["h2"][0]
        b.common(acct).call_json("TerminateInstances", {"InstanceIds": [gone]})
        assert gone not in instances(a, acct, ids)  # the row went at once
        assert (host_root / "h2" / "instances" / gone).exists()  # its disks wait for the host
        more = a.common(acct).call_json("RunInstances", {
            "ImageId": image_id, "InstanceCount": 2, "Placement": {"Zone": f"{GZ}-1"},
            "SystemDisk": {"DiskSize": 1}})["Response"]["InstanceIdSet"]
        placed = wait_for(lambda: (got := instances(b, acct, more)) and all(
            i["InstanceState"] == "RUNNING" for i in got.values()) and got, timeout=60, what="2 more RUNNING")
        assert {i["ComputeHost"] for i in placed.values()} == {"h1"}  # only live hosts get instances
        rest = instances(a, acct, ids)
        assert all(v["InstanceState"] == "RUNNING" for v in rest.values()) and len(rest) == 9
        c.worker("h2")  # back: it removes the disks of the instance terminated while it was down
        wait_for(lambda: not (host_root / "h2" / "instances" / gone).exists(), timeout=30,
                 what="h2 to clean the terminated instance's disks")
        assert (host_root / "h2" / "instances" / on["h2"][1]).exists()
