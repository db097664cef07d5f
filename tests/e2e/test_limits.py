"""Per-account limits, each hit through the SDK (or the data API) with its contract code: uploads in flight
and their bytes, tasks in flight, instances, exported files kept (and their expiry), and the request rate.

The API process runs no workers, so the work it queues stays in flight; a real `stratus worker` on the same
catalog runs it when a test needs an image to be NORMAL or an export to finish."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.cvm.v20170312 import models

from stratus.config import load_settings
from stratus.service.export_task import expire_exports
from stratus.service.runtime import prepare
from tests import hostile
from tests.conftest import Account, Server, make_server, new_db_url
from tests.e2e.helpers import wait_task
from tests.e2e.test_export_races import Worker, worker_config
from tests.e2e.test_uploads import create

MiB = 1024 * 1024
LIMITS = """uploads_per_account = 2
upload_bytes_per_account = 3145728
tasks_per_account = 2
exports_per_account = 2
export_ttl_seconds = 3600
[quotas]
instances_per_region = 2
"""


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory, db_url: str) -> Iterator[Server]:
    assert db_url  # on both databases
    tmp = tmp_path_factory.mktemp("limits")
    srv = make_server(tmp, new_db_url(tmp), config_extra=LIMITS)
    worker_config(srv).write_text(srv.config.read_text())
    srv.config.write_text("workers = 0\n" + srv.config.read_text())
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def _code(fn: Any, *args: Any) -> tuple[str, str]:
    with pytest.raises(TencentCloudSDKException) as info:
        fn(*args)
    return info.value.code, info.value.message


def _normal_image(srv: Server, acct: Account, tmp_path: Path, name: str) -> str:
    disk = hostile.make_test_disk(tmp_path, "raw", 2 * MiB, seed=len(name))
    with Worker(srv):
        return srv.run("image", "import", str(disk), "--name", name, env=acct.env(), timeout=120).stdout.split()[-1]


def _import_req(name: str, url: str) -> models.ImportImageRequest:
    req = models.ImportImageRequest()
    req._deserialize({"ImageName": name, "ImageUrl": url, "OsType": "CentOS", "OsVersion": "7",
                      "Architecture": "x86_64"})
    return req


def test_uploads_in_flight_and_their_bytes(limited: Server) -> None:
    acct = limited.account("uploader")
    assert create(limited, acct, MiB).status_code == 200
    assert create(limited, acct, MiB).status_code == 200
    third = create(limited, acct, MiB)
    assert third.status_code == 403 and third.json()["Response"]["Error"]["Code"] == "LimitExceeded"
    assert "uploads_per_account" in third.json()["Response"]["Error"]["Message"]
    heavy = limited.account("heavy")
    assert create(limited, heavy, 3 * MiB).status_code == 200
    over = create(limited, heavy, 1)
    assert over.status_code == 403 and "upload_bytes_per_account" in over.json()["Response"]["Error"]["Message"]
    assert create(limited, limited.account("other"), 3 * MiB).status_code == 200  # per account


def test_tasks_in_flight(limited: Server) -> None:
    acct = limited.account("busy")
    c = limited.client(acct)
    for n in range(2):
        c.ImportImage(_import_req(f"queued-{n}", f"http://127.0.0.2:9/disk{n}.qcow2"))
    code, message = _code(c.ImportImage, _import_req("third", "http://127.0.0.2:9/disk3.qcow2"))
    assert code == "LimitExceeded" and "tasks_per_account" in message
    assert limited.client(limited.account("idle")).ImportImage(_import_req("mine", "http://127.0.0.2:9/d.qcow2"))


def test_instances(limited: Server, tmp_path: Path) -> None:
    acct = limited.account("launcher")
    image_id = _normal_image(limited, acct, tmp_path, "for-instances")

    def run(count: int) -> Any:
        req = models.RunInstancesRequest()
        req._deserialize({"ImageId": image_id, "InstanceCount": count, "InstanceType": "S5.SMALL1",
                          "Placement": {"Zone": "ap-guangzhou-1"}})
        return limited.client(acct).RunInstances(req)

    code, _ = _code(run, 3)
    assert code == "LimitExceeded.InstanceQuota"
    assert len(run(2).InstanceIdSet) == 2
    code, message = _code(run, 1)
    assert code == "LimitExceeded.InstanceQuota" and "quota of 2" in message


def test_exports_kept_and_their_expiry(limited: Server, tmp_path: Path) -> None:
    acct = limited.account("keeper")
    image_id = _normal_image(limited, acct, tmp_path, "for-exports")
    c = limited.client(acct)

    def export(prefix: str) -> Any:
        req = models.ExportImagesRequest()
        req._deserialize({"BucketName": "stratus-exports", "ImageIds": [image_id], "ExportFormat": "RAW",
                          "FileNamePrefixList": [prefix]})
        return c.ExportImages(req)

    first, second = export("a"), export("b")
    code, message = _code(export, "c")
    assert code == "LimitExceeded" and "exports_per_account" in message
    with Worker(limited):
        for task in (first, second):
            assert wait_task(limited, acct, task.TaskId)["TaskState"] == "SUCCESS"
    bucket = limited.data_dir / "regions" / "ap-guangzhou" / "buckets" / "stratus-exports"
    files = [bucket / p.lstrip("/") for p in first.CosPaths + second.CosPaths]
    assert all(f.is_file() for f in files)
    assert _code(export, "c")[0] == "LimitExceeded"  # finished files are kept files too
    # The housekeeping pass deletes files past limits.export_ttl_seconds; then there is room again.
    svc = prepare(load_settings(limited.data_dir, limited.config, env={**os.environ, **limited.env}))
    try:
        assert expire_exports(svc) == 0  # young files stay
        assert expire_exports(svc, now=time.time() + 3601) == 2
    finally:
        svc.db.dispose()
    assert not any(f.exists() for f in files)
    assert export("c").TaskId


@pytest.fixture(scope="module")
def rated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("rate")
    srv = make_server(tmp, new_db_url(tmp), config_extra="requests_per_second = 2\nrequest_burst = 4\n")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def test_request_rate_per_account(rated: Server) -> None:
    """A token bucket per account: `request_burst` calls at once, then `requests_per_second`."""
    hasty, calm = rated.account("hasty"), rated.account("calm")

    def call(account: Account) -> str:
        try:
            rated.client(account).DescribeImages(models.DescribeImagesRequest())
            return "ok"
        except TencentCloudSDKException as exc:
            assert "requests a second" in exc.message
            return exc.code

    started = time.monotonic()
    outcomes = [call(hasty) for _ in range(12)]
    elapsed = time.monotonic() - started
    assert outcomes[:4] == ["ok"] * 4, outcomes  # the burst
    assert "RequestLimitExceeded" in outcomes, outcomes
    assert outcomes.count("ok") <= 4 + 2 * elapsed + 1, (outcomes, elapsed)  # never more than the bucket gives
    assert call(calm) == "ok"  # another account's bucket is its own
    time.sleep(1.0)  # two tokens a second: two are back
    assert call(hasty) == "ok"
