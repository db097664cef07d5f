"""`kill -9` of the server in the middle of imports: after a restart every import either finishes or
fails with a reason, and no NORMAL image ever lacks a chunk."""

from __future__ import annotations

import http.server
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests import hostile
from tests.conftest import Account, Server, free_port, make_server, wait_for
from tests.e2e.helpers import describe, file_server, import_request, wait_image

MiB = 1024 * 1024


@contextmanager
def trickle_server(path: Path, rate: int, host: str = "127.0.0.2") -> Iterator[str]:
    """Serve one file slowly (`rate` bytes/s), so an import is reliably caught in the middle."""
    data = path.read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            step = max(1, rate // 20)
            try:
                for i in range(0, len(data), step):
                    self.wfile.write(data[i:i + step])
                    time.sleep(0.05)
            except (BrokenPipeError, ConnectionResetError):
                pass

    port = free_port(host)
    httpd = http.server.ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://{host}:{port}/{path.name}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture()
def crash_server(tmp_path: Path, db_url: str) -> Iterator[Server]:
    from tests.conftest import new_db_url

    assert db_url  # runs on both databases
    srv = make_server(tmp_path, new_db_url(tmp_path), env_extra={"STRATUS_IMPORT_URL_ALLOW": "127.0.0.2/32"})
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def task_stage(server: Server, account: Account, image_id: str) -> tuple[str, float]:
    image = describe(server, account, image_id)
    assert image is not None
    return image["ImageState"], image["ImageProgress"]


def assert_no_normal_image_lacks_a_chunk(server: Server) -> None:
    res = server.run("fsck", "--data-dir", str(server.data_dir), "--config", str(server.config), "--json",
                     check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def test_kill9_during_download_resumes_after_restart(crash_server: Server, tmp_path: Path) -> None:
    srv = crash_server
    acct = srv.account("crash")
    src = hostile.make_test_disk(tmp_path, "qcow2", 8 * MiB, seed=1)
    with trickle_server(src, rate=2 * MiB) as url:
        image_id = srv.client(acct).ImportImage(import_request("crash-fetch", url)).ImageId
        wait_for(lambda: task_stage(srv, acct, image_id)[1] > 5, timeout=30, what="the download to start")
        srv.kill9()
        srv.start()
        image = wait_image(srv, acct, image_id, timeout=120)
    assert image["ImageState"] == "NORMAL", image["ImageStateReason"]
    assert_no_normal_image_lacks_a_chunk(srv)
    # The bytes are the right ones.
    out = tmp_path / "back.raw"
    srv.run("image", "export", image_id, "-o", str(out), env=acct.env())
    from stratus.disk import qemu_img

    assert qemu_img.compare(src, "qcow2", out, "raw")


def test_kill9_at_random_moments(crash_server: Server, tmp_path: Path) -> None:
    """Several imports in flight, killed at random moments, twice: each ends NORMAL or IMPORTFAILED."""
    srv = crash_server
    acct = srv.account("chaos")
    rng = random.Random(1234)
    disks = [hostile.make_test_disk(tmp_path, fmt, 24 * MiB, seed=n)
             for n, fmt in enumerate(["raw", "qcow2", "vmdk-stream", "vhd"])]
    with file_server(tmp_path, "127.0.0.2") as (url, _):
        ids = [srv.client(acct).ImportImage(import_request(f"chaos-{n}", f"{url}/{d.name}")).ImageId
               for n, d in enumerate(disks)]
        for _ in range(2):
            time.sleep(rng.uniform(0.05, 0.6))
            srv.kill9()
            srv.start()
        images = [wait_image(srv, acct, i, timeout=180) for i in ids]
    for image in images:
        assert image["ImageState"] in ("NORMAL", "IMPORTFAILED")
        if image["ImageState"] == "IMPORTFAILED":
            assert image["ImageStateReason"]
    assert_no_normal_image_lacks_a_chunk(srv)
