"""Which accelerator the qemu driver uses: KVM where it really runs a guest, else TCG.

/dev/kvm existing proves little: on some hosts (nested kvm-pvm) QEMU starts under KVM and then hangs the
guest, or aborts setting an MSR. So the probe boots the host's Debian cloud kernel under ``-accel kvm -cpu host``
with no root filesystem, under a hard timeout: a working KVM reaches "Kernel panic" (no root to mount) in well
under a second; anything else (no /dev/kvm, an abort, silence until the timeout) means TCG. The probe runs once
per process, at server start (:func:`stratus.service.runtime.start_workers`), and logs what it chose and why.
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

KVM_DEVICE = Path("/dev/kvm")
PROBE_TIMEOUT = 5.0  # s; a working KVM panics the probe kernel in ~0.3 s
KERNEL_GLOB = "vmlinuz-*-cloud-amd64"


@dataclass(frozen=True)
class Accel:
    name: str  # "kvm" or "tcg"
    cpu: str  # the -cpu model that goes with it
    why: str  # one line for the log and the README's "which was used"

    def argv(self) -> list[str]:
        return ["-accel", self.name, "-cpu", self.cpu]


# TCG: "max" is all TCG can emulate (distributions now require x86-64-v2, which the default qemu64 lacks).
TCG = "tcg", "max"
KVM = "kvm", "host"

_chosen: Accel | None = None
_lock = threading.Lock()


def _probe_kernel() -> Path | None:
    found = sorted(Path("/boot").glob(KERNEL_GLOB))
    return found[-1] if found else None


def probe_kvm(timeout: float = PROBE_TIMEOUT, *, device: Path = KVM_DEVICE, kernel: Path | None = None) -> str | None:
    """None if a guest kernel runs under KVM here; otherwise why not (one short phrase)."""
    if not device.exists():
        return f"{device} does not exist"
    if not os.access(device, os.R_OK | os.W_OK):
        return f"{device} is not readable and writable by this user"
    kernel = kernel or _probe_kernel()
    if kernel is None:
        return "no cloud kernel in /boot to probe with"
    with tempfile.TemporaryDirectory(prefix="stratus-kvm-probe-") as tmp:
        serial = Path(tmp) / "serial.log"
        argv = ["timeout", "--signal=KILL", f"{timeout:.1f}", "qemu-system-x86_64", "-accel", KVM[0], "-cpu", KVM[1],
                "-nodefaults", "-no-user-config", "-display", "none", "-m", "128", "-no-reboot",
                "-kernel", str(kernel), "-append", "console=ttyS0 panic=-1",
                "-serial", f"file:{serial}"]
        started = time.monotonic()
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout + 5)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"the probe could not run ({exc})"
        elapsed = time.monotonic() - started
        text = serial.read_bytes().decode("utf-8", "replace") if serial.exists() else ""
    if "Kernel panic" in text:
        return None
    if proc.returncode in (124, 137) or elapsed >= timeout:
        return f"a guest kernel hung under KVM for {timeout:g} s"
    complaint = proc.stderr.decode("utf-8", "replace").strip().splitlines()
    return f"QEMU failed under KVM ({complaint[-1] if complaint else f'exit {proc.returncode}'})"


def choose(timeout: float = PROBE_TIMEOUT) -> Accel:
    """Probe once per process (the first caller waits) and log the choice."""
    global _chosen
    with _lock:
        if _chosen is None:
            forced = os.environ.get("STRATUS_QEMU_ACCEL", "").strip().lower()
            if forced == "tcg":
                _chosen = Accel(*TCG, why="STRATUS_QEMU_ACCEL=tcg")
            else:
                why_not = probe_kvm(timeout)
                _chosen = Accel(*KVM, why="a guest kernel booted under KVM") if why_not is None else \
                    Accel(*TCG, why=f"KVM unusable: {why_not}")
            log.info("qemu driver: accelerator %s (%s)", _chosen.name, _chosen.why)
        return _chosen
