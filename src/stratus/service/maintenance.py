"""Store maintenance that needs the catalog: which manifests and chunks are live, and who needs them.

A manifest is *live* in a region while anything may still read its chunks:

* an image disk points at it (any image state: one in flight records its manifests disk by disk);
* an instance disk stands on it (``base_manifest``): the instance outlives its image, and a capture of
  it, a reset or a rebuild of its base on another host reads the base's manifest and chunks;
* a base row names it (a base being built, or kept on the host);
* it was recorded after the oldest task in flight in the region started (an import, capture or copy
  that recorded it but has not pointed a row at it yet).

gc marks the chunks of live manifests; ``drop_orphan_manifests`` keeps exactly the live ones. Both read
one manifest at a time, so memory holds the set of referenced chunks (binary digests), never every
manifest at once.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

from sqlalchemy import ColumnElement, delete, func, select, union
from sqlalchemy.orm import Session

from stratus.catalog.db import rowcount
from stratus.catalog.models import BaseDisk, Image, ImageDisk, Instance, InstanceDisk, Manifest, Task, Upload
from stratus.domain.manifest import DiskManifest
from stratus.service.context import Services
from stratus.service.manifests import load_manifest
from stratus.storage.chunkstore import StoreStats
from stratus.storage.fsck import FsckReport, fsck
from stratus.storage.gc import GcPlan, plan_gc


def _live_digests_query(region: str):
    """SELECT of every manifest digest something in the region stands on (see the module docstring)."""
    return union(
        select(ImageDisk.manifest_digest.label("digest")).join(Image)
        .where(Image.region == region, ImageDisk.manifest_digest.is_not(None)),
        select(InstanceDisk.base_manifest.label("digest")).join(Instance)
        .where(Instance.region == region, InstanceDisk.base_manifest.is_not(None)),
        select(BaseDisk.manifest_digest.label("digest")).where(BaseDisk.region == region),
    )


def _oldest_task_start(s: Session, region: str) -> float | None:
    return s.scalar(
        select(func.min(func.coalesce(Task.started_at, Task.created_at))).where(
            Task.region == region, Task.state.in_(("QUEUED", "RUNNING"))
        )
    )


def live_manifest_digests(svc: Services, region: str) -> list[str]:
    """The digests of every live manifest recorded in the region, sorted."""
    with svc.db.read() as s:
        oldest = _oldest_task_start(s, region)
        q = select(Manifest.digest).where(Manifest.region == region)
        live = Manifest.digest.in_(select(_live_digests_query(region).subquery().c.digest))
        q = q.where(live | (Manifest.created_at >= oldest) if oldest is not None else live)
        return sorted(s.scalars(q).all())


def iter_live_manifests(svc: Services, region: str) -> Iterator[tuple[str, DiskManifest]]:
    """Every live manifest of the region, loaded one at a time."""
    for digest in live_manifest_digests(svc, region):
        try:
            yield digest, load_manifest(svc, region, digest)
        except LookupError:
            continue  # dropped meanwhile: nothing stands on it any more


def referenced_manifests(svc: Services, region: str) -> dict[str, DiskManifest]:
    """Every live manifest of the region, all in memory: for tests and small catalogs only."""
    return dict(iter_live_manifests(svc, region))


# Digests the mark set may hold at once (~100 bytes each in a Python set: ~100 MiB). A region whose live
# manifests name more is marked and swept in shards of the digest space, one at a time.
MARK_BUDGET = 1_000_000


def referenced_chunks(svc: Services, region: str, shard: tuple[int, int] = (0, 256)) -> set[bytes]:
    """The mark phase: the binary digests of every chunk a live manifest names whose first byte is in
    ``shard``. Manifests are read one at a time."""
    lo, hi = shard
    refs: set[bytes] = set()
    for _digest, manifest in iter_live_manifests(svc, region):
        if (lo, hi) == (0, 256):
            refs.update(manifest.iter_data_digests_raw())
        else:
            refs.update(raw for raw in manifest.iter_data_digests_raw() if lo <= raw[0] < hi)
    return refs


def gc_shards(svc: Services, region: str, budget: int = MARK_BUDGET) -> list[tuple[int, int]]:
    """How to split the digest space so that no shard's mark set holds more than ~``budget`` digests
    (digests are uniform, so a shard gets its share of the references)."""
    with svc.db.read() as s:
        # Each data chunk is 32 bytes of a manifest body: an upper bound of the references, no parsing.
        total = s.scalar(select(func.coalesce(func.sum(func.length(Manifest.body)), 0))
                         .where(Manifest.region == region)) or 0
    entries = total // 32
    count = 1
    while entries > budget * count and count < 256:
        count *= 2
    return [(k * 256 // count, (k + 1) * 256 // count) for k in range(count)]


def chunk_owners(svc: Services, region: str, digests: set[str]) -> dict[str, list[str]]:
    """For each digest, what needs it: images (`img-… disk N`) and instances (`ins-… disk-…`)."""
    wanted = {bytes.fromhex(d): d for d in digests}
    with svc.db.read() as s:
        image_disks = s.execute(
            select(ImageDisk.manifest_digest, ImageDisk.image_id, ImageDisk.index).join(Image)
            .where(Image.region == region, ImageDisk.manifest_digest.is_not(None))
        ).all()
        instance_disks = s.execute(
            select(InstanceDisk.base_manifest, InstanceDisk.instance_id, InstanceDisk.id).join(Instance)
            .where(Instance.region == region, InstanceDisk.base_manifest.is_not(None))
        ).all()
    by_manifest: dict[str | None, list[str]] = defaultdict(list)  # the queries exclude NULL digests
    for mdigest, image_id, index in image_disks:
        by_manifest[mdigest].append(f"{image_id} disk {index}")
    for mdigest, instance_id, disk_id in instance_disks:
        by_manifest[mdigest].append(f"{instance_id} {disk_id}")
    owners: dict[str, list[str]] = {d: [] for d in digests}
    for mdigest, manifest in iter_live_manifests(svc, region):
        for raw in set(manifest.iter_data_digests_raw()) & wanted.keys():
            owners[wanted[raw]].extend(by_manifest.get(mdigest) or [f"manifest {mdigest[:12]} (in flight)"])
    return owners


@dataclass
class FsckSummary:
    region: str
    report: FsckReport
    owners: dict[str, list[str]] = field(default_factory=dict)


def fsck_region(svc: Services, region: str, progress=None) -> FsckSummary:
    expected = (raw.hex() for raw in referenced_chunks(svc, region))
    report = fsck(svc.store(region), expected=expected, progress=progress)
    bad = set(report.damaged) | set(report.missing)
    return FsckSummary(region, report, chunk_owners(svc, region, bad) if bad else {})


def gc_cutoff(svc: Services, region: str, grace_seconds: float, now: float | None = None) -> float:
    """Chunks written after this moment are kept: the grace period, extended back to the start of the
    oldest task still in flight, since its chunks are not in any manifest yet."""
    now = time.time() if now is None else now
    with svc.db.read() as s:
        starts = [_oldest_task_start(s, region), _oldest_chunked_upload(s, region)]
    cutoff = now - grace_seconds
    return min([cutoff, *(t for t in starts if t is not None)])


def _oldest_chunked_upload(s: Session, region: str) -> float | None:
    """A chunked upload in flight holds chunks no manifest names yet (they are the import's once it runs)."""
    return s.scalar(select(func.min(Upload.created_at)).where(
        Upload.region == region, Upload.manifest.is_not(None), Upload.state.in_(("UPLOADING", "COMPLETE"))))


def plan_region_gc(svc: Services, region: str, grace_seconds: float,
                   shard: tuple[int, int] = (0, 256), now: float | None = None) -> GcPlan:
    """The gc plan of one shard of the region's store (by default all of it)."""
    now = time.time() if now is None else now
    cutoff = gc_cutoff(svc, region, grace_seconds, now)
    return plan_gc(svc.store(region), referenced_chunks(svc, region, shard), grace_seconds=now - cutoff,
                   now=now, shard=shard)


@dataclass
class RegionGc:
    """What `stratus gc` did (or, dry, would do) in a region."""

    lines: list[str]
    deleted: int = 0
    deleted_bytes: int = 0


def gc_region(svc: Services, region: str, grace_seconds: float, *, dry_run: bool = False,
              budget: int = MARK_BUDGET) -> RegionGc:
    """Mark and sweep the region shard by shard (see :func:`gc_shards`), holding one shard's mark set at
    a time. Not dry: orphan manifests are dropped first."""
    if not dry_run:
        drop_orphan_manifests(svc, region)
    shards = gc_shards(svc, region, budget)
    now = time.time()
    done = RegionGc([])
    for n, shard in enumerate(shards, 1):
        plan = plan_region_gc(svc, region, grace_seconds, shard, now)
        prefix = f"shard {n}/{len(shards)} (digests {shard[0]:02x}..{shard[1] - 1:02x}): " if len(shards) > 1 else ""
        done.lines.extend(prefix + line for line in plan.describe())
        if not dry_run:
            result = plan.execute()
            done.deleted += result.deleted
            done.deleted_bytes += result.deleted_bytes
        del plan
    return done


def drop_orphan_manifests(svc: Services, region: str) -> int:
    """Delete the manifests nothing stands on any more (their images were deleted and no instance, base
    or task in flight needs them)."""
    with svc.db.write() as s:
        oldest = _oldest_task_start(s, region)
        orphan: ColumnElement[bool] = Manifest.digest.not_in(select(_live_digests_query(region).subquery().c.digest))
        if oldest is not None:
            orphan = orphan & (Manifest.created_at < oldest)
        res = s.execute(delete(Manifest).where(Manifest.region == region, orphan))
        return rowcount(res)


def task_counts(svc: Services) -> list[tuple[str, str, int]]:
    """(kind, state, count) of the tasks in the catalog, for /metrics: one GROUP BY."""
    with svc.db.read() as s:
        rows = s.execute(select(Task.kind, Task.state, func.count()).group_by(Task.kind, Task.state)).all()
    return [(kind, state, count) for kind, state, count in rows]


def store_dir_stats(svc: Services, region: str) -> StoreStats:
    """Chunks and bytes in the region's store as configured (a directory walk, or a bucket listing), for
    /metrics."""
    return svc.store(region).stats()
