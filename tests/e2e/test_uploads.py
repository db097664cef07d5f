"""Uploads are bounded in size and time: a stalled upload is ended (what arrived is kept for a resume),
an oversized one is refused, and uploads nobody imports expire."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException

from stratus.api.cvm.signing import sign
from stratus.config import load_settings
from stratus.service.runtime import prepare
from stratus.service.uploads import expire_uploads
from tests.conftest import Account, Server, free_port, make_server, new_db_url
from tests.e2e.helpers import wait_image

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory, db_url: str) -> Iterator[Server]:
    assert db_url  # on both databases
    tmp = tmp_path_factory.mktemp("uploads")
    srv = make_server(tmp, new_db_url(tmp), config_extra="upload_idle_seconds = 1.0\nmax_upload_bytes = 8388608\n")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def headers(srv: Server, acct: Account, method: str, path: str, query: str = "", body: bytes | None = b"",
            content_type: str = "application/json") -> dict[str, str]:
    h = sign(acct.secret_id, acct.secret_key, method=method, host=srv.endpoint, path=path, query=query, body=body,
             content_type=content_type)
    h["X-TC-Region"] = "ap-guangzhou"
    return h


def create(srv: Server, acct: Account, size: int) -> httpx.Response:
    body = json.dumps({"Size": size}).encode()
    return httpx.post(srv.url + "/uploads", content=body, headers=headers(srv, acct, "POST", "/uploads", body=body))


def status(srv: Server, acct: Account, upload_id: str) -> dict:
    path = f"/uploads/{upload_id}"
    return httpx.get(srv.url + path, headers=headers(srv, acct, "GET", path)).json()["Response"]


def test_a_stalled_upload_is_ended_and_keeps_what_arrived(strict: Server) -> None:
    acct = strict.account("staller")
    upload_id = create(strict, acct, 4 * MiB).json()["Response"]["UploadId"]
    path = f"/uploads/{upload_id}"
    h = headers(strict, acct, "PUT", path, query="offset=0", body=None, content_type="application/octet-stream")
    request = f"PUT {path}?offset=0 HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + \
        f"Content-Length: {4 * MiB}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", strict.port), timeout=10) as sock:
        sock.sendall(request.encode() + b"x" * 100_000)
        started = time.monotonic()
        answer = sock.recv(65536).decode("latin-1")  # then nothing more: the server must give up
        waited = time.monotonic() - started
        head, _, body = answer.partition("\r\n\r\n")
        length = next(int(line.split(":")[1]) for line in head.split("\r\n")
                      if line.lower().startswith("content-length"))
        while len(body.encode("latin-1")) < length:  # the body may come in its own segment
            more = sock.recv(65536)
            if not more:
                break
            body += more.decode("latin-1")
        answer = head + "\r\n\r\n" + body
    assert answer.startswith("HTTP/1.1 408"), answer[:200]
    assert waited < 8
    assert '"RequestTimeout"' in answer
    assert status(strict, acct, upload_id)["Received"] == 100_000  # kept: the client resumes from here


def test_size_limit_and_expiry(strict: Server) -> None:
    acct = strict.account("expirer")
    too_big = create(strict, acct, 9 * MiB)
    assert too_big.status_code == 413
    assert too_big.json()["Response"]["Error"]["Code"] == "InvalidParameterValue.TooLarge"
    upload_id = create(strict, acct, MiB).json()["Response"]["UploadId"]
    svc = prepare(load_settings(strict.data_dir, strict.config, env={**os.environ, **strict.env}))
    file = svc.settings.uploads_dir / upload_id
    assert file.exists()
    assert expire_uploads(svc) == 0  # young uploads stay
    assert expire_uploads(svc, now=time.time() + svc.settings.limits.upload_ttl_seconds + 1) >= 1
    assert not Path(file).exists()
    gone = httpx.get(strict.url + f"/uploads/{upload_id}",
                     headers=headers(strict, acct, "GET", f"/uploads/{upload_id}"))
    assert gone.status_code == 404


# --------------------------------------------------------------------------- races (issue 7)


def put(srv: Server, acct: Account, upload_id: str, offset: int, body: bytes) -> httpx.Response:
    path, query = f"/uploads/{upload_id}", f"offset={offset}"
    h = headers(srv, acct, "PUT", path, query=query, body=None, content_type="application/octet-stream")
    return httpx.put(f"{srv.url}{path}?{query}", content=body, headers=h, timeout=30)


def upload_bytes(srv: Server, acct: Account, data: bytes) -> str:
    upload_id = create(srv, acct, len(data)).json()["Response"]["UploadId"]
    r = put(srv, acct, upload_id, 0, data)
    assert r.status_code == 200 and r.json()["Response"]["State"] == "COMPLETE", r.text
    return upload_id


@pytest.fixture(scope="module")
def twin(strict: Server) -> Iterator[Server]:
    """A second API process on the same catalog and data directory (what scale-out runs)."""
    srv = Server(data_dir=strict.data_dir, port=free_port(), env=strict.env, config=strict.config,
                 log=strict.log.with_name("twin.log"), accounts=strict.accounts)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def test_overlapping_puts_to_one_upload_cannot_interleave(strict: Server, twin: Server) -> None:
    """A client retry while its first PUT is still being read: the second PUT, at the same offset and sent to
    another API process, is refused with 409 and the offset to resume from; the first one's bytes stand."""
    acct = strict.account("racer")
    size = 8 * MiB
    upload_id = create(strict, acct, size).json()["Response"]["UploadId"]
    path = f"/uploads/{upload_id}"
    h = headers(strict, acct, "PUT", path, query="offset=0", body=None, content_type="application/octet-stream")
    request = f"PUT {path}?offset=0 HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + \
        f"Content-Length: {size}\r\n\r\n"
    answers: list[httpx.Response] = []

    def retries() -> None:
        for srv in (twin, strict):
            answers.append(put(srv, acct, upload_id, 0, b"b" * size))
        answers.append(put(twin, acct, upload_id, MiB, b"b" * (size - MiB)))  # an offset the catalog doesn't hold

    with socket.create_connection(("127.0.0.1", strict.port), timeout=30) as sock:
        sock.sendall(request.encode() + b"a" * MiB)
        time.sleep(0.3)  # the first PUT is in the middle of its body
        other = threading.Thread(target=retries)
        other.start()
        sent = MiB
        while other.is_alive() and sent < size - 64 * 1024:  # keep the first PUT going (1 s idle limit)
            sock.sendall(b"a" * 16384)
            sent += 16384
            time.sleep(0.05)
        other.join()
        sock.sendall(b"a" * (size - sent))
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            more = sock.recv(65536)
            if not more:
                break
            answer += more
    assert sent < size - 64 * 1024, "the retries outlasted the first PUT's body: the race was not tested"
    for retry in answers[:2]:
        assert retry.status_code == 409, retry.text
        body = retry.json()["Response"]
        assert body["Error"]["Code"] == "ResourceInUse"
        assert body["Received"] == 0 and "retry" in body["Error"]["Message"]
    ahead = answers[2]
    assert ahead.status_code == 409 and ahead.json()["Response"]["Received"] == 0
    assert ahead.json()["Response"]["Error"]["Code"] == "InvalidParameterValue"
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    assert status(twin, acct, upload_id)["State"] == "COMPLETE"
    assert (strict.data_dir / "uploads" / upload_id).read_bytes() == b"a" * size  # no 'b' got in
    again = put(twin, acct, upload_id, 0, b"b" * size)
    assert again.status_code == 409 and again.json()["Response"]["Received"] == size


def test_resume_after_a_cut_at_the_offset_the_server_reports(strict: Server) -> None:
    acct = strict.account("resumer")
    upload_id = create(strict, acct, 2 * MiB).json()["Response"]["UploadId"]
    first = put(strict, acct, upload_id, 0, b"x" * MiB)
    assert first.status_code == 200 and first.json()["Response"]["Received"] == MiB
    stale = put(strict, acct, upload_id, 0, b"y" * MiB)  # a retry of the first PUT after it landed
    assert stale.status_code == 409 and stale.json()["Response"]["Received"] == MiB
    assert put(strict, acct, upload_id, MiB, b"z" * MiB).json()["Response"]["State"] == "COMPLETE"
    assert (strict.data_dir / "uploads" / upload_id).read_bytes() == b"x" * MiB + b"z" * MiB


def _import(srv: Server, acct: Account, name: str, url: str, data_disk: str | None = None) -> str:
    params: dict = {"ImageName": name, "ImageUrl": url, "OsType": "CentOS", "OsVersion": "7",
                    "Architecture": "x86_64"}
    if data_disk:
        params["ImportImageDataDiskList"] = [{"ImageUrl": data_disk}]
    return srv.common(acct).call_json("ImportImage", params)["Response"]["ImageId"]


def _code(fn: Callable[[], object]) -> tuple[str, str]:
    with pytest.raises(TencentCloudSDKException) as info:
        fn()
    return info.value.code, info.value.message


def test_an_upload_is_consumed_by_exactly_one_import(strict: Server) -> None:
    acct = strict.account("consumer")
    data = os.urandom(MiB)
    upload_id = upload_bytes(strict, acct, data)
    url = f"upload://{upload_id}"
    # Concurrent imports naming the same upload: exactly one gets it.
    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(lambda n: _attempt(lambda: _import(strict, acct, f"twice-{n}", url)), range(4)))
    winners = [o for o in outcomes if o.startswith("img-")]
    assert len(winners) == 1, outcomes
    for o in outcomes:
        if o not in winners:
            assert o.startswith("InvalidParameter.InvalidParameterUrlError:"), o
            assert upload_id in o and "consumed by one import" in o
    image = wait_image(strict, acct, winners[0])
    assert image["ImageState"] == "NORMAL", image
    # After it finished (the upload is gone) and while it ran, a later import is refused the same way.
    code, message = _code(lambda: _import(strict, acct, "late", url))
    assert code == "InvalidParameter.InvalidParameterUrlError" and upload_id in message
    # One request naming the same upload twice is refused too, and takes nothing.
    other = upload_bytes(strict, acct, data)
    code, message = _code(lambda: _import(strict, acct, "both", f"upload://{other}", f"upload://{other}"))
    assert code == "InvalidParameter.InvalidParameterUrlError" and "named twice" in message
    assert status(strict, acct, other)["State"] == "COMPLETE"
    assert wait_image(strict, acct, _import(strict, acct, "once", f"upload://{other}"))["ImageState"] == "NORMAL"


def _attempt(fn: Callable[[], str]) -> str:
    try:
        return fn()
    except TencentCloudSDKException as exc:
        return f"{exc.code}: {exc.message}"


def test_no_server_path_reaches_the_client(strict: Server) -> None:
    """An import whose upload file vanished on the server fails with a reason that names the file, not the
    server's directories."""
    acct = strict.account("pathless")
    upload_id = upload_bytes(strict, acct, os.urandom(MiB))
    (strict.data_dir / "uploads" / upload_id).unlink()
    image = wait_image(strict, acct, _import(strict, acct, "vanished", f"upload://{upload_id}"))
    assert image["ImageState"] == "IMPORTFAILED"
    reason = image["ImageStateReason"]
    assert upload_id in reason, reason
    assert str(strict.data_dir) not in reason and "/uploads/" not in reason, reason
    tasks = strict.common(acct).call_json("DescribeTasks", {"TaskIds": list(range(1, 100))})["Response"]["TaskSet"]
    assert tasks and all(str(strict.data_dir) not in json.dumps(t) for t in tasks)
