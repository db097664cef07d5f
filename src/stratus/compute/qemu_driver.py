"""The ``qemu`` driver: each instance is a real QEMU process (TCG), driven over QMP.

A VM, and everything needed to find it again, lives in the instance's workdir:

=================  ===============================================================================================
``console.log``    the serial console (appended across boots; trimmed to its tail when it grows past
                   :data:`CONSOLE_MAX`), read by :meth:`QemuDriver.console_output`
``qemu.log``       QEMU's own stdout and stderr (its complaint when it can't start)
``qmp.sock``       the QMP socket; QEMU binds it relative to the workdir, so the 108-byte limit of socket paths
                   never bites however deep the data directory is
``qemu.pid``       written by QEMU itself
``launcher.pid``   the ``timeout`` process wrapping QEMU, written by us as soon as it is spawned; it leads the
                   VM's process group, so a QEMU that died before writing its pid file is still found
``seed.iso``       the cloud-init NoCloud seed (meta-data, user-data); removed when the VM exits
=================  ===============================================================================================

Processes. ``timeout --signal=KILL <max_seconds> qemu-system-x86_64 …`` in a new session: the time limit holds
even if the server dies, and the server may die without taking its VMs along (they are adopted after a restart).
Nothing is shared with the child but files. ``-name stratus-<instance_id>`` puts the instance in
``/proc/<pid>/cmdline``; every kill is by PID and only after that cmdline was checked (a stale pid file may name
somebody else's process), through a pidfd where the VM isn't our child, so a recycled PID can't be hit.

Supervision. One daemon thread per VM waits for it: ``Popen.wait`` for our child, ``poll`` on a pidfd for an
adopted one. An exit we didn't ask for reaches the exit callback. The same thread trims the console log.
Adoption (after a server restart) needs the pid file, a cmdline naming the instance and a QMP answer; a VM
found paused is resumed (only a capture pauses, and the crash ended it). Anything less is killed and cleaned.

QMP: :func:`stratus.compute.qmp.qmp`, one connection per operation.

Accelerator: KVM where a probe at server start boots a guest kernel under it, else TCG (:mod:`stratus.compute.accel`;
/dev/kvm on our build hosts is nested kvm-pvm, which hangs a guest, so there it is TCG).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import select
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stratus.compute.accel import TCG, Accel
from stratus.compute.accel import choose as choose_accel
from stratus.compute.driver import ComputeError, ExitCallback, VmSpec
from stratus.compute.qmp import QMP_SOCK, qmp
from stratus.compute.seed import make_nocloud_seed

log = logging.getLogger(__name__)

QEMU = "qemu-system-x86_64"
TIMEOUT = "timeout"  # coreutils

CONSOLE_LOG, QEMU_LOG = "console.log", "qemu.log"
QEMU_PID, LAUNCHER_PID, SEED_ISO = "qemu.pid", "launcher.pid", "seed.iso"
RUNTIME_FILES = (QMP_SOCK, QEMU_PID, LAUNCHER_PID, SEED_ISO)

CONSOLE_MAX = 8 << 20  # a guest can print as fast as TCG runs; past this, the log is cut to its last
CONSOLE_KEEP = 1 << 20  # bytes
QEMU_LOG_MAX = 1 << 20

START_TIMEOUT = 30.0  # s until QMP must answer after spawn (TCG start is ~0.1 s; a loaded host is slower)
QUIT_WAIT = 10.0  # s for QEMU to exit after `quit` (it flushes its disk caches first)
KILL_WAIT = 10.0  # s for the process to disappear after SIGKILL
SUPERVISE_TICK = 5.0  # s between console-size checks

_INSTANCE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

# QEMU's seccomp filter: no obsolete syscalls, no setuid, no fork/exec, no scheduler or rlimit changes. A guest
# that breaks out of TCG still can't spawn a shell.
SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"


def vm_name(instance_id: str) -> str:
    """The ``-name`` of an instance's VM; exactly this argv element identifies its processes."""
    return f"stratus-{instance_id}"


def _check_instance_id(instance_id: str) -> None:
    # It ends up in argv and in option strings; a comma or a leading dash could smuggle in options.
    if not _INSTANCE_ID.fullmatch(instance_id):
        raise ComputeError(f"invalid instance id {instance_id!r}")


def _opt(value: str | os.PathLike[str]) -> str:
    """A value inside a QEMU option string: commas are escaped by doubling."""
    return os.fspath(value).replace(",", ",,")


def build_argv(spec: VmSpec, *, with_seed: bool, accel: Accel | None = None) -> list[str]:
    """The full command line, ``timeout`` included. Paths are absolute except the QMP socket (see module doc)."""
    wd = spec.workdir.absolute()
    accel = accel or Accel(*TCG, why="default")
    argv = [
        TIMEOUT,
        "--signal=KILL",
        f"{spec.max_seconds:.3f}",
        QEMU,
        "-name",
        vm_name(spec.instance_id),
        *accel.argv(),
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-m",
        str(int(spec.memory_mib)),
        "-smp",
        str(int(spec.cpus)),
        "-chardev",
        f"file,id=console,path={_opt(wd / CONSOLE_LOG)},append=on",
        "-serial",
        "chardev:console",
        "-qmp",
        f"unix:{QMP_SOCK},server=on,wait=off",
        "-pidfile",
        str(wd / QEMU_PID),
        "-sandbox",
        SANDBOX,
        "-msg",
        "timestamp=on",
    ]
    # No -no-reboot: a guest reboot resets the VM as on real hardware; a guest poweroff ends QEMU.
    for disk in spec.disks:
        argv += ["-drive", f"file={_opt(disk.absolute())},if=virtio,format=qcow2,cache=writeback"]
    if with_seed:
        argv += ["-drive", f"file={_opt(wd / SEED_ISO)},if=virtio,format=raw,readonly=on"]
    if spec.kernel is not None:
        argv += ["-kernel", str(spec.kernel.absolute())]
        if spec.initrd is not None:
            argv += ["-initrd", str(spec.initrd.absolute())]
        if spec.cmdline:
            argv += ["-append", spec.cmdline]
    return argv


# ---------------------------------------------------------------------------------------------------------------
# Processes


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return int(text) if text.isdigit() and int(text) > 1 else None


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []
    return raw.decode("utf-8", "replace").split("\0")[:-1]


def _names_instance(pid: int, instance_id: str) -> bool:
    """True if ``pid`` is alive (not a zombie) and its argv has ``-name stratus-<instance_id>``."""
    argv = _cmdline(pid)
    want = vm_name(instance_id)
    return any(a == "-name" and b == want for a, b in zip(argv, argv[1:], strict=False)) and not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat[stat.rfind(")") + 2 :].startswith(("Z", "X"))


def _pidfd(pid: int, instance_id: str) -> int | None:
    """A pidfd for ``pid`` if it is this instance's process (checked after opening, so the fd is that process)."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return None
    if not _names_instance(pid, instance_id):
        os.close(fd)
        return None
    return fd


def _pidfd_alive(fd: int) -> bool:
    return not select.select([fd], [], [], 0)[0]


def _tail(path: Path, max_bytes: int) -> bytes:
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - max_bytes))
            return f.read(max_bytes)
    except FileNotFoundError:
        return b""


def _trim(path: Path, limit: int, keep: int) -> None:
    """Cut a log QEMU appends to (O_APPEND) down to its last ``keep`` bytes once it exceeds ``limit``."""
    try:
        if path.stat().st_size <= limit:
            return
        tail = _tail(path, keep)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, b"[stratus: earlier console output was dropped]\n" + tail)
        finally:
            os.close(fd)
    except OSError:
        pass


def _remove_runtime_files(workdir: Path, qemu_pid: int | None = None) -> None:
    """Remove sockets, pid files and the seed; with ``qemu_pid``, only if the pid file is still that VM's
    (a new VM may already be starting in the same workdir)."""
    current = _read_pid(workdir / QEMU_PID)
    if qemu_pid is not None and current is not None and current != qemu_pid:
        return
    for name in RUNTIME_FILES:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            (workdir / name).unlink()


@dataclass(eq=False)
class _Vm:
    """A VM this driver supervises: started by it (``proc`` is our ``timeout`` child) or adopted (``proc`` None)."""

    instance_id: str
    workdir: Path
    proc: subprocess.Popen[bytes] | None
    qemu_pid: int | None = None
    qemu_pidfd: int | None = None
    expected_exit: bool = False  # stop/cleanup asked for it: no exit callback
    starting: bool = True  # an exit before start() returned is start()'s error, not the callback's
    done: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)  # guards qemu_pidfd against close-while-used
    returncode: int | None = None

    def alive(self) -> bool:
        """Not yet reaped, and QEMU itself not dead (its exit may be seconds ahead of our bookkeeping)."""
        if self.done.is_set():
            return False
        with self.lock:
            return self.qemu_pidfd is None or _pidfd_alive(self.qemu_pidfd)


class QemuDriver:
    """See the module docstring. One instance per process (:func:`stratus.compute.driver.get_driver`); tests make
    more to play a restarted server."""

    name = "qemu"

    def __init__(self) -> None:
        self._vms: dict[str, _Vm] = {}
        self._lock = threading.Lock()
        self._op_locks: dict[str, threading.Lock] = {}
        self._callback: ExitCallback | None = None

    # ---- contract -------------------------------------------------------------------------------------------

    def set_exit_callback(self, cb: ExitCallback) -> None:
        self._callback = cb

    def start(self, spec: VmSpec) -> None:
        _check_instance_id(spec.instance_id)
        if not spec.disks:
            raise ComputeError("an instance needs a system disk")
        for disk in spec.disks:
            if not disk.is_file():
                raise ComputeError(f"instance disk {disk} does not exist")
        if spec.memory_mib < 16 or spec.cpus < 1 or spec.max_seconds <= 0:
            raise ComputeError(f"bad VM size: {spec.memory_mib} MiB, {spec.cpus} CPUs, {spec.max_seconds} s")
        with self._op_lock(spec.instance_id):
            if self._supervised(spec.instance_id) is not None or self._discover(spec.instance_id, spec.workdir):
                raise ComputeError(f"instance {spec.instance_id} already has a running VM")
            workdir = spec.workdir
            workdir.mkdir(parents=True, exist_ok=True)
            _remove_runtime_files(workdir)
            _trim(workdir / CONSOLE_LOG, CONSOLE_KEEP, CONSOLE_KEEP)
            _trim(workdir / QEMU_LOG, QEMU_LOG_MAX, QEMU_LOG_MAX // 4)
            # Always a seed, even without user data: it names the instance and host, and without any datasource
            # cloud-init spends minutes probing for one.
            make_nocloud_seed(
                workdir / SEED_ISO, instance_id=spec.instance_id, hostname=spec.hostname, user_data=spec.user_data
            )
            argv = build_argv(spec, with_seed=True, accel=choose_accel())
            with open(workdir / QEMU_LOG, "ab") as qemu_log:
                qemu_log.write(f"--- stratus: starting {vm_name(spec.instance_id)} at {time.ctime()}\n".encode())
                qemu_log.flush()
                try:
                    proc = subprocess.Popen(
                        argv,
                        cwd=workdir,
                        stdin=subprocess.DEVNULL,
                        stdout=qemu_log,
                        stderr=subprocess.STDOUT,
                        close_fds=True,
                        start_new_session=True,  # its own process group: killpg reaches timeout and QEMU
                    )
                except OSError as exc:
                    raise ComputeError(f"can't run {TIMEOUT}/{QEMU}: {exc}") from None
            (workdir / LAUNCHER_PID).write_text(f"{proc.pid}\n")
            vm = _Vm(spec.instance_id, workdir, proc)
            with self._lock:
                self._vms[spec.instance_id] = vm
            threading.Thread(
                target=self._supervise_child, args=(vm,), name=f"vm-{spec.instance_id}", daemon=True
            ).start()
            try:
                self._wait_started(vm)
                vm.starting = False
            except BaseException:
                vm.expected_exit = True
                self._kill(vm)
                vm.done.wait(KILL_WAIT)
                raise

    def stop(self, instance_id: str, workdir: Path, *, force: bool = False, timeout: float = 30) -> None:
        with self._op_lock(instance_id):
            vm = self._supervised(instance_id) or self._adopt(instance_id, workdir)
            if vm is None:
                return
            vm.expected_exit = True
            if not force:
                try:
                    # Only a running guest can answer the power button (not a paused one, nor a crashed one).
                    if qmp(workdir, "query-status").get("status") == "running":
                        qmp(workdir, "system_powerdown")
                        if vm.done.wait(timeout):
                            return
                except ComputeError as exc:
                    log.info("soft stop of %s: %s; quitting QEMU", instance_id, exc)
            with contextlib.suppress(ComputeError):
                qmp(workdir, "quit")  # QEMU flushes the qcow2 caches on the way out; SIGKILL would not
            if vm.done.wait(QUIT_WAIT):
                return
            self._kill(vm)
            if not vm.done.wait(KILL_WAIT):
                raise ComputeError(f"the VM of {instance_id} did not exit after SIGKILL")

    def reboot(self, instance_id: str, workdir: Path, *, force: bool = False) -> None:
        # Without a guest agent there is no gentler reboot than a reset; `force` changes nothing.
        self._qmp_running(instance_id, workdir, "system_reset")

    def pause(self, instance_id: str, workdir: Path) -> None:
        # `stop` returns after vm_stop(): vCPUs halted, every block device drained and flushed (qcow2 metadata
        # included), so the overlay file is consistent for `qemu-img map -U` until `cont`.
        self._qmp_running(instance_id, workdir, "stop")

    def resume(self, instance_id: str, workdir: Path) -> None:
        self._qmp_running(instance_id, workdir, "cont")

    def is_running(self, instance_id: str, workdir: Path) -> bool:
        vm = self._supervised(instance_id)
        if vm is not None:
            return True
        return bool(self._discover(instance_id, workdir))

    def console_output(self, workdir: Path, max_bytes: int = 1 << 20) -> bytes:
        return _tail(workdir / CONSOLE_LOG, max_bytes)

    def adopt(self, instance_id: str, workdir: Path) -> bool:
        _check_instance_id(instance_id)
        with self._op_lock(instance_id):
            return (self._supervised(instance_id) or self._adopt(instance_id, workdir)) is not None

    def cleanup(self, instance_id: str, workdir: Path) -> None:
        _check_instance_id(instance_id)
        with self._op_lock(instance_id):
            vm = self._supervised(instance_id)
            if vm is not None:
                vm.expected_exit = True
                self._kill(vm)
                if not vm.done.wait(KILL_WAIT):
                    raise ComputeError(f"the VM of {instance_id} did not exit after SIGKILL")
            self._kill_discovered(instance_id, workdir)
            _remove_runtime_files(workdir)

    # ---- extras (not in the Driver protocol) ----------------------------------------------------------------

    def query_status(self, instance_id: str, workdir: Path) -> str:
        """QEMU's run state ("running", "paused", …); ComputeError if no VM answers."""
        return str(self._qmp_running(instance_id, workdir, "query-status")["status"])

    # ---- internals -------------------------------------------------------------------------------------------

    def _op_lock(self, instance_id: str) -> threading.Lock:
        with self._lock:
            return self._op_locks.setdefault(instance_id, threading.Lock())

    def _supervised(self, instance_id: str) -> _Vm | None:
        with self._lock:
            vm = self._vms.get(instance_id)
        if vm is not None and vm.alive():
            return vm
        if vm is not None:
            vm.done.wait(KILL_WAIT)  # exiting right now: let its thread finish the bookkeeping
        return None

    def _qmp_running(self, instance_id: str, workdir: Path, command: str) -> Any:
        if not self.is_running(instance_id, workdir):
            raise ComputeError(f"instance {instance_id} has no running VM")
        return qmp(workdir, command)

    def _discover(self, instance_id: str, workdir: Path) -> list[int]:
        """Live processes of this instance named by its pid files (QEMU first), each checked by cmdline."""
        found = []
        for name in (QEMU_PID, LAUNCHER_PID):
            pid = _read_pid(workdir / name)
            if pid is not None and _names_instance(pid, instance_id):
                found.append(pid)
        return found

    def _wait_started(self, vm: _Vm) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        last_error = "no answer"
        while time.monotonic() < deadline:
            if vm.done.is_set() or (vm.proc is not None and vm.proc.poll() is not None):
                vm.done.wait(KILL_WAIT)
                raise ComputeError(f"QEMU exited at start: {self._qemu_complaint(vm.workdir)}")
            pid = _read_pid(vm.workdir / QEMU_PID)
            if pid is not None and (vm.workdir / QMP_SOCK).exists():
                try:
                    qmp(vm.workdir, "query-status", timeout=2.0)
                except ComputeError as exc:
                    last_error = str(exc)
                else:
                    fd = _pidfd(pid, vm.instance_id)
                    if fd is not None:
                        with vm.lock:
                            if vm.done.is_set():  # died just now; the loop reports it
                                os.close(fd)
                                continue
                            vm.qemu_pid, vm.qemu_pidfd = pid, fd
                        return
            time.sleep(0.01)
        raise ComputeError(f"QEMU did not answer QMP within {START_TIMEOUT:g} s ({last_error})")

    @staticmethod
    def _qemu_complaint(workdir: Path) -> str:
        lines = [ln for ln in _tail(workdir / QEMU_LOG, 4096).decode("utf-8", "replace").splitlines() if ln.strip()]
        lines = [ln for ln in lines if not ln.startswith("--- stratus:")][-3:]
        return "; ".join(lines) or "no message"

    def _adopt(self, instance_id: str, workdir: Path) -> _Vm | None:
        """Supervise a VM a previous server process started, or clean up after it."""
        pid = _read_pid(workdir / QEMU_PID)
        fd = _pidfd(pid, instance_id) if pid is not None else None
        if fd is not None and pid is not None:
            status = None
            for _ in range(3):  # QEMU might be busy (a flush) for a moment
                try:
                    status = qmp(workdir, "query-status", timeout=3.0).get("status")
                    break
                except ComputeError as exc:
                    log.info("adopting %s: QMP: %s", instance_id, exc)
                    time.sleep(0.2)
            if status == "paused":
                # Only a capture pauses a VM, and the crash ended that capture: a VM frozen forever helps nobody.
                # (The capture, when retried, pauses again and maps the overlay afresh.)
                with contextlib.suppress(ComputeError):
                    qmp(workdir, "cont")
                    log.info("adopted %s paused; resumed it", instance_id)
            if status is not None:
                vm = _Vm(instance_id, workdir, None, qemu_pid=pid, qemu_pidfd=fd)
                with self._lock:
                    self._vms[instance_id] = vm
                vm.starting = False
                threading.Thread(
                    target=self._supervise_adopted, args=(vm,), name=f"vm-{instance_id}", daemon=True
                ).start()
                log.info("adopted the VM of %s (pid %d)", instance_id, pid)
                return vm
            os.close(fd)
        # Dead, deaf or never fully started: nothing of it may survive.
        self._kill_discovered(instance_id, workdir)
        _remove_runtime_files(workdir)
        return None

    def _kill(self, vm: _Vm) -> None:
        """SIGKILL a supervised VM: the whole process group while our `timeout` child is unreaped (then its pgid
        can't be reused), else QEMU through its pidfd."""
        if vm.proc is not None and vm.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(vm.proc.pid, signal.SIGKILL)
        with vm.lock:
            if vm.qemu_pidfd is not None:
                with contextlib.suppress(ProcessLookupError, OSError):
                    signal.pidfd_send_signal(vm.qemu_pidfd, signal.SIGKILL)

    def _kill_discovered(self, instance_id: str, workdir: Path) -> None:
        """SIGKILL whatever this instance's pid files name, if it still is this instance's, and wait for it."""
        fds = []
        for pid in self._discover(instance_id, workdir):
            fd = _pidfd(pid, instance_id)
            if fd is None:
                continue
            fds.append(fd)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                # The launcher leads the VM's process group: this also reaches a QEMU with no pid file yet.
                if os.getpgid(pid) == pid:
                    os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, OSError):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
        deadline = time.monotonic() + KILL_WAIT
        for fd in fds:
            try:
                select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            finally:
                os.close(fd)

    def _supervise_child(self, vm: _Vm) -> None:
        assert vm.proc is not None
        while True:
            try:
                rc = vm.proc.wait(SUPERVISE_TICK)
                break
            except subprocess.TimeoutExpired:
                _trim(vm.workdir / CONSOLE_LOG, CONSOLE_MAX, CONSOLE_KEEP)
        # `timeout` reports QEMU's own status; killed by a signal, the status is 128+N (or -N when `timeout`
        # itself was killed, as at the time limit).
        self._exited(vm, rc)

    def _supervise_adopted(self, vm: _Vm) -> None:
        assert vm.qemu_pidfd is not None
        poller = select.poll()
        poller.register(vm.qemu_pidfd, select.POLLIN)
        while not poller.poll(SUPERVISE_TICK * 1000):
            _trim(vm.workdir / CONSOLE_LOG, CONSOLE_MAX, CONSOLE_KEEP)
        self._exited(vm, None)  # not our child: its status went to its parent

    def _exited(self, vm: _Vm, returncode: int | None) -> None:
        _remove_runtime_files(vm.workdir, vm.qemu_pid)
        vm.returncode = returncode
        with self._lock:
            if self._vms.get(vm.instance_id) is vm:
                del self._vms[vm.instance_id]
        with vm.lock:
            if vm.qemu_pidfd is not None:
                fd, vm.qemu_pidfd = vm.qemu_pidfd, None
                os.close(fd)
        vm.done.set()
        if vm.expected_exit or vm.starting:
            return
        log.info("the VM of %s exited on its own (returncode %s)", vm.instance_id, returncode)
        callback = self._callback
        if callback is not None:
            try:
                callback(vm.instance_id, returncode)
            except Exception:
                log.exception("exit callback for %s failed", vm.instance_id)


__all__ = ["QemuDriver", "build_argv", "qmp", "vm_name"]
