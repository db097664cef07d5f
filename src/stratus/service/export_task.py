"""The `export` task: write each exported disk into its bucket, in the requested format."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from stratus.catalog.models import ExportObject, Manifest
from stratus.domain.manifest import DiskManifest
from stratus.service.context import Services
from stratus.storage.export import export_disk
from stratus.tasks.runner import TaskContext


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
            with svc.db.read() as s:
                body = s.scalar(select(Manifest.body).where(Manifest.region == ctx.region,
                                                            Manifest.digest == item["manifest"]))
            if body is None:
                raise RuntimeError(f"manifest {item['manifest']} of {item['image_id']} is missing from the catalog")
            manifest = DiskManifest.from_json(body)
            dest = bucket_dir / item["key"]
            part = dest.with_name(dest.name + ".part")

            def on_progress(done: int, size: int, n: int = n) -> None:
                ctx.report("export", 100.0 * (n + (done / size if size else 1.0)) / total)

            export_disk(manifest, store, part, fmt, progress=on_progress, tmp_dir=svc.settings.tmp_dir)
            size = part.stat().st_size
            objects = svc.export_objects(ctx.region, ctx.payload["bucket"])
            if objects is not None:  # an export bucket in S3: the local file was only staging
                objects.upload(part, item["key"])
                part.unlink()
            else:
                os.replace(part, dest)
            with svc.db.write() as s:
                s.execute(
                    update(ExportObject)
                    .where(ExportObject.region == ctx.region, ExportObject.bucket == ctx.payload["bucket"],
                           ExportObject.key == item["key"])
                    .values(state="DONE", size=size)
                )
        return {"CosPaths": ["/" + item["key"] for item in items]}

    def fail(self, ctx: TaskContext, reason: str) -> None:
        bucket_dir = self._bucket_dir(ctx)
        for item in ctx.payload.get("items", []):
            (bucket_dir / (item["key"] + ".part")).unlink(missing_ok=True)
        with self.svc.db.write() as s:
            s.execute(update(ExportObject).where(ExportObject.task_id == ctx.task_id).values(state="FAILED"))
