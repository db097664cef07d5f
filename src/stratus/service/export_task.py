"""The `export` task: write each exported disk into its bucket, in the requested format; and the expiry
of exported files.

Each attempt writes its own `<key>.part-<task>-a<attempt>` and renames it over the key durably (file fsynced,
rename, directory fsynced) inside the fenced transaction that records the object DONE: an execution that lost its
lease never replaces a file. Only one export of a key runs at a time (ExportImages refuses a second while the
first is PENDING).
"""

from __future__ import annotations

import glob
import logging
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from stratus.catalog.models import ExportObject
from stratus.service.context import Services
from stratus.service.manifests import ManifestMissing, load_manifest
from stratus.storage.dirstore import durable_replace
from stratus.storage.export import export_disk
from stratus.tasks.runner import TaskContext

log = logging.getLogger(__name__)


class ExportHandler:
    def __init__(self, svc: Services) -> None:
        self.svc = svc

    def _bucket_dir(self, ctx: TaskContext) -> Path:
        assert ctx.region
        bucket = self.svc.region(ctx.region).bucket(ctx.payload["bucket"])
        assert bucket is not None, "bucket vanished from the configuration"
        return bucket.path

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        svc = self.svc
        assert ctx.region
        store = svc.store(ctx.region)
        bucket_dir = self._bucket_dir(ctx)
        bucket_dir.mkdir(parents=True, exist_ok=True)
        items = ctx.payload["items"]
        fmt = ctx.payload["format"]
        total = sum(1 for _ in items)
        for n, item in enumerate(items):
            try:
                manifest = load_manifest(svc, ctx.region, item["manifest"])
            except ManifestMissing as exc:
                raise RuntimeError(f"{exc} (disk of {item['image_id']})") from None
            dest = bucket_dir / item["key"]
            part = self._part(dest, ctx)

            def on_progress(done: int, size: int, n: int = n) -> None:
                ctx.report("export", 100.0 * (n + (done / size if size else 1.0)) / total)

            scratch = ctx.scratch(svc.settings.tmp_dir)
            export_disk(manifest, store, part, fmt, progress=on_progress, tmp_dir=scratch)
            size = part.stat().st_size
            last = n == len(items) - 1
            result = {"CosPaths": ["/" + item["key"] for item in items]}
            objects = svc.export_objects(ctx.region, ctx.payload["bucket"])
            if objects is not None:  # an export bucket in S3: the local file was only staging
                objects.upload(part, item["key"])
                part.unlink()
            with ctx.fenced() as s:
                # The rename happens while we hold the task (row lock / write lock): no takeover between.
                if objects is None:
                    durable_replace(part, dest)
                s.execute(
                    update(ExportObject)
                    .where(ExportObject.region == ctx.region, ExportObject.bucket == ctx.payload["bucket"],
                           ExportObject.key == item["key"], ExportObject.task_id == ctx.task_id)
                    .values(state="DONE", size=size)
                )
                if last:
                    ctx.complete(s, result)
            self._remove_parts(dest, ctx.task_id)  # what earlier, interrupted attempts left
        return {"CosPaths": ["/" + item["key"] for item in items]}

    @staticmethod
    def _part(dest: Path, ctx: TaskContext) -> Path:
        return dest.with_name(f"{dest.name}.part-{ctx.task_id}-a{ctx.attempt}")

    @staticmethod
    def _remove_parts(dest: Path, task_id: int) -> None:
        for stale in dest.parent.glob(f"{glob.escape(dest.name)}.part-{task_id}-a*"):
            stale.unlink(missing_ok=True)

    def fail(self, ctx: TaskContext, reason: str) -> None:
        with ctx.fenced() as s:
            s.execute(update(ExportObject).where(ExportObject.task_id == ctx.task_id).values(state="FAILED"))
        bucket_dir = self._bucket_dir(ctx)
        for item in ctx.payload.get("items", []):
            self._remove_parts(bucket_dir / item["key"], ctx.task_id)


def expire_exports(svc: Services, now: float | None = None) -> int:
    """Delete exported files (and their rows) older than `limits.export_ttl_seconds`; never one whose export
    is still PENDING. Returns how many were removed."""
    now = time.time() if now is None else now
    cutoff = now - svc.settings.limits.export_ttl_seconds
    with svc.db.write() as s:
        stale = s.scalars(select(ExportObject).where(ExportObject.created_at < cutoff,
                                                     ExportObject.state.in_(("DONE", "FAILED")))).all()
        for obj in stale:
            region = svc.settings.region(obj.region)
            bucket = region.bucket(obj.bucket) if region else None
            if bucket is not None:
                (bucket.path / obj.key).unlink(missing_ok=True)
            s.delete(obj)
        return len(stale)
