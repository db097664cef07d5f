"""The `import` task: fetch each disk (URL or finished upload), inspect it, store its chunks.

Stages per disk: fetch (skipped for uploads) → inspect → ingest. The image turns NORMAL only in the
transaction that records the last manifest, after every chunk is durable in the store, so a crash at
any point leaves IMPORTING (resumed by the next worker: chunks already stored are not written again)
or IMPORTFAILED with a reason, never a NORMAL image with a missing chunk.

Every visible write goes through the task's fence (`ctx.fenced()`), so an execution that lost its lease
(a paused worker) changes nothing. Downloads land in the attempt's own scratch directory; a later
attempt copies an earlier attempt's partial download into its own and resumes it with HTTP Range.
"""

from __future__ import annotations

import errno
import logging
import shutil
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from stratus.catalog.models import Image, ImageDisk, Upload
from stratus.disk.inspect import Inspection, inspect_file
from stratus.domain.states import ImageState
from stratus.service import chunked
from stratus.service.context import Services
from stratus.service.image_rules import set_image_state
from stratus.service.manifests import record_manifest
from stratus.storage.fetch import fetch_url
from stratus.storage.ingest import IngestResult, ingest_disk
from stratus.tasks.runner import TaskCancelled, TaskContext, TaskFailed

log = logging.getLogger(__name__)

FETCH_SHARE = 0.4  # share of a URL disk's progress spent downloading


def disk_label(index: int) -> str:
    return "system disk" if index == 0 else f"data disk {index}"


def upload_path(svc: Services, upload_id: str) -> Path:
    return svc.settings.uploads_dir / upload_id


class ImportHandler:
    def __init__(self, svc: Services) -> None:
        self.svc = svc

    def _progress(self, ctx: TaskContext, stage: str, pct: float) -> None:
        last = ctx.notes.get("image_pct", -1.0)
        ctx.report(stage, pct)
        if int(pct) != int(last):
            ctx.notes["image_pct"] = pct
            with ctx.fenced() as s:
                s.execute(update(Image).where(Image.id == ctx.image_id).values(progress=pct))

    def _adopt_partial(self, ctx: TaskContext, path: Path) -> None:
        """Copy an earlier attempt's partial download of this disk into ours, to resume it. A copy, never
        the file itself: a paused earlier execution may wake up and write to its own file."""
        if path.exists():
            return
        for earlier in ctx.earlier_scratch(self.svc.settings.tmp_dir):
            old, meta = earlier / path.name, earlier / (path.name + ".meta")
            try:
                shutil.copyfile(meta, path.with_name(path.name + ".meta"))
                shutil.copyfile(old, path)
                return
            except OSError:
                path.unlink(missing_ok=True)
                path.with_name(path.name + ".meta").unlink(missing_ok=True)

    def _assembled(self, ctx: TaskContext, upload: Upload, work: Path) -> tuple[IngestResult, Inspection]:
        assert ctx.region
        manifest, probe = chunked.assemble(self.svc, upload, ctx.region, work)
        try:
            inspection = inspect_file(probe, declared="RAW", max_virtual_size=self.svc.settings.limits.max_virtual_size,
                                      allow_iso=bool(ctx.payload.get("force")))
        finally:
            probe.unlink(missing_ok=True)
        return IngestResult(manifest=manifest, new_chunks=0, new_bytes=0, reused_chunks=0,
                            data_bytes=manifest.data_bytes, method="direct"), inspection

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        svc = self.svc
        assert ctx.region and ctx.image_id
        region = svc.region(ctx.region)
        store = svc.store(ctx.region)
        with svc.db.read() as s:
            state = s.scalar(select(Image.state).where(Image.id == ctx.image_id))
        if state != ImageState.IMPORTING:
            raise TaskCancelled(f"image {ctx.image_id} is {state or 'gone'}; nothing to import")
        disks: list[dict[str, Any]] = ctx.payload["disks"]
        done: dict[str, Any] = ctx.payload.get("done", {})
        work = ctx.scratch(svc.settings.tmp_dir)
        share = 100.0 / len(disks)
        for index, src in enumerate(disks):
            if str(index) in done:
                continue
            base = index * share
            label = disk_label(index)
            chunked_src = chunked.chunked_upload(svc, src["upload_id"]) if "upload_id" in src else None
            try:
                if chunked_src is not None:
                    # A chunked upload: its raw chunks are already in the store; only the gate runs.
                    self._progress(ctx, "inspect", base)
                    result, inspection = self._assembled(ctx, chunked_src, work)
                    path = work / "probe.raw"
                else:
                    if "upload_id" in src:
                        path = upload_path(svc, src["upload_id"])
                        fetch_share = 0.0
                    else:
                        path = work / f"disk{index}.src"
                        fetch_share = FETCH_SHARE
                        limits = svc.settings.limits

                        def on_fetch(received: int, total: int | None, base: float = base) -> None:
                            if total:
                                self._progress(ctx, "fetch", base + share * FETCH_SHARE * received / total)
                            else:
                                ctx.report("fetch", base)

                        self._progress(ctx, "fetch", base)
                        self._adopt_partial(ctx, path)
                        fetch_url(
                            src["url"], path, allow=svc.settings.import_url_allow,
                            max_bytes=limits.max_download_bytes, timeout=limits.download_timeout_seconds,
                            connect_timeout=limits.download_connect_timeout_seconds, max_redirects=limits.max_redirects,
                            progress=on_fetch, should_stop=ctx.should_stop, resume=True,
                        )
                    self._progress(ctx, "inspect", base + share * fetch_share)
                    inspection = inspect_file(
                        path, declared=src.get("declared"), max_virtual_size=svc.settings.limits.max_virtual_size,
                        allow_iso=bool(ctx.payload.get("force")),
                    )

                    def on_ingest(done_bytes: int, total: int, base: float = base, fs: float = fetch_share) -> None:
                        frac = done_bytes / total if total else 1.0
                        self._progress(ctx, "ingest", base + share * (fs + (1 - fs) * frac))

                    result = ingest_disk(
                        path, inspection.qemu_format, store, region.chunk_size, progress=on_ingest,
                        should_stop=ctx.should_stop, tmp_dir=work,
                    )
            except Exception as exc:
                if ctx.should_stop():
                    raise
                if out_of_space(exc):
                    raise TaskFailed(
                        f"{label}: the server ran out of disk space (no space left on device) while storing the "
                        "image. Ask an operator to free space in the image store (`stratus gc` reclaims what this "
                        "import left), then import again."
                    ) from exc
                reason = getattr(exc, "message", None) or str(exc) or type(exc).__name__
                raise TaskFailed(f"{label}: {reason}") from exc
            manifest = result.manifest
            with ctx.fenced() as s:
                digest = record_manifest(s, ctx.region, manifest)
                s.execute(
                    update(ImageDisk)
                    .where(ImageDisk.image_id == ctx.image_id, ImageDisk.index == index)
                    .values(manifest_digest=digest, virtual_size=manifest.virtual_size,
                            stored_bytes=result.data_bytes, source_format=inspection.format)
                )
            done[str(index)] = {"manifest": digest, "new_bytes": result.new_bytes}
            if inspection.warnings:
                done[str(index)]["warnings"] = list(inspection.warnings)
            ctx.checkpoint({"done": done})
            if path.parent == work:
                path.unlink(missing_ok=True)
        result_data = {"disks": done}
        with ctx.fenced() as s:
            state = s.scalar(select(Image.state).where(Image.id == ctx.image_id))
            if state != ImageState.IMPORTING:
                raise TaskCancelled(f"image {ctx.image_id} is {state or 'gone'}")
            # Warnings stay on the NORMAL image as its ImageStateReason, "warning: ..." (the CLI prints them).
            warnings = [f"{disk_label(int(i))}: {w}" for i, d in sorted(done.items()) for w in d.get("warnings", ())]
            set_image_state(s, ctx.image_id, ImageState.NORMAL, progress=100.0,
                            reason="warning: " + "; ".join(warnings) if warnings else None)
            self._consume_uploads(ctx, s)
            ctx.complete(s, result_data)
        self._remove_upload_files(ctx)
        return result_data

    def fail(self, ctx: TaskContext, reason: str) -> None:
        with ctx.fenced() as s:
            state = s.scalar(select(Image.state).where(Image.id == ctx.image_id))
            if state == ImageState.IMPORTING:
                set_image_state(s, ctx.image_id, ImageState.IMPORTFAILED, reason=reason)
            self._consume_uploads(ctx, s)
        self._remove_upload_files(ctx)

    @staticmethod
    def _upload_ids(ctx: TaskContext) -> list[str]:
        return [d["upload_id"] for d in ctx.payload.get("disks", []) if "upload_id" in d]

    def _consume_uploads(self, ctx: TaskContext, s: Session) -> None:
        # An upload is consumed by its import, whatever the outcome: the bytes live on as chunks.
        upload_ids = self._upload_ids(ctx)
        if upload_ids:
            s.execute(delete(Upload).where(Upload.id.in_(upload_ids)))

    def _remove_upload_files(self, ctx: TaskContext) -> None:
        # After the fenced commit: only the execution that consumed the uploads removes their files.
        for upload_id in self._upload_ids(ctx):
            upload_path(self.svc, upload_id).unlink(missing_ok=True)


def out_of_space(exc: BaseException) -> bool:
    """ENOSPC anywhere in the chain (our own writes), or in a tool's message (qemu-img's)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(cur):
            return True
        cur = cur.__cause__ or cur.__context__
    return False
