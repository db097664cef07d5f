"""A real S3 server on loopback for the tests: OpenStack Swift with its s3api middleware (Debian packages
swift, swift-proxy, swift-object, swift-container, swift-account and memcached; `make` installs them).

Everything lives in a temporary directory (rings, configs, the one device), on free ports; the processes
are started here and stopped by PID (:meth:`SwiftS3.close`). The recipe is
../shared/reference/feasibility.md §6. ``stop_proxy``/``start_proxy`` take the S3 endpoint away and bring
it back on the same port, for the fault tests.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ACCESS_KEY = "test:tester"
SECRET_KEY = "testing"
BINARIES = ("swift-proxy-server", "swift-object-server", "swift-container-server", "swift-account-server",
            "swift-ring-builder", "memcached")


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_conf(kind: str, port: int, root: Path) -> str:
    return f"""[DEFAULT]
bind_ip = 127.0.0.1
bind_port = {port}
workers = 0
swift_dir = {root}/etc
devices = {root}/node
mount_check = false
log_level = WARNING
log_facility = LOG_LOCAL1

[pipeline:main]
pipeline = {kind}-server

[app:{kind}-server]
use = egg:swift#{kind}

[{kind}-replicator]
[{kind}-auditor]
[{kind}-updater]
[object-expirer]
"""


_PIPELINE = ("catch_errors gatekeeper healthcheck proxy-logging cache listing_formats bulk s3api tempauth copy "
             "slo dlo proxy-logging proxy-server")


def _proxy_conf(port: int, memcache_port: int, root: Path) -> str:
    return f"""[DEFAULT]
bind_ip = 127.0.0.1
bind_port = {port}
workers = 0
swift_dir = {root}/etc
log_level = WARNING

[pipeline:main]
pipeline = {_PIPELINE}

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
allow_account_management = true

[filter:catch_errors]
use = egg:swift#catch_errors
[filter:gatekeeper]
use = egg:swift#gatekeeper
[filter:healthcheck]
use = egg:swift#healthcheck
[filter:proxy-logging]
use = egg:swift#proxy_logging
[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:{memcache_port}
[filter:listing_formats]
use = egg:swift#listing_formats
[filter:bulk]
use = egg:swift#bulk
[filter:s3api]
use = egg:swift#s3api
location = us-east-1
[filter:tempauth]
use = egg:swift#tempauth
user_test_tester = {SECRET_KEY} .admin
[filter:copy]
use = egg:swift#copy
[filter:slo]
use = egg:swift#slo
[filter:dlo]
use = egg:swift#dlo
"""


@dataclass
class SwiftS3:
    root: Path
    port: int = 0
    memcache_port: int = 0
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """Credentials as boto3 reads them (the service never takes them from its config file)."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_DEFAULT_REGION": "us-east-1"}

    def client(self):  # type: ignore[no-untyped-def]
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, signature_version="s3v4",
                          request_checksum_calculation="when_required",
                          response_checksum_validation="when_required"),
        )

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    # --- processes

    def start(self, timeout: float = 30.0) -> None:
        root = self.root
        etc = root / "etc"
        (root / "node" / "sdb1").mkdir(parents=True, exist_ok=True)
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "swift.conf").write_text(
            "[swift-hash]\nswift_hash_path_suffix = stratus-tests\nswift_hash_path_prefix = stratus\n\n"
            "[storage-policy:0]\nname = Policy-0\ndefault = yes\n"
        )
        ports = {"object": free_port(), "container": free_port(), "account": free_port()}
        for kind, port in ports.items():
            builder = str(etc / f"{kind}.builder")
            for args in (["create", "10", "1", "1"], ["add", f"r1z1-127.0.0.1:{port}/sdb1", "1"], ["rebalance"]):
                subprocess.run(["swift-ring-builder", builder, *args], check=True, capture_output=True)
            (etc / f"{kind}-server.conf").write_text(_server_conf(kind, port, root))
        self.port = self.port or free_port()
        self.memcache_port = free_port()
        (etc / "proxy-server.conf").write_text(_proxy_conf(self.port, self.memcache_port, root))
        self._spawn("memcached", ["memcached", "-u", "root", "-l", "127.0.0.1", "-p", str(self.memcache_port),
                                  "-U", "0"])
        for kind in ports:
            self._spawn(kind, [f"swift-{kind}-server", str(etc / f"{kind}-server.conf")])
        self.start_proxy(timeout)
        # The first S3 request autocreates the account; make sure it works before tests rely on it.
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.client().list_buckets()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def start_proxy(self, timeout: float = 30.0) -> None:
        self._spawn("proxy", ["swift-proxy-server", str(self.root / "etc" / "proxy-server.conf")])
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.endpoint_url}/healthcheck", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            proc = self.procs["proxy"]
            if proc.poll() is not None:
                raise RuntimeError(f"swift-proxy-server exited {proc.returncode}: "
                                   + (self.root / "proxy.log").read_text()[-2000:])
            if time.monotonic() > deadline:
                raise TimeoutError(f"Swift proxy on port {self.port} not healthy after {timeout} s")
            time.sleep(0.2)

    def stop_proxy(self) -> None:
        """Take the S3 endpoint away (its port then refuses connections)."""
        self._stop("proxy")

    def _stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # its own session: the server and its children, by PID
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def close(self) -> None:
        for name in list(self.procs):
            self._stop(name)
