"""The instance-driver contract, shared by the `disk` and `qemu` drivers (tests/compute/driver_suite.py checks it).

A driver owns what runs for an instance, never the instance's catalog state: the service decides that an
instance is RUNNING or STOPPED and asks the driver to make it so. Everything a driver needs to find its VM
again after a server restart lives in the instance's ``workdir`` (pid files, the QMP socket, the console log),
so a new process can adopt what an old one started.

Threading: every method may be called from any thread, and for different instances at once. The exit
callback is called from a driver thread, never while the driver holds a lock the callback could need.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

ExitCallback = Callable[[str, "int | None"], None]


class ComputeError(Exception):
    """A driver could not do what was asked; the message says why and is fit for an instance's state reason."""


@dataclass(frozen=True)
class VmSpec:
    """What one instance runs. ``disks`` are qcow2 files, the system disk first."""

    instance_id: str
    workdir: Path
    disks: list[Path]
    memory_mib: int
    cpus: int
    user_data: bytes | None
    hostname: str
    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: str | None = None
    max_seconds: float = 86400  # the VM is SIGKILLed after this long, whatever happens to the server


class Driver(Protocol):
    """One kind of instance runtime. Methods name the instance by id and workdir; none keeps state that a
    restart would lose, except the supervision of VMs it started or adopted."""

    name: str

    def start(self, spec: VmSpec) -> None:
        """Start the instance. qemu: returns once the VM process answers QMP; disk: at once.
        Raises ComputeError if it is already running or can't start (the message quotes QEMU's complaint)."""
        ...

    def stop(self, instance_id: str, workdir: Path, *, force: bool = False, timeout: float = 30) -> None:
        """Stop it. Soft: ACPI power button, wait up to ``timeout`` s, then ``quit``, then SIGKILL.
        Force: ``quit`` (QEMU flushes its disk caches), SIGKILL if that fails. Idempotent; no exit callback."""
        ...

    def reboot(self, instance_id: str, workdir: Path, *, force: bool = False) -> None:
        """Reset the VM (QMP ``system_reset``). ComputeError if not running."""
        ...

    def pause(self, instance_id: str, workdir: Path) -> None:
        """Freeze the VM (QMP ``stop``): vCPUs halt and QEMU drains and flushes every block device, so the
        overlay file on disk is consistent until :meth:`resume`. ComputeError if not running."""
        ...

    def resume(self, instance_id: str, workdir: Path) -> None:
        """Undo :meth:`pause` (QMP ``cont``). ComputeError if not running."""
        ...

    def is_running(self, instance_id: str, workdir: Path) -> bool:
        """True while a VM process for this instance is alive (paused counts as running)."""
        ...

    def console_output(self, workdir: Path, max_bytes: int = 1 << 20) -> bytes:
        """The last ``max_bytes`` of the serial console log (b"" if there is none)."""
        ...

    def adopt(self, instance_id: str, workdir: Path) -> bool:
        """After a server restart: True if a VM for this instance still runs and is supervised again (its exit
        now reaches the exit callback, with returncode None); False, with every trace of it removed, if not.
        A VM found paused (the crash interrupted a capture) is resumed."""
        ...

    def cleanup(self, instance_id: str, workdir: Path) -> None:
        """Kill any VM of this instance and remove its sockets and pid files. Idempotent; no exit callback."""
        ...

    def set_exit_callback(self, cb: ExitCallback) -> None:
        """``cb(instance_id, returncode)`` is called when a VM exits on its own (guest poweroff, crash, time
        limit); returncode is None when it isn't known (an adopted VM is not our child)."""
        ...


_drivers: dict[str, Driver] = {}
_drivers_lock = threading.Lock()


def get_driver(name: str) -> Driver:
    """The process-wide driver called ``name`` ("disk" or "qemu"): one instance per name, so one supervisor
    knows every VM this process runs."""
    with _drivers_lock:
        driver = _drivers.get(name)
        if driver is None:
            if name == "disk":
                from stratus.compute.disk_driver import DiskDriver

                driver = DiskDriver()
            elif name == "qemu":
                from stratus.compute.qemu_driver import QemuDriver

                driver = QemuDriver()
            else:
                raise ComputeError(f"unknown compute driver {name!r}; expected 'disk' or 'qemu'")
            _drivers[name] = driver
        return driver
