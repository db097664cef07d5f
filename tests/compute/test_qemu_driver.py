"""The qemu driver: the conformance suite on real TCG guests (stratus.compute.tinyimage), then what only a real VM
shows: user data through the NoCloud seed, capture of a paused VM's overlay, the time limit, adoption across a
real server crash, and refusal to touch a process that isn't ours.

Every VM is killed by PID after its test: the suite's fixture runs a fresh driver's cleanup, and
:meth:`TestQemuDriver.assert_no_leftovers` then scans /proc for any process naming the instance, kills it by PID
and fails the test. The module takes ~40 s on 2 cores (about ten TCG boots of ~2.5 s).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from stratus.compute import qemu_driver, tinyimage
from stratus.compute.boot import CMDLINE, extract_kernel
from stratus.compute.driver import ComputeError, Driver, VmSpec
from stratus.compute.overlays import changed_extents, create_overlay
from stratus.compute.qemu_driver import (
    CONSOLE_LOG,
    LAUNCHER_PID,
    QEMU_PID,
    SEED_ISO,
    QemuDriver,
    build_argv,
    vm_name,
)
from stratus.compute.qmp import QMP_SOCK, qmp
from tests.compute.driver_suite import DriverSuite, ExitRecorder, wait_for

_missing = tinyimage.missing_tools()
pytestmark = pytest.mark.skipif(
    bool(_missing), reason=f"the qemu driver's tests need {', '.join(_missing)} (Debian packages; see Makefile)"
)

BOOT_TIMEOUT = 60.0
REPO = Path(__file__).resolve().parents[2]

Boot = tuple[Path, tuple[Path, Path, str]]  # (base raw image, (kernel, initrd, cmdline))


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Boot:
    base = tinyimage.build_tiny_root_image(tmp_path_factory.mktemp("tinyvm"))
    kernel = extract_kernel(base, base.parent / "kernel")
    assert kernel is not None, "the tiny image must boot through extract_kernel"
    return base, kernel


def make_spec(tiny: Boot, workdir: Path, instance_id: str, user_data: bytes | None, **kw: object) -> VmSpec:
    base, (kernel, initrd, cmdline) = tiny
    workdir.mkdir(parents=True, exist_ok=True)
    disk = workdir / "disk0.qcow2"
    if not disk.exists():
        create_overlay(base, "raw", disk, 128 << 20)
    args: dict = dict(kernel=kernel, initrd=initrd, cmdline=cmdline) | kw
    return VmSpec(instance_id, workdir, [disk], 256, 1, user_data, f"vm-{instance_id}", **args)


def pids_naming(instance_id: str) -> list[int]:
    """Every live process whose argv has ``-name stratus-<instance_id>``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and qemu_driver._names_instance(int(entry), instance_id):
            found.append(int(entry))
    return found


def console(driver: Driver, spec: VmSpec) -> bytes:
    return driver.console_output(spec.workdir)


def wait_console(driver: Driver, spec: VmSpec, marker: bytes, count: int = 1) -> float:
    return wait_for(lambda: console(driver, spec).count(marker) >= count, BOOT_TIMEOUT, marker.decode())


_START_ELSEWHERE = """
import json, os, sys
from pathlib import Path
from stratus.compute.driver import VmSpec
from stratus.compute.qemu_driver import QemuDriver
a = json.loads(sys.argv[1])
QemuDriver().start(VmSpec(a["id"], Path(a["workdir"]), [Path(p) for p in a["disks"]], 256, 1, None, "elsewhere",
                          Path(a["kernel"]), Path(a["initrd"]), a["cmdline"]))
os._exit(0)  # the server crashes: no stop, no cleanup, nobody waits for the VM
"""


def start_in_another_process(spec: VmSpec) -> None:
    assert spec.kernel is not None and spec.initrd is not None
    args = {
        "id": spec.instance_id,
        "workdir": str(spec.workdir),
        "disks": [str(d) for d in spec.disks],
        "kernel": str(spec.kernel),
        "initrd": str(spec.initrd),
        "cmdline": spec.cmdline,
    }
    subprocess.run([sys.executable, "-c", _START_ELSEWHERE, json.dumps(args)], cwd=REPO, check=True, timeout=60)


class TestQemuDriver(DriverSuite):
    has_guest = True

    @pytest.fixture(autouse=True)
    def _tiny(self, tiny: Boot) -> None:
        self.tiny = tiny

    def new_driver(self) -> Driver:
        return QemuDriver()

    def make_spec(self, workdir: Path, instance_id: str, user_data: bytes | None) -> VmSpec:
        return make_spec(self.tiny, workdir, instance_id, user_data)

    def guest_ready(self, driver: Driver, spec: VmSpec) -> None:
        wait_console(driver, spec, b"STRATUS-READY")

    def guest_paused(self, driver: Driver, spec: VmSpec, paused: bool) -> None:
        assert isinstance(driver, QemuDriver)
        assert driver.query_status(spec.instance_id, spec.workdir) == ("paused" if paused else "running")

    def guest_rebooted(self, driver: Driver, spec: VmSpec) -> None:
        wait_console(driver, spec, b"STRATUS-READY", count=2)
        assert console(driver, spec).count(b"STRATUS-BOOT-OK") == 2

    def guest_soft_stopped(self, driver: Driver, spec: VmSpec) -> None:
        assert b"STRATUS-POWERDOWN" in console(driver, spec)  # the guest saw the ACPI button, unmounted, synced

    def start_in_another_server(self, spec: VmSpec) -> None:
        start_in_another_process(spec)

    def kill_behind_back(self, spec: VmSpec) -> None:
        pid = int((spec.workdir / QEMU_PID).read_text())
        assert qemu_driver._names_instance(pid, spec.instance_id)
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not qemu_driver._names_instance(pid, spec.instance_id), 10, f"pid {pid} to die")
        assert (spec.workdir / QEMU_PID).exists()  # SIGKILL left the stale pid file behind, as a crash would

    def runtime_files(self, spec: VmSpec) -> list[Path]:
        return [spec.workdir / name for name in (QMP_SOCK, QEMU_PID, LAUNCHER_PID, SEED_ISO)]

    def assert_no_leftovers(self, spec: VmSpec) -> None:
        leftovers = pids_naming(spec.instance_id)
        for pid in leftovers:
            os.kill(pid, signal.SIGKILL)
        assert leftovers == [], f"processes of {spec.instance_id} survived cleanup"


@pytest.fixture
def vms(tiny: Boot, tmp_path: Path):
    """Make specs; every VM is cleaned up and checked gone afterwards."""
    made: list[VmSpec] = []

    def make(user_data: bytes | None = None, **kw: object) -> VmSpec:
        instance_id = f"ins-{uuid.uuid4().hex[:8]}"
        spec = make_spec(tiny, tmp_path / instance_id, instance_id, user_data, **kw)
        made.append(spec)
        return spec

    yield make
    for spec in made:
        QemuDriver().cleanup(spec.instance_id, spec.workdir)
    leftovers = [pid for spec in made for pid in pids_naming(spec.instance_id)]
    for pid in leftovers:
        os.kill(pid, signal.SIGKILL)
    assert leftovers == []


def test_boot_user_data_capture_and_persistence(tiny: Boot, vms, tmp_path: Path) -> None:
    """The issue's path end to end: a user-data script writes /marker; the VM is paused; the overlay's own
    extents hold the write, and rebuilding the disk from base + those extents gives what the guest sees."""
    base = tiny[0]
    driver = QemuDriver()
    exits = ExitRecorder()
    driver.set_exit_callback(exits)
    spec = vms(b"#!/bin/sh\necho hello-from-userdata > $ROOT/marker\n")
    started = time.monotonic()
    driver.start(spec)
    returned = time.monotonic() - started
    wait_console(driver, spec, b"STRATUS-USERDATA-DONE rc=0")
    boot_to_userdata = time.monotonic() - started
    print(f"\nqemu (TCG): start() returned in {returned:.2f} s; -> STRATUS-USERDATA-DONE in {boot_to_userdata:.2f} s")
    out = console(driver, spec)
    assert f"STRATUS-HOSTNAME {spec.hostname}".encode() in out
    assert b"STRATUS-MARKER-PRESENT" not in out

    driver.pause(spec.instance_id, spec.workdir)
    try:
        assert driver.query_status(spec.instance_id, spec.workdir) == "paused"
        overlay = spec.disks[0]
        extents = changed_extents(overlay)  # -U: QEMU still holds the image lock
        assert any(e.data and e.offset is not None for e in extents)
        guest_view = tmp_path / "guest.raw"
        subprocess.run(
            ["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw", str(overlay), str(guest_view)], check=True
        )
        assert tinyimage.debugfs_cat(guest_view, "/marker") == b"hello-from-userdata\n"
        assert tinyimage.debugfs_cat(base, "/marker") is None  # the base is never written

        # Capture as the service does it: base bytes, overwritten by the overlay's extents read from its file.
        rebuilt = tmp_path / "rebuilt.raw"
        shutil.copyfile(base, rebuilt)
        with open(overlay, "rb") as src, open(rebuilt, "r+b") as dst:
            dst.truncate(guest_view.stat().st_size)
            for ext in extents:
                if ext.source == "zero":
                    data = bytes(ext.length)
                else:
                    assert ext.source == "file"
                    src.seek(ext.offset)
                    data = src.read(ext.length)
                dst.seek(ext.start)
                dst.write(data)
        assert rebuilt.read_bytes() == guest_view.read_bytes()
    finally:
        driver.resume(spec.instance_id, spec.workdir)
    assert driver.query_status(spec.instance_id, spec.workdir) == "running"
    wait_console(driver, spec, b"STRATUS-READY")
    driver.stop(spec.instance_id, spec.workdir)
    assert b"STRATUS-POWERDOWN" in console(driver, spec)

    # The write lives in the overlay: the next boot finds it.
    driver.start(dataclasses.replace(spec, user_data=None))
    wait_console(driver, spec, b"STRATUS-MARKER-PRESENT hello-from-userdata")
    driver.stop(spec.instance_id, spec.workdir, force=True)
    assert exits.calls == []


def test_time_limit_kills_the_vm(vms) -> None:
    driver = QemuDriver()
    exits = ExitRecorder()
    driver.set_exit_callback(exits)
    spec = vms(max_seconds=2.0)
    driver.start(spec)
    assert exits.wait(15), "the VM outlived its time limit"
    [(instance_id, returncode)] = exits.calls
    assert instance_id == spec.instance_id and returncode == -signal.SIGKILL
    assert not driver.is_running(spec.instance_id, spec.workdir)


def test_adopt_after_a_real_server_crash(vms) -> None:
    """The VM was started by a process that died mid-capture (VM paused): it isn't our child. Adopted, it runs
    again, and its death still reaches the exit callback (returncode unknown)."""
    spec = vms()
    start_in_another_process(spec)
    qmp(spec.workdir, "stop")  # it died in the middle of a capture
    driver = QemuDriver()
    exits = ExitRecorder()
    driver.set_exit_callback(exits)
    assert driver.adopt(spec.instance_id, spec.workdir)
    assert driver.query_status(spec.instance_id, spec.workdir) == "running"  # adoption resumed it
    wait_console(driver, spec, b"STRATUS-READY")
    pid = int((spec.workdir / QEMU_PID).read_text())
    os.kill(pid, signal.SIGKILL)  # the VM crashes
    assert exits.wait(10)
    assert exits.calls == [(spec.instance_id, None)]
    assert not (spec.workdir / QMP_SOCK).exists() and not (spec.workdir / QEMU_PID).exists()


def test_adopt_never_touches_a_process_that_is_not_the_instances(vms) -> None:
    spec = vms()
    spec.workdir.mkdir(parents=True, exist_ok=True)
    # Stale pid files naming a live process that isn't a VM of this instance (here: the test itself).
    (spec.workdir / QEMU_PID).write_text(f"{os.getpid()}\n")
    (spec.workdir / LAUNCHER_PID).write_text(f"{os.getpid()}\n")
    driver = QemuDriver()
    assert not driver.is_running(spec.instance_id, spec.workdir)
    assert not driver.adopt(spec.instance_id, spec.workdir)
    driver.cleanup(spec.instance_id, spec.workdir)
    driver.stop(spec.instance_id, spec.workdir, force=True)
    assert not (spec.workdir / QEMU_PID).exists()  # we are alive to check it


def test_start_failure_quotes_qemu(vms, tmp_path: Path) -> None:
    spec = vms()
    spec.disks[0].write_bytes(b"not a qcow2 image" * 100)
    driver = QemuDriver()
    exits = ExitRecorder()
    driver.set_exit_callback(exits)
    with pytest.raises(ComputeError, match="QEMU exited at start: .*qcow2"):
        driver.start(spec)
    assert not driver.is_running(spec.instance_id, spec.workdir)
    assert exits.calls == []  # start() reported it; the callback is for later deaths


def test_command_line() -> None:
    spec = VmSpec(
        "ins-abc12345", Path("/srv/host/ins,x"), [Path("/srv/host/ins,x/d0.qcow2")], 512, 2, b"x", "h",
        Path("/k"), Path("/i"), CMDLINE, max_seconds=60,
    )  # fmt: skip
    argv = build_argv(spec, with_seed=True)
    assert argv[:4] == ["timeout", "--signal=KILL", "60.000", "qemu-system-x86_64"]
    joined = " ".join(argv)
    assert "-accel tcg" in joined and "-nodefaults" in argv and "-no-reboot" not in argv
    assert argv[argv.index("-name") + 1] == vm_name("ins-abc12345")
    assert "file=/srv/host/ins,,x/d0.qcow2,if=virtio,format=qcow2,cache=writeback" in argv  # comma escaped
    assert "file=/srv/host/ins,,x/seed.iso,if=virtio,format=raw,readonly=on" in argv
    assert argv[argv.index("-append") + 1] == CMDLINE
    assert argv[argv.index("-qmp") + 1] == "unix:qmp.sock,server=on,wait=off"  # relative: no 108-byte limit


def test_bad_instance_ids_are_refused(tmp_path: Path) -> None:
    for bad in ("", "-x", "ins,a", "ins a", "a" * 80):
        with pytest.raises(ComputeError, match="invalid instance id"):
            QemuDriver().cleanup(bad, tmp_path)


def test_console_log_is_trimmed_to_its_tail(tmp_path: Path) -> None:
    log = tmp_path / CONSOLE_LOG
    log.write_bytes(b"a" * 1000 + b"b" * 100)
    qemu_driver._trim(log, 2000, 100)
    assert log.read_bytes() == b"a" * 1000 + b"b" * 100  # under the limit: untouched
    qemu_driver._trim(log, 500, 100)
    trimmed = log.read_bytes()
    assert trimmed.startswith(b"[stratus: earlier console output was dropped]\n")
    assert trimmed.endswith(b"\n" + b"b" * 100) and b"aa" not in trimmed


# ---- boot.extract_kernel ----------------------------------------------------------------------------------------


def test_extract_kernel_follows_symlinks_and_caches(tiny: Boot, tmp_path: Path) -> None:
    base = tiny[0]
    got = extract_kernel(base, tmp_path / "k")
    assert got is not None
    kernel, initrd, cmdline = got
    assert kernel.read_bytes() == tinyimage.cloud_kernel().read_bytes()  # /boot/vmlinuz -> vmlinuz-<version>
    assert initrd.read_bytes()[:2] == b"\x1f\x8b"  # the gzip'd initramfs
    assert "root=/dev/vda" in cmdline and "console=ttyS0" in cmdline
    mtime = kernel.stat().st_mtime_ns
    assert extract_kernel(base, tmp_path / "k") == got and kernel.stat().st_mtime_ns == mtime


def test_extract_kernel_returns_none_without_a_bare_ext_root(tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    with open(raw, "wb") as f:
        f.truncate(8 << 20)
    assert extract_kernel(raw, tmp_path / "k") is None
    # An ext4 root with no kernel, and one whose /boot/vmlinuz escapes via "..": both fall back to firmware.
    root = tmp_path / "root"
    (root / "boot").mkdir(parents=True)
    os.symlink("../../../../etc/passwd", root / "boot/vmlinuz")
    os.symlink("initrd-missing", root / "boot/initrd.img")
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-d", str(root), str(raw), "8M"], check=True)
    assert extract_kernel(raw, tmp_path / "k") is None
    assert not (tmp_path / "k" / "vmlinuz").exists()
