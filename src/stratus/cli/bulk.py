"""Keep-alive HTTP/1.1 connections for the chunk batches of `stratus image import/export`.

httpx (the CLI's client for everything else) reads a response in 64 KiB pieces into new bytes objects
and joins them: for gigabytes of chunks that is most of the client's CPU. Here a batch is sent from, and a
response read straight into, a page-aligned buffer the caller keeps (http.client's ``readinto``): the
socket's copy is the only one, and the chunks in the buffer are aligned for an O_DIRECT write.
"""

from __future__ import annotations

import http.client
import mmap
import socket
from urllib.parse import urlsplit

import httpx

_SOCKET_BUFFER = 4 * 1024 * 1024  # a batch in flight per connection: larger socket buffers, fewer wake-ups


class TransportError(Exception):
    """The connection failed mid-request (reset, refused, timed out): the batch may be sent again."""


class Refused(Exception):
    """The server answered with an error status; ``response`` holds it for the caller's message."""

    def __init__(self, response: httpx.Response) -> None:
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
            self._conn.putrequest(method, path, skip_host=False, skip_accept_encoding=True)
            for name, value in headers.items():
                self._conn.putheader(name, value)
            self._conn.putheader("Content-Length", str(len(body)))
            self._conn.endheaders()
            if len(body):
                self._conn.send(body)
            resp = self._conn.getresponse()
            if resp.status >= 300:
                data = resp.read()
                raise Refused(httpx.Response(resp.status, content=data, headers=dict(resp.getheaders())))
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

    def close(self) -> None:
        self._conn.close()
