"""DescribeImages at 100,000 images and the fixed cost of a small request (issue 12, deliverables 5 and 6).

Usage::

    .venv/bin/python bench/describe.py [--images 100000] [--calls 400] [--db sqlite|postgresql|both]
                                       [--imports 40] [--out bench/results-describe.md]

One run, on this machine:

1. A bare uvicorn endpoint (same uvicorn settings as ``stratus serve``) answering a constant JSON body, and an
   authenticated DescribeRegions of a real ``stratus serve``, each over one keep-alive ``http.client``
   connection (the DescribeRegions client signs every request with TC3): p50 / p99 and their ratio.
2. For each catalog (SQLite, then PostgreSQL if ``--pg-url`` answers): ``--images`` images inserted straight
   into the catalog (bench/run.py's ``populate_catalog``, bulk INSERTs, not imports), then through the official
   SDK (one keep-alive client) DescribeRegions and DescribeImages with every filter, interleaved round-robin so
   load from other work on the machine hits every case alike: p50 / p99 and the ratio to DescribeRegions.
3. Where the time of one DescribeImages goes, in-process: SQL (cursor execute → rows fetched, from SQLAlchemy's
   events), ORM (the rest of ``describe_images``), shaping (``shapes.image``), JSON (the envelope), and HTTP
   (the SDK's time minus the server's in-process time).
4. Server CPU of a 1 MiB raw import by URL (SQLite catalog): utime+stime (+ children, i.e. qemu-img) of the
   server process from /proc before and after ``--imports`` imports, each waited for by reading the catalog
   file (not by polling the API, which would cost the server CPU).

The servers it starts are stopped by their process id. Scratch lives under bench/out/ and is deleted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import http.server
import json
import os
import signal
import socketserver
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import REGION, Server, free_port, pct, populate_catalog, sdk_request  # noqa: E402

from stratus.api.cvm import signing  # noqa: E402

HERE = Path(__file__).resolve().parent
MiB = 1 << 20

BARE_APP = """
import uvicorn
BODY = b'{"Response":{"TotalCount":2,"RegionSet":[{"Region":"ap-guangzhou","RegionName":"Guangzhou",' \\
       b'"RegionState":"AVAILABLE"}],"RequestId":"00000000-0000-0000-0000-000000000000"}}'
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": BODY})
uvicorn.run(app, host="127.0.0.1", port=int(__import__("sys").argv[1]), log_config=None, access_log=False,
            http="httptools", timeout_keep_alive=75)
"""


def stats(samples: list[float]) -> dict[str, float]:
    return {"p50": pct(samples, 0.5), "p99": pct(samples, 0.99), "n": len(samples)}


def interleaved(cases: dict[str, Callable[[], Any]], calls: int, warmup: int) -> dict[str, dict[str, float]]:
    """Round-robin over the cases, so a burst of load from elsewhere lands on all of them alike."""
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(calls):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - t0) * 1000)
    return {k: stats(v) for k, v in samples.items()}


class RawClient:
    """One keep-alive connection; signs each CVM request as the SDK does (TC3 over content-type and host)."""

    def __init__(self, port: int, creds: dict[str, str] | None = None) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port)
        self.creds = creds

    def post(self, action: str, params: dict[str, Any], region: str = "") -> dict[str, Any]:
        body = json.dumps(params).encode()
        headers = {"Content-Type": "application/json", "Host": f"127.0.0.1:{self.port}"}
        if self.creds:
            headers = signing.sign(self.creds["SecretId"], self.creds["SecretKey"], method="POST",
                                   host=f"127.0.0.1:{self.port}", body=body)
            headers |= {"X-TC-Action": action, "X-TC-Version": "2017-03-12"}
            if region:
                headers["X-TC-Region"] = region
        self.conn.request("POST", "/", body=body, headers=headers)
        resp = self.conn.getresponse()
        data = resp.read()
        return json.loads(data)


def start_bare(work: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    script = work / "bare_app.py"
    script.write_text(BARE_APP)
    proc = subprocess.Popen([sys.executable, str(script), str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            RawClient(port).post("x", {})
            return proc, port
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("bare uvicorn did not come up")


def stop_proc(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def make_server(work: Path, db_url: str, extra_config: str = "") -> Server:
    data_dir = work / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    config = work / "stratus.toml"
    config.write_text(
        "[[regions]]\nname = \"ap-guangzhou\"\nzones = [\"ap-guangzhou-1\"]\n"
        "[[regions]]\nname = \"ap-shanghai\"\nzones = [\"ap-shanghai-1\"]\n"
        "[quotas]\nimages_per_region = 1000000\n[limits]\nrequests_per_second = 100000\nrequest_burst = 100000\n"
        + extra_config
    )
    server = Server(data_dir=data_dir, config=config, log_path=work / "server.log", db_url=db_url)
    server.start()
    server.creds = server.create_account("bench")
    return server


def fixed_cost(work: Path, calls: int) -> dict[str, dict[str, float]]:
    bare, bare_port = start_bare(work)
    server = make_server(work / "fixed", f"sqlite:///{work / 'fixed' / 'catalog.db'}")
    try:
        bare_c = RawClient(bare_port)
        srv_c = RawClient(server.port, server.creds)
        sdk = server.client()
        assert "RegionSet" in srv_c.post("DescribeRegions", {})["Response"]
        return interleaved({
            "bare uvicorn, constant JSON (http.client)": lambda: bare_c.post("x", {}),
            "DescribeRegions, signed (http.client)": lambda: srv_c.post("DescribeRegions", {}),
            "DescribeRegions (SDK)": lambda: sdk_request(sdk, "DescribeRegions", {}),
            "DescribeImages, empty catalog (SDK)": lambda: sdk_request(sdk, "DescribeImages", {"Limit": 20}),
        }, calls, 50)
    finally:
        server.stop()
        stop_proc(bare)


def describe_cases(name: str, image_id: str) -> dict[str, dict[str, Any]]:
    def f(n: str, *v: str) -> dict[str, Any]:
        return {"Limit": 20, "Filters": [{"Name": n, "Values": list(v)}]}

    return {
        "no filter": {"Limit": 20},
        "page at Offset 1000": {"Limit": 20, "Offset": 1000},
        "ImageIds (one)": {"ImageIds": [image_id]},
        "image-id": f("image-id", image_id),
        "image-type PRIVATE_IMAGE": f("image-type", "PRIVATE_IMAGE"),
        "image-type PUBLIC_IMAGE": f("image-type", "PUBLIC_IMAGE"),
        "image-type SHARED_IMAGE": f("image-type", "SHARED_IMAGE"),
        "image-name exact name": f("image-name", name),
        "image-name substring \"web\" (1 in 8)": f("image-name", "web"),
        "image-name substring \"-0421\" (rare)": f("image-name", "-0421"),
        "platform substring \"ubunt\"": f("platform", "ubunt"),
        "platform substring \"zzz\" (none)": f("platform", "zzz"),
        "tag-key env": f("tag-key", "env"),
        "tag-value prod": f("tag-value", "prod"),
        "tag:team=infra": f("tag:team", "infra"),
        "image-state NORMAL": f("image-state", "NORMAL"),
        "image-family": f("image-family", "debian-web"),
        "architecture x86_64": f("architecture", "x86_64"),
        "image-source OFFICIAL": f("image-source", "OFFICIAL"),
        "os-type Rocky": f("os-type", "Rocky"),
        "InstanceType S5.MEDIUM4 + image-type PRIVATE": {**f("image-type", "PRIVATE_IMAGE"),
                                                         "InstanceType": "S5.MEDIUM4"},
    }


def split_profile(server: Server, params: dict[str, Any], n: int) -> dict[str, float]:
    """ms per call of SQL, ORM, shaping and JSON for one DescribeImages, in this process."""
    from sqlalchemy import event

    from stratus.api.cvm import envelope, shapes
    from stratus.config import load_settings
    from stratus.service.context import Caller, Services
    from stratus.service.image_describe import describe_images

    settings = load_settings(data_dir=server.data_dir, config_file=server.config, env=server.env(False))
    svc = Services.open(settings)
    caller = Caller(server.creds["AccountId"])
    sql = [0.0]
    started: list[float] = []

    def before(*_a: Any) -> None:
        started.append(time.perf_counter())

    def after(*_a: Any) -> None:
        sql[0] += time.perf_counter() - started.pop()

    engine = svc.db.read_engine
    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)
    t_query = t_shape = t_json = 0.0
    kw = {"image_ids": params.get("ImageIds"), "filters": params.get("Filters"),
          "offset": params.get("Offset", 0), "limit": params.get("Limit", 20),
          "instance_type": params.get("InstanceType")}
    try:
        for i in range(n + 10):
            if i == 10:
                sql[0] = t_query = t_shape = t_json = 0.0
            t0 = time.perf_counter()
            page = describe_images(svc, caller, REGION, **kw)
            t1 = time.perf_counter()
            body = {"TotalCount": page.total, "ImageSet": [shapes.image(img, caller) for img in page.images]}
            t2 = time.perf_counter()
            envelope.success("x", body)
            t3 = time.perf_counter()
            t_query += t1 - t0
            t_shape += t2 - t1
            t_json += t3 - t2
    finally:
        event.remove(engine, "before_cursor_execute", before)
        event.remove(engine, "after_cursor_execute", after)
        svc.db.dispose()
    ms = 1000 / n
    return {"sql": sql[0] * ms, "orm": (t_query - sql[0]) * ms, "shaping": t_shape * ms, "json": t_json * ms}


def describe_at_scale(work: Path, db_url: str, images: int, calls: int) -> dict[str, Any]:
    server = make_server(work, db_url)
    try:
        t0 = time.perf_counter()
        counts = populate_catalog(server.db_url, server.creds["AccountId"], images, 12)
        t_insert = time.perf_counter() - t0
        # Planner statistics, as the server's start (migrate.analyze) and, on PostgreSQL, autovacuum (which
        # also sets the visibility map that index-only scans need) would have them for a catalog this size.
        from stratus.catalog import migrate
        from stratus.catalog.db import open_database

        db = open_database(server.db_url)
        if db.is_postgresql:
            with db.write_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
                c.exec_driver_sql("VACUUM ANALYZE")
        migrate.analyze(db)
        db.dispose()
        if server.db_url.startswith("sqlite"):
            name, image_id = sqlite3.connect(server.db_path).execute(
                "SELECT name, id FROM images WHERE owner_id = ? AND region = ? LIMIT 1 OFFSET 77",
                [server.creds["AccountId"], REGION]).fetchone()
        else:
            from sqlalchemy import create_engine, text

            eng = create_engine(server.db_url.replace("postgresql://", "postgresql+psycopg://"))
            with eng.connect() as c:
                name, image_id = c.execute(text(
                    "SELECT name, id FROM images WHERE owner_id = :o AND region = :r ORDER BY id LIMIT 1 OFFSET 77"),
                    {"o": server.creds["AccountId"], "r": REGION}).one()
            eng.dispose()
        sdk = server.client()
        cases = describe_cases(name, image_id)
        totals = {label: sdk_request(sdk, "DescribeImages", p).TotalCount for label, p in cases.items()}
        fns: dict[str, Callable[[], Any]] = {"DescribeRegions": lambda: sdk_request(sdk, "DescribeRegions", {})}
        for label, p in cases.items():
            fns[label] = lambda p=p: sdk_request(sdk, "DescribeImages", p)
        lat = interleaved(fns, calls, 5)
        splits = {label: split_profile(server, cases[label], max(calls // 4, 50))
                  for label in ("no filter", "image-name exact name", "image-name substring \"web\" (1 in 8)",
                                "platform substring \"ubunt\"", "tag:team=infra")}
        return {"insert_s": t_insert, "counts": counts, "latency": lat, "totals": totals, "splits": splits}
    finally:
        server.stop()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *_a: Any) -> None:
        pass


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime + cutime + cstime) / os.sysconf("SC_CLK_TCK")


def import_cpu(work: Path, n: int) -> dict[str, float]:
    files = work / "files"
    files.mkdir()
    (files / "small.raw").write_bytes(os.urandom(MiB))
    handler = lambda *a, **k: _Quiet(*a, directory=str(files), **k)  # noqa: E731
    httpd = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/small.raw"
    server = make_server(work / "imports", f"sqlite:///{work / 'imports' / 'catalog.db'}",
                         "[import]\nurl_allow = [\"127.0.0.0/8\"]\n")
    try:
        sdk = server.client()
        db = sqlite3.connect(f"file:{server.db_path}?mode=ro", uri=True)

        def one(i: int) -> str:
            image_id = sdk_request(sdk, "ImportImage", {
                "ImageName": f"small-{i}", "ImageUrl": url, "OsType": "Ubuntu", "OsVersion": "22",
                "Architecture": "x86_64"}).ImageId
            while True:
                row = db.execute("SELECT state FROM images WHERE id = ?", [image_id]).fetchone()
                if row and row[0] not in ("IMPORTING", "CREATING", "SYNCING"):
                    return str(row[0])
                time.sleep(0.01)

        for i in range(3):  # warm-up: first imports load modules
            one(-1 - i)
        assert server.proc is not None
        c0, t0 = cpu_seconds(server.proc.pid), time.perf_counter()
        states = [one(i) for i in range(n)]
        c1, t1 = cpu_seconds(server.proc.pid), time.perf_counter()
        assert set(states) == {"NORMAL"}, states
        return {"cpu_ms": (c1 - c0) / n * 1000, "wall_ms": (t1 - t0) / n * 1000, "n": n}
    finally:
        server.stop()
        httpd.shutdown()


def pg_database(base_url: str) -> str | None:
    """A fresh database for this run beside the one in base_url; None if PostgreSQL does not answer."""
    import psycopg

    try:
        with psycopg.connect(base_url, autocommit=True, connect_timeout=3) as c:
            c.execute("DROP DATABASE IF EXISTS stratus_bench_describe")
            c.execute("CREATE DATABASE stratus_bench_describe")
    except psycopg.OperationalError:
        return None
    return base_url.rsplit("/", 1)[0] + "/stratus_bench_describe"


def drop_pg(base_url: str) -> None:
    import psycopg

    with psycopg.connect(base_url, autocommit=True) as c:
        c.execute("DROP DATABASE IF EXISTS stratus_bench_describe WITH (FORCE)")


def render(fixed: dict[str, Any], scale: dict[str, dict[str, Any]], imports: dict[str, float] | None,
           args: argparse.Namespace) -> str:
    out = [f"# DescribeImages at scale and small things (bench/describe.py, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} "
           f"UTC)", "", f"Machine: {os.cpu_count()} cores, load average at the end "
           f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} (other work shares the machine).", ""]
    bare = fixed["bare uvicorn, constant JSON (http.client)"]
    out += ["## Fixed cost of a small request (one keep-alive connection, interleaved)", "",
            "| what | p50 ms | p99 ms | p50 / bare | p99 / bare |", "|---|---|---|---|---|"]
    for k, v in fixed.items():
        out.append(f"| {k} | {v['p50']:.2f} | {v['p99']:.2f} | {v['p50'] / bare['p50']:.2f}× | "
                   f"{v['p99'] / bare['p99']:.2f}× |")
    for db, res in scale.items():
        c = res["counts"]
        reg = res["latency"]["DescribeRegions"]
        out += ["", f"## DescribeImages, {args.images:,} images, {db} (SDK, one keep-alive client, Limit 20)", "",
                f"Inserted in {res['insert_s']:.1f} s: {c['bench_private']:,} private to the caller, "
                f"{c['public']:,} public, {c['shared_with_bench']:,} shared with it, {c['other']:,} of others; "
                f"{c['guangzhou']:,} in {REGION}; {c['tags']:,} tags. {args.calls} calls per case, interleaved.", "",
                "| case | TotalCount | p50 ms | p99 ms | p50 / Regions (≤ 1.5×) | p99 / Regions (≤ 2×) |",
                "|---|---|---|---|---|---|",
                f"| DescribeRegions | | {reg['p50']:.2f} | {reg['p99']:.2f} | | |"]
        for label, v in res["latency"].items():
            if label == "DescribeRegions":
                continue
            r50, r99 = v["p50"] / reg["p50"], v["p99"] / reg["p99"]
            out.append(f"| {label} | {res['totals'][label]} | {v['p50']:.2f} | {v['p99']:.2f} | "
                       f"{r50:.2f}× {'✓' if r50 <= 1.5 else '✗'} | {r99:.2f}× {'✓' if r99 <= 2 else '✗'} |")
        out += ["", "Where the time of one call goes (ms; SQL, ORM and shaping in-process, HTTP = SDK p50 − the rest):",
                "", "| case | SQL | Python: rest of describe_images | shaping | JSON | HTTP + auth + SDK |",
                "|---|---|---|---|---|---|"]
        for label, sp in res["splits"].items():
            server_ms = sum(sp.values())
            out.append(f"| {label} | {sp['sql']:.2f} | {sp['orm']:.2f} | {sp['shaping']:.2f} | {sp['json']:.2f} | "
                       f"{res['latency'][label]['p50'] - server_ms:.2f} |")
    if imports:
        out += ["", "## A small import's server CPU (SQLite)", "",
                f"{imports['n']} ImportImage calls of a 1 MiB raw file by URL (loopback HTTP server), each waited for "
                f"until NORMAL by reading the catalog: server CPU (utime + stime, qemu-img children included) "
                f"**{imports['cpu_ms']:.0f} ms per import**, {imports['wall_ms']:.0f} ms wall per import."]
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--imports", type=int, default=40)
    ap.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="both")
    ap.add_argument("--pg-url", default=os.environ.get("STRATUS_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--skip-fixed", action="store_true")
    args = ap.parse_args()
    (HERE / "out").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=HERE / "out", prefix="describe-") as tmp:
        work = Path(tmp)
        fixed = {} if args.skip_fixed else fixed_cost(work, args.calls)
        print(json.dumps(fixed, indent=1), file=sys.stderr)
        scale: dict[str, dict[str, Any]] = {}
        if args.db in ("sqlite", "both"):
            scale["SQLite"] = describe_at_scale(work / "sqlite", f"sqlite:///{work / 'sqlite' / 'catalog.db'}",
                                                args.images, args.calls)
            print(json.dumps(scale["SQLite"]["latency"], indent=1), file=sys.stderr)
        if args.db in ("postgresql", "both"):
            url = pg_database(args.pg_url)
            if url is None:
                print(f"PostgreSQL at {args.pg_url} does not answer: SQLite only", file=sys.stderr)
            else:
                try:
                    scale["PostgreSQL"] = describe_at_scale(work / "pg", url, args.images, args.calls)
                finally:
                    drop_pg(args.pg_url)
        imports = import_cpu(work, args.imports) if args.imports else None
        report = render(fixed, scale, imports, args) if fixed else json.dumps(scale, indent=1, default=str)
    if args.out:
        args.out.write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
