"""Interrupted URL downloads resume with HTTP Range where the server offers it, and restart where it
doesn't or where the file changed. Real HTTP servers on a loopback address; the SSRF rules still apply
(the address is admitted the way an operator would)."""

from __future__ import annotations

import hashlib
import ipaddress
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from stratus.storage.fetch import FetchFailed, FetchResult, fetch_url
from tests.conftest import free_port

HOST = "127.0.0.2"
ALLOW = [ipaddress.ip_network(f"{HOST}/32")]
MiB = 1 << 20


@dataclass
class FileServer:
    """Serves one file; `cut_after` bytes into the first `cuts` full answers it drops the connection."""

    data: bytes
    ranges: bool = True
    cut_after: int = MiB
    cuts: int = 1
    slow: bool = False
    delay: float = 0.02  # per 64 KiB when slow
    requests: list[str | None] = field(default_factory=list)  # the Range header of each request
    sent: int = 0
    url: str = ""

    @property
    def etag(self) -> str:
        return '"' + hashlib.sha256(self.data).hexdigest()[:16] + '"'


@contextmanager
def serving(fs: FileServer) -> Iterator[FileServer]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            data = fs.data
            rng = self.headers.get("Range")
            fs.requests.append(rng)
            start = 0
            if fs.ranges and rng and self.headers.get("If-Range") == fs.etag:
                start = int(rng.removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            if fs.ranges:
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("ETag", fs.etag)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            cut = fs.cuts > 0 and start == 0
            if cut:
                fs.cuts -= 1
            limit = fs.cut_after if cut else len(body)
            step = 64 * 1024
            try:
                for i in range(0, limit, step):
                    piece = body[i:min(i + step, limit)]
                    self.wfile.write(piece)
                    fs.sent += len(piece)
                    if fs.slow:
                        time.sleep(fs.delay)
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                return
            if cut:
                self.close_connection = True
                self.connection.shutdown(2)

    port = free_port(HOST)
    httpd = ThreadingHTTPServer((HOST, port), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    fs.url = f"http://{HOST}:{port}/disk.img"
    try:
        yield fs
    finally:
        httpd.shutdown()
        httpd.server_close()


def data(n: int = 4 * MiB, seed: int = 1) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (n // 32)


def get(url: str, dest: Path, **kw: Any) -> FetchResult:
    return fetch_url(url, dest, allow=ALLOW, max_bytes=64 * MiB, timeout=30, connect_timeout=2, **kw)


def test_a_cut_download_goes_on_with_range(tmp_path: Path) -> None:
    with serving(FileServer(data())) as fs:
        dest = tmp_path / "d"
        result = get(fs.url, dest, resume=True)
    assert dest.read_bytes() == fs.data
    assert fs.requests == [None, f"bytes={MiB}-"]
    assert result.resumed_from == (MiB,)
    assert fs.sent == len(fs.data)  # not one byte twice
    assert not (tmp_path / "d.meta").exists()


def test_a_server_without_range_is_not_resumed(tmp_path: Path) -> None:
    """No Accept-Ranges: the cut download fails (nothing kept), and the next try starts from byte 0."""
    with serving(FileServer(data(), ranges=False)) as fs:
        dest = tmp_path / "d"
        with pytest.raises(FetchFailed) as err:
            get(fs.url, dest, resume=True)
        assert err.value.reason == "truncated"
        assert not dest.exists() and not (tmp_path / "d.meta").exists()
        get(fs.url, dest, resume=True)
    assert dest.read_bytes() == fs.data
    assert fs.requests == [None, None]


def test_a_partial_download_is_kept_and_resumed_by_the_next_attempt(tmp_path: Path) -> None:
    """Stopped half way (a shutdown or a lost lease): the partial file stays, with what it is of; the next
    call (the next task attempt) asks for the rest only."""
    with serving(FileServer(data(), cuts=0, slow=True)) as fs:
        dest = tmp_path / "d"
        with pytest.raises(FetchFailed) as err:
            get(fs.url, dest, resume=True, should_stop=lambda: dest.exists() and dest.stat().st_size >= MiB)
        assert err.value.reason == "cancelled"
        kept = dest.stat().st_size
        assert kept >= MiB and (tmp_path / "d.meta").exists()
        fs.slow = False
        result = get(fs.url, dest, resume=True)
    assert dest.read_bytes() == fs.data
    assert fs.requests == [None, f"bytes={kept}-"]
    assert result.resumed_from == (kept,)


def test_a_partial_of_a_file_that_changed_is_restarted(tmp_path: Path) -> None:
    """The file behind the URL changed (new ETag): the server answers the If-Range request in full, and
    the download starts over instead of splicing two files."""
    with serving(FileServer(data(seed=1), cuts=0, slow=True)) as fs:
        dest = tmp_path / "d"
        with pytest.raises(FetchFailed):
            get(fs.url, dest, resume=True, should_stop=lambda: dest.exists() and dest.stat().st_size >= MiB)
        assert dest.stat().st_size >= MiB
        fs.data, fs.slow = data(seed=2), False
        result = get(fs.url, dest, resume=True)
    assert dest.read_bytes() == fs.data
    assert fs.requests[1] is not None  # it asked for the rest, and got the whole new file
    assert result.resumed_from == ()


def test_a_partial_of_another_url_is_not_used(tmp_path: Path) -> None:
    with serving(FileServer(data(), cuts=0, slow=True)) as fs:
        dest = tmp_path / "d"
        with pytest.raises(FetchFailed):
            get(fs.url, dest, resume=True, should_stop=lambda: dest.exists() and dest.stat().st_size >= MiB)
        fs.slow = False
        get(fs.url + "?other", dest, resume=True)
    assert dest.read_bytes() == fs.data
    assert fs.requests == [None, None]


def test_without_resume_nothing_is_kept(tmp_path: Path) -> None:
    with serving(FileServer(data())) as fs:
        dest = tmp_path / "d"
        with pytest.raises(FetchFailed):
            get(fs.url, dest)
    assert not dest.exists() and not (tmp_path / "d.meta").exists()
