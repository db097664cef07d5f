"""Resumable uploads of image files to this server, consumed by ImportImage (`upload://up-…`).

An upload has a declared size. Bytes are appended at the offset the server reports, so an
interrupted transfer resumes where the last durable write ended; the catalog's `received` is only
advanced after the bytes are fsynced.

Appends are compare-and-set on the catalog row, which is the truth for every API process sharing the
catalog: a PUT first claims the upload (its start offset must equal `received`, and no other PUT may hold
an unexpired claim), then advances `received` only from the value it last wrote. A second PUT at the same
offset (a client retrying while its first request is still being read) gets 409 with the current offset
instead of writing over the same bytes. The claim lapses after `CLAIM_SECONDS` without a commit, so a
crashed writer doesn't lock its upload; a writer renews it by committing before half of it has gone, and
one that finds its claim taken (it was paused past it) stops before writing another byte.

An upload is consumed by exactly one import: ImportImage turns it CONSUMED in the transaction that creates
the image, so a second ImportImage naming it is refused; the import deletes it when it ends.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from stratus.catalog.db import rowcount
from stratus.catalog.models import Upload
from stratus.domain import errors, ids
from stratus.service.context import Caller, Services
from stratus.service.limits import lock_account

DECLARED_FORMATS = {"RAW", "QCOW2", "VMDK", "VHD"}
CLAIM_SECONDS = 60.0  # a PUT's write claim lasts this long after its last commit
IN_FLIGHT_STATES = ("UPLOADING", "COMPLETE")  # not yet consumed by an import


class UploadConflict(errors.CvmError):
    """A PUT that can't append at the offset it names: it carries the offset to resume from."""

    code = "InvalidParameterValue"

    def __init__(self, message: str, received: int) -> None:
        super().__init__(message)
        self.received = received


class UploadBusy(UploadConflict):
    code = "ResourceInUse"


@dataclass(frozen=True)
class UploadStatus:
    upload_id: str
    size: int
    received: int
    state: str
    declared_format: str | None
    claim_until: float | None = None

    def as_json(self) -> dict[str, object]:
        return {"UploadId": self.upload_id, "Size": self.size, "Received": self.received, "State": self.state,
                "Format": self.declared_format, "ImageUrl": f"upload://{self.upload_id}"}


def upload_status(u: Upload) -> UploadStatus:
    return UploadStatus(u.id, u.size, u.received, u.state, u.declared_format, u.writer_until)


def path_of(svc: Services, upload_id: str) -> Path:
    return svc.settings.uploads_dir / upload_id


def _check_account_limits(svc: Services, s: Session, caller: Caller, size: int) -> None:
    """Uploads not yet consumed, and their declared bytes, are bounded per account. Serialized per account
    (row lock on PostgreSQL, BEGIN IMMEDIATE on SQLite) so concurrent creates can't overshoot."""
    lock_account(svc, s, caller.account_id)
    limits = svc.settings.limits
    count, total = s.execute(
        select(func.count(), func.coalesce(func.sum(Upload.size), 0))
        .where(Upload.account_id == caller.account_id, Upload.state.in_(IN_FLIGHT_STATES))
    ).one()
    if count + 1 > limits.uploads_per_account:
        raise errors.LimitExceeded(
            detail=f"You have {count} uploads not yet imported; the limit is {limits.uploads_per_account} "
            "(limits.uploads_per_account). Import or let them expire first."
        )
    if total + size > limits.upload_bytes_per_account:
        raise errors.LimitExceeded(
            detail=f"Your uploads not yet imported hold {total} bytes; {size} more would pass the limit of "
            f"{limits.upload_bytes_per_account} bytes (limits.upload_bytes_per_account)."
        )


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
    with svc.db.write() as s:
        _check_account_limits(svc, s, caller, size)
        path_of(svc, upload.id).touch()
        s.add(upload)
    return upload_status(upload)


def owned_upload(s: Session, caller: Caller, upload_id: str) -> Upload:
    upload = s.get(Upload, upload_id) if ids.is_id("upload", upload_id) else None
    if upload is None or upload.account_id != caller.account_id:
        raise errors.ResourceNotFound(detail=f"No upload {upload_id!r}.")
    return upload


def get_upload(svc: Services, caller: Caller, upload_id: str) -> UploadStatus:
    with svc.db.read() as s:
        return upload_status(owned_upload(s, caller, upload_id))


def _refusal(upload: Upload, offset: int, now: float) -> errors.CvmError:
    """Why a PUT at ``offset`` can't claim the upload."""
    if upload.state != "UPLOADING":
        return UploadConflict(f"Upload {upload.id} is already complete ({upload.received} bytes).", upload.received)
    if offset != upload.received:
        return UploadConflict(
            f"Upload {upload.id} continues at offset {upload.received}, not {offset}; resume from there.",
            upload.received,
        )
    left = (upload.writer_until or now) - now
    return UploadBusy(
        f"Another request is writing upload {upload.id} (at offset {upload.received} so far); retry when it "
        f"ends, or in {left:.0f} s if it was cut off.", upload.received,
    )


def begin_append(svc: Services, caller: Caller, upload_id: str, offset: int, writer: str) -> UploadStatus:
    """Claim the upload for one PUT starting at ``offset`` (compare-and-set: offset == received, no live claim)."""
    now = time.time()
    with svc.db.write() as s:
        upload = owned_upload(s, caller, upload_id)
        if upload.manifest is not None:
            raise errors.InvalidParameterValue(
                detail=f"Upload {upload_id} is chunked: send its chunks to /uploads/{upload_id}/chunks, not bytes.")
        claimed = rowcount(s.execute(
            update(Upload)
            .where(Upload.id == upload_id, Upload.state == "UPLOADING", Upload.received == offset,
                   or_(Upload.writer.is_(None), Upload.writer_until < now))
            .values(writer=writer, writer_until=now + CLAIM_SECONDS)
            .execution_options(synchronize_session=False)
        ))
        s.refresh(upload)
        if claimed != 1:
            raise _refusal(upload, offset, now)
        return upload_status(upload)


def commit_append(svc: Services, caller: Caller, upload_id: str, fd: int, committed: int, new_received: int,
                  writer: str, *, release: bool = False) -> UploadStatus:
    """Make the bytes appended since ``committed`` durable, then record them (compare-and-set on the claim and
    on ``committed``) and renew the claim, or give it up with ``release``."""
    if new_received != committed:
        os.fsync(fd)
    now = time.time()
    values: dict[str, object] = {"received": new_received,
                                 "writer": None if release else writer,
                                 "writer_until": None if release else now + CLAIM_SECONDS}
    with svc.db.write() as s:
        upload = owned_upload(s, caller, upload_id)
        if new_received == upload.size:
            values["state"] = "COMPLETE"
        done = rowcount(s.execute(
            update(Upload)
            .where(Upload.id == upload_id, Upload.writer == writer, Upload.received == committed)
            .values(**values)
            .execution_options(synchronize_session=False)
        ))
        s.refresh(upload)
        if done != 1:
            raise UploadBusy(
                f"This request lost its claim on upload {upload_id} (another request took it over); "
                f"resume from offset {upload.received}.", upload.received,
            )
        return upload_status(upload)


def expire_uploads(svc: Services, now: float | None = None) -> int:
    """Remove uploads past their time to live and never consumed (a consumed one is its import's to delete)."""
    now = time.time() if now is None else now
    with svc.db.write() as s:
        stale = s.scalars(select(Upload).where(Upload.expires_at < now, Upload.state.in_(IN_FLIGHT_STATES))).all()
        for upload in stale:
            path_of(svc, upload.id).unlink(missing_ok=True)
            s.delete(upload)
        return len(stale)
