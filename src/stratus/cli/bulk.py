"""Keep-alive HTTP/1.1 connections for the chunk batches of `stratus image import/export`.

httpx (the CLI's client for everything else) reads a response in 64 KiB pieces into new bytes objects
and joins them: for gigabytes of chunks that is most of the client's CPU. Here a batch is sent from, and a
response read straight into, a page-aligned buffer the caller keeps (http.client's ``readinto``): the
socket's copy is the only one, and the chunks in the buffer are aligned for an O_DIRECT write.
"""

from __future__ import annotations

import http.client
import json
import mmap
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

_SOCKET_BUFFER = 4 * 1024 * 1024  # a batch in flight per connection: larger socket buffers, fewer wake-ups


class TransportError(Exception):
    """The connection failed mid-request (reset, refused, timed out): the batch may be sent again."""


@dataclass(frozen=True)
class Answer:
    """A whole small response (the fields cli/dataclient.error_message reads, as httpx names them)."""

    status_code: int
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


class Refused(Exception):
    """The server answered with an error status; ``response`` holds it for the caller's message."""

    def __init__(self, response: Answer) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


def buffer(size: int) -> memoryview:
    """A page-aligned buffer of ``size`` bytes (anonymous memory, reused across batches by its owner)."""
    return memoryview(mmap.mmap(-1, max(size, 1)))


class BulkConnection:
    """One keep-alive connection; not thread-safe (one per worker thread)."""

    def __init__(self, url: str, timeout: float = 120.0) -> None:
        parts = urlsplit(url)
        cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        self._conn = cls(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)

    def _connect(self) -> None:
        if self._conn.sock is None:
            self._conn.connect()
            sock = self._conn.sock
            assert sock is not None
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER)

    def request(self, method: str, path: str, headers: dict[str, str], body: bytes | memoryview,
                into: memoryview | None = None) -> int:
        """Send a request; read a successful response's body into ``into`` (returns its length) or discard it
        (returns 0). Refused for an error status, TransportError if the connection fails."""
        try:
            self._connect()
            # The signed headers carry Host (it is signed): http.client must not add a second one.
            has_host = any(name.lower() == "host" for name in headers)
            self._conn.putrequest(method, path, skip_host=has_host, skip_accept_encoding=True)
            for name, value in headers.items():
                self._conn.putheader(name, value)
            self._conn.putheader("Content-Length", str(len(body)))
            self._conn.endheaders()
            if len(body):
                self._conn.send(body)
            resp = self._conn.getresponse()
            if resp.status >= 300:
                raise Refused(Answer(resp.status, resp.read()))
            if into is None:
                resp.read()
                return 0
            got = 0
            while True:
                if got == len(into):
                    if resp.read(1):
                        raise TransportError(f"the response is longer than the {len(into)} bytes expected")
                    break
                n = resp.readinto(into[got:])
                if not n:
                    break
                got += n
            return got
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise TransportError(str(exc) or type(exc).__name__) from exc

    def call(self, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> Answer:
        """A small request whose whole answer, success or not, the caller reads (manifests, upload status)."""
        try:
            self._connect()
            self._conn.request(method, path, body=body, headers=headers)
            resp = self._conn.getresponse()
            return Answer(resp.status, resp.read())
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise TransportError(str(exc) or type(exc).__name__) from exc

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> BulkConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
