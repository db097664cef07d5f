"""The README quickstart, taken from the README and run as written against a real server with the qemu driver.

The first ``sh`` block of the Quickstart section is the server's command (`make run` with a port); the test runs
the same `stratus serve` in a fresh directory (a fresh ./var, SQLite as `make run` has it) instead of `make`, which
would serve the checkout's own ./var. The second block is pasted into bash as it stands, in that directory, with
only the port changed to a free one and `set -e -o pipefail` in front (a pasted script goes on after a failure; a
test must not). It ends with the console of a VM launched from an image captured from another VM.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from stratus.compute import tinyimage
from tests.conftest import BIN, ROOT, STRATUS, free_port, log_text

pytestmark = pytest.mark.skipif(bool(tinyimage.missing_tools()),
                                reason=f"the quickstart needs {tinyimage.missing_tools()} (make deps installs them)")

README_PORT = "8800"


def quickstart_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Quickstart\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, re.S)


def test_the_readme_quickstart_has_a_server_line_and_a_script() -> None:
    server, script = quickstart_blocks()[:2]
    assert re.fullmatch(rf"STRATUS_COMPUTE=qemu make run PORT={README_PORT}\n", server)
    assert f"STRATUS_ENDPOINT=http://127.0.0.1:{README_PORT}" in script
    assert 'eval "$(stratus account create alice)"' in script and "stratus demo" in script


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """`STRATUS_COMPUTE=qemu make run PORT=…` without make: stratus serve --data-dir ./var in tmp_path."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STRATUS_", "TENCENTCLOUD_"))}
    env |= {"STRATUS_COMPUTE": "qemu", "NO_PROXY": "127.0.0.1,localhost"}
    log = tmp_path / "server.log"
    proc = subprocess.Popen([STRATUS, "serve", "--data-dir", "./var", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=tmp_path, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.time() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            assert time.time() < deadline, log.read_text()
            with contextlib.suppress(httpx.TransportError):
                httpx.get(f"http://127.0.0.1:{port}/", timeout=0.5)
                break
            time.sleep(0.1)
        yield tmp_path, port
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        for pidfile in (tmp_path / "var" / "regions").rglob("qemu.pid"):  # never leave a VM behind
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)


def test_the_readme_quickstart_runs_as_written(served: tuple[Path, int]) -> None:
    workdir, port = served
    first_lines = log_text(workdir / "server.log")
    # The server's first lines say where it serves and what to run next.
    assert f"Stratus serves http://127.0.0.1:{port}" in first_lines
    assert 'eval "$(stratus account create alice)"' in first_lines
    assert "qemu driver: accelerator " in first_lines  # which accelerator was chosen, and why

    script = quickstart_blocks()[1].replace(f"127.0.0.1:{README_PORT}", f"127.0.0.1:{port}")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STRATUS_", "TENCENTCLOUD_"))}
    env |= {"HOME": str(workdir), "PATH": f"{BIN}:{env.get('PATH', '')}", "NO_PROXY": "127.0.0.1,localhost"}
    res = subprocess.run(["bash", "-c", "set -e -o pipefail\n" + script], cwd=workdir, env=env,
                         capture_output=True, text=True, timeout=900)
    transcript = f"stdout:\n{res.stdout}\nstderr:\n{res.stderr[-4000:]}"
    assert res.returncode == 0, transcript
    assert "catalog: " + str(workdir / "var" / "stratus.db") in res.stderr, transcript
    assert "Images are identical." in res.stdout, transcript
    assert "hello from user data" in res.stdout and "STRATUS-USERDATA-DONE rc=0" in res.stdout, transcript
    assert "STRATUS-MARKER-PRESENT captured" in res.stdout, transcript
    assert re.search(r"stratus-tiny-linux", res.stdout), transcript
