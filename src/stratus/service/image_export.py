"""ExportImages: the owner's NORMAL images written as files into a bucket of the region by an `export` task."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from stratus.catalog.models import ExportObject, Task
from stratus.domain import errors
from stratus.service.context import Caller, Services
from stratus.service.limits import check_tasks, lock_account
from stratus.service.visibility import check_exportable, get_visible
from stratus.tasks.runner import enqueue

EXPORT_FORMATS = {"RAW": ("raw", "raw"), "QCOW2": ("qcow2", "qcow2"), "VHD": ("vpc", "vhd"), "VMDK": ("vmdk", "vmdk")}
EXPORT_MAX_IMAGES = 20


@dataclass(frozen=True)
class ExportStarted:
    task_id: int
    cos_paths: list[str]


def export_images(
    svc: Services,
    caller: Caller,
    region: str,
    *,
    bucket: str,
    image_ids: list[str] | None,
    export_format: str = "RAW",
    prefixes: list[str] | None = None,
    only_root_disk: bool = False,
    dry_run: bool = False,
) -> ExportStarted | None:
    """The owner exports NORMAL custom images into a bucket configured for the region; an `export`
    task writes the files and can be followed with DescribeTasks."""
    reg = svc.region(region)
    if not image_ids:
        raise errors.ImageIdsSnapshotIdsMustOne()
    if len(image_ids) > EXPORT_MAX_IMAGES:
        raise errors.InvalidParameterValueLimitExceeded(detail=f"At most {EXPORT_MAX_IMAGES} images per export.")
    fmt = export_format.upper()
    if fmt not in EXPORT_FORMATS:
        raise errors.InvalidParameterValue(
            detail=f"ExportFormat must be RAW, QCOW2, VHD or VMDK, not {export_format!r}."
        )
    if prefixes is not None and len(prefixes) != len(image_ids):
        raise errors.InvalidFileNamePrefixList(got=len(prefixes), want=len(image_ids))
    for p in prefixes or []:
        if not re.match(r"^[A-Za-z0-9._-]{0,64}$", p):
            raise errors.InvalidParameterValue(detail=f"FileNamePrefix {p!r} may use letters, digits, '.', '_', '-'.")
    if reg.bucket(bucket) is None:
        raise errors.BucketNotFound(bucket=bucket, region=region, known=", ".join(b.name for b in reg.buckets))
    qemu_fmt, ext = EXPORT_FORMATS[fmt]
    with svc.db.write() as s:
        lock_account(svc, s, caller.account_id)  # the limits below are counted one request at a time
        running = s.scalar(
            select(func.count()).select_from(Task).where(
                Task.kind == "export", Task.account_id == caller.account_id, Task.state.in_(("QUEUED", "RUNNING"))
            )
        ) or 0
        limit = svc.settings.limits.export_tasks_per_account
        if running >= limit:
            raise errors.ExportImageTaskLimitExceeded(running=running, limit=limit)
        items: list[dict[str, Any]] = []
        for n, image_id in enumerate(image_ids):
            # Locked like DeleteImages locks it: a delete and an export of one image are serialized.
            image = get_visible(s, caller, region, image_id, for_update=svc.db.is_postgresql)
            check_exportable(image, caller)
            prefix = (prefixes[n] + "_") if prefixes and prefixes[n] else ""
            for disk in image.disks:
                if only_root_disk and disk.index > 0:
                    continue
                role = "system" if disk.index == 0 else "data"
                items.append({
                    "image_id": image_id,
                    "disk_index": disk.index,
                    "manifest": disk.manifest_digest,
                    "key": f"{prefix}{image_id}_{role}_{disk.snapshot_id}.{ext}",
                })
        replaced = _check_export_keys(svc, s, caller, region, bucket, [item["key"] for item in items])
        if dry_run:
            return None
        check_tasks(svc, s, caller.account_id)  # limits.tasks_per_account
        task = enqueue(
            s, "export", {"bucket": bucket, "format": qemu_fmt, "items": items},
            account_id=caller.account_id, region=region,
            image_id=image_ids[0] if len(image_ids) == 1 else None,
        )
        for existing in replaced:
            s.delete(existing)
        s.flush()
        for item in items:
            s.add(ExportObject(region=region, bucket=bucket, key=item["key"], account_id=caller.account_id,
                               task_id=task.id, image_id=item["image_id"]))
        task_id = task.id
    svc.on_task_queued()
    return ExportStarted(task_id, ["/" + item["key"] for item in items])


def _check_export_keys(svc: Services, s: Session, caller: Caller, region: str, bucket: str, keys: list[str]
                       ) -> list[ExportObject]:
    """The export objects the new export replaces. Refuses a key named twice, a key whose export is still
    running (two tasks would write one file), and going past `limits.exports_per_account` files kept."""
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise errors.InvalidParameterValueDuplicate(
            detail=f"The export names the file {dup!r} twice; list each image once (or give distinct prefixes)."
        )
    existing = s.scalars(select(ExportObject).where(ExportObject.region == region, ExportObject.bucket == bucket,
                                                    ExportObject.key.in_(keys))).all()
    for obj in existing:
        # Keys name the image, disk and format, not the account: two operators exporting one public image
        # write the same bytes under one key, and the later export takes the file over (as before).
        if obj.state == "PENDING":
            raise errors.MutexOperationTaskRunning(
                detail=f"/{obj.key} is being exported by task {obj.task_id}; export it again when that finishes."
            )
    kept = s.scalar(select(func.count()).select_from(ExportObject)
                    .where(ExportObject.account_id == caller.account_id)) or 0
    limit = svc.settings.limits.exports_per_account
    if kept - len(existing) + len(keys) > limit:
        raise errors.LimitExceeded(
            detail=f"You keep {kept} exported files; {len(keys)} more would pass the limit of {limit} "
            "(limits.exports_per_account). Exported files expire after limits.export_ttl_seconds."
        )
    return list(existing)
