"""What an operator sees: /metrics after real requests and an import, JSON logs carrying the RequestId the
client got, the byte and verification counters, and who may read /metrics."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException

from stratus.storage.dirstore import ChunkCorrupt, DirStore
from stratus.storage.export import export_disk
from stratus.storage.ingest import ingest_disk
from tests import hostile
from tests.conftest import Server, make_server, wait_for
from tests.e2e.helpers import file_server, import_request, wait_image

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def obs_server(tmp_path_factory: pytest.TempPathFactory, db_url: str) -> Iterator[Server]:
    # A store walk every 0.2 s so the store size is seen to grow within the test.
    srv = make_server(tmp_path_factory.mktemp("obs"), db_url, config_extra="[metrics]\nstore_walk_seconds = 0.2\n",
                      env_extra={"STRATUS_IMPORT_URL_ALLOW": "127.0.0.2/32"})
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def scrape(server: Server) -> dict[str, float]:
    resp = httpx.get(server.url + "/metrics", timeout=10)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain")
    samples = {}
    for line in resp.text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def log_records(server: Server) -> list[dict]:
    """Every line of the server's log (its stderr is a file, so JSON is the default) as an object."""
    lines = [line for line in server.log.read_text().splitlines() if line.strip()]
    return [json.loads(line) for line in lines]  # a line that isn't one JSON object fails here


def test_metrics_after_requests_and_an_import(obs_server: Server, tmp_path: Path) -> None:
    acct = obs_server.account("metrics-user")
    client = obs_server.common(acct)
    before = scrape(obs_server)
    client.call_json("DescribeImages", {})
    with pytest.raises(TencentCloudSDKException) as err:
        client.call_json("DescribeImages", {"ImageIds": ["not-an-id"]})
    assert err.value.get_code() == "InvalidImageId.Malformed"

    disk = hostile.make_test_disk(tmp_path, "qcow2", 8 * MiB, seed=7)
    with file_server(tmp_path, "127.0.0.2") as (url, _hits):
        resp = obs_server.client(acct).ImportImage(import_request("metrics-img", f"{url}/{disk.name}"))
        image = wait_image(obs_server, acct, resp.ImageId)
    assert image["ImageState"] == "NORMAL", image

    def settled() -> dict[str, float] | None:
        m = scrape(obs_server)
        done = m.get('stratus_tasks{kind="import",state="DONE"}', 0)
        grown = m.get('stratus_store_bytes{region="ap-guangzhou"}', 0) > 0
        return m if done >= 1 and grown else None

    after = wait_for(settled, timeout=30, what="the import in /metrics")
    ok = 'stratus_requests_total{action="DescribeImages",code="Success"}'
    bad = 'stratus_requests_total{action="DescribeImages",code="InvalidImageId.Malformed"}'
    assert after[ok] - before.get(ok, 0) >= 1
    assert after[bad] - before.get(bad, 0) == 1
    assert after['stratus_requests_total{action="ImportImage",code="Success"}'] >= 1
    assert after['stratus_request_duration_seconds_count{action="DescribeImages"}'] >= 2
    assert after['stratus_request_duration_seconds_bucket{action="DescribeImages",le="+Inf"}'] >= 2
    # The test disk holds data in part of its 8 MiB; the counter moved by at least one chunk of it.
    assert after["stratus_ingested_bytes_total"] - before.get("stratus_ingested_bytes_total", 0) >= 1 * MiB
    assert after['stratus_store_chunks{region="ap-guangzhou"}'] >= 1
    assert after['stratus_store_free_bytes{region="ap-guangzhou"}'] > 0
    assert after["stratus_chunk_verify_failures_total"] == 0
    # /metrics itself is not counted as an API request.
    assert not any('action="other"' in k or "metrics" in k.split("{", 1)[-1] for k in after
                   if k.startswith("stratus_requests_total"))


def test_json_logs_carry_the_request_id_the_client_got(obs_server: Server, tmp_path: Path) -> None:
    acct = obs_server.account("log-user")
    client = obs_server.common(acct)
    ok_id = client.call_json("DescribeImages", {})["Response"]["RequestId"]
    with pytest.raises(TencentCloudSDKException) as err:
        client.call_json("DeleteImages", {"ImageIds": ["img-00000000"]})
    failed_id = err.value.get_request_id()
    assert ok_id and failed_id and ok_id != failed_id

    def access(request_id: str) -> dict | None:
        return next((r for r in log_records(obs_server)
                     if r.get("request_id") == request_id and r.get("logger") == "stratus.access"), None)

    line = wait_for(lambda: access(ok_id), timeout=10, what="the access line of the DescribeImages")
    assert (line["action"], line["code"], line["status"], line["level"]) == ("DescribeImages", "Success", 200, "INFO")
    assert line["duration_ms"] >= 0 and "time" in line and "message" in line
    line = wait_for(lambda: access(failed_id), timeout=10, what="the access line of the DeleteImages")
    assert (line["action"], line["code"]) == ("DeleteImages", err.value.get_code())

    # Task lines carry the task's id and kind.
    disk = hostile.make_test_disk(tmp_path, "raw", 4 * MiB, seed=8)
    with file_server(tmp_path, "127.0.0.2") as (url, _hits):
        resp = obs_server.client(acct).ImportImage(import_request("log-img", f"{url}/{disk.name}"))
        wait_image(obs_server, acct, resp.ImageId)
    lines = wait_for(lambda: [r for r in log_records(obs_server) if r.get("task_kind") == "import"
                              and re.search(r"\bdone in\b", r["message"])], timeout=10, what="a task line")
    assert all(isinstance(r["task_id"], int) and f"task {r['task_id']} " in r["message"] for r in lines), lines


def test_metrics_readable_only_from_the_allowed_networks(tmp_path_factory: pytest.TempPathFactory,
                                                         db_url: str) -> None:
    srv = make_server(tmp_path_factory.mktemp("obs-deny"), db_url, config_extra='[metrics]\nallow = ["10.0.0.0/8"]\n')
    srv.start()
    try:
        resp = httpx.get(srv.url + "/metrics", timeout=10)
        assert resp.status_code == 403
        assert "metrics.allow" in resp.text and "stratus_" not in resp.text
    finally:
        srv.stop()
    srv = make_server(tmp_path_factory.mktemp("obs-off"), db_url, config_extra="[metrics]\nallow = []\n")
    srv.start()
    try:
        assert httpx.get(srv.url + "/metrics", timeout=10).status_code == 404
    finally:
        srv.stop()


def _sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def test_byte_counters_and_verify_failures_count_the_work(tmp_path: Path) -> None:
    store = DirStore(tmp_path / "store")
    disk = hostile.make_test_disk(tmp_path, "raw", 6 * MiB, seed=9)
    ingested, exported, failures = (_sample("stratus_ingested_bytes_total"), _sample("stratus_exported_bytes_total"),
                                    _sample("stratus_chunk_verify_failures_total"))
    result = ingest_disk(disk, "raw", store)
    assert _sample("stratus_ingested_bytes_total") - ingested == result.manifest.data_bytes > 0
    export_disk(result.manifest, store, tmp_path / "out.qcow2", "qcow2")
    assert _sample("stratus_exported_bytes_total") - exported == result.manifest.virtual_size
    digest = next(d for d in result.manifest.chunks if d is not None)
    path = store.path_for(digest)
    path.chmod(0o644)
    path.write_bytes(b"rotten" + path.read_bytes()[6:])
    with pytest.raises(ChunkCorrupt):
        store.get(digest)
    assert _sample("stratus_chunk_verify_failures_total") - failures == 1


def test_text_and_json_lines_carry_request_and_task_context() -> None:
    import io
    import logging

    from stratus import logs

    stream = io.StringIO()
    records = []
    for fmt in ("text", "json"):
        handler = logging.StreamHandler(stream)
        handler.addFilter(logs.ContextFilter())
        handler.setFormatter(logging.Formatter(logs.TEXT_FORMAT) if fmt == "text" else logs._Json(logs.JSON_FORMAT))
        logger = logging.getLogger(f"stratus.test-{fmt}")
        logger.addHandler(handler)
        logger.propagate = False
        token = logs.REQUEST_ID.set("req-1")
        try:
            with logs.task_context(42, "import"):
                logger.warning("inside")
        finally:
            logs.REQUEST_ID.reset(token)
        logger.warning("outside")
        logger.removeHandler(handler)
        records.append(stream.getvalue().splitlines()[-2:])
    text, json_lines = records
    assert text[0].endswith("inside [request_id=req-1 task=42 kind=import]") and text[1].endswith("outside")
    inside, outside = (json.loads(line) for line in json_lines)
    assert (inside["request_id"], inside["task_id"], inside["task_kind"]) == ("req-1", 42, "import")
    assert "request_id" not in outside and "task_id" not in outside and "context" not in outside
    assert logs.default_format(io.StringIO()) == "json"
