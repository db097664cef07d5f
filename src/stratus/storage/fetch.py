"""Server-side pull of an image file from an http(s) URL (ImportImage): the transport, hardened against SSRF.

What may be fetched is decided by storage/url_policy.py; this module makes sure every connection obeys it:

* the URL passes :func:`~stratus.storage.url_policy.check_url_syntax` first;
* the host is resolved once, *every* resolved address must pass the address policy
  (:func:`~stratus.storage.url_policy.denied_reason`), and the connection goes to that exact validated IP:
  the request is sent to an IP-literal URL with the original ``Host`` header, so no second DNS lookup can
  rebind the name between check and connect;
* for https the TLS handshake uses the original host name for SNI *and* certificate verification
  (httpcore passes the ``sni_hostname`` request extension as ``server_hostname`` to
  ``SSLContext.wrap_socket``, and ``check_hostname`` verifies against that name, not the IP);
* redirects are followed by hand, each hop re-checked like the first;
* size and wall-clock time are bounded, and the partial file is removed on any failure;
* unless ``resume=True``: then a body cut short is fetched on from where it stopped with HTTP
  ``Range`` (and ``If-Range``) when the server offers it (``Accept-Ranges: bytes`` and a strong
  ``ETag`` or a ``Last-Modified``), and a partial file is kept beside a ``.meta`` record of the
  URL, validators and length, so a later call (the next task attempt) resumes it. A partial that
  doesn't match (other URL, changed ETag/Last-Modified/length, or a server answering 200 to the
  range) is restarted from byte 0. Only bytes written in order are ever kept.

Blocking network I/O runs in a helper thread so the caller's thread can enforce the overall
deadline and poll ``should_stop`` even while the server is silent; the callbacks are always
invoked on the caller's thread.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import queue
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from stratus.storage.url_policy import (
    DEFAULT_PORTS,
    Address,
    FetchError,
    FetchRefused,
    Network,
    check_addresses,
    check_parsed,
    parse_url,
)

# FetchError and FetchRefused are what fetch_url raises besides FetchFailed: re-exported for its callers.
__all__ = ["FetchError", "FetchFailed", "FetchRefused", "FetchResult", "fetch_url"]

BLOCK_SIZE = 1 << 20  # write granularity: bounded memory, few syscalls
_TICK = 0.1  # progress / should_stop / deadline polling interval (about 10x per second)
_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})

# Indirections so tests can fake DNS and trust a private CA without touching the real system.
_getaddrinfo = socket.getaddrinfo


def _tls_context() -> ssl.SSLContext:
    # httpx's default trust (certifi, or SSL_CERT_FILE / SSL_CERT_DIR if the operator sets them),
    # with hostname checking on: the name checked is the SNI name we pass, i.e. the URL's host.
    return httpx.create_ssl_context()


# --------------------------------------------------------------------------------------------
# Transport errors and result


class FetchFailed(FetchError):
    """Transport or HTTP failure: http_status, too_large, timeout, connect, truncated, cancelled."""


@dataclass(frozen=True)
class FetchResult:
    size: int
    final_url: str
    content_type: str | None
    resumed_from: tuple[int, ...] = ()  # the offsets the download went on from (Range requests)


@dataclass
class _Partial:
    """What a kept partial download is of: the resume point and the validators it must still match."""

    url: str
    offset: int
    length: int
    etag: str | None
    last_modified: str | None

    @staticmethod
    def meta_path(dest: Path) -> Path:
        return dest.with_name(dest.name + ".meta")

    @classmethod
    def load(cls, dest: Path, url: str) -> _Partial | None:
        try:
            meta = json.loads(cls.meta_path(dest).read_text())
            offset = dest.stat().st_size
            partial = cls(str(meta["url"]), offset, int(meta["length"]), meta.get("etag"), meta.get("last_modified"))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if partial.url != url or not (partial.etag or partial.last_modified) or not 0 < offset < partial.length:
            return None
        return partial

    def save(self, dest: Path) -> None:
        meta = {"url": self.url, "length": self.length, "etag": self.etag, "last_modified": self.last_modified}
        tmp = self.meta_path(dest).with_name(dest.name + ".meta.tmp")
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, self.meta_path(dest))

    def headers(self) -> dict[str, str]:
        return {"Range": f"bytes={self.offset}-", "If-Range": self.etag or self.last_modified or ""}

    def matches(self, response: httpx.Response) -> bool:
        """A 206 answer continues this partial: same validators, same length, starting at our offset."""
        m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", response.headers.get("content-range", "").strip())
        if m is None or int(m[1]) != self.offset or int(m[3]) != self.length:
            return False
        if self.etag and response.headers.get("etag") != self.etag:
            return False
        return not (not self.etag and response.headers.get("last-modified") != self.last_modified)


def _validators(response: httpx.Response) -> tuple[str | None, str | None] | None:
    """(strong ETag, Last-Modified) if the server lets a download of this response be resumed."""
    if response.headers.get("accept-ranges", "").strip().lower() != "bytes":
        return None
    etag = response.headers.get("etag")
    if etag is not None and etag.startswith("W/"):
        etag = None  # a weak validator can't be used with If-Range
    last_modified = response.headers.get("last-modified")
    return (etag, last_modified) if etag or last_modified else None


class _Interrupted(Exception):
    """The body stopped early, and the server can continue it from ``partial.offset``."""

    def __init__(self, error: FetchFailed, partial: _Partial) -> None:
        super().__init__(str(error))
        self.error = error
        self.partial = partial


_KEEP_REASONS = frozenset({"truncated", "timeout", "cancelled", "connect"})


# --------------------------------------------------------------------------------------------
# Deadline / cancellation / progress, all on the caller's thread


class _Watch:
    def __init__(
        self,
        timeout: float,
        should_stop: Callable[[], bool] | None,
        progress: Callable[[int, int | None], None] | None,
    ) -> None:
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self._should_stop = should_stop
        self._progress = progress
        self._stop_at = 0.0
        self._progress_at = 0.0
        self.host = ""

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def check(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if now >= self.deadline:
            raise self.timed_out()
        # Throttled: should_stop may be costly (e.g. a database read).
        if self._should_stop is not None and (force or now - self._stop_at >= _TICK):
            self._stop_at = now
            if self._should_stop():
                raise FetchFailed("cancelled", "The URL import was cancelled; nothing was kept.")

    def timed_out(self) -> FetchFailed:
        return FetchFailed(
            "timeout",
            f"Downloading from {self.host} did not finish within the {self.timeout:g} s limit; "
            "use a faster or closer source, or ask an operator to raise limits.download_timeout_seconds.",
        )

    def progress(self, received: int, total: int | None, *, force: bool = False) -> None:
        now = time.monotonic()
        if self._progress is not None and (force or now - self._progress_at >= _TICK):
            self._progress_at = now
            self._progress(received, total)


def _resolve(host: str, port: int, watch: _Watch, connect_timeout: float) -> list[Address]:
    """getaddrinfo in a daemon thread: the resolver has no timeout of its own."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    box: dict[str, Any] = {}
    done = threading.Event()

    def work() -> None:
        try:
            box["infos"] = _getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=work, name=f"fetch-dns-{host}", daemon=True).start()
    limit = time.monotonic() + connect_timeout
    while not done.wait(min(_TICK, max(watch.remaining(), 0.001))):
        watch.check()
        if time.monotonic() >= limit:
            raise FetchFailed(
                "timeout",
                f"Resolving {host} took longer than {connect_timeout:g} s; check the host name "
                "or try again later.",
            )
    error = box.get("error")
    if isinstance(error, (socket.gaierror, UnicodeError)):
        detail = getattr(error, "strerror", None) or str(error)
        raise FetchRefused("dns", f"Could not resolve {host} ({detail}); check the URL's host name.")
    if error is not None:
        raise error
    addrs: list[Address] = []
    for _family, _type, _proto, _canon, sockaddr in box["infos"]:
        ip = ipaddress.ip_address(sockaddr[0])
        if ip not in addrs:
            addrs.append(ip)
    if not addrs:
        raise FetchRefused("dns", f"{host} has no addresses; check the URL's host name.")
    return addrs


# --------------------------------------------------------------------------------------------
# One HTTP exchange, run in a helper thread


class _Hop(threading.Thread):
    """GET ``url`` from the validated ``addrs`` and stream events back through a bounded queue.

    Events: ("head", response) then ("data", bytes)* then ("end", None); or ("error", exc).
    The thread owns every httpx object; the caller only ever shuts the socket down to unblock it.
    """

    def __init__(self, url: httpx.URL, addrs: Sequence[Address], host_header: str, timeouts: httpx.Timeout,
                 extra_headers: dict[str, str] | None = None):
        super().__init__(name=f"fetch-{url.host}", daemon=True)
        self.url = url
        self.extra_headers = extra_headers or {}
        self.addrs = list(addrs)
        self.host_header = host_header
        self.timeouts = timeouts
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=64)  # <= ~4 MiB in flight
        self._abort = threading.Event()
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    # -- caller side

    def cancel(self) -> None:
        self._abort.set()
        self._shutdown()

    def next_event(self, watch: _Watch) -> tuple[str, Any]:
        while True:
            watch.check()
            try:
                return self.events.get(timeout=min(_TICK, max(watch.remaining(), 0.001)))
            except queue.Empty:
                continue

    # -- thread side

    def _shutdown(self) -> None:
        with self._lock:
            sock = self._sock
        if sock is not None and self._abort.is_set():
            # Base-class shutdown: also valid on an SSLSocket without touching its SSL state from
            # this thread. A closed socket object has fd -1, so this can never hit a reused fd.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def _trace(self, name: str, info: dict[str, Any]) -> None:
        # Capture the socket as soon as it exists so cancel() can interrupt the TLS handshake and the
        # wait for headers too. After start_tls the plain socket is detached, so take the TLS one.
        if name.endswith(("connect_tcp.complete", "start_tls.complete")):
            stream = info.get("return_value")
            sock = stream.get_extra_info("socket") if stream is not None else None
            with self._lock:
                self._sock = sock
            self._shutdown()

    def _put(self, item: tuple[str, Any]) -> bool:
        while not self._abort.is_set():
            try:
                self.events.put(item, timeout=_TICK)
                return True
            except queue.Full:
                continue
        return False

    def run(self) -> None:
        try:
            self._exchange()
        except BaseException as exc:  # handed to the caller's thread
            self._put(("error", exc))

    def _open(self, client: httpx.Client) -> httpx.Response:
        extensions: dict[str, Any] = {"trace": self._trace}
        if self.url.scheme == "https":
            # Verify the certificate against (and send SNI for) the name, not the IP we dial.
            extensions["sni_hostname"] = self.url.raw_host.decode("ascii")
        headers = {
            "Host": self.host_header,
            # Identity: the file must land byte-for-byte, and Content-Length must mean file length.
            "Accept-Encoding": "identity",
            "User-Agent": "stratus-image-import",
            **self.extra_headers,
        }
        for i, ip in enumerate(self.addrs):
            target = self.url.copy_with(host=str(ip), fragment=None)
            request = client.build_request("GET", target, headers=headers, extensions=extensions)
            try:
                return client.send(request, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout):
                # Next validated address (e.g. ::1 then 127.0.0.1), never a fresh lookup.
                if i + 1 == len(self.addrs) or self._abort.is_set():
                    raise
        raise AssertionError("unreachable: no addresses")

    def _exchange(self) -> None:
        # A fresh client per hop: no pooled connection can carry a previous hop's SNI/host, and
        # trust_env=False keeps HTTP(S)_PROXY from routing around the address check.
        with httpx.Client(
            verify=_tls_context(), trust_env=False, follow_redirects=False, timeout=self.timeouts
        ) as client:
            response = self._open(client)
            try:
                if not self._put(("head", response)):
                    return
                if not 200 <= response.status_code < 300:
                    return
                for chunk in response.iter_raw():
                    if not self._put(("data", chunk)):
                        return
                self._put(("end", None))
            finally:
                response.close()


# --------------------------------------------------------------------------------------------
# Error mapping


def _cert_problem(exc: BaseException) -> bool:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(cur):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def _transport_error(
    exc: BaseException, watch: _Watch, *, in_body: bool, received: int, total: int | None
) -> BaseException:
    host = watch.host
    if isinstance(exc, httpx.TimeoutException):
        if isinstance(exc, httpx.ConnectTimeout):
            return FetchFailed(
                "timeout", f"Connecting to {host} timed out; check that the server is up and reachable."
            )
        return watch.timed_out()
    if in_body and isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError)):
        of = f" of {total}" if total is not None else ""
        return FetchFailed(
            "truncated",
            f"{host} closed the connection after {received}{of} bytes; the file is incomplete. "
            "Check the server and retry the import.",
        )
    if isinstance(exc, httpx.ConnectError) and _cert_problem(exc):
        return FetchFailed(
            "connect",
            f"The TLS certificate of {host} could not be verified ({exc}); the server must present a "
            f"valid certificate for {host}.",
        )
    if isinstance(exc, httpx.HTTPError | httpx.InvalidURL):
        return FetchFailed(
            "connect", f"Could not fetch from {host} ({exc or type(exc).__name__}); check the URL and retry."
        )
    return exc  # a programming error: let it surface unchanged


# --------------------------------------------------------------------------------------------
# Public entry point


def fetch_url(
    url: str,
    dest: Path,
    *,
    allow: Sequence[Network] = (),
    max_bytes: int,
    timeout: float,
    connect_timeout: float = 10,
    max_redirects: int = 5,
    progress: Callable[[int, int | None], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume: bool = False,
    max_resumes: int = 5,
) -> FetchResult:
    """Download ``url`` into ``dest`` under the SSRF policy; see the module docstring.

    ``timeout`` is a wall-clock budget for the whole fetch (DNS, redirects, body). ``progress``
    gets ``(received, total_or_None)`` about 10x per second and once at the end; ``should_stop``
    is polled about 10x per second. Raises FetchRefused / FetchFailed; on any failure ``dest``
    is removed, unless ``resume`` and the server allows resuming (then it is kept to go on from).
    With ``resume``, an existing ``dest`` with a matching ``.meta`` record is continued, and a body
    cut short is continued up to ``max_resumes`` times within this call.
    """
    watch = _Watch(timeout, should_stop, progress)
    partial = _Partial.load(dest, url) if resume else None
    resumed: list[int] = []  # offsets the server continued from (206 answers)
    tries = 0
    try:
        while True:
            try:
                result = _fetch_once(url, dest, partial, allow, max_bytes, watch, connect_timeout, max_redirects,
                                     resumed)
            except _Interrupted as exc:
                tries += 1
                if tries > max_resumes or not resume:
                    raise exc.error from None
                partial = exc.partial
                continue
            return FetchResult(result.size, result.final_url, result.content_type, tuple(resumed))
    except FetchFailed as exc:
        if not (resume and exc.reason in _KEEP_REASONS and _Partial.meta_path(dest).exists()):
            _discard(dest)
        raise
    except BaseException:
        _discard(dest)
        raise
    finally:
        if not dest.exists():
            _Partial.meta_path(dest).unlink(missing_ok=True)


def _discard(dest: Path) -> None:
    with contextlib.suppress(OSError):  # never mask the real failure
        dest.unlink(missing_ok=True)
        _Partial.meta_path(dest).unlink(missing_ok=True)


def _fetch_once(
    url: str,
    dest: Path,
    partial: _Partial | None,
    allow: Sequence[Network],
    max_bytes: int,
    watch: _Watch,
    connect_timeout: float,
    max_redirects: int,
    resumed: list[int],
) -> FetchResult:
    """One GET, following redirects; from ``partial.offset`` with a Range request if ``partial``."""
    current = parse_url(url)
    check_parsed(current, url)
    current = current.copy_with(fragment=None)
    redirects = 0
    prefix = ""  # "a redirected to b: " once we are following redirects
    while True:
        host = current.raw_host.decode("ascii")
        watch.host = host
        watch.check(force=True)
        port = current.port or DEFAULT_PORTS[current.scheme]
        addrs = _resolve(host, port, watch, connect_timeout)
        check_addresses(host, addrs, allow, prefix)

        shown_host = f"[{host}]" if ":" in host else host
        host_header = shown_host if current.port is None else f"{shown_host}:{current.port}"
        remaining = max(watch.remaining(), 0.001)
        # The caller's thread enforces the deadline; these are a backstop so the helper thread can
        # never outlive it by much, even if it cannot be interrupted.
        timeouts = httpx.Timeout(remaining, connect=min(connect_timeout, remaining))
        hop = _Hop(current, addrs, host_header, timeouts, partial.headers() if partial else None)
        hop.start()
        try:
            kind, payload = hop.next_event(watch)
            if kind == "error":
                raise _transport_error(payload, watch, in_body=False, received=0, total=None)
            response: httpx.Response = payload
            status = response.status_code
            if status in _REDIRECT_CODES:
                location = response.headers.get("location")
                if not location:
                    raise FetchFailed(
                        "http_status",
                        f"{host} answered HTTP {status} without a Location header; use the file's final URL.",
                    )
                redirects += 1
                if redirects > max_redirects:
                    raise FetchRefused(
                        "too_many_redirects",
                        f"The import URL redirected more than {max_redirects} times (last hop {host}); "
                        "use the file's final URL.",
                    )
                try:
                    nxt = current.join(location).copy_with(fragment=None)
                except (httpx.InvalidURL, ValueError):
                    raise FetchFailed(
                        "http_status",
                        f"{host} redirected to an invalid location {location!r}; use the file's final URL.",
                    ) from None
                prefix = f"{host} redirected to {nxt.host or location}: "
                try:
                    check_parsed(nxt, str(nxt))
                except FetchRefused as exc:
                    raise FetchRefused(exc.reason, prefix + str(exc)) from None
                current = nxt
                continue
            if status == 416 and partial is not None:
                # The range no longer fits the file: it changed. Start over from byte 0.
                _discard(dest)
                return _fetch_once(url, dest, None, allow, max_bytes, watch, connect_timeout, max_redirects, resumed)
            if status == 206 and partial is not None and partial.matches(response):
                resumed.append(partial.offset)
                return _receive(hop, response, dest, url, current, max_bytes, watch, partial)
            if not 200 <= status < 300 or status == 206:
                hint = (
                    "the URL must be readable without credentials (a pre-signed URL works)"
                    if status in (401, 403)
                    else "check that the URL is correct and the file is published"
                )
                raise FetchFailed(
                    "http_status",
                    f"{host} answered HTTP {status} {response.reason_phrase} for the image; {hint}.",
                )
            # A full answer (no range asked, or the file changed, or no Range support): from byte 0.
            return _receive(hop, response, dest, url, current, max_bytes, watch, None)
        finally:
            hop.cancel()
            hop.join(timeout=1)  # best effort; the thread is a daemon bounded by its own timeouts


def _receive(
    hop: _Hop, response: httpx.Response, dest: Path, original_url: str, url: httpx.URL, max_bytes: int,
    watch: _Watch, partial: _Partial | None,
) -> FetchResult:
    host = watch.host
    offset = partial.offset if partial is not None else 0
    total: int | None
    try:
        total = offset + int(response.headers["content-length"])
    except (KeyError, ValueError):
        total = None
    too_large = FetchFailed(
        "too_large",
        f"The file at {host} is larger than the {max_bytes} byte import limit; import a smaller image "
        "or ask an operator to raise limits.max_download_bytes.",
    )
    if total is not None and total > max_bytes:
        raise too_large  # before writing: the caller removes what is there
    # Record what a kept partial is of before its first byte lands, so it can be resumed after a crash.
    resumable: _Partial | None = None
    if partial is not None:
        resumable = partial
    else:
        _Partial.meta_path(dest).unlink(missing_ok=True)
        validators = _validators(response)
        if validators is not None and total is not None:
            resumable = _Partial(original_url, 0, total, *validators)
            resumable.save(dest)
    received = offset
    with open(dest, "r+b" if partial is not None else "wb") as out:
        out.seek(offset)
        out.truncate()
        buf = bytearray()
        watch.progress(received, total, force=True)
        try:
            while True:
                kind, payload = hop.next_event(watch)
                if kind == "end":
                    break
                if kind == "error":
                    raise _transport_error(payload, watch, in_body=True, received=received, total=total)
                if received + len(payload) > max_bytes:
                    raise too_large  # a server without (or lying about) Content-Length
                received += len(payload)
                buf += payload
                if len(buf) >= BLOCK_SIZE:
                    out.write(buf)
                    buf.clear()
                watch.progress(received, total)
            if total is not None and received != total:  # h11 enforces this too; keep the promise here
                raise FetchFailed(
                    "truncated",
                    f"{host} sent {received} of {total} bytes; the file is incomplete. Retry the import.",
                )
        except FetchFailed as exc:
            if resumable is None or exc.reason not in _KEEP_REASONS:
                raise
            out.write(buf)  # everything received so far is in order: keep it to go on from
            if exc.reason == "truncated":
                resumable.offset = received
                raise _Interrupted(exc, resumable) from None
            raise
        out.write(buf)
    watch.progress(received, total, force=True)
    _Partial.meta_path(dest).unlink(missing_ok=True)
    return FetchResult(size=received, final_url=str(url), content_type=response.headers.get("content-type"))
