"""Load: N concurrent clients against a real `stratus serve` for a while, through the official SDK (issue 7).

Usage::

    .venv/bin/python bench/load.py [--clients 50] [--seconds 300] [--db sqlite|postgresql]
    .venv/bin/python bench/load.py --matrix [--seconds 300]   # sqlite and postgresql, 50 and 1 clients;
                                                             # writes bench/results-load.md (~25 min at 300 s)

What it does:

1. Starts `stratus serve` (disk compute driver, 2 workers) on a fresh data dir and a fresh catalog (a SQLite
   file, or a new schema in the PostgreSQL database at ``STRATUS_TEST_PG_URL``, default the test database),
   creates one account per 5 clients, and a local HTTP file server on 127.0.0.2 (in the server's import
   allowlist) serving 6 small qcow2 images (32 MiB virtual, 4 MiB of random data each). Each account imports
   one of them first, so every client has a NORMAL image to work with.
2. Every client (a thread with its own SDK client and keep-alive connection) loops until the time is up,
   picking an action by weight: DescribeImages 40, DescribeInstances 10, ImportImage 12 (a URL import of one
   of the 6 images), RunInstances 10 (one instance of a NORMAL image of its account), TerminateInstances 10
   (one of its own instances last seen RUNNING; a DescribeInstances when it has none), SyncImages 4 (a NORMAL
   image of its account not copied yet, to ap-shanghai), ExportImages 4 (RAW or QCOW2, a unique prefix); then a think
   time drawn uniformly in [0, --think] seconds. Each call's latency is measured in the client (SDK call to
   parsed answer); its error code, if any, is recorded. Clients are closed-loop, like the CLI: after a call
   that starts a task they poll (every --poll s, DescribeImages / DescribeInstances / DescribeTasks, counted
   like any call) until it has finished, and the time from the call to that is recorded as "<action> → done".
   (With --open-loop they don't wait: the task queue then grows as fast as the clients can submit.)
3. When the time is up the clients stop; the run waits (up to 5 min) until no task is QUEUED or RUNNING.
   Then it reads the catalog: tasks by kind and state, every FAILED task with its error (none should fail:
   every input is valid), images not NORMAL, instances LAUNCH_FAILED; and scrapes /metrics (the server's own
   count of requests by code: any InternalError or HTTP 5xx is a defect).
4. Server RSS (VmRSS of the server process) is sampled every 2 s: at the start (after the seeding), the end
   (after the tasks settled) and the peak.

Results: bench/out/load-<db>-<clients>c.json per run; --matrix renders bench/results-load.md from them.
Servers are stopped by their process id (their own session), never by name.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.server
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import MiB, Server, log, machine_facts, pct  # noqa: E402

REGION, DST = "ap-guangzhou", "ap-shanghai"
ZONE = f"{REGION}-1"
PG_URL = os.environ.get("STRATUS_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
WEIGHTS = {"DescribeImages": 40, "DescribeInstances": 10, "ImportImage": 12, "RunInstances": 10,
           "TerminateInstances": 10, "SyncImages": 4, "ExportImages": 4}
FINE = {"Success", "NORMAL", "RUNNING", "SUCCESS", "gone"}  # answers and end states that are not errors
CLIENTS_PER_ACCOUNT = 5
N_IMAGES = 6
FILE_HOST = "127.0.0.2"


# --------------------------------------------------------------------------- setup


def make_images(workdir: Path, n: int, seed: int) -> list[str]:
    """n small qcow2 files: 32 MiB virtual, 4 MiB of random data in 1 MiB runs at random offsets."""
    rnd = random.Random(seed)
    names = []
    for i in range(n):
        raw = workdir / f"img{i}.raw"
        with raw.open("wb") as f:
            f.truncate(32 * MiB)
            for off in rnd.sample(range(32), 4):
                f.seek(off * MiB)
                f.write(rnd.randbytes(MiB))
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(workdir / f"img{i}.qcow2")],
                       check=True)
        raw.unlink()
        names.append(f"img{i}.qcow2")
    return names


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


def file_server(directory: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    httpd = http.server.ThreadingHTTPServer((FILE_HOST, 0), functools.partial(_Quiet, directory=str(directory)))
    threading.Thread(target=httpd.serve_forever, name="file-server", daemon=True).start()
    return httpd, f"http://{FILE_HOST}:{httpd.server_address[1]}"


def fresh_db(kind: str, workdir: Path) -> tuple[str, str | None]:
    if kind == "sqlite":
        return f"sqlite:///{workdir / 'stratus.db'}", None
    import psycopg

    schema = "load_" + uuid.uuid4().hex[:10]
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    return f"{PG_URL}?options=-csearch_path%3D{schema}", schema


def drop_schema(schema: str | None) -> None:
    if schema:
        import psycopg

        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def rss(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", text).group(1)) * 1024  # type: ignore[union-attr]


def sdk(server: Server, creds: dict[str, str], region: str = REGION) -> Any:
    from tencentcloud.common import credential
    from tencentcloud.common.common_client import CommonClient
    from tencentcloud.common.profile.client_profile import ClientProfile
    from tencentcloud.common.profile.http_profile import HttpProfile

    profile = ClientProfile(httpProfile=HttpProfile(endpoint=server.endpoint, protocol="http", keepAlive=True,
                                                    reqTimeout=120))
    return CommonClient("cvm", "2017-03-12", credential.Credential(creds["SecretId"], creds["SecretKey"]), region,
                        profile=profile)


# --------------------------------------------------------------------------- the clients


@dataclass
class AccountState:
    """What the clients of one account share: its NORMAL images, and those already copied."""

    images: list[str] = field(default_factory=list)
    synced: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class Stats:
    latency: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    codes: Counter[tuple[str, str]] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, action: str, seconds: float, code: str) -> None:
        with self.lock:
            self.latency[action].append(seconds)
            self.codes[(action, code)] += 1


class Client(threading.Thread):
    def __init__(self, index: int, server: Server, creds: dict[str, str], account: AccountState, base_url: str,
                 files: list[str], stats: Stats, until: float, think: float, seed: int, poll: float) -> None:
        super().__init__(name=f"client-{index}", daemon=True)
        self.index, self.account, self.base_url, self.files = index, account, base_url, files
        self.stats, self.until, self.think, self.poll = stats, until, think, poll
        self.rnd = random.Random(seed * 1000 + index)
        self.api = sdk(server, creds)
        self.launched: set[str] = set()  # this client's instances (other clients of the account have theirs)
        self.instances: list[str] = []  # of those, the ones last seen RUNNING
        self.n = 0

    def call(self, action: str, params: dict[str, Any]) -> dict[str, Any] | None:
        from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException

        t0 = time.perf_counter()
        try:
            resp = self.api.call_json(action, params)["Response"]
            code = "Success"
        except TencentCloudSDKException as exc:
            resp, code = None, exc.get_code() or "SDKError"
        except Exception as exc:  # a connection error, a non-JSON answer
            resp, code = None, f"client:{type(exc).__name__}"
        self.stats.record(action, time.perf_counter() - t0, code)
        return resp

    def run(self) -> None:
        actions, weights = list(WEIGHTS), list(WEIGHTS.values())
        while time.time() < self.until:
            getattr(self, "do_" + self.rnd.choices(actions, weights)[0])()
            if self.think:
                time.sleep(self.rnd.uniform(0, self.think))

    def _wait(self, label: str, started: float, done: Any, timeout: float = 900) -> Any:
        """Poll ``done()`` (None while busy) every self.poll s; record the time since ``started``."""
        if not self.poll:
            return None
        deadline = time.time() + timeout
        while time.time() < deadline:
            result = done()
            if result is not None:
                self.stats.record(f"{label} → done", time.perf_counter() - started, str(result))
                return result
            time.sleep(self.poll)
        self.stats.record(f"{label} → done", time.perf_counter() - started, "client:Timeout")
        return None

    def _task_state(self, task_id: int) -> str | None:
        resp = self.call("DescribeTasks", {"TaskIds": [task_id]})
        state = resp["TaskSet"][0]["TaskState"] if resp and resp["TaskSet"] else "gone"
        return None if state in ("PENDING", "RUNNING") else state

    def _image(self) -> str | None:
        with self.account.lock:
            return self.rnd.choice(self.account.images) if self.account.images else None

    def do_DescribeImages(self) -> None:
        resp = self.call("DescribeImages", {"Filters": [{"Name": "image-type", "Values": ["PRIVATE_IMAGE"]}],
                                            "Limit": 20, "Offset": self.rnd.randrange(0, 40)})
        if resp:
            normal = [i["ImageId"] for i in resp["ImageSet"] if i["ImageState"] == "NORMAL"]
            with self.account.lock:
                self.account.images = sorted(set(self.account.images) | set(normal))

    def do_DescribeInstances(self) -> None:
        resp = self.call("DescribeInstances", {"Limit": 50})
        if resp:
            self.instances = [i["InstanceId"] for i in resp["InstanceSet"]
                              if i["InstanceState"] == "RUNNING" and i["InstanceId"] in self.launched]

    def do_ImportImage(self) -> None:
        self.n += 1
        url = f"{self.base_url}/{self.rnd.choice(self.files)}"
        t0 = time.perf_counter()
        resp = self.call("ImportImage", {"ImageName": f"load-{self.index}-{self.n}", "OsType": "CentOS",
                                         "OsVersion": "7", "Architecture": "x86_64", "ImageUrl": url})
        if resp:
            image_id = resp["ImageId"]

            def state() -> str | None:
                found = self.call("DescribeImages", {"ImageIds": [image_id]})
                s = found["ImageSet"][0]["ImageState"] if found and found["ImageSet"] else "gone"
                return None if s == "IMPORTING" else s

            if self._wait("ImportImage", t0, state) == "NORMAL":
                with self.account.lock:
                    self.account.images.append(image_id)

    def do_RunInstances(self) -> None:
        image = self._image()
        if image is None:
            return self.do_DescribeImages()
        t0 = time.perf_counter()
        resp = self.call("RunInstances", {"ImageId": image, "InstanceCount": 1, "Placement": {"Zone": ZONE}})
        if resp:
            self.launched.update(resp["InstanceIdSet"])
            iid = resp["InstanceIdSet"][0]

            def state() -> str | None:
                found = self.call("DescribeInstances", {"InstanceIds": [iid]})
                s = found["InstanceSet"][0]["InstanceState"] if found and found["InstanceSet"] else "gone"
                return None if s == "PENDING" else s

            if self._wait("RunInstances", t0, state) == "RUNNING":
                self.instances.append(iid)

    def do_TerminateInstances(self) -> None:
        if not self.instances:
            return self.do_DescribeInstances()
        iid = self.instances.pop(self.rnd.randrange(len(self.instances)))
        self.launched.discard(iid)
        t0 = time.perf_counter()
        if self.call("TerminateInstances", {"InstanceIds": [iid]}) is not None:

            def gone() -> str | None:
                found = self.call("DescribeInstances", {"InstanceIds": [iid]})
                return "gone" if found is not None and not found["InstanceSet"] else None

            self._wait("TerminateInstances", t0, gone)

    def do_SyncImages(self) -> None:
        with self.account.lock:
            todo = [i for i in self.account.images if i not in self.account.synced]
            image = self.rnd.choice(todo) if todo else None
            if image is not None:
                self.account.synced.add(image)
        if image is None:
            return self.do_DescribeImages()
        t0 = time.perf_counter()
        resp = self.call("SyncImages", {"ImageIds": [image], "DestinationRegions": [DST], "ImageSetRequired": True})
        if resp and resp.get("ImageSet"):
            task_id = resp["ImageSet"][0]["TaskId"]
            self._wait("SyncImages", t0, lambda: self._task_state(task_id))

    def do_ExportImages(self) -> None:
        image = self._image()
        if image is None:
            return self.do_DescribeImages()
        self.n += 1
        t0 = time.perf_counter()
        resp = self.call("ExportImages", {"BucketName": "stratus-exports", "ImageIds": [image],
                                          "ExportFormat": self.rnd.choice(["RAW", "QCOW2"]),
                                          "FileNamePrefixList": [f"load{self.index}n{self.n}"]})
        if resp:
            self._wait("ExportImages", t0, lambda: self._task_state(resp["TaskId"]))


# --------------------------------------------------------------------------- one run


def catalog_rows(db_url: str, sql: str) -> list[tuple[Any, ...]]:
    from sqlalchemy import create_engine, text

    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql))]
    finally:
        engine.dispose()


def scrape(server: Server) -> dict[str, float]:
    import httpx

    out: dict[str, float] = {}
    for line in httpx.get(server.url + "/metrics", timeout=30).text.splitlines():
        if line.startswith("stratus_requests_total") or line.startswith("stratus_tasks{") or \
                line.startswith("stratus_") and "_bytes_total" in line:
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def run_once(db: str, clients: int, seconds: float, think: float, seed: int, root: Path,
             poll: float = 1.0) -> dict[str, Any]:
    workdir = root / f"load-{db}-{clients}c-{uuid.uuid4().hex[:6]}"
    workdir.mkdir(parents=True)
    files_dir = workdir / "files"
    files_dir.mkdir()
    files = make_images(files_dir, N_IMAGES, seed)
    httpd, base_url = file_server(files_dir)
    db_url, schema = fresh_db(db, workdir)
    config = workdir / "stratus.toml"
    config.write_text(
        f'[import]\nurl_allow = ["{FILE_HOST}/32"]\n'
        "[quotas]\nimages_per_region = 100000\ninstances_per_region = 100000\n"
    )
    server = Server(data_dir=workdir / "var", config=config, log_path=workdir / "server.log", db_url=db_url)
    result: dict[str, Any] = {"db": db, "clients": clients, "seconds": seconds, "think": think, "poll": poll}
    try:
        os.environ["STRATUS_COMPUTE"] = "disk"
        server.start()
        n_accounts = max(1, (clients + CLIENTS_PER_ACCOUNT - 1) // CLIENTS_PER_ACCOUNT)
        creds = [server.create_account(f"load{i}") for i in range(n_accounts)]
        accounts = [AccountState() for _ in creds]
        log(f"{db}, {clients} clients: seeding one image per account")
        seeded = []
        for i, c in enumerate(creds):
            resp = sdk(server, c).call_json("ImportImage", {
                "ImageName": "seed", "OsType": "CentOS", "OsVersion": "7", "Architecture": "x86_64",
                "ImageUrl": f"{base_url}/{files[i % len(files)]}"})["Response"]
            seeded.append(resp.get("ImageId"))
        deadline = time.time() + 300
        while time.time() < deadline:
            states = catalog_rows(db_url, "SELECT state FROM images")
            if all(s[0] != "IMPORTING" for s in states):
                break
            time.sleep(0.5)
        for acc, c in zip(accounts, creds, strict=True):
            imgs = sdk(server, c).call_json("DescribeImages", {})["Response"]["ImageSet"]
            acc.images = [i["ImageId"] for i in imgs if i["ImageState"] == "NORMAL"]
        pid = server.proc.pid  # type: ignore[union-attr]
        samples: list[tuple[float, int]] = []
        stop_sampling = threading.Event()

        def sample() -> None:
            while not stop_sampling.is_set():
                with contextlib.suppress(OSError, AttributeError):
                    samples.append((time.time(), rss(pid)))
                stop_sampling.wait(2.0)

        rss_start = rss(pid)
        result["loadavg_start"] = os.getloadavg()[0]  # other work on the machine moves every latency
        threading.Thread(target=sample, name="rss", daemon=True).start()
        stats = Stats()
        t0 = time.time()
        until = t0 + seconds
        log(f"{db}, {clients} clients: load for {seconds:.0f} s (server RSS {rss_start / MiB:.0f} MiB)")
        threads = [Client(i, server, creds[i // CLIENTS_PER_ACCOUNT], accounts[i // CLIENTS_PER_ACCOUNT], base_url,
                          files, stats, until, think, seed, poll) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(seconds + 1200)
        elapsed = time.time() - t0
        log(f"{db}, {clients} clients: clients done after {elapsed:.0f} s; waiting for the tasks to settle")
        settle0 = time.time()
        while time.time() - settle0 < 300:
            busy = catalog_rows(db_url, "SELECT count(*) FROM tasks WHERE state IN ('QUEUED', 'RUNNING')")[0][0]
            if not busy:
                break
            time.sleep(1)
        settle = time.time() - settle0
        rss_end = rss(pid)
        result["loadavg_end"] = os.getloadavg()[0]
        stop_sampling.set()
        result.update({
            "elapsed": elapsed,
            "settle_seconds": settle,
            "still_busy_tasks": busy,
            "rss_start": rss_start,
            "rss_end": rss_end,
            "rss_peak": max([r for _, r in samples] + [rss_end]),
            "rss_samples": [(round(t - t0, 1), r) for t, r in samples],
            "calls": {a: len(v) for a, v in stats.latency.items()},
            "latency": {a: {"p50": pct(v, 0.5), "p99": pct(v, 0.99), "max": max(v)}
                        for a, v in stats.latency.items()},
            "codes": {f"{a} {c}": n for (a, c), n in sorted(stats.codes.items())},
            "tasks": {f"{k} {s}": n for k, s, n in catalog_rows(
                db_url, "SELECT kind, state, count(*) FROM tasks GROUP BY kind, state ORDER BY kind, state")},
            "failed_tasks": [list(r) for r in catalog_rows(
                db_url, "SELECT id, kind, error FROM tasks WHERE state = 'FAILED' ORDER BY id")],
            "images_not_normal": [list(r) for r in catalog_rows(
                db_url, "SELECT id, region, state, state_reason FROM images WHERE state <> 'NORMAL' ORDER BY id")],
            "instances_failed": [list(r) for r in catalog_rows(
                db_url, "SELECT id, state FROM instances WHERE state LIKE '%FAILED%' ORDER BY id")],
            "metrics": scrape(server),
        })
        server_errors = {k: v for k, v in result["metrics"].items()
                         if 'code="InternalError"' in k or re.search(r'code="5\d\d"', k)}
        result["server_errors"] = server_errors
        result["client_errors"] = {k: v for k, v in result["codes"].items()
                                   if "InternalError" in k or "client:" in k or "ServerNetworkError" in k}
        calls = sum(v for a, v in result["calls"].items() if "→" not in a)
        log(f"{db}, {clients} clients: {calls} calls, {len(result['failed_tasks'])} failed "
            f"tasks, 5xx/InternalError {sum(server_errors.values()):.0f}, RSS {rss_start / MiB:.0f} → "
            f"{rss_end / MiB:.0f} MiB (peak {result['rss_peak'] / MiB:.0f})")
    finally:
        server.stop()
        httpd.shutdown()
        httpd.server_close()
        drop_schema(schema)
        (root / f"last-load-{db}-{clients}c-server.log").write_bytes(
            server.log_path.read_bytes() if server.log_path.exists() else b"")
        subprocess.run(["rm", "-rf", str(workdir)], check=False)
    (root / f"load-{db}-{clients}c{'' if poll else '-open'}.json").write_text(json.dumps(result, indent=1))
    return result


# --------------------------------------------------------------------------- the report


def settled(r: dict[str, Any]) -> str:
    busy = r.get("still_busy_tasks", 0)
    return f"{r['settle_seconds']:.0f} s" if not busy else f"not after {r['settle_seconds']:.0f} s: {busy} left"


def label(r: dict[str, Any]) -> str:
    return f"{r['db']} {r['clients']}c{'' if r.get('poll', 1) else ' open'}"


def render(results: list[dict[str, Any]], facts: dict[str, str]) -> str:
    ms = lambda s: f"{s * 1000:.0f}"  # noqa: E731
    lines = ["# Load (issue 7)", "",
             f"`bench/load.py`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Machine: "
             + ", ".join(f"{k} {v}" for k, v in facts.items()) + ".", "",
             "Each run: a fresh `stratus serve` (disk driver, 2 workers), N client threads with the official SDK "
             "looping over the action mix of `bench/load.py` (think time uniform in [0, "
             f"{results[0]['think']}] s), then a wait until every task has finished. Latency is measured in the "
             "client (SDK call to parsed answer), in ms.", "",
             "| run | calls | 5xx / InternalError | failed tasks | tasks settled after | server RSS start → end "
             "(peak) | load average start, end |", "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(
            f"| {r['db']}, {r['clients']} clients, {r['seconds']:.0f} s{'' if r.get('poll', 1) else ', open loop'} "
            f"| {sum(v for a, v in r['calls'].items() if '→' not in a)} "
            f"| {sum(r['server_errors'].values()):.0f} (client saw {sum(r['client_errors'].values())}) "
            f"| {len(r['failed_tasks'])} | {settled(r)} | {r['rss_start'] / MiB:.0f} → "
            f"{r['rss_end'] / MiB:.0f} MiB ({r['rss_peak'] / MiB:.0f}) "
            f"| {r.get('loadavg_start', '?')}, {r.get('loadavg_end', '?')} |")
    lines += ["", "Server RSS over the run (MiB, every 60 s from the start of the load; flat after warm-up is the "
              "target):", ""]
    for r in results:
        marks = [f"{round(t):d} s {m / MiB:.0f}" for t, m in r["rss_samples"] if int(t) % 60 < 2]
        lines.append(f"* {label(r)}: " + ", ".join(marks))
    seen = {a for r in results for a in r["latency"]}
    actions = [a for a in [*WEIGHTS, "DescribeTasks"] if a in seen]
    actions += sorted(a for a in seen if a not in actions)
    lines += ["", "p50 / p99 latency per action (ms):", "",
              "| action | " + " | ".join(label(r) for r in results) + " |",
              "|---" * (len(results) + 1) + "|"]
    for a in actions:
        cells = [f"{ms(r['latency'][a]['p50'])} / {ms(r['latency'][a]['p99'])} ({r['calls'][a]})"
                 if a in r["latency"] else "-" for r in results]
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    lines += ["", "(n) is the number of calls. Tasks by kind and state at the end, and every answer that was not "
              "Success:", ""]
    for r in results:
        lines.append(f"* **{label(r)}**: tasks " + ", ".join(
            f"{k} {v}" for k, v in r["tasks"].items()) + "; not Success: " + (", ".join(
                f"{k} {v}" for k, v in r["codes"].items() if k.rsplit(" ", 1)[-1] not in FINE) or "none") + ".")
        for tid, kind, error in r["failed_tasks"][:10]:
            lines.append(f"  * failed task {tid} ({kind}): {error}")
        for row in r["images_not_normal"][:10]:
            lines.append(f"  * image {row[0]} in {row[1]}: {row[2]} {row[3] or ''}")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--think", type=float, default=0.5, help="think time: uniform in [0, THINK] s after each call")
    ap.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    ap.add_argument("--matrix", action="store_true", help="both databases, 50 and 1 clients; renders --out")
    ap.add_argument("--render-only", action="store_true", help="render --out from the JSON of the last runs")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--poll", type=float, default=1.0, help="closed loop: poll a started task every POLL s")
    ap.add_argument("--open-loop", action="store_true", help="don't wait for the tasks the clients start")
    ap.add_argument("--out", default=str(HERE / "results-load.md"))
    args = ap.parse_args(argv)
    root = HERE / "out"
    root.mkdir(exist_ok=True)
    runs = [(d, c) for d in ("sqlite", "postgresql") for c in (args.clients, 1)] if args.matrix or args.render_only \
        else [(args.db, args.clients)]
    results = []
    for db, clients in runs:
        if args.render_only:
            path = root / f"load-{db}-{clients}c.json"
            if path.exists():
                results.append(json.loads(path.read_text()))
            continue
        results.append(run_once(db, clients, args.seconds, args.think, args.seed, root,
                                0.0 if args.open_loop else args.poll))
    if args.matrix or args.render_only:
        # An open-loop run (--open-loop, made separately) is shown beside them when its JSON is there.
        results += [json.loads(p.read_text()) for p in sorted(root.glob("load-*-open.json"))]
        Path(args.out).write_text(render(results, machine_facts(root)))
        log(f"wrote {args.out}")
    else:
        print(json.dumps({k: v for k, v in results[0].items() if k != "rss_samples"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
