"""The conformance suite every compute driver passes (in the manner of restic's internal/backend/test/suite.go).

A driver's test module subclasses :class:`DriverSuite` as ``Test<Name>Driver`` and provides the hooks: how to
make a driver (a new object plays a restarted server), a spec, and the guest-side evidence a real VM can give
(booted, paused, powered off by the button). The disk driver has no guest; its hooks are no-ops and the tests
that need a guest skip with that reason.

Every spec made through :meth:`DriverSuite.spec` is cleaned up after the test by a fresh driver's ``cleanup``;
the qemu module adds a check that no process of the instance survives, by PID.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stratus.compute.driver import ComputeError, Driver, VmSpec


class ExitRecorder:
    """An exit callback that remembers its calls and lets a test wait for one."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int | None]] = []
        self._event = threading.Event()

    def __call__(self, instance_id: str, returncode: int | None) -> None:
        self.calls.append((instance_id, returncode))
        self._event.set()

    def wait(self, timeout: float) -> bool:
        return self._event.wait(timeout)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``predicate`` every 20 ms; seconds it took. Fails the test after ``timeout``."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - start


class DriverSuite:
    """Hooks to override: :meth:`new_driver`, :meth:`make_spec`; for a driver with a guest, ``has_guest`` and
    the ``guest_*`` methods."""

    has_guest = False

    # ---- hooks ----------------------------------------------------------------------------------------------

    def new_driver(self) -> Driver:
        raise NotImplementedError

    def make_spec(self, workdir: Path, instance_id: str, user_data: bytes | None) -> VmSpec:
        raise NotImplementedError

    def guest_ready(self, driver: Driver, spec: VmSpec) -> None:
        """Return once the guest has booted and would answer the power button."""

    def guest_paused(self, driver: Driver, spec: VmSpec, paused: bool) -> None:
        """Check that the guest is (not) frozen."""

    def guest_rebooted(self, driver: Driver, spec: VmSpec) -> None:
        """Return once the guest has booted a second time."""

    def guest_soft_stopped(self, driver: Driver, spec: VmSpec) -> None:
        """Check that the last stop went through the guest (it saw the power button)."""

    def start_in_another_server(self, spec: VmSpec) -> None:
        """Start the instance from a server that then dies without stopping it."""
        self.new_driver().start(spec)

    def kill_behind_back(self, spec: VmSpec) -> None:
        """Make the instance's VM die while no driver watches (a crash during a server restart)."""
        pytest.skip(f"{type(self).__name__}: nothing runs that could die")

    def runtime_files(self, spec: VmSpec) -> list[Path]:
        """Files that must not outlive a stopped VM."""
        return []

    def assert_no_leftovers(self, spec: VmSpec) -> None:
        """After cleanup: nothing of the instance may still run."""

    # ---- fixtures -------------------------------------------------------------------------------------------

    @pytest.fixture
    def specs(self) -> Iterator[list[VmSpec]]:
        made: list[VmSpec] = []
        yield made
        for spec in made:
            self.new_driver().cleanup(spec.instance_id, spec.workdir)
        for spec in made:
            self.assert_no_leftovers(spec)

    @pytest.fixture
    def spec(self, tmp_path: Path, specs: list[VmSpec]) -> Callable[..., VmSpec]:
        def make(user_data: bytes | None = None) -> VmSpec:
            instance_id = f"ins-{uuid.uuid4().hex[:8]}"
            made = self.make_spec(tmp_path / instance_id, instance_id, user_data)
            specs.append(made)
            return made

        return make

    @pytest.fixture
    def driver(self) -> tuple[Driver, ExitRecorder]:
        driver = self.new_driver()
        recorder = ExitRecorder()
        driver.set_exit_callback(recorder)
        return driver, recorder

    # ---- the contract ---------------------------------------------------------------------------------------

    def test_start_runs_until_stopped(self, driver: tuple[Driver, ExitRecorder], spec: Callable[..., VmSpec]) -> None:
        d, exits = driver
        s = spec()
        assert not d.is_running(s.instance_id, s.workdir)
        d.start(s)
        assert d.is_running(s.instance_id, s.workdir)
        self.guest_ready(d, s)
        assert d.console_output(s.workdir) != b""
        assert d.console_output(s.workdir, 5) == d.console_output(s.workdir)[-5:]  # the tail
        d.stop(s.instance_id, s.workdir, force=True)
        assert not d.is_running(s.instance_id, s.workdir)
        assert exits.calls == []  # a stop we asked for is no news
        assert [p for p in self.runtime_files(s) if p.exists()] == []

    def test_start_twice_is_refused(self, driver: tuple[Driver, ExitRecorder], spec: Callable[..., VmSpec]) -> None:
        d, _ = driver
        s = spec()
        d.start(s)
        with pytest.raises(ComputeError, match="already"):
            d.start(s)
        assert d.is_running(s.instance_id, s.workdir)

    def test_restart_after_stop(self, driver: tuple[Driver, ExitRecorder], spec: Callable[..., VmSpec]) -> None:
        d, _ = driver
        s = spec()
        d.start(s)
        d.stop(s.instance_id, s.workdir, force=True)
        d.start(s)
        assert d.is_running(s.instance_id, s.workdir)

    def test_pause_and_resume(self, driver: tuple[Driver, ExitRecorder], spec: Callable[..., VmSpec]) -> None:
        d, _ = driver
        s = spec()
        d.start(s)
        self.guest_ready(d, s)
        d.pause(s.instance_id, s.workdir)
        assert d.is_running(s.instance_id, s.workdir)  # paused is still running, for the service
        self.guest_paused(d, s, True)
        d.resume(s.instance_id, s.workdir)
        self.guest_paused(d, s, False)
        assert d.is_running(s.instance_id, s.workdir)

    def test_soft_stop(self, driver: tuple[Driver, ExitRecorder], spec: Callable[..., VmSpec]) -> None:
        d, exits = driver
        s = spec()
        d.start(s)
        self.guest_ready(d, s)
        d.stop(s.instance_id, s.workdir, timeout=30)
        assert not d.is_running(s.instance_id, s.workdir)
        self.guest_soft_stopped(d, s)
        assert exits.calls == []

    def test_force_stop_is_idempotent(self, driver: tuple[Driver, ExitRecorder], spec: Callable[..., VmSpec]) -> None:
        d, exits = driver
        s = spec()
        d.start(s)
        d.stop(s.instance_id, s.workdir, force=True)
        d.stop(s.instance_id, s.workdir, force=True)
        d.stop(s.instance_id, s.workdir)
        assert not d.is_running(s.instance_id, s.workdir)
        assert exits.calls == []

    def test_reboot(self, driver: tuple[Driver, ExitRecorder], spec: Callable[..., VmSpec]) -> None:
        d, exits = driver
        s = spec()
        d.start(s)
        self.guest_ready(d, s)
        d.reboot(s.instance_id, s.workdir)
        self.guest_rebooted(d, s)
        assert d.is_running(s.instance_id, s.workdir)
        assert exits.calls == []

    def test_operations_on_a_stopped_instance(
        self, driver: tuple[Driver, ExitRecorder], spec: Callable[..., VmSpec]
    ) -> None:
        d, _ = driver
        s = spec()
        for op in (d.reboot, d.pause, d.resume):
            with pytest.raises(ComputeError, match="not running|no running VM"):
                op(s.instance_id, s.workdir)
        d.stop(s.instance_id, s.workdir)
        d.cleanup(s.instance_id, s.workdir)
        assert d.console_output(s.workdir) == b""

    def test_cleanup_is_idempotent(self, driver: tuple[Driver, ExitRecorder], spec: Callable[..., VmSpec]) -> None:
        d, exits = driver
        s = spec()
        d.start(s)
        d.cleanup(s.instance_id, s.workdir)
        assert not d.is_running(s.instance_id, s.workdir)
        d.cleanup(s.instance_id, s.workdir)
        assert not self.new_driver().is_running(s.instance_id, s.workdir)
        assert [p for p in self.runtime_files(s) if p.exists()] == []
        assert exits.calls == []

    def test_adopt_after_restart(self, driver: tuple[Driver, ExitRecorder], spec: Callable[..., VmSpec]) -> None:
        old, _ = driver
        s = spec()
        old.start(s)
        # The "server" restarts: a new driver object that never saw the start.
        new = self.new_driver()
        exits = ExitRecorder()
        new.set_exit_callback(exits)
        assert new.is_running(s.instance_id, s.workdir)
        assert new.adopt(s.instance_id, s.workdir)
        assert new.adopt(s.instance_id, s.workdir)  # twice is fine
        self.guest_ready(new, s)
        new.pause(s.instance_id, s.workdir)
        new.resume(s.instance_id, s.workdir)
        new.stop(s.instance_id, s.workdir, force=True)
        assert not new.is_running(s.instance_id, s.workdir)
        assert not old.is_running(s.instance_id, s.workdir)
        assert exits.calls == []

    def test_adopt_cleans_up_a_dead_vm(self, spec: Callable[..., VmSpec]) -> None:
        s = spec()
        self.start_in_another_server(s)
        self.kill_behind_back(s)
        new = self.new_driver()
        assert not new.adopt(s.instance_id, s.workdir)
        assert not new.is_running(s.instance_id, s.workdir)
        assert [p for p in self.runtime_files(s) if p.exists()] == []

    def test_adopt_without_vm(self, driver: tuple[Driver, ExitRecorder], spec: Callable[..., VmSpec]) -> None:
        d, _ = driver
        s = spec()
        assert not d.adopt(s.instance_id, s.workdir)
        assert not d.is_running(s.instance_id, s.workdir)

    def test_exit_callback_on_guest_poweroff(
        self, driver: tuple[Driver, ExitRecorder], spec: Callable[..., VmSpec]
    ) -> None:
        if not self.has_guest:
            pytest.skip(f"{type(self).__name__}: no guest, so nothing exits on its own")
        d, exits = driver
        s = spec(user_data=b"#!/bin/sh\necho powering off\npoweroff -f\n")
        d.start(s)
        assert exits.wait(60), "the guest's poweroff never reached the exit callback"
        assert exits.calls == [(s.instance_id, 0)]
        assert not d.is_running(s.instance_id, s.workdir)
        assert [p for p in self.runtime_files(s) if p.exists()] == []
