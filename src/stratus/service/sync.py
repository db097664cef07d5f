"""SyncImages: copy an image into other regions, sending only the chunks each destination store lacks.

The use case (:func:`sync_images`) checks everything, then in one transaction creates, in every
destination region, the new image row SYNCING with SyncPercent 0 (the row is the quota reservation and
the name claim there) and one `sync` task for it. The task (:class:`SyncHandler`) copies the distinct
chunks of the source's disk manifests from the source region's store into the destination's
(:func:`stratus.storage.copy.copy_chunks`: present chunks are only touched, missing ones are read
verified and written), then, in one transaction, records the manifests in the destination region and
turns the image NORMAL with SyncPercent 100. An image never becomes NORMAL with a chunk missing.

SyncPercent is truthful: the bytes of the image's distinct chunks that are durable in the destination
store over the bytes of all its distinct chunks, written only at durability points. It never runs ahead
of the store, and never goes back: after `kill -9` the task resumes from its last checkpoint (the count
of leading chunks known durable), so the chunks that already crossed don't cross again.

What crossed is measured: the task's result (DescribeTasks `Result`, an extension) has `BytesCopied`
and `ChunksCopied` (written into the destination), `BytesPresent`/`ChunksPresent` (already there),
`BytesTotal`, and `ResumedAtBytes` (the checkpoint of each resumption).

A failed copy turns the image CREATEFAILED. The contract has no failed state for SYNCING (§9 shows only
SYNCING → NORMAL, and §6 lists no SYNCFAILED); CREATEFAILED is its failed state of an image being made, so
a copy that can't finish shows CREATEFAILED with `ImageStateReason` "sync of img-… from <region> failed:
<why>" (a damaged or missing source chunk, a full disk, "interrupted 3 times"). The image keeps its
quota slot until its owner deletes it; the chunks that crossed are reclaimed by `stratus gc`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from stratus.catalog.models import Image, ImageDisk, ImageTag
from stratus.domain import errors, ids
from stratus.domain.manifest import DiskManifest
from stratus.domain.states import BUSY_STATES, ImageSource, ImageState, ImageType, check_image
from stratus.service.context import Caller, Services
from stratus.service.disclosure import readable_chunks
from stratus.service.image_rules import DryRunPassed, check_name_free, reserve_quota, validate_name
from stratus.service.limits import check_tasks
from stratus.service.manifests import ManifestMissing, read_manifests, record_manifest
from stratus.service.visibility import check_image_id, get_visible, image_type
from stratus.storage.copy import CopyInterrupted, CopyProgress, copy_chunks
from stratus.tasks.runner import TaskCancelled, TaskContext, TaskFailed, TaskLost, enqueue

log = logging.getLogger(__name__)

TASK_KIND = "sync"


@dataclass(frozen=True)
class SyncedImage:
    """One copy being made: the new image, its region and the task doing it."""

    image_id: str
    region: str
    task_id: int


# --------------------------------------------------------------------------- SyncImages


def _check_destinations(svc: Services, destinations: list[str]) -> list[str]:
    if not destinations:
        raise errors.MissingParameter(name="DestinationRegions")
    wanted = list(dict.fromkeys(destinations))
    for name in wanted:
        region = svc.settings.region(name)
        if region is None:
            raise errors.InvalidRegionNotFound(region=name)
        if not region.sync_target:
            raise errors.InvalidRegionUnavailable(region=name)
    return wanted


def _check_source(svc: Services, s: Session, caller: Caller, region: str, image_id: str,
                  destinations: list[str]) -> Image:
    image = get_visible(s, caller, region, image_id)
    kind = image_type(image, caller)
    if kind is ImageType.PUBLIC and image.owner_id != caller.account_id:
        raise errors.InvalidImageIdParam(
            detail=f"The image {image_id} is a public image; SyncImages copies custom images. Launch from it "
            "directly, or ask an operator to publish it in the other regions."
        )
    if kind is ImageType.SHARED:
        elsewhere = [d for d in destinations if d != region]
        if elsewhere:
            raise errors.UnsupportedOperationRegion(
                detail=f"The image {image_id} is shared with you; it can be synced only into its own region "
                f"{region}, where the copy becomes your own image. Sync it there first, then sync your copy to "
                f"{', '.join(elsewhere)}."
            )
    elif region in destinations:
        raise errors.InvalidParameterValueInvalidRegion(
            detail=f"The image {image_id} is already in {region}; DestinationRegions must be other regions."
        )
    if image.state in BUSY_STATES:
        raise errors.SyncImageBusy(image_id=image_id, state=image.state)
    if image.state != ImageState.NORMAL:
        raise errors.InvalidImageIdIncorrectState(
            image_id=image_id, state=image.state, needed="NORMAL (a failed image can't be copied; re-import it)"
        )
    size = sum(d.virtual_size for d in image.disks)
    limit = svc.settings.limits.sync_max_image_bytes
    if size > limit:
        raise errors.InvalidImageIdTooLarge(image_id=image_id, size=size, limit=limit)
    return image


def sync_images(
    svc: Services,
    caller: Caller,
    region: str,
    image_ids: list[str],
    destination_regions: list[str],
    *,
    image_name: str | None = None,
    dry_run: bool = False,
    encrypt: bool = False,
    kms_key_id: str | None = None,
) -> list[SyncedImage]:
    """SyncImages: copy one NORMAL image of `region` into each of `destination_regions`.

    Who: the owner of a custom image (an operator: also of its public image), into other regions; the
    receiver of a shared image, only into the image's own region (the copy becomes the receiver's own
    custom image). Each copy is a new image owned by the caller: new id, the source's name unless
    `image_name`, lineage (SourceImageId, SourceRegion), SYNCING until its `sync` task finishes.

    All or nothing across the destinations. Returns the copies, or [] for a DryRun that passed.

    Codes: InvalidImageId.Malformed / NotFound (not visible to the caller: the same answer as for an id
    never issued); InvalidParameterValue.LimitExceeded (more than one ImageId); MissingParameter;
    InvalidRegion.NotFound (unknown destination); InvalidRegion.Unavailable (a region with
    `sync_target = false`); InvalidParameterValue.InvalidRegion (a custom image into its own region);
    UnsupportedOperation.Region (a shared image into another region); InvalidParameterValue.InvalidImageId
    (someone else's public image); FailedOperation.InvalidImageState (source IMPORTING, CREATING or
    SYNCING: try later); InvalidImageId.IncorrectState (source failed: never NORMAL);
    InvalidParameterValue.InvalidImageState (a copy of this image into that region is already under way);
    InvalidImageId.TooLarge (`limits.sync_max_image_bytes`); ImageQuotaLimitExceeded and
    InvalidImageName.Duplicate (in the destination); InvalidParameterValue.TooLarge (name over 60);
    UnsupportedOperation.SyncEncryptImageNotSupport (Encrypt) and InvalidParameter.InvalidKmsKeyId
    (KmsKeyId without Encrypt).
    """
    if not image_ids:
        raise errors.MissingParameter(name="ImageIds")
    if len(image_ids) > 1:
        raise errors.InvalidParameterValueLimitExceeded(
            detail=f"SyncImages copies one image per call, got {len(image_ids)} ImageIds; call it once per image."
        )
    image_id = check_image_id(image_ids[0])
    if kms_key_id is not None and not encrypt:
        raise errors.InvalidKmsKeyId()
    if encrypt:
        raise errors.SyncEncryptImageNotSupport()
    destinations = _check_destinations(svc, destination_regions)
    if image_name is not None:
        validate_name(image_name)
    copies: list[SyncedImage] = []
    try:
        with svc.db.write() as s:
            source = _check_source(svc, s, caller, region, image_id, destinations)
            name = image_name if image_name is not None else source.name
            in_flight = s.execute(
                select(Image.id, Image.region).where(
                    Image.owner_id == caller.account_id, Image.source_image_id == source.id,
                    Image.region.in_(destinations), Image.state == ImageState.SYNCING,
                )
            ).first()
            if in_flight is not None:
                raise errors.InvalidImageState(
                    f"The image {image_id} is already being copied to {in_flight.region} (as {in_flight.id}); "
                    "wait until that copy is NORMAL."
                )
            for dest in destinations:
                reserve_quota(svc, s, caller.account_id, dest)
                check_name_free(s, caller.account_id, dest, name)
            if dry_run:
                raise DryRunPassed()
            payload = {
                "source_image_id": source.id,
                "source_region": region,
                "disks": [{"index": d.index, "manifest": d.manifest_digest} for d in source.disks],
            }
            for dest in destinations:
                copy = _new_copy(source, caller, region, dest, name)
                s.add(copy)
                try:
                    s.flush()
                except IntegrityError:  # raced past check_name_free; the unique key decides
                    raise errors.InvalidImageNameDuplicate(name=name, region=dest) from None
                check_tasks(svc, s, caller.account_id)  # limits.tasks_per_account
                task = enqueue(s, TASK_KIND, payload, account_id=caller.account_id, region=dest, image_id=copy.id,
                               source_image_id=source.id)
                copies.append(SyncedImage(copy.id, dest, task.id))
    except DryRunPassed:
        return []
    svc.on_task_queued()
    return copies


def _new_copy(source: Image, caller: Caller, source_region: str, dest: str, name: str) -> Image:
    copy = Image(
        id=ids.new_image_id(),
        region=dest,
        owner_id=caller.account_id,
        name=name,
        description=source.description,
        state=ImageState.SYNCING,
        progress=0.0,
        sync_percent=0,
        # An operator's public image is copied as a private image, published again by its owner.
        source=ImageSource.CREATE_IMAGE if source.source == ImageSource.OFFICIAL else source.source,
        os_type=source.os_type,
        os_version=source.os_version,
        os_name=source.os_name,
        platform=source.platform,
        architecture=source.architecture,
        boot_mode=source.boot_mode,
        license_type=source.license_type,
        family=source.family,
        support_cloudinit=source.support_cloudinit,
        source_image_id=source.id,
        source_region=source_region,
        # source_url is not copied: it is the owner's, and a shared image's receiver must not see it.
    )
    copy.disks = [
        ImageDisk(index=d.index, snapshot_id=ids.new_snapshot_id(), usage=d.usage, virtual_size=d.virtual_size,
                  stored_bytes=d.stored_bytes, source_format=d.source_format)
        for d in source.disks
    ]
    copy.tags = [ImageTag(key=t.key, value=t.value) for t in source.tags]
    return copy


# --------------------------------------------------------------------------- the `sync` task


class SyncHandler:
    """Runs `sync` tasks: resumable after `kill -9` (see the module docstring)."""

    def __init__(self, svc: Services) -> None:
        self.svc = svc

    def _state(self, image_id: str | None) -> str | None:
        with self.svc.db.read() as s:
            return s.scalar(select(Image.state).where(Image.id == image_id))

    def _manifests(self, ctx: TaskContext) -> dict[str, DiskManifest]:
        p = ctx.payload
        digests = {d["manifest"] for d in p["disks"]}
        try:
            with self.svc.db.read() as s:
                found = read_manifests(s, p["source_region"], digests)
        except ManifestMissing:
            raise TaskFailed(  # noqa: B904 - the reason says it all
                f"the source image {p['source_image_id']} was deleted before its copy finished and its disk "
                "manifests are gone; sync again from an image that still exists"
            )
        return found

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        svc = self.svc
        p = ctx.payload
        assert ctx.region and ctx.image_id
        if self._state(ctx.image_id) != ImageState.SYNCING:
            raise TaskCancelled(f"image {ctx.image_id} is {self._state(ctx.image_id) or 'gone'}; nothing to copy")
        manifests = self._manifests(ctx)
        # The distinct chunks of every disk, in disk order, with their lengths (a short last chunk).
        sizes: dict[str, int] = {}
        for disk in p["disks"]:
            m = manifests[disk["manifest"]]
            for index, digest in enumerate(m.chunks):
                if digest is not None and digest not in sizes:
                    sizes[digest] = m.chunk_range(index)[1]
        order = list(sizes)
        total = sum(sizes.values())
        state: dict[str, Any] = dict(p.get("copy") or {})
        start = int(state.get("chunks_done", 0))
        resumed = list(state.get("resumed_at_bytes", []))
        if start:
            resumed.append(int(state.get("bytes_done", 0)))
        base = {k: int(state.get(k, 0)) for k in ("bytes_done", "chunks_copied", "bytes_copied",
                                                   "chunks_present", "bytes_present")}
        last_pct = [-1]

        def totals(pr: CopyProgress) -> dict[str, Any]:
            r = pr.so_far
            return {
                "chunks_done": start + pr.chunks_done,
                "bytes_done": base["bytes_done"] + pr.bytes_done,
                "chunks_copied": base["chunks_copied"] + r.chunks_copied,
                "bytes_copied": base["bytes_copied"] + r.bytes_copied,
                "chunks_present": base["chunks_present"] + r.chunks_present,
                "bytes_present": base["bytes_present"] + r.bytes_present,
                "resumed_at_bytes": resumed,
            }

        def on_progress(pr: CopyProgress) -> None:
            now = totals(pr)
            pct = min(99, 100 * now["bytes_done"] // total) if total else 99
            ctx.report("copy", float(pct), force=True)  # renews the lease; TaskLost if another worker has it
            ctx.checkpoint({"copy": now})
            if pct != last_pct[0]:
                last_pct[0] = pct
                with ctx.fenced() as s:
                    s.execute(update(Image).where(Image.id == ctx.image_id, Image.state == ImageState.SYNCING)
                              .values(sync_percent=pct, progress=float(pct)))

        src = svc.store(p["source_region"])
        dst = svc.store(ctx.region)
        with svc.db.read() as s:  # no cross-account oracle: only these may be skipped as already there
            known = readable_chunks(s, ctx.account_id or "", ctx.region, order[start:])
        try:
            result = copy_chunks(
                order[start:], src, dst, progress=on_progress, should_stop=ctx.should_stop,
                max_bytes_per_second=svc.settings.limits.sync_bytes_per_second,
                report_every_bytes=max(1, total // 20),  # SyncPercent in 5 % steps (or every second)
                known=known,
            )
        except (TaskLost, CopyInterrupted):
            raise  # another worker has the task, or this one is shutting down: it resumes from the checkpoint
        except Exception as exc:
            if ctx.should_stop():
                raise
            raise TaskFailed(getattr(exc, "message", None) or str(exc) or type(exc).__name__) from exc
        final = totals(CopyProgress(len(order) - start, total - base["bytes_done"], result))
        outcome = {
            "SourceImageId": p["source_image_id"],
            "SourceRegion": p["source_region"],
            "BytesTotal": total,
            "ChunksTotal": len(order),
            "BytesCopied": final["bytes_copied"],
            "ChunksCopied": final["chunks_copied"],
            "BytesPresent": final["bytes_present"],
            "ChunksPresent": final["chunks_present"],
            "ResumedAtBytes": resumed,
        }
        with ctx.fenced() as s:
            if s.scalar(select(Image.state).where(Image.id == ctx.image_id)) != ImageState.SYNCING:
                raise TaskCancelled(f"image {ctx.image_id} is no longer SYNCING")
            check_image(ImageState.SYNCING, ImageState.NORMAL)
            for m in manifests.values():
                record_manifest(s, ctx.region, m)
            for disk in p["disks"]:
                s.execute(update(ImageDisk).where(ImageDisk.image_id == ctx.image_id, ImageDisk.index == disk["index"])
                          .values(manifest_digest=disk["manifest"]))
            s.execute(update(Image).where(Image.id == ctx.image_id).values(
                state=ImageState.NORMAL, state_reason=None, sync_percent=100, progress=100.0, updated_at=time.time()))
            ctx.complete(s, outcome)
        log.info("sync %s → %s (%s): %d of %d bytes crossed", p["source_image_id"], ctx.image_id, ctx.region,
                 final["bytes_copied"], total)
        return outcome

    def fail(self, ctx: TaskContext, reason: str) -> None:
        p = ctx.payload
        message = f"sync of {p.get('source_image_id')} from {p.get('source_region')} failed: {reason}"
        with ctx.fenced() as s:
            s.execute(update(Image).where(Image.id == ctx.image_id, Image.state == ImageState.SYNCING).values(
                state=ImageState.CREATEFAILED, state_reason=message, updated_at=time.time()))
