"""PostgreSQL restarting under load (issue 9, "Faults"): `stratus serve` on a private PostgreSQL cluster
(tests/pgserver.py; the machine's shared one is never restarted), requests and an import going, the
cluster stopped and started again on the same port. Requests answer throughout — a retriable
`ServiceUnavailable` while the catalog is away, never a hang or a dead server — and recover; the import
finishes NORMAL with the right bytes.

Runs in the PostgreSQL half of the suite only (scripts/test.sh): SQLite has no server to restart."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.cvm.v20170312 import models

from tests import pgserver
from tests.conftest import DATABASE, make_server, wait_for
from tests.e2e.helpers import describe, import_request, wait_image
from tests.e2e.test_authz_matrix import make_accounts
from tests.e2e.test_crash import trickle_server
from tests.e2e.test_sync import random_disk

MiB = 1024 * 1024
REQUEST_TIMEOUT = 15  # a request slower than this counts as hung


@pytest.fixture()
def private_pg(db_url: str) -> Iterator[pgserver.PrivatePostgres]:
    assert db_url  # marks the test `db`: it runs in the PostgreSQL half
    if DATABASE != "postgresql":
        pytest.skip("restarts a PostgreSQL server: runs in the PostgreSQL half (scripts/test.sh)")
    why = pgserver.missing()
    if why:
        pytest.fail(f"can't start a private PostgreSQL cluster: {why}")
    pg = pgserver.PrivatePostgres.create()
    try:
        yield pg
    finally:
        pg.close()


def test_postgresql_restart_under_load(private_pg: pgserver.PrivatePostgres, tmp_path: Path) -> None:
    srv = make_server(tmp_path, private_pg.url, env_extra={"STRATUS_IMPORT_URL_ALLOW": "127.0.0.2/32"})
    srv.start()
    try:
        acct = make_accounts(srv, ("pg",))["pg"]
        disk = random_disk(tmp_path / "disk.raw", 12 * MiB, seed=901)
        client = srv.client(acct, reqTimeout=REQUEST_TIMEOUT)
        outcomes: list[tuple[float, float, str]] = []  # (start, seconds, "ok" or the error code)
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    client.DescribeImages(models.DescribeImagesRequest())
                    what = "ok"
                except TencentCloudSDKException as exc:
                    what = exc.get_code() or "?"
                outcomes.append((t0, time.monotonic() - t0, what))
                time.sleep(0.05)

        with trickle_server(disk, rate=2 * MiB) as url:  # ~6 s of download: the restart lands in it
            image_id = client.ImportImage(import_request("pg-restart", url)).ImageId
            loader = threading.Thread(target=load)
            loader.start()
            try:
                wait_for(lambda: describe(srv, acct, image_id)["ImageState"] == "IMPORTING", what="import running")
                time.sleep(1.0)
                private_pg.stop()  # every connection of the server is cut
                down_at = time.monotonic()
                time.sleep(2.0)
                private_pg.start()
                up_at = time.monotonic()
                image = wait_image(srv, acct, image_id, timeout=120)
                time.sleep(1.0)
            finally:
                stop.set()
                loader.join(REQUEST_TIMEOUT + 5)
        assert image["ImageState"] == "NORMAL", image.get("ImageStateReason")

        during = [o for o in outcomes if down_at <= o[0] < down_at + 1.5]  # it is back within ~2.2 s
        after = [o for o in outcomes if o[0] >= up_at + 1.0]
        assert during and after, outcomes
        assert all(s < REQUEST_TIMEOUT for _, s, _ in outcomes), "a request hung"
        assert {w for _, _, w in outcomes} <= {"ok", "ServiceUnavailable"}, outcomes
        assert {w for _, _, w in during} == {"ServiceUnavailable"}, during  # it really went away
        assert {w for _, _, w in after} == {"ok"}, after  # and the service reconnected

        out = tmp_path / "back.raw"
        srv.run("image", "export", image_id, "-o", str(out), env=acct.env())
        assert out.read_bytes() == disk.read_bytes()
        assert srv.proc is not None and srv.proc.poll() is None
    finally:
        srv.stop()
