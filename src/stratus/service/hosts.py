"""Compute hosts: registration, heartbeat, placement of new instances, and where a host keeps its files.

A host is a worker process started with `stratus worker --host NAME` (`stratus serve`, and a `stratus
worker` without `--host`, are the host `local`, the single machine of the default setup). It writes a
heartbeat into the `hosts` row every third of a task lease; it is **up** while that heartbeat is at most
one lease old, and **down** after. RunInstances places each instance on a host that is up and serves the
region, spreading the batch over the least loaded hosts within their capacity; every later task of the
instance is bound to that host (`tasks.host`), and only a worker of that host claims it.

Files: the host `local` keeps its bases and instance disks in the region's `host` directory, as before
hosts existed; a host `NAME` in `host/hosts/NAME` (each host its own directory, so several hosts may
share one data directory on one machine, as the multi-process test does).

A catalog in which no host ever registered (service-level tests, a fresh `serve --no-workers` setup
before its first worker) places instances on `local`, as the single-host service always did.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from stratus.catalog.models import Host, Instance
from stratus.domain import errors
from stratus.service.context import Caller, Services

log = logging.getLogger(__name__)

LOCAL = "local"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise ValueError(f"host name {name!r}: use 1-64 letters, digits, '.', '_' and '-', starting with a "
                         "letter or digit")
    return name


def host_dir(svc: Services, region: str, host: str) -> Path:
    """Where a host keeps a region's bases and instance disks."""
    root = svc.region(region).host_path
    return root if host == LOCAL else root / "hosts" / host


def dead_after(svc: Services) -> float:
    """Seconds without a heartbeat after which a host is down: one task lease."""
    return svc.settings.limits.task_lease_seconds


# --------------------------------------------------------------------------- registration and heartbeat


class HostAgent:
    """This process's host: registers it, then renews its heartbeat until stopped."""

    def __init__(self, svc: Services, name: str, *, compute: str = "", capacity: int = 0,
                 stopping: threading.Event | None = None, on_beat: Callable[[], object] | None = None) -> None:
        self.svc, self.name, self.compute, self.capacity = svc, name, compute, capacity
        self.on_beat = on_beat  # the host's own chores, once a beat (its released bases)
        self.process = f"{socket.gethostname()}:{os.getpid()}"[:64]
        self.stopping = stopping or threading.Event()
        self._thread: threading.Thread | None = None

    def register(self) -> None:
        regions = json.dumps(sorted(r.name for r in self.svc.settings.regions))
        now = time.time()
        with self.svc.db.write() as s:
            row = s.get(Host, self.name, with_for_update=self.svc.db.is_postgresql)
            if row is None:
                row = Host(name=self.name)
                s.add(row)
            row.regions, row.compute, row.capacity_instances = regions, self.compute, self.capacity
            row.process, row.started_at, row.heartbeat_at = self.process, now, now

    def beat(self) -> None:
        with self.svc.db.write() as s:
            row = s.get(Host, self.name)
            if row is None:  # removed by an operator while we run: register again
                self.register()
                return
            row.heartbeat_at, row.process = time.time(), self.process

    def start(self) -> None:
        self.register()
        self._thread = threading.Thread(target=self._loop, name="stratus-host-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.stopping.set()

    def _loop(self) -> None:
        every = dead_after(self.svc) / 3
        while not self.stopping.wait(every):
            try:
                self.beat()
                if self.on_beat is not None:
                    self.on_beat()
            except Exception:  # the catalog is away: the next beat tries again; a lease later we show as down
                log.exception("host %s: heartbeat failed", self.name)


def remove_orphans(svc: Services, host: str) -> list[str]:
    """Instance directories of this host whose instance is gone (terminated while the host was down):
    the disks a dead host left behind, removed when it comes back."""
    removed = []
    for region in svc.settings.regions:
        root = host_dir(svc, region.name, host) / "instances"
        if not root.is_dir():
            continue
        names = [p.name for p in root.glob("ins-*")]
        if not names:
            continue
        with svc.db.read() as s:
            known = set(s.scalars(select(Instance.id).where(Instance.id.in_(names))).all())
        for name in names:
            if name not in known and not (root / name / "qemu.pid").exists():  # a VM's dir: adopt_vms decides
                shutil.rmtree(root / name, ignore_errors=True)
                removed.append(name)
    return removed


# --------------------------------------------------------------------------- state and placement


@dataclass(frozen=True)
class HostInfo:
    name: str
    regions: list[str]
    compute: str
    capacity_instances: int
    instances: int
    up: bool
    heartbeat_at: float
    started_at: float
    process: str | None

    @property
    def state(self) -> str:
        return "UP" if self.up else "DOWN"


def list_hosts(svc: Services, s: Session | None = None) -> list[HostInfo]:
    """Every registered host, with its instance count and whether its heartbeat is fresh."""
    if s is None:
        with svc.db.read() as s2:
            return list_hosts(svc, s2)
    counts = dict(s.execute(select(Instance.compute_host, func.count()).group_by(Instance.compute_host)).all())
    cutoff = time.time() - dead_after(svc)
    return [
        HostInfo(h.name, json.loads(h.regions or "[]"), h.compute, h.capacity_instances, counts.get(h.name, 0),
                 h.heartbeat_at >= cutoff, h.heartbeat_at, h.started_at, h.process)
        for h in s.scalars(select(Host).order_by(Host.name)).all()
    ]


def describe_compute_hosts(svc: Services, caller: Caller) -> list[HostInfo]:
    """DescribeComputeHosts (extension): operators only (UnauthorizedOperation.PermissionDenied): where
    instances run is the operator's business, not an account's."""
    if not caller.is_operator:
        raise errors.PermissionDenied(detail="Only an operator account can list compute hosts "
                                      "(`stratus account create --operator`, or `stratus host list`).")
    return list_hosts(svc)


def down_hosts(svc: Services, s: Session) -> set[str]:
    return {h.name for h in list_hosts(svc, s) if not h.up}


def place(svc: Services, s: Session, region: str, count: int, instance_type: str) -> list[tuple[str, str]]:
    """(host, compute driver) for each of `count` new instances: the hosts that are up and serve the
    region, least loaded first, within their capacity. Called in RunInstances' write transaction (the
    host rows are locked on PostgreSQL, so two API processes can't both fill a host's last place).
    ResourceInsufficient.SpecifiedInstanceType when they can't take them all."""
    default_compute = svc.region(region).compute
    q = select(Host)
    if svc.db.is_postgresql:
        q = q.with_for_update()
    rows = s.scalars(q).all()
    if not rows:  # no host ever registered: the single-host setup
        return [(LOCAL, default_compute)] * count
    cutoff = time.time() - dead_after(svc)
    counts = dict(s.execute(select(Instance.compute_host, func.count()).group_by(Instance.compute_host)).all())
    live = [h for h in rows if h.heartbeat_at >= cutoff and region in json.loads(h.regions or "[]")]
    load = {h.name: counts.get(h.name, 0) for h in live}
    room = {h.name: (h.capacity_instances - load[h.name]) if h.capacity_instances else count for h in live}
    if sum(max(0, r) for r in room.values()) < count:
        raise errors.ResourceInsufficientSpecifiedInstanceType(
            instance_type=instance_type, count=count, region=region,
            detail=f"{len(live)} compute host(s) up in {region} with room for "
            f"{sum(max(0, r) for r in room.values())} more instance(s)" if live else
            f"no compute host is up in {region} (`stratus host list`)")
    compute = {h.name: h.compute or default_compute for h in live}
    chosen = []
    for _ in range(count):
        name = min((n for n in room if room[n] > 0), key=lambda n: (load[n], n))
        load[name] += 1
        room[name] -= 1
        chosen.append((name, compute[name]))
    return chosen
