"""Uploads are bounded in size and time: a stalled upload is ended (what arrived is kept for a resume),
an oversized one is refused, and uploads nobody imports expire."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from stratus.api.cvm.signing import sign
from stratus.config import load_settings
from stratus.service.runtime import prepare
from stratus.service.uploads import expire_uploads
from tests.conftest import Account, Server, make_server, new_db_url

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
