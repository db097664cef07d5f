"""The ``disk`` driver (the default): an instance is its qcow2 overlays, and no VM runs.

Launch, capture, stop and terminate all work on the overlays exactly as with the ``qemu`` driver, which is
what the image service needs to be exercised at scale without paying for guests. "Running" is a state file
in the workdir, so it survives a server restart like a real VM does and :meth:`DiskDriver.adopt` finds it.
Nothing ever exits on its own, so the exit callback is never called. The console log gets one line per
state change, so the console has something truthful to show.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from pathlib import Path

from stratus.compute.driver import ComputeError, ExitCallback, VmSpec

STATE_FILE = "disk-driver.json"
CONSOLE_LOG = "console.log"
_QCOW2_MAGIC = b"QFI\xfb"


class DiskDriver:
    name = "disk"

    def __init__(self) -> None:
        self._callback: ExitCallback | None = None
        self._lock = threading.Lock()

    def set_exit_callback(self, cb: ExitCallback) -> None:
        self._callback = cb  # kept for the contract; a disk-only instance never exits on its own

    def start(self, spec: VmSpec) -> None:
        if not spec.disks:
            raise ComputeError("an instance needs a system disk")
        for disk in spec.disks:
            try:
                with open(disk, "rb") as f:
                    magic = f.read(4)
            except OSError as exc:
                raise ComputeError(f"instance disk {disk} can't be opened: {exc.strerror}") from None
            if magic != _QCOW2_MAGIC:
                raise ComputeError(f"instance disk {disk} is not a qcow2 file")
        with self._lock:
            if self.is_running(spec.instance_id, spec.workdir):
                raise ComputeError(f"instance {spec.instance_id} is already running")
            spec.workdir.mkdir(parents=True, exist_ok=True)
            state = {"instance_id": spec.instance_id, "disks": [str(d) for d in spec.disks], "state": "running"}
            _write_atomic(spec.workdir / STATE_FILE, json.dumps(state).encode())
            _console(spec.workdir, f"instance {spec.instance_id} started (disk driver: no VM runs)")

    def stop(self, instance_id: str, workdir: Path, *, force: bool = False, timeout: float = 30) -> None:
        with self._lock:
            if self.is_running(instance_id, workdir):
                _console(workdir, f"instance {instance_id} stopped")
            with contextlib.suppress(FileNotFoundError):
                (workdir / STATE_FILE).unlink()

    def reboot(self, instance_id: str, workdir: Path, *, force: bool = False) -> None:
        self._require_running(instance_id, workdir)
        _console(workdir, f"instance {instance_id} rebooted")

    def pause(self, instance_id: str, workdir: Path) -> None:
        self._require_running(instance_id, workdir)  # nothing writes the overlays: always consistent

    def resume(self, instance_id: str, workdir: Path) -> None:
        self._require_running(instance_id, workdir)

    def is_running(self, instance_id: str, workdir: Path) -> bool:
        try:
            state = json.loads((workdir / STATE_FILE).read_bytes())
        except (FileNotFoundError, NotADirectoryError, ValueError):
            return False
        return isinstance(state, dict) and state.get("instance_id") == instance_id

    def console_output(self, workdir: Path, max_bytes: int = 1 << 20) -> bytes:
        try:
            with open(workdir / CONSOLE_LOG, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - max_bytes))
                return f.read(max_bytes)
        except FileNotFoundError:
            return b""

    def adopt(self, instance_id: str, workdir: Path) -> bool:
        if self.is_running(instance_id, workdir):
            return True
        self.cleanup(instance_id, workdir)
        return False

    def cleanup(self, instance_id: str, workdir: Path) -> None:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            (workdir / STATE_FILE).unlink()

    def _require_running(self, instance_id: str, workdir: Path) -> None:
        if not self.is_running(instance_id, workdir):
            raise ComputeError(f"instance {instance_id} is not running")


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _console(workdir: Path, line: str) -> None:
    with open(workdir / CONSOLE_LOG, "ab") as f:
        f.write(f"[{time.strftime('%Y-%m-%dT%H:%M:%S')}] {line}\n".encode())

