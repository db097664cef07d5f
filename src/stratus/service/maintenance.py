"""Store maintenance that needs the catalog: which chunks are referenced, and by which images."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy import delete, func, select

from stratus.catalog.models import Image, ImageDisk, Manifest, Task
from stratus.domain.manifest import DiskManifest
from stratus.service.context import Services
from stratus.storage.fsck import FsckReport, fsck
from stratus.storage.gc import GcPlan, plan_gc


def referenced_manifests(svc: Services, region: str) -> dict[str, DiskManifest]:
    """Every manifest in the region that an image disk points at."""
    with svc.db.read() as s:
        rows = s.execute(
            select(Manifest.digest, Manifest.body).where(
                Manifest.region == region,
                Manifest.digest.in_(select(ImageDisk.manifest_digest).join(Image).where(Image.region == region)),
            )
        ).all()
    return {digest: DiskManifest.from_json(body) for digest, body in rows}


def chunk_owners(svc: Services, region: str, digests: set[str]) -> dict[str, list[str]]:
    """For each digest, the images (`img-… disk N`) whose manifests contain it."""
    manifests = referenced_manifests(svc, region)
    with svc.db.read() as s:
        disks = s.execute(
            select(ImageDisk.image_id, ImageDisk.index, ImageDisk.manifest_digest).join(Image)
            .where(Image.region == region, ImageDisk.manifest_digest.is_not(None))
        ).all()
    by_manifest: dict[str, list[str]] = defaultdict(list)
    for image_id, index, digest in disks:
        by_manifest[digest].append(f"{image_id} disk {index}")
    owners: dict[str, list[str]] = {d: [] for d in digests}
    for mdigest, manifest in manifests.items():
        hit = digests & manifest.data_digests()
        for d in hit:
            owners[d].extend(by_manifest[mdigest])
    return owners


@dataclass
class FsckSummary:
    region: str
    report: FsckReport
    owners: dict[str, list[str]] = field(default_factory=dict)


def fsck_region(svc: Services, region: str, progress=None) -> FsckSummary:  # type: ignore[no-untyped-def]
    manifests = referenced_manifests(svc, region)
    expected: set[str] = set().union(*(m.data_digests() for m in manifests.values())) if manifests else set()
    report = fsck(svc.store(region), expected=expected, progress=progress)
    bad = set(report.damaged) | set(report.missing)
    return FsckSummary(region, report, chunk_owners(svc, region, bad) if bad else {})


def gc_cutoff(svc: Services, region: str, grace_seconds: float, now: float | None = None) -> float:
    """Chunks written after this moment are kept: the grace period, extended back to the start of the
    oldest import still in flight, since its chunks are not in any manifest yet."""
    now = time.time() if now is None else now
    with svc.db.read() as s:
        oldest = s.scalar(
            select(func.min(func.coalesce(Task.started_at, Task.created_at))).where(
                Task.region == region, Task.state.in_(("QUEUED", "RUNNING"))
            )
        )
    cutoff = now - grace_seconds
    return min(cutoff, oldest) if oldest is not None else cutoff


def plan_region_gc(svc: Services, region: str, grace_seconds: float) -> GcPlan:
    manifests = referenced_manifests(svc, region)
    referenced: set[str] = set().union(*(m.data_digests() for m in manifests.values())) if manifests else set()
    now = time.time()
    cutoff = gc_cutoff(svc, region, grace_seconds, now)
    return plan_gc(svc.store(region), referenced, grace_seconds=now - cutoff, now=now)


def drop_orphan_manifests(svc: Services, region: str) -> int:
    """Manifests no image disk points at any more (their images were deleted)."""
    with svc.db.write() as s:
        res = s.execute(
            delete(Manifest).where(
                Manifest.region == region,
                Manifest.digest.not_in(
                    select(ImageDisk.manifest_digest).join(Image)
                    .where(Image.region == region, ImageDisk.manifest_digest.is_not(None))
                ),
            )
        )
        return res.rowcount or 0
