"""SSRF-hardened URL fetch: real HTTP(S) servers on loopback only; DNS is faked except for localhost."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from stratus.storage import fetch
from stratus.storage.fetch import FetchError, FetchFailed, FetchRefused, fetch_url
from stratus.storage.url_policy import check_url_syntax, denied_reason, is_address_allowed

ALT_LOOPBACK = "127.0.0.2"  # the "allowed" server; 127.0.0.1 plays the forbidden internal service
ALLOW_ALT = [ipaddress.ip_network("127.0.0.2/32")]
PAYLOAD = bytes(range(256)) * 12_289  # ~3 MiB, not a multiple of the 1 MiB block size

Route = Callable[[BaseHTTPRequestHandler], None]


@dataclass
class Server:
    base: str
    host: str
    port: int
    hits: list[str] = field(default_factory=list)
    host_headers: list[str | None] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)


@contextmanager
def serve(
    host: str, routes: dict[str, Route], tls: ssl.SSLContext | None = None, scheme_host: str | None = None
) -> Iterator[Server]:
    """A ThreadingHTTPServer on ``host`` (loopback), ephemeral port, in a daemon thread."""
    state: dict[str, Server] = {}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            srv = state["server"]
            srv.hits.append(self.path)
            srv.host_headers.append(self.headers.get("Host"))
            route = routes.get(self.path.split("?", 1)[0])
            if route is None:
                self.send_error(404)
                return
            try:
                route(self)
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                self.close_connection = True  # the client hung up on us, as intended

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer((host, 0), Handler)
    httpd.daemon_threads = True
    if tls is not None:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    port = httpd.server_address[1]
    scheme = "https" if tls is not None else "http"
    srv = Server(base=f"{scheme}://{scheme_host or host}:{port}", host=host, port=port)
    state["server"] = srv
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.release.set()  # unblock stalling handlers
        httpd.shutdown()
        httpd.server_close()


# -- route builders


def body(data: bytes, content_type: str = "application/octet-stream") -> Route:
    def route(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    return route


def redirect(location: str, status: int = 302) -> Route:
    def route(h: BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        h.send_header("Location", location)
        h.send_header("Content-Length", "0")
        h.end_headers()

    return route


def chunked_forever(h: BaseHTTPRequestHandler) -> None:
    """Lies by omission: no Content-Length, just keeps sending chunks."""
    h.send_response(200)
    h.send_header("Transfer-Encoding", "chunked")
    h.end_headers()
    block = b"x" * 65536
    for _ in range(1000):  # 64 MiB upper bound in case the client misbehaves
        h.wfile.write(b"%x\r\n%s\r\n" % (len(block), block))
    h.wfile.write(b"0\r\n\r\n")


def short_body(h: BaseHTTPRequestHandler) -> None:
    h.send_response(200)
    h.send_header("Content-Length", "1000")
    h.end_headers()
    h.wfile.write(b"y" * 500)
    h.close_connection = True


def make_stall(server: dict[str, Server]) -> Route:
    def route(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(10 << 20))
        h.end_headers()
        h.wfile.write(b"z" * 65536)
        h.wfile.flush()
        server["s"].release.wait(10)
        h.close_connection = True

    return route


def trickle(h: BaseHTTPRequestHandler) -> None:
    h.send_response(200)
    h.send_header("Content-Length", "1000")
    h.end_headers()
    for _ in range(1000):
        h.wfile.write(b"t")
        h.wfile.flush()
        time.sleep(0.02)


def fake_dns(table: dict[str, list[str]], calls: list[str] | None = None) -> Callable[..., Any]:
    """Stands in for socket.getaddrinfo inside fetch only; never touches a real resolver."""

    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        if calls is not None:
            calls.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        out = []
        for ip in table[host]:
            if ":" in ip:
                out.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (ip, port, 0, 0)))
            else:
                out.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)))
        return out

    return getaddrinfo


def get(url: str, dest: Path, **kw: Any) -> fetch.FetchResult:
    kw.setdefault("max_bytes", 64 << 20)
    kw.setdefault("timeout", 10)
    kw.setdefault("connect_timeout", 2)
    return fetch_url(url, dest, **kw)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt at DNS or a connection fails the test."""

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket, "getaddrinfo", boom)
    monkeypatch.setattr(socket, "create_connection", boom)
    monkeypatch.setattr(fetch, "_getaddrinfo", boom)


# -- address policy (pure, no traffic)


@pytest.mark.parametrize(
    "address",
    [
        "169.254.169.254",
        "10.1.2.3",
        "192.168.1.1",
        "172.16.0.1",
        "100.64.0.1",
        "127.0.0.1",
        "0.0.0.0",
        "0.1.2.3",
        "224.0.0.1",
        "255.255.255.255",
        "240.0.0.1",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "fd12:3456::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "::ffff:10.0.0.1",
        "::7f00:1",  # IPv4-compatible 127.0.0.1
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    ],
)
def test_denied_addresses(no_network: None, address: str) -> None:
    assert denied_reason(address) is not None
    assert not is_address_allowed(address)


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2001:4860::8888", "::ffff:8.8.8.8", "64:ff9b::808:808"])
def test_public_addresses_allowed(no_network: None, address: str) -> None:
    assert denied_reason(address) is None


def test_denial_reasons_are_specific(no_network: None) -> None:
    assert denied_reason("127.0.0.1") == "a loopback address"
    assert "metadata" in (denied_reason("169.254.169.254") or "")
    assert "loopback" in (denied_reason("::ffff:127.0.0.1") or "")
    assert "carrier-grade NAT" in (denied_reason("100.64.0.1") or "")


def test_operator_allow_list(no_network: None) -> None:
    allow = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")]
    assert is_address_allowed("10.1.2.3", allow)
    assert is_address_allowed("::ffff:10.1.2.3", allow)  # mapped form of an admitted address
    assert is_address_allowed("fd00::5", allow)
    assert not is_address_allowed("192.168.1.1", allow)
    assert not is_address_allowed("127.0.0.1", allow)


# -- URL syntax


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("file:///etc/passwd", "scheme"),
        ("ftp://example.com/img.qcow2", "scheme"),
        ("gopher://example.com:70/_x", "scheme"),
        ("data:application/octet-stream;base64,AAAA", "scheme"),
        ("example.com/img.qcow2", "scheme"),
        ("http:///img.qcow2", "no_host"),
        ("http://user:secret@example.com/img", "userinfo"),
        ("http://[::1/x", "invalid_url"),
    ],
)
def test_check_url_syntax_refusals(no_network: None, url: str, reason: str) -> None:
    with pytest.raises(FetchRefused) as err:
        check_url_syntax(url)
    assert err.value.reason == reason
    assert str(err.value)


def test_check_url_syntax_accepts_http_and_https(no_network: None) -> None:
    check_url_syntax("http://example.com/a.qcow2")
    check_url_syntax("HTTPS://Example.COM:8443/a.raw?sig=x")


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.2/x", "gopher://127.0.0.2/x"])
def test_fetch_refuses_other_schemes(no_network: None, tmp_path: Path, url: str) -> None:
    dest = tmp_path / "img"
    with pytest.raises(FetchRefused) as err:
        get(url, dest, allow=ALLOW_ALT)
    assert err.value.reason == "scheme"
    assert not dest.exists()


# -- end to end over loopback


def test_allowed_server_success(tmp_path: Path) -> None:
    with serve(ALT_LOOPBACK, {"/img.qcow2": body(PAYLOAD, "application/x-qemu-disk")}) as srv:
        dest = tmp_path / "img"
        result = get(f"{srv.base}/img.qcow2#frag", dest, allow=ALLOW_ALT)
    assert dest.read_bytes() == PAYLOAD
    assert result.size == len(PAYLOAD)
    assert result.final_url == f"{srv.base}/img.qcow2"
    assert result.content_type == "application/x-qemu-disk"
    assert srv.host_headers == [f"{ALT_LOOPBACK}:{srv.port}"]


def test_same_server_refused_without_allow(tmp_path: Path) -> None:
    with serve(ALT_LOOPBACK, {"/img": body(b"data")}) as srv:
        dest = tmp_path / "img"
        with pytest.raises(FetchRefused) as err:
            get(f"{srv.base}/img", dest)
    assert err.value.reason == "address_not_allowed"
    assert "127.0.0.2 is a loopback address" in str(err.value)
    assert "STRATUS_IMPORT_URL_ALLOW=127.0.0.2/32" in str(err.value)
    assert srv.hits == []
    assert not dest.exists()


def test_loopback_server_outside_allow_list_refused(tmp_path: Path) -> None:
    with serve("127.0.0.1", {"/img": body(b"data")}) as srv, pytest.raises(FetchRefused) as err:
        get(f"{srv.base}/img", tmp_path / "img", allow=ALLOW_ALT)
    assert err.value.reason == "address_not_allowed"
    assert srv.hits == []


def test_redirect_to_denied_address_refused_without_touching_it(tmp_path: Path) -> None:
    with serve("127.0.0.1", {"/secret": body(b"internal")}) as internal:
        routes = {"/img": redirect(f"{internal.base}/secret")}
        with serve(ALT_LOOPBACK, routes) as srv:
            dest = tmp_path / "img"
            with pytest.raises(FetchRefused) as err:
                get(f"{srv.base}/img", dest, allow=ALLOW_ALT)
    assert err.value.reason == "address_not_allowed"
    assert "redirected to 127.0.0.1" in str(err.value)
    assert srv.hits == ["/img"]
    assert internal.hits == []
    assert not dest.exists()


def test_relative_redirect_followed(tmp_path: Path) -> None:
    routes = {"/old": redirect("/mid", 301), "/mid": redirect("/new", 307), "/new": body(PAYLOAD)}
    with serve(ALT_LOOPBACK, routes) as srv:
        dest = tmp_path / "img"
        result = get(f"{srv.base}/old", dest, allow=ALLOW_ALT)
    assert dest.read_bytes() == PAYLOAD
    assert result.final_url == f"{srv.base}/new"
    assert srv.hits == ["/old", "/mid", "/new"]


def test_redirect_loop(tmp_path: Path) -> None:
    with serve(ALT_LOOPBACK, {"/loop": redirect("/loop")}) as srv, pytest.raises(FetchRefused) as err:
        get(f"{srv.base}/loop", tmp_path / "img", allow=ALLOW_ALT, max_redirects=3)
    assert err.value.reason == "too_many_redirects"
    assert len(srv.hits) == 4  # the original request plus three followed redirects


def test_redirect_to_file_scheme_refused(tmp_path: Path) -> None:
    routes = {"/img": redirect("file:///etc/passwd")}
    with serve(ALT_LOOPBACK, routes) as srv, pytest.raises(FetchRefused) as err:
        get(f"{srv.base}/img", tmp_path / "img", allow=ALLOW_ALT)
    assert err.value.reason == "scheme"


def test_http_404(tmp_path: Path) -> None:
    with serve(ALT_LOOPBACK, {}) as srv:
        dest = tmp_path / "img"
        with pytest.raises(FetchFailed) as err:
            get(f"{srv.base}/missing", dest, allow=ALLOW_ALT)
    assert err.value.reason == "http_status"
    assert "404" in str(err.value)
    assert not dest.exists()


def test_chunked_body_over_limit_is_too_large(tmp_path: Path) -> None:
    with serve(ALT_LOOPBACK, {"/img": chunked_forever}) as srv:
        dest = tmp_path / "img"
        with pytest.raises(FetchFailed) as err:
            get(f"{srv.base}/img", dest, allow=ALLOW_ALT, max_bytes=3 << 20)
    assert err.value.reason == "too_large"
    assert not dest.exists()


def test_content_length_over_limit_refused_early(tmp_path: Path) -> None:
    holder: dict[str, Server] = {}

    def huge(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(1 << 40))
        h.end_headers()
        h.wfile.write(b"q" * 1000)
        h.wfile.flush()
        holder["s"].release.wait(10)  # a fetch that reads on would hit the timeout instead

    with serve(ALT_LOOPBACK, {"/img": huge}) as srv:
        holder["s"] = srv
        dest = tmp_path / "img"
        start = time.monotonic()
        with pytest.raises(FetchFailed) as err:
            get(f"{srv.base}/img", dest, allow=ALLOW_ALT, max_bytes=1 << 30, timeout=3)
        elapsed = time.monotonic() - start
    assert err.value.reason == "too_large"
    assert elapsed < 1
    assert not dest.exists()


def test_exactly_max_bytes_is_fine(tmp_path: Path) -> None:
    with serve(ALT_LOOPBACK, {"/img": body(PAYLOAD)}) as srv:
        result = get(f"{srv.base}/img", tmp_path / "img", allow=ALLOW_ALT, max_bytes=len(PAYLOAD))
    assert result.size == len(PAYLOAD)


def test_short_body_is_truncated(tmp_path: Path) -> None:
    with serve(ALT_LOOPBACK, {"/img": short_body}) as srv:
        dest = tmp_path / "img"
        with pytest.raises(FetchFailed) as err:
            get(f"{srv.base}/img", dest, allow=ALLOW_ALT)
    assert err.value.reason == "truncated"
    assert not dest.exists()


def test_stall_mid_body_times_out(tmp_path: Path) -> None:
    holder: dict[str, Server] = {}
    with serve(ALT_LOOPBACK, {"/img": make_stall(holder)}) as srv:
        holder["s"] = srv
        dest = tmp_path / "img"
        start = time.monotonic()
        with pytest.raises(FetchFailed) as err:
            get(f"{srv.base}/img", dest, allow=ALLOW_ALT, timeout=1.0)
        elapsed = time.monotonic() - start
    assert err.value.reason == "timeout"
    assert 0.9 <= elapsed < 2.0
    assert not dest.exists()


def test_deadline_is_wall_clock_not_per_read(tmp_path: Path) -> None:
    # Each byte arrives well within any per-read timeout; only a whole-transfer deadline stops it.
    with serve(ALT_LOOPBACK, {"/img": trickle}) as srv:
        dest = tmp_path / "img"
        start = time.monotonic()
        with pytest.raises(FetchFailed) as err:
            get(f"{srv.base}/img", dest, allow=ALLOW_ALT, timeout=0.6)
        elapsed = time.monotonic() - start
    assert err.value.reason == "timeout"
    assert elapsed < 1.5
    assert not dest.exists()


def test_should_stop_cancels_even_while_server_is_silent(tmp_path: Path) -> None:
    holder: dict[str, Server] = {}
    with serve(ALT_LOOPBACK, {"/img": make_stall(holder)}) as srv:
        holder["s"] = srv
        dest = tmp_path / "img"
        start = time.monotonic()
        with pytest.raises(FetchFailed) as err:
            get(
                f"{srv.base}/img",
                dest,
                allow=ALLOW_ALT,
                timeout=30,
                should_stop=lambda: time.monotonic() - start > 0.3,
            )
        elapsed = time.monotonic() - start
    assert err.value.reason == "cancelled"
    assert elapsed < 0.9  # the blocked read is interrupted, not waited out
    assert not [t for t in threading.enumerate() if t.name.startswith("fetch-") and t.is_alive()]
    assert not dest.exists()


def test_proxy_environment_is_ignored(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A proxy would do its own DNS and connect, bypassing the address check entirely.
    with serve("127.0.0.1", {}) as proxy, serve(ALT_LOOPBACK, {"/img": body(PAYLOAD)}) as srv:
        for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.setenv(var, proxy.base)
        dest = tmp_path / "img"
        get(f"{srv.base}/img", dest, allow=ALLOW_ALT)
    assert dest.read_bytes() == PAYLOAD
    assert proxy.hits == []


def test_progress_reports(tmp_path: Path) -> None:
    calls: list[tuple[int, int | None]] = []
    with serve(ALT_LOOPBACK, {"/img": body(PAYLOAD)}) as srv:
        get(f"{srv.base}/img", tmp_path / "img", allow=ALLOW_ALT, progress=lambda r, t: calls.append((r, t)))
    assert calls[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert [r for r, _ in calls] == sorted(r for r, _ in calls)
    assert len(calls) < 20  # throttled, not once per network read


# -- host names


def test_localhost_resolves_to_loopback_and_is_refused(tmp_path: Path) -> None:
    with serve("127.0.0.1", {"/img": body(b"data")}) as srv:
        dest = tmp_path / "img"
        with pytest.raises(FetchRefused) as err:
            get(f"http://localhost:{srv.port}/img", dest)
    assert err.value.reason == "address_not_allowed"
    assert "localhost resolves to" in str(err.value)
    assert srv.hits == []


def test_localhost_admitted_by_operator(tmp_path: Path) -> None:
    allow = [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")]
    with serve("127.0.0.1", {"/img": body(PAYLOAD)}) as srv:
        dest = tmp_path / "img"
        get(f"http://localhost:{srv.port}/img", dest, allow=allow)
    assert dest.read_bytes() == PAYLOAD
    assert srv.host_headers == [f"localhost:{srv.port}"]  # original host, though we dialled an IP


def test_every_resolved_address_must_be_allowed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(fetch, "_getaddrinfo", fake_dns({"mixed.stratus.test": [ALT_LOOPBACK, "10.0.0.1"]}))
    with pytest.raises(FetchRefused) as err:
        get("http://mixed.stratus.test/img", tmp_path / "img", allow=ALLOW_ALT)
    assert err.value.reason == "address_not_allowed"
    assert "10.0.0.1" in str(err.value)


def test_unresolvable_host(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(fetch, "_getaddrinfo", fake_dns({}))
    with pytest.raises(FetchRefused) as err:
        get("http://nowhere.stratus.test/img", tmp_path / "img")
    assert err.value.reason == "dns"


def test_resolved_once_and_validated_ip_dialled(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """DNS rebinding: later lookups would say 127.0.0.1, but only the first (checked) answer is used."""
    calls: list[str] = []
    first = fake_dns({"img.stratus.test": [ALT_LOOPBACK]}, calls)
    rebound = fake_dns({"img.stratus.test": ["127.0.0.1"]}, calls)
    monkeypatch.setattr(fetch, "_getaddrinfo", lambda *a, **k: (first if not calls else rebound)(*a, **k))
    with serve(ALT_LOOPBACK, {"/img": body(PAYLOAD)}) as srv:
        dest = tmp_path / "img"
        get(f"http://img.stratus.test:{srv.port}/img", dest, allow=ALLOW_ALT)
    assert calls == ["img.stratus.test"]
    assert dest.read_bytes() == PAYLOAD
    assert srv.host_headers == [f"img.stratus.test:{srv.port}"]


# -- https: SNI and certificate verification against the host name while dialling the IP


@dataclass
class Pki:
    ca_pem: bytes
    cert_file: Path
    key_file: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stratus test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "images.stratus.test")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("images.stratus.test")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    d = tmp_path_factory.mktemp("pki")
    (d / "cert.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (d / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return Pki(ca.public_bytes(serialization.Encoding.PEM), d / "cert.pem", d / "key.pem")


@contextmanager
def https_server(pki: Pki, routes: dict[str, Route], sni_seen: list[str | None]) -> Iterator[Server]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.cert_file, pki.key_file)
    ctx.sni_callback = lambda _sock, name, _ctx: sni_seen.append(name)  # type: ignore[assignment,misc]
    with serve(ALT_LOOPBACK, routes, tls=ctx, scheme_host="images.stratus.test") as srv:
        yield srv


@pytest.fixture
def trust_test_ca(monkeypatch: pytest.MonkeyPatch, pki: Pki) -> None:
    monkeypatch.setattr(fetch, "_tls_context", lambda: ssl.create_default_context(cadata=pki.ca_pem.decode()))


def test_https_verifies_hostname_while_dialling_ip(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pki: Pki, trust_test_ca: None
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(fetch, "_getaddrinfo", fake_dns({"images.stratus.test": [ALT_LOOPBACK]}, calls))
    sni: list[str | None] = []
    with https_server(pki, {"/img": body(PAYLOAD)}, sni) as srv:
        dest = tmp_path / "img"
        result = get(f"{srv.base}/img", dest, allow=ALLOW_ALT)
    assert dest.read_bytes() == PAYLOAD
    assert result.final_url == f"https://images.stratus.test:{srv.port}/img"
    assert sni == ["images.stratus.test"]
    assert srv.host_headers == [f"images.stratus.test:{srv.port}"]
    assert calls == ["images.stratus.test"]


def test_https_certificate_for_another_name_rejected(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pki: Pki, trust_test_ca: None
) -> None:
    monkeypatch.setattr(fetch, "_getaddrinfo", fake_dns({"evil.stratus.test": [ALT_LOOPBACK]}))
    sni: list[str | None] = []
    with https_server(pki, {"/img": body(PAYLOAD)}, sni) as srv:
        dest = tmp_path / "img"
        with pytest.raises(FetchFailed) as err:
            get(f"https://evil.stratus.test:{srv.port}/img", dest, allow=ALLOW_ALT)
    assert err.value.reason == "connect"
    assert "certificate" in str(err.value)
    assert sni == ["evil.stratus.test"]
    assert srv.hits == []
    assert not dest.exists()


def test_errors_share_a_base_class() -> None:
    assert issubclass(FetchRefused, FetchError)
    assert issubclass(FetchFailed, FetchError)
