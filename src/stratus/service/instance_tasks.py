"""The `launch` and `instance` tasks: bases, overlays and VMs behind the instance actions.

`launch` takes one RunInstances batch: it materializes each base once, creates every overlay (one
qemu-img call, then copies), starts the VMs (qemu driver) and marks the batch RUNNING. If anything
fails, the whole batch is LAUNCH_FAILED with the reason and none of its disks is left behind.
`instance` runs start/stop/reboot/terminate/reset for the instances of one request.
"""

from __future__ import annotations

import base64
import logging
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import selectinload

from stratus.catalog.models import Instance, InstanceDisk
from stratus.compute import boot, overlays
from stratus.compute.driver import Driver, VmSpec, get_driver
from stratus.domain import ids
from stratus.domain.states import InstanceState
from stratus.service.bases import base_path, bases_dir, ensure_base, release_unused_bases
from stratus.service.context import Services
from stratus.service.hosts import host_dir
from stratus.service.instances import GiB, set_states, workdir
from stratus.storage.dirstore import durable_replace
from stratus.tasks.runner import TaskContext, TaskLost

log = logging.getLogger(__name__)


def _load(svc: Services, instance_ids: list[str]) -> list[Instance]:
    with svc.db.read() as s:
        rows = s.scalars(select(Instance).where(Instance.id.in_(instance_ids))
                         .options(selectinload(Instance.disks))).all()
    order = {iid: n for n, iid in enumerate(instance_ids)}
    return sorted(rows, key=lambda i: order[i.id])


def vm_spec(svc: Services, inst: Instance) -> VmSpec:
    """How to boot an instance: its disks, size, user data, and a kernel taken from its image's base
    when the root filesystem carries one (else the firmware boots the disk)."""
    itype = svc.settings.instance_type(inst.instance_type)
    memory = min((itype.memory_gib if itype else 1) * 1024, svc.settings.limits.vm_memory_cap_mib)
    kernel = initrd = cmdline = None
    system = inst.disks[0]
    if system.base_manifest:
        base = base_path(svc, inst.region, system.base_manifest, inst.compute_host)
        found = boot.extract_kernel(base, bases_dir(svc, inst.region, inst.compute_host) /
                                    f"{system.base_manifest}.boot")
        if found is not None:
            kernel, initrd, cmdline = found
    return VmSpec(
        instance_id=inst.id, workdir=workdir(svc, inst), disks=[Path(d.path) for d in inst.disks],
        memory_mib=memory, cpus=itype.cpu if itype else 1,
        user_data=base64.b64decode(inst.user_data) if inst.user_data else None, hostname=inst.host_name or inst.id,
        kernel=kernel, initrd=initrd, cmdline=cmdline, max_seconds=svc.settings.limits.vm_max_seconds,
    )


def create_disks(svc: Services, region: str, instances: list[Instance], ctx: TaskContext | None = None) -> None:
    """Every disk of the batch (all on one host): overlays grouped by (base, size) so each group costs one
    qemu-img call."""
    host = instances[0].compute_host
    groups: dict[tuple[str, int], list[Path]] = defaultdict(list)
    blanks: list[tuple[Path, int]] = []
    for inst in instances:
        workdir(svc, inst).mkdir(parents=True, exist_ok=True)
        for disk in inst.disks:
            if disk.base_manifest:
                groups[(disk.base_manifest, disk.size_gib)].append(Path(disk.path))
            else:
                blanks.append((Path(disk.path), disk.size_gib * GiB))
    bases = {digest for digest, _ in groups}
    for n, digest in enumerate(sorted(bases)):
        if ctx:
            ctx.report("base", 60.0 * n / max(1, len(bases)), force=True)
        ensure_base(svc, region, digest, host)
    if ctx:
        ctx.renew()  # still ours (TaskLost if not): a stale launch must not overwrite the live one's disks
    for (digest, gib), paths in groups.items():
        overlays.create_overlays(base_path(svc, region, digest, host), "raw", paths, gib * GiB)
    for path, size in blanks:
        overlays.create_blank(path, size)


def remove_files(svc: Services, inst: Instance) -> None:
    shutil.rmtree(workdir(svc, inst), ignore_errors=True)


class LaunchHandler:
    def __init__(self, svc: Services) -> None:
        self.svc = svc

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        svc = self.svc
        assert ctx.region
        instances = [i for i in _load(svc, ctx.payload["instance_ids"]) if i.state == InstanceState.PENDING]
        if not instances:
            return {"launched": []}
        create_disks(svc, ctx.region, instances, ctx)
        ctx.report("boot", 70.0, force=True)
        for n, inst in enumerate(instances):
            driver = get_driver(inst.driver)
            if inst.driver != "disk":
                ctx.renew()
                driver.start(vm_spec(svc, inst))
            ctx.report("boot", 70.0 + 30.0 * (n + 1) / len(instances))
        result = {"launched": [i.id for i in instances]}
        with ctx.fenced() as s:
            set_states(s, [i.id for i in instances], InstanceState.RUNNING, op_state="SUCCESS")
            ctx.complete(s, result)
        return result

    def fail(self, ctx: TaskContext, reason: str) -> None:
        svc = self.svc
        assert ctx.region
        instances = _load(svc, ctx.payload["instance_ids"])
        with ctx.fenced() as s:
            # Files go while we hold the task: a stale execution never removes a live launch's disks.
            for inst in instances:
                if inst.state != InstanceState.PENDING:
                    continue
                try:
                    get_driver(inst.driver).cleanup(inst.id, workdir(svc, inst))
                except Exception:
                    log.exception("cleaning up %s", inst.id)
                remove_files(svc, inst)
            pending = [i.id for i in instances if i.state == InstanceState.PENDING]
            set_states(s, pending, InstanceState.LAUNCH_FAILED, op_state="FAILED", error=reason, reason=reason)
            # Nothing half-created: a failed launch keeps its record, never its disks.
            s.execute(delete(InstanceDisk).where(InstanceDisk.instance_id.in_(pending)))
        release_unused_bases(svc, ctx.region)


class InstanceHandler:
    """start / stop / reboot / terminate / reset for the instances of one request."""

    def __init__(self, svc: Services) -> None:
        self.svc = svc

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        svc = self.svc
        assert ctx.region
        op = ctx.payload["op"]
        force = bool(ctx.payload.get("force"))
        done = []
        for inst in _load(svc, ctx.payload["instance_ids"]):
            driver = get_driver(inst.driver)
            getattr(self, f"_{op}")(inst, driver, workdir(svc, inst), force, ctx)
            done.append(inst.id)
        if op == "terminate":
            release_unused_bases(svc, ctx.region)
        return {op: done}

    def _start(self, inst: Instance, driver: Driver, workdir: Path, force: bool, ctx: TaskContext) -> None:
        ctx.renew()  # each operation acts only while the task is ours (TaskLost otherwise)
        if inst.driver != "disk" and not driver.is_running(inst.id, workdir):
            driver.start(vm_spec(self.svc, inst))
        with ctx.fenced() as s:
            set_states(s, [inst.id], InstanceState.RUNNING, op_state="SUCCESS")

    def _stop(self, inst: Instance, driver: Driver, workdir: Path, force: bool, ctx: TaskContext) -> None:
        ctx.renew()
        driver.stop(inst.id, workdir, force=force)
        with ctx.fenced() as s:
            set_states(s, [inst.id], InstanceState.STOPPED, op_state="SUCCESS")

    def _reboot(self, inst: Instance, driver: Driver, workdir: Path, force: bool, ctx: TaskContext) -> None:
        ctx.renew()
        if inst.driver != "disk":
            if driver.is_running(inst.id, workdir):
                driver.reboot(inst.id, workdir, force=force)
            else:
                driver.start(vm_spec(self.svc, inst))
        with ctx.fenced() as s:
            set_states(s, [inst.id], InstanceState.RUNNING, op_state="SUCCESS")

    def _terminate(self, inst: Instance, driver: Driver, workdir: Path, force: bool, ctx: TaskContext) -> None:
        # Every disk goes with its instance: there are no standalone cloud disks to keep one as.
        with ctx.fenced() as s:
            driver.cleanup(inst.id, workdir)
            remove_files(self.svc, inst)
            s.execute(delete(Instance).where(Instance.id == inst.id))

    def _reset(self, inst: Instance, driver: Driver, workdir: Path, force: bool, ctx: TaskContext) -> None:
        svc = self.svc
        payload = ctx.payload
        was_running = inst.state == InstanceState.RUNNING
        ctx.renew()
        if inst.driver != "disk":
            driver.stop(inst.id, workdir, force=True)
        system = inst.disks[0]
        digest, gib = payload["manifest"], int(payload["size_gib"])
        ensure_base(svc, inst.region, digest, inst.compute_host)
        new_path = workdir / f"{system.id}.reset-{ids.new_id('disk')[5:]}.qcow2"
        overlays.create_overlay(base_path(svc, inst.region, digest, inst.compute_host), "raw", new_path, gib * GiB)
        try:
            with ctx.fenced() as s:
                # Renamed while we hold the task: a stale reset never replaces the disk under a live one.
                durable_replace(new_path, system.path)  # the old system disk is gone in one rename, fsynced
                row = s.get(Instance, inst.id)
                assert row is not None
                row.image_id = payload["image_id"]
                if "user_data" in payload:
                    row.user_data = payload["user_data"]
                if "host_name" in payload:
                    row.host_name = payload["host_name"]
                disk = s.get(InstanceDisk, system.id)
                assert disk is not None
                disk.base_manifest, disk.size_gib = digest, gib
        except TaskLost:
            new_path.unlink(missing_ok=True)  # ours, never renamed
            raise
        if was_running and inst.driver != "disk":
            refreshed = _load(svc, [inst.id])[0]
            driver.start(vm_spec(svc, refreshed))
        with ctx.fenced() as s:
            set_states(s, [inst.id], InstanceState.RUNNING if was_running else InstanceState.STOPPED,
                       op_state="SUCCESS")
        release_unused_bases(svc, inst.region)

    def fail(self, ctx: TaskContext, reason: str) -> None:
        """An operation that failed leaves each instance in the state it can be found in, with the reason."""
        svc = self.svc
        for inst in _load(svc, ctx.payload["instance_ids"]):
            if inst.driver == "disk":
                state = InstanceState(ctx.payload.get("previous", {}).get(inst.id, inst.state))
            else:
                running = get_driver(inst.driver).is_running(inst.id, workdir(svc, inst))
                state = InstanceState.RUNNING if running else InstanceState.STOPPED
            with ctx.fenced() as s:
                set_states(s, [inst.id], state, op_state="FAILED", error=reason)


def on_vm_exit(svc: Services, instance_id: str, returncode: int | None) -> None:
    """A VM exited on its own (guest poweroff, crash, timeout): the instance is STOPPED."""
    with svc.db.write() as s:
        inst = s.get(Instance, instance_id)
        if inst is None or inst.state not in (InstanceState.RUNNING, InstanceState.REBOOTING):
            return
        reason = None if returncode in (0, None) else f"the VM exited with status {returncode}"
        set_states(s, [instance_id], InstanceState.STOPPED, reason=reason)


def adopt_vms(svc: Services, host: str) -> dict[str, list[str]]:
    """After a restart of the compute host `host`: every instance of it that should run a VM is adopted if
    its VM still runs, else marked STOPPED; VMs of instances that shouldn't run are cleaned up. None is
    left orphaned."""
    adopted, stopped, cleaned = [], [], []
    with svc.db.read() as s:
        rows = s.scalars(select(Instance).where(Instance.driver != "disk", Instance.compute_host == host)).all()
    for inst in rows:
        driver = get_driver(inst.driver)
        wdir = workdir(svc, inst)
        should_run = inst.state in (InstanceState.RUNNING, InstanceState.REBOOTING, InstanceState.STARTING)
        if should_run and driver.adopt(inst.id, wdir):
            adopted.append(inst.id)
            continue
        driver.cleanup(inst.id, wdir)
        if should_run:
            with svc.db.write() as s:
                set_states(s, [inst.id], InstanceState.STOPPED,
                           reason="the VM was not running when the server restarted")
            stopped.append(inst.id)
        else:
            cleaned.append(inst.id)
    # VM directories with no instance at all (terminated while the server was down).
    known = {i.id for i in rows}
    for region in svc.settings.regions:
        root = host_dir(svc, region.name, host) / "instances"
        for vm_dir in root.glob("ins-*") if root.exists() else []:
            if vm_dir.name not in known and (vm_dir / "qemu.pid").exists():
                get_driver("qemu").cleanup(vm_dir.name, vm_dir)
                cleaned.append(vm_dir.name)
    return {"adopted": adopted, "stopped": stopped, "cleaned": cleaned}
