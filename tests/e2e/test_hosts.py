"""Placement over compute hosts (service/hosts.py) on a real catalog: spread within capacity, only hosts
that are up and serve the region, ResourceInsufficient.SpecifiedInstanceType when nothing fits, and the
single-host default when no host ever registered. The processes themselves: tests/e2e/test_multiprocess.py."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from stratus.catalog.models import Host
from stratus.config import load_settings
from stratus.domain import errors
from stratus.service.context import Services
from stratus.service.hosts import HostAgent, host_dir, list_hosts, place
from stratus.service.runtime import prepare
from tests.conftest import new_db_url

GZ = "ap-guangzhou"


@pytest.fixture()
def svc(tmp_path: Path, db_url: str) -> Iterator[Services]:
    assert db_url
    services = prepare(load_settings(tmp_path / "var", env={"STRATUS_DATABASE_URL": new_db_url(tmp_path)}))
    try:
        yield services
    finally:
        services.db.dispose()


def placed(svc: Services, count: int) -> list[tuple[str, str]]:
    with svc.db.write() as s:
        return place(svc, s, GZ, count, "S5.SMALL1")


def test_no_host_registered_is_the_single_host_setup(svc: Services) -> None:
    assert placed(svc, 3) == [("local", "disk")] * 3
    assert host_dir(svc, GZ, "local") == svc.region(GZ).host_path  # where the single host always kept its files
    assert host_dir(svc, GZ, "h1") == svc.region(GZ).host_path / "hosts" / "h1"


def test_placement_spreads_within_capacity_over_live_hosts_only(svc: Services) -> None:
    HostAgent(svc, "a", capacity=2).register()
    HostAgent(svc, "b", compute="qemu", capacity=1).register()
    HostAgent(svc, "dead").register()
    with svc.db.write() as s:  # its heartbeat is two leases old: down
        row = s.get(Host, "dead")
        assert row is not None
        row.heartbeat_at = time.time() - 2 * svc.settings.limits.task_lease_seconds
    assert {h.name: h.state for h in list_hosts(svc)} == {"a": "UP", "b": "UP", "dead": "DOWN"}
    got = placed(svc, 3)
    assert Counter(got) == {("a", "disk"): 2, ("b", "qemu"): 1}  # a host's --compute wins over the region's
    assert got[0][0] != got[1][0]  # spread: the batch alternates while both have room
    with pytest.raises(errors.CvmError) as exc:
        placed(svc, 4)
    assert exc.value.code == "ResourceInsufficient.SpecifiedInstanceType"
    assert "room for 3 more" in exc.value.message


def test_nothing_up_is_resource_insufficient_with_the_next_step(svc: Services) -> None:
    HostAgent(svc, "gone").register()
    with svc.db.write() as s:
        row = s.get(Host, "gone")
        assert row is not None
        row.heartbeat_at = 0.0
    with pytest.raises(errors.CvmError) as exc:
        placed(svc, 1)
    assert exc.value.code == "ResourceInsufficient.SpecifiedInstanceType"
    assert "no compute host is up" in exc.value.message and "--host" in exc.value.message


def test_a_base_on_another_machine_is_released_by_its_own_host(svc: Services, tmp_path: Path) -> None:
    """No image or instance needs two bases any more: the one whose host directory this process sees goes
    at once; the other is on a host whose disk this process can't reach (another machine: its directory
    doesn't exist here), so it is marked RELEASED and that host deletes the file on its next beat."""
    from stratus.catalog.models import BaseDisk
    from stratus.service.bases import release_unused_bases, sweep_released_bases

    near = host_dir(svc, GZ, "near") / "bases" / f"{'a' * 64}.raw"
    near.parent.mkdir(parents=True)
    near.write_bytes(b"base")
    far = tmp_path / "other-machine" / "bases" / f"{'b' * 64}.raw"  # not there from where we stand
    with svc.db.write() as s:
        for host, digest, path in (("near", "a" * 64, near), ("far", "b" * 64, far)):
            s.add(BaseDisk(host=host, region=GZ, manifest_digest=digest, path=str(path), state="READY"))
    assert sorted(release_unused_bases(svc, GZ)) == ["a" * 64, "b" * 64]
    assert not near.exists()
    with svc.db.read() as s:
        assert [(b.host, b.state) for b in s.query(BaseDisk).all()] == [("far", "RELEASED")]
    # The far host, on its machine, where the file is.
    far.parent.mkdir(parents=True)
    far.write_bytes(b"base")
    assert sweep_released_bases(svc, "near") == []  # a host sweeps its own bases only
    assert sweep_released_bases(svc, "far") == ["b" * 64]
    assert not far.exists()
    with svc.db.read() as s:
        assert s.query(BaseDisk).count() == 0
