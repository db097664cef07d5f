"""Exports under races: a re-export of a file, or an export of several images, can't race a running export
or slip past DeleteImages' mutex. The API process here runs no workers, so an export stays in flight until
the test starts a `stratus worker` (a real one, on the same catalog)."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.cvm.v20170312 import models

from tests import hostile
from tests.conftest import STRATUS, Account, Server, make_server, new_db_url
from tests.e2e.helpers import describe, wait_task

MiB = 1024 * 1024


class Worker:
    """`stratus worker` on the server's catalog and data directory, started and stopped by its pid."""

    def __init__(self, srv: Server) -> None:
        self.srv = srv
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Worker:
        self.proc = subprocess.Popen(
            [STRATUS, "worker", "--data-dir", str(self.srv.data_dir), "--config", str(worker_config(self.srv))],
            env=self.srv.env, stdout=self.srv.log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


def worker_config(srv: Server) -> Path:
    """The server's configuration with the default number of workers (the API process has none)."""
    return srv.config.with_name("worker.toml")


@pytest.fixture(scope="module")
def api_only(tmp_path_factory: pytest.TempPathFactory, db_url: str) -> Iterator[Server]:
    assert db_url  # on both databases
    tmp = tmp_path_factory.mktemp("export-races")
    srv = make_server(tmp, new_db_url(tmp))
    worker_config(srv).write_text(srv.config.read_text())
    srv.config.write_text("workers = 0\n" + srv.config.read_text())
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def _export(srv: Server, acct: Account, image_ids: list[str], **extra: Any) -> models.ExportImagesResponse:
    req = models.ExportImagesRequest()
    req._deserialize({"BucketName": "stratus-exports", "ImageIds": image_ids, "ExportFormat": "RAW", **extra})
    return srv.client(acct).ExportImages(req)


def _delete(srv: Server, acct: Account, image_ids: list[str]) -> None:
    req = models.DeleteImagesRequest()
    req._deserialize({"ImageIds": image_ids})
    srv.client(acct).DeleteImages(req)


def _code(fn: Any, *args: Any, **kw: Any) -> str:
    with pytest.raises(TencentCloudSDKException) as info:
        fn(*args, **kw)
    return f"{info.value.code}: {info.value.message}"


def test_exports_cannot_race_each_other_or_a_delete(api_only: Server, tmp_path: Path) -> None:
    srv = api_only
    acct = srv.account("exporter")
    disks = [hostile.make_test_disk(tmp_path, "raw", 3 * MiB, seed=70 + n) for n in range(2)]
    with Worker(srv):
        ids = [srv.run("image", "import", str(d), "--name", f"exp-{n}", env=acct.env(),
                       timeout=120).stdout.split()[-1]
               for n, d in enumerate(disks)]
    # An export of both images: its task names no single image; it stays in flight (no worker runs).
    both = _export(srv, acct, ids)
    assert len(both.CosPaths) == 2
    # DeleteImages must see that the export reads each of them.
    for image_id in ids:
        code = _code(_delete, srv, acct, [image_id])
        assert code.startswith("MutexOperation.TaskRunning:") and "exported" in code, code
    # A re-export of the same file would have a second task write the same .part file: refused.
    code = _code(_export, srv, acct, [ids[0]])
    assert code.startswith("MutexOperation.TaskRunning:") and f"task {both.TaskId}" in code, code
    # One export naming one file twice is refused with a contract code (not an InternalError).
    code = _code(_export, srv, acct, [ids[1], ids[1]])
    assert code.startswith("InvalidParameterValue.Duplicate:"), code
    # Another name for the file (a prefix) is another file: that export may run beside the first.
    other = _export(srv, acct, [ids[0]], FileNamePrefixList=["copy"])
    with Worker(srv):
        for task_id in (both.TaskId, other.TaskId):
            assert wait_task(srv, acct, task_id)["TaskState"] == "SUCCESS"
        bucket = srv.data_dir / "regions" / "ap-guangzhou" / "buckets" / "stratus-exports"
        for disk, path in zip(disks, both.CosPaths, strict=True):
            assert (bucket / path.lstrip("/")).read_bytes() == disk.read_bytes()
        assert (bucket / other.CosPaths[0].lstrip("/")).read_bytes() == disks[0].read_bytes()
        assert not list(bucket.glob("*.part"))
        # Once the exports are done, re-export and delete work again.
        again = _export(srv, acct, [ids[0]])
        assert wait_task(srv, acct, again.TaskId)["TaskState"] == "SUCCESS"
    _delete(srv, acct, ids)
    assert all(describe(srv, acct, i) is None for i in ids)
