"""CreateImage from an instance: the system disk, plus the data disks named in DataDiskIds.

The image is CREATING until the `capture` task has stored the disks' manifests, then NORMAL (or
CREATEFAILED with the reason). A running VM is paused over QMP only while its disks are read (or, with
ForcePoweroff, powered off and started again afterwards). Lineage: the source instance and its image.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import selectinload

from stratus.catalog.models import Image, ImageDisk, ImageTag, Instance, Task
from stratus.compute import overlays
from stratus.compute.driver import get_driver
from stratus.domain import errors, ids
from stratus.domain.states import ImageSource, ImageState
from stratus.service.context import Caller, Services
from stratus.service.image_rules import (
    DryRunPassed,
    check_name_free,
    commit_or_duplicate,
    reserve_quota,
    set_image_state,
    validate_description,
    validate_family,
    validate_name,
)
from stratus.service.instance_tasks import vm_spec
from stratus.service.instances import GiB, check_operable, get_owned, workdir
from stratus.service.limits import check_tasks
from stratus.service.manifests import load_manifest, record_manifest
from stratus.storage.capture import capture_disk
from stratus.tasks.runner import TaskContext, TaskFailed, enqueue

log = logging.getLogger(__name__)


def create_image(
    svc: Services,
    caller: Caller,
    region: str,
    *,
    name: str,
    instance_id: str | None,
    snapshot_ids: list[str] | None = None,
    data_disk_ids: list[str] | None = None,
    description: str = "",
    force_poweroff: bool = False,
    family: str = "",
    tags: list[tuple[str, str]] | None = None,
    dry_run: bool = False,
) -> str | None:
    """CreateImage: the owner of a RUNNING or STOPPED instance makes a custom image of it. Raises the
    §5.2 codes (SpecifyOneParameter, DataDisk*, InstanceState*, quota, duplicate name)."""
    if bool(instance_id) == bool(snapshot_ids):
        raise errors.SpecifyOneParameter(detail="Give exactly one of InstanceId and SnapshotIds.")
    if snapshot_ids:
        raise errors.SnapshotNotFound(
            detail=f"No snapshot {snapshot_ids[0]!r}: images are made from instances here; give InstanceId.")
    assert instance_id is not None
    validate_name(name)
    description = validate_description(description)
    family = validate_family(family)
    image_id = ids.new_image_id()
    try:
        with svc.db.write() as s:
            inst = get_owned(s, caller, region, instance_id, lock=svc.db.is_postgresql)
            busy = s.scalar(select(Task.id).where(Task.kind == "capture", Task.state.in_(("QUEUED", "RUNNING")),
                                                  Task.instance_id == inst.id))
            if busy is not None:
                raise errors.MutexOperationTaskRunning(detail=f"An image of {inst.id} is being created already.")
            check_operable(inst, "CreateImage")
            system = inst.disks[0]
            chosen = [system]
            for disk_id in dict.fromkeys(data_disk_ids or []):
                if disk_id == system.id:
                    raise errors.DataDiskIdContainsRootDisk(disk_id=disk_id, instance_id=inst.id)
                disk = next((d for d in inst.disks if d.id == disk_id and d.usage == "DATA_DISK"), None)
                if disk is None:
                    raise errors.DataDiskNotBelongSpecifiedInstance(disk_id=disk_id, instance_id=inst.id)
                chosen.append(disk)
            reserve_quota(svc, s, caller.account_id, region)
            check_name_free(s, caller.account_id, region, name)
            if dry_run:
                raise DryRunPassed()
            source = s.get(Image, inst.image_id)
            image = Image(
                id=image_id, region=region, owner_id=caller.account_id, name=name, description=description,
                state=ImageState.CREATING, source=ImageSource.CREATE_IMAGE, family=family,
                os_type=source.os_type if source else "Other Linux", os_version=source.os_version if source else "-",
                os_name=source.os_name if source else "Other Linux 64bit",
                platform=source.platform if source else "Other Linux",
                architecture=source.architecture if source else "x86_64",
                boot_mode=source.boot_mode if source else "Legacy BIOS",
                license_type=source.license_type if source else "TencentCloud",
                source_image_id=inst.image_id, source_region=region, source_instance_id=inst.id,
            )
            image.disks = [
                ImageDisk(index=n, snapshot_id=ids.new_snapshot_id(), usage="SYSTEM_DISK" if n == 0 else "DATA_DISK",
                          virtual_size=d.size_gib * GiB)
                for n, d in enumerate(chosen)
            ]
            image.tags = [ImageTag(key=k, value=v) for k, v in (tags or [])]
            s.add(image)
            commit_or_duplicate(s, name, region)
            inst.latest_operation, inst.latest_operation_state, inst.latest_operation_error = (
                "CreateImage", "OPERATING", None)
            check_tasks(svc, s, caller.account_id)  # limits.tasks_per_account
            enqueue(s, "capture", {"instance_id": inst.id, "disk_ids": [d.id for d in chosen],
                                   "force_poweroff": force_poweroff},
                    account_id=caller.account_id, region=region, image_id=image_id, host=inst.compute_host,
                    instance_id=inst.id)
    except DryRunPassed:
        return None
    svc.on_task_queued()
    return image_id


class CaptureHandler:
    def __init__(self, svc: Services) -> None:
        self.svc = svc

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        svc = self.svc
        assert ctx.region and ctx.image_id
        region = ctx.region
        with svc.db.read() as s:
            inst = s.scalars(select(Instance).where(Instance.id == ctx.payload["instance_id"])
                             .options(selectinload(Instance.disks))).first()
        if inst is None:
            raise TaskFailed(f"the instance {ctx.payload['instance_id']} is gone")
        disks = {d.id: d for d in inst.disks}
        driver = get_driver(inst.driver)
        wdir = workdir(svc, inst)
        vm = inst.driver != "disk" and driver.is_running(inst.id, wdir)
        force = bool(ctx.payload.get("force_poweroff"))
        results: dict[str, Any] = {}
        if vm:
            if force:
                driver.stop(inst.id, wdir, force=True)
            else:
                driver.pause(inst.id, wdir)
        try:
            store = svc.store(region)
            total = len(ctx.payload["disk_ids"])
            for n, disk_id in enumerate(ctx.payload["disk_ids"]):
                disk = disks.get(disk_id)
                if disk is None:
                    raise TaskFailed(f"the disk {disk_id} is no longer attached to {inst.id}")
                ctx.report("capture", 100.0 * n / total, force=True)
                base = load_manifest(svc, region, disk.base_manifest) if disk.base_manifest else None
                with overlays.changed_extents(Path(disk.path)) as extents:
                    result = capture_disk(Path(disk.path), extents, disk.size_gib * GiB, base, store,
                                          svc.region(region).chunk_size)
                manifest = result.manifest
                with ctx.fenced() as s:
                    digest = record_manifest(s, region, manifest)
                    s.execute(update(ImageDisk).where(ImageDisk.image_id == ctx.image_id, ImageDisk.index == n)
                              .values(manifest_digest=digest, virtual_size=manifest.virtual_size,
                                      stored_bytes=manifest.data_bytes, source_format="qcow2"))
                results[disk_id] = {"manifest": digest, "changed_chunks": result.changed_chunks,
                                    "new_bytes": result.new_bytes, "read_bytes": result.read_bytes}
        finally:
            if vm:
                try:
                    if force:
                        driver.start(vm_spec(svc, inst))
                    else:
                        driver.resume(inst.id, wdir)
                except Exception:
                    log.exception("restarting %s after the capture", inst.id)
        with ctx.fenced() as s:
            set_image_state(s, ctx.image_id, ImageState.NORMAL, progress=100.0)
            s.execute(update(Instance).where(Instance.id == inst.id)
                      .values(latest_operation_state="SUCCESS", latest_operation_error=None))
            ctx.complete(s, {"disks": results})
        return {"disks": results}

    def fail(self, ctx: TaskContext, reason: str) -> None:
        with ctx.fenced() as s:
            state = s.scalar(select(Image.state).where(Image.id == ctx.image_id))
            if state == ImageState.CREATING:
                set_image_state(s, ctx.image_id, ImageState.CREATEFAILED, reason=reason)
            s.execute(update(Instance).where(Instance.id == ctx.payload["instance_id"])
                      .values(latest_operation_state="FAILED", latest_operation_error=reason))
