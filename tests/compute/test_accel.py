"""The KVM probe: a real QEMU under `-accel kvm`, bounded by its timeout, falling back to TCG with a reason."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from stratus.compute import accel, tinyimage

pytestmark = pytest.mark.skipif(bool(tinyimage.missing_tools()),
                                reason=f"the probe needs {tinyimage.missing_tools()} (make deps installs them)")


def test_no_device_means_tcg(tmp_path: Path) -> None:
    assert accel.probe_kvm(device=tmp_path / "kvm") == f"{tmp_path / 'kvm'} does not exist"


def test_the_probe_is_bounded_by_its_timeout() -> None:
    """On this machine /dev/kvm exists but can't run a guest (nested kvm-pvm: QEMU aborts or hangs): the probe says
    why, within its timeout. Where KVM works it returns None; that branch can't be exercised here."""
    started = time.monotonic()
    why = accel.probe_kvm(timeout=3.0)
    elapsed = time.monotonic() - started
    assert elapsed < 3.0 + 5.0
    if not Path("/dev/kvm").exists():
        assert why is not None and "does not exist" in why
    elif why is not None:
        assert "KVM" in why or "kvm" in why


def test_a_guest_that_never_panics_counts_as_a_hang(tmp_path: Path) -> None:
    """A kernel QEMU can't boot (an empty file) under a tiny timeout: whatever KVM does here, the answer is TCG."""
    fake = tmp_path / "vmlinuz"
    fake.write_bytes(b"\0" * 4096)
    assert accel.probe_kvm(timeout=1.0, kernel=fake) is not None


def test_choose_logs_the_choice_once(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(accel, "_chosen", None)
    monkeypatch.setenv("STRATUS_QEMU_ACCEL", "tcg")
    with caplog.at_level(logging.INFO, logger="stratus.compute.accel"):
        chosen = accel.choose()
        assert accel.choose() is chosen
    assert chosen.argv() == ["-accel", "tcg", "-cpu", "max"]
    assert [r.getMessage() for r in caplog.records] == ["qemu driver: accelerator tcg (STRATUS_QEMU_ACCEL=tcg)"]
