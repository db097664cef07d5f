"""What every use case needs: settings, the catalog, the region stores, and who is calling."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from stratus.catalog.db import Database, open_database
from stratus.config import Region, Settings
from stratus.domain import errors
from stratus.storage.chunkstore import ChunkStore
from stratus.storage.dirstore import DirStore


def open_store(region: Region, settings: Settings, quiet: Callable[[float], bool] | None = None) -> ChunkStore:
    """A region's chunk store as its configuration says (``store = {type = "dir" | "s3"}``); `quiet` tells an
    S3 store's garbage collection whether the region saw no ingest since a time."""
    spec = region.store
    if spec.type != "s3":
        return DirStore(region.store_path)
    from stratus.storage.s3store import S3Store  # boto3 loads only where a region uses S3

    assert spec.bucket
    return S3Store(bucket=spec.bucket, endpoint_url=spec.endpoint_url, prefix=spec.prefix,
                   scratch_dir=region.store_path / "tmp", retry_seconds=settings.limits.store_retry_seconds,
                   quiet=quiet)


@dataclass(frozen=True)
class Caller:
    """An authenticated account."""

    account_id: str
    is_operator: bool = False


@dataclass
class Services:
    settings: Settings
    db: Database
    _stores: dict[str, ChunkStore] = field(default_factory=dict)
    _buckets: dict[str, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # Called after a task is queued so in-process workers wake at once instead of at their next poll.
    on_task_queued: Callable[[], None] = lambda: None

    @classmethod
    def open(cls, settings: Settings) -> Services:
        return cls(settings, open_database(settings.database_url))

    def region(self, name: str | None) -> Region:
        if not name:
            raise errors.MissingParameter(name="Region (the X-TC-Region header)")
        region = self.settings.region(name)
        if region is None:
            raise errors.InvalidRegionNotFound(region=name)
        return region

    def store(self, region: str) -> ChunkStore:
        """The region's chunk store, as its configuration says (``store = {type = "dir" | "s3"}``)."""
        with self._lock:
            store = self._stores.get(region)
            if store is None:
                store = self._open_store(self.region(region))
                self._stores[region] = store
            return store

    def _open_store(self, region: Region) -> ChunkStore:
        return open_store(region, self.settings, quiet=lambda since: self.region_quiet(region.name, since))

    def export_objects(self, region: str, bucket: str):
        """The S3Objects of an export bucket kept in S3, None for a directory bucket."""
        spec = self.region(region).bucket(bucket)
        if spec is None or spec.s3 is None:
            return None
        key = f"{region}/{bucket}"
        with self._lock:
            objects = self._buckets.get(key)
            if objects is None:
                from stratus.storage.s3store import S3Objects

                assert spec.s3.bucket
                objects = self._buckets[key] = S3Objects(
                    bucket=spec.s3.bucket, endpoint_url=spec.s3.endpoint_url, prefix=spec.s3.prefix,
                    retry_seconds=self.settings.limits.store_retry_seconds)
            return objects

    def region_quiet(self, region: str, since: float) -> bool:
        """True if no task of the region is queued or running, and none finished at or after ``since``:
        then no writer can have reused a chunk gc planned to delete (see storage/s3store.py)."""
        from sqlalchemy import or_, select

        from stratus.catalog.models import Task

        with self.db.read() as s:
            busy = s.scalar(
                select(Task.id).where(
                    Task.region == region,
                    or_(Task.state.in_(("QUEUED", "RUNNING")), Task.finished_at >= since),
                ).limit(1)
            )
        return busy is None

    def check_stores(self) -> None:
        """At start: every S3 store answers and its bucket exists; else one line naming region, endpoint
        and bucket (StoreUnavailable)."""
        from stratus.storage.chunkstore import StoreUnavailable

        for region in self.settings.regions:
            # (spec, export bucket name or None for the chunk store); each made and checked inside the try
            checks: list[tuple[Any, str | None]] = [(region.store, None)] if region.store.type == "s3" else []
            checks += [(b.s3, b.name) for b in region.buckets if b.s3 is not None]
            for spec, bucket in checks:
                try:
                    if bucket is None:
                        self.store(region.name).check()
                    else:
                        self.export_objects(region.name, bucket).check()
                except StoreUnavailable as exc:
                    raise StoreUnavailable(
                        f"region {region.name}: the S3 store at {spec.endpoint_url or 'AWS'} bucket "
                        f"{spec.bucket!r} can't be used: {exc}"
                    ) from None
