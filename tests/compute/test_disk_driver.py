"""The disk driver against the conformance suite, plus what is particular to it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stratus.compute.disk_driver import STATE_FILE, DiskDriver
from stratus.compute.driver import ComputeError, Driver, VmSpec, get_driver
from stratus.compute.overlays import create_overlay
from tests.compute.driver_suite import DriverSuite


class TestDiskDriver(DriverSuite):
    has_guest = False

    def new_driver(self) -> Driver:
        return DiskDriver()

    def make_spec(self, workdir: Path, instance_id: str, user_data: bytes | None) -> VmSpec:
        workdir.mkdir(parents=True)
        base = workdir / "base.raw"
        with open(base, "wb") as f:
            f.truncate(16 << 20)
        disk = workdir / "disk0.qcow2"
        create_overlay(base, "raw", disk, 32 << 20)
        return VmSpec(instance_id, workdir, [disk], 256, 1, user_data, "host")

    def runtime_files(self, spec: VmSpec) -> list[Path]:
        return [spec.workdir / STATE_FILE]


def test_start_refuses_a_disk_that_is_not_qcow2(tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    raw.write_bytes(bytes(4096))
    spec = VmSpec("ins-raw00001", tmp_path, [raw], 256, 1, None, "h")
    with pytest.raises(ComputeError, match="not a qcow2"):
        DiskDriver().start(spec)
    with pytest.raises(ComputeError, match="can't be opened"):
        DiskDriver().start(VmSpec("ins-raw00001", tmp_path, [tmp_path / "missing"], 256, 1, None, "h"))


def test_state_names_the_instance(tmp_path: Path) -> None:
    # A state file left by another instance (a reused workdir) doesn't make this one running.
    (tmp_path / STATE_FILE).write_text(json.dumps({"instance_id": "ins-other000"}))
    assert not DiskDriver().is_running("ins-mine0000", tmp_path)


def test_get_driver_shares_one_instance_per_name() -> None:
    assert get_driver("disk") is get_driver("disk")
    assert get_driver("disk").name == "disk"
    with pytest.raises(ComputeError, match="unknown compute driver"):
        get_driver("xen")
