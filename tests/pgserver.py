"""A private PostgreSQL cluster for the tests that restart the database under load (the machine's shared
PostgreSQL is never restarted: other test runs use it).

The cluster lives in a temporary directory on a free port, with its socket in the same directory, and is
stopped with ``pg_ctl stop`` (by its data directory, which names its postmaster's PID). PostgreSQL refuses to
run as root, so when the tests run as root the cluster is owned by and run as the ``postgres`` user
(``runuser``); otherwise as the current user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.s3server import free_port

BIN = Path("/usr/lib/postgresql/15/bin")


def missing() -> str | None:
    """Why a private cluster can't be started here, or None."""
    if not (BIN / "initdb").exists():
        return f"no PostgreSQL 15 server binaries in {BIN}"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no postgres user to run the cluster as"
        if shutil.which("runuser") is None:
            return "running as root and runuser is missing"
    return None


@dataclass
class PrivatePostgres:
    root: Path
    port: int = 0

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/stratus"

    def _run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        return subprocess.run([*prefix, *argv], check=True, capture_output=True, text=True, timeout=timeout)

    @classmethod
    def create(cls) -> PrivatePostgres:
        # Not under pytest's tmp_path: its parents are private to root, and the server may run as postgres.
        root = Path(tempfile.mkdtemp(prefix="stratus-pg-"))
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(root, pw.pw_uid, pw.pw_gid)
        pg = cls(root, free_port())
        pg._run(str(BIN / "initdb"), "-D", str(pg.data), "-A", "trust", "-U", "postgres", "--no-sync")
        pg.start()
        pg._run(str(BIN / "createdb"), "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres", "stratus")
        return pg

    def start(self) -> None:
        """Start (again) on the same port; returns once it accepts connections."""
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(str(BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"), "-o", opts,
                  "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the postmaster of this data directory (``fast``: disconnect every client at once)."""
        self._run(str(BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def close(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            if (self.data / "postmaster.pid").exists():
                self.stop("immediate")
        for _ in range(3):  # files written by the server as postgres: root may remove them
            shutil.rmtree(self.root, ignore_errors=True)
            if not self.root.exists():
                return
            time.sleep(0.2)
