"""Shared fixtures: a real `stratus serve` process on loopback, real accounts made with the CLI,
the official SDK and tccli as clients, SQLite or PostgreSQL (STRATUS_TEST_DATABASE)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
STRATUS = str(BIN / "stratus")
TCCLI = str(BIN / "tccli")
DATABASE = os.environ.get("STRATUS_TEST_DATABASE", "sqlite")
PG_URL = os.environ.get("STRATUS_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Tests that touch the catalog run on both databases; the rest only once (scripts/test.sh).
    for item in items:
        if "db_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.db)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "db: touches the catalog; runs on SQLite and PostgreSQL")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


_SCHEMAS: list[str] = []


def new_db_url(tmp: Path) -> str:
    """A fresh, empty catalog: a SQLite file, or a new schema in the PostgreSQL test database."""
    if DATABASE == "sqlite":
        return f"sqlite:///{tmp / ('stratus-' + uuid.uuid4().hex[:8] + '.db')}"
    import psycopg

    schema = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    _SCHEMAS.append(schema)
    return f"{PG_URL}?options=-csearch_path%3D{schema}"


def pytest_sessionfinish(session: pytest.Session) -> None:
    if not _SCHEMAS:
        return
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        for schema in _SCHEMAS:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture(scope="module")
def db_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return new_db_url(tmp_path_factory.mktemp("db"))


@dataclass
class Account:
    account_id: str
    secret_id: str
    secret_key: str
    name: str

    def env(self) -> dict[str, str]:
        return {"TENCENTCLOUD_SECRET_ID": self.secret_id, "TENCENTCLOUD_SECRET_KEY": self.secret_key}


@dataclass
class Server:
    """A real `stratus serve` process and the ways to talk to it."""

    data_dir: Path
    port: int
    env: dict[str, str]
    config: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    accounts: dict[str, Account] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [STRATUS, "serve", "--data-dir", str(self.data_dir), "--port", str(self.port), "--config",
             str(self.config), "--log-level", "info"],
            env=self.env, stdout=self.log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"stratus serve exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                httpx.get(self.url + "/", timeout=0.5)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("stratus serve did not come up:\n" + self.log.read_text()[-3000:])

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)

    def run(self, *args: str, env: dict[str, str] | None = None, check: bool = True,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run the `stratus` command line against this server's data dir and endpoint."""
        full_env = {**self.env, "STRATUS_ENDPOINT": self.url, **(env or {})}
        res = subprocess.run([STRATUS, *args], env=full_env, capture_output=True, text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(f"stratus {' '.join(args)} exited {res.returncode}:\n{res.stdout}\n{res.stderr}")
        return res

    def account(self, name: str, *, operator: bool = False) -> Account:
        if name not in self.accounts:
            args = ["account", "create", name, "--data-dir", str(self.data_dir), "--config", str(self.config),
                    "--json"]
            if operator:
                args.append("--operator")
            creds = json.loads(self.run(*args).stdout)
            self.accounts[name] = Account(creds["AccountId"], creds["SecretId"], creds["SecretKey"], name)
        return self.accounts[name]

    def client(self, account: Account, region: str | None = "ap-guangzhou", **http: Any) -> Any:
        from tencentcloud.common import credential
        from tencentcloud.common.profile.client_profile import ClientProfile
        from tencentcloud.common.profile.http_profile import HttpProfile
        from tencentcloud.cvm.v20170312 import cvm_client

        profile = ClientProfile(httpProfile=HttpProfile(endpoint=self.endpoint, protocol="http", **http))
        return cvm_client.CvmClient(credential.Credential(account.secret_id, account.secret_key), region, profile)

    def common(self, account: Account, region: str | None = "ap-guangzhou") -> Any:
        from tencentcloud.common import credential
        from tencentcloud.common.common_client import CommonClient
        from tencentcloud.common.profile.client_profile import ClientProfile
        from tencentcloud.common.profile.http_profile import HttpProfile

        profile = ClientProfile(httpProfile=HttpProfile(endpoint=self.endpoint, protocol="http"))
        return CommonClient("cvm", "2017-03-12", credential.Credential(account.secret_id, account.secret_key),
                            region, profile=profile)

    def tccli(self, account: Account, action: str, *args: str, region: str = "ap-guangzhou",
              home: Path | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **account.env(), "TENCENTCLOUD_REGION": region,
               "HOME": str(home or self.data_dir.parent / "tccli-home")}
        return subprocess.run([TCCLI, "cvm", action, "--endpoint", self.url, *args], env=env,
                              capture_output=True, text=True, timeout=120)


def log_text(path: Path) -> str:
    """A server's output as a person reads it: JSON log lines (the default when it writes to a file) become
    their messages, other lines stay as they are."""
    out = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            out.append(line)
            continue
        out.append(record.get("message", line) if isinstance(record, dict) else line)
    return "\n".join(out)


def make_server(tmp: Path, db_url: str, *, config_extra: str = "", env_extra: dict[str, str] | None = None) -> Server:
    data_dir = tmp / "var"
    config = tmp / "stratus.toml"
    config.write_text(
        "[limits]\n"
        "task_lease_seconds = 3.0\n"
        "max_virtual_size = 1073741824\n"
        + config_extra
    )
    env = {**os.environ, "STRATUS_DATABASE_URL": db_url, "NO_PROXY": "127.0.0.1,localhost", **(env_extra or {})}
    env.pop("STRATUS_CONFIG", None)
    return Server(data_dir=data_dir, port=free_port(), env=env, config=config, log=tmp / "server.log")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, db_url: str) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("server")
    srv = make_server(tmp, db_url, env_extra={"STRATUS_IMPORT_URL_ALLOW": "127.0.0.2/32"})
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def wait_for(predicate: Any, timeout: float = 60.0, interval: float = 0.2, what: str = "condition") -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="session")
def swift(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real S3 endpoint for the whole session: Swift s3api on free loopback ports (tests/s3server.py)."""
    from tests.s3server import SwiftS3, missing_binaries

    missing = missing_binaries()
    if missing:
        pytest.fail(f"Swift is not installed ({', '.join(missing)}); `make deps` installs it "
                    "(scripts/debian-packages.txt)")
    server = SwiftS3(tmp_path_factory.mktemp("swift"))
    try:
        server.start()
        yield server
    finally:
        server.close()
