"""Resumable uploads of image files to this server, consumed by ImportImage (`upload://up-…`).

An upload has a declared size. Bytes are appended at the offset the server reports, so an
interrupted transfer resumes where the last durable write ended; the catalog's `received` is only
advanced after the bytes are fsynced.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from stratus.catalog.models import Upload
from stratus.domain import errors, ids
from stratus.service.context import Caller, Services

DECLARED_FORMATS = {"RAW", "QCOW2", "VMDK", "VHD"}


@dataclass(frozen=True)
class UploadStatus:
    upload_id: str
    size: int
    received: int
    state: str
    declared_format: str | None

    def as_json(self) -> dict[str, object]:
        return {"UploadId": self.upload_id, "Size": self.size, "Received": self.received, "State": self.state,
                "Format": self.declared_format, "ImageUrl": f"upload://{self.upload_id}"}


def _status(u: Upload) -> UploadStatus:
    return UploadStatus(u.id, u.size, u.received, u.state, u.declared_format)


def path_of(svc: Services, upload_id: str) -> Path:
    return svc.settings.uploads_dir / upload_id


def create_upload(svc: Services, caller: Caller, size: int, name: str = "", declared_format: str | None = None
                  ) -> UploadStatus:
    limit = svc.settings.limits.max_upload_bytes
    if size <= 0:
        raise errors.InvalidParameterValue(detail="Size must be a positive number of bytes.")
    if size > limit:
        raise errors.InvalidParameterValueTooLarge(detail=f"Size {size} exceeds the upload limit of {limit} bytes.")
    if declared_format is not None:
        declared_format = declared_format.upper()
        if declared_format not in DECLARED_FORMATS:
            raise errors.InvalidParameterValue(
                detail=f"Format must be one of {', '.join(sorted(DECLARED_FORMATS))}, not {declared_format!r}."
            )
    upload = Upload(id=ids.new_id("upload"), account_id=caller.account_id, name=name[:256], size=size,
                    declared_format=declared_format, expires_at=time.time() + svc.settings.limits.upload_ttl_seconds)
    svc.settings.uploads_dir.mkdir(parents=True, exist_ok=True)
    path_of(svc, upload.id).touch()
    with svc.db.write() as s:
        s.add(upload)
    return _status(upload)


def get_upload(svc: Services, caller: Caller, upload_id: str) -> UploadStatus:
    with svc.db.read() as s:
        upload = s.get(Upload, upload_id) if ids.is_id("upload", upload_id) else None
        if upload is None or upload.account_id != caller.account_id:
            raise errors.ResourceNotFound(detail=f"No upload {upload_id!r}.")
        return _status(upload)


def begin_append(svc: Services, caller: Caller, upload_id: str, offset: int) -> UploadStatus:
    status = get_upload(svc, caller, upload_id)
    if status.state != "UPLOADING":
        raise errors.InvalidParameterValue(detail=f"Upload {upload_id} is already complete.")
    if offset != status.received:
        raise errors.InvalidParameterValue(
            detail=f"Upload {upload_id} continues at offset {status.received}, not {offset}; resume from there."
        )
    return status


def commit_append(svc: Services, caller: Caller, upload_id: str, fd: int, new_received: int) -> UploadStatus:
    """Record bytes appended so far, after making them durable."""
    os.fsync(fd)
    with svc.db.write() as s:
        upload = s.get(Upload, upload_id)
        if upload is None or upload.account_id != caller.account_id:
            raise errors.ResourceNotFound(detail=f"No upload {upload_id!r}.")
        upload.received = new_received
        if new_received == upload.size:
            upload.state = "COMPLETE"
        return _status(upload)


def expire_uploads(svc: Services, now: float | None = None) -> int:
    """Remove uploads past their time to live (and never consumed)."""
    now = time.time() if now is None else now
    with svc.db.write() as s:
        stale = s.scalars(select(Upload).where(Upload.expires_at < now)).all()
        for upload in stale:
            path_of(svc, upload.id).unlink(missing_ok=True)
            s.delete(upload)
        return len(stale)
