"""ImportImage: a new image from a URL or a finished upload, fetched and stored by an `import` task."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from stratus.catalog.db import rowcount
from stratus.catalog.models import Image, ImageDisk, ImageTag, Upload
from stratus.domain import errors, ids, os_catalog
from stratus.domain.states import ImageSource, ImageState
from stratus.service.context import Caller, Services
from stratus.service.image_rules import (
    DryRunPassed,
    check_name_free,
    commit_or_duplicate,
    reserve_quota,
    validate_description,
    validate_family,
    validate_name,
)
from stratus.service.limits import check_tasks
from stratus.tasks.runner import enqueue


@dataclass
class ImportRequest:
    name: str
    os_type: str
    os_version: str
    architecture: str
    image_url: str
    description: str = ""
    data_disk_urls: list[str] = field(default_factory=list)
    force: bool = False
    license_type: str = "TencentCloud"
    boot_mode: str = "Legacy BIOS"
    family: str = ""
    tags: list[tuple[str, str]] = field(default_factory=list)
    dry_run: bool = False


UPLOAD_SCHEME = "upload://"


def _check_source_url(svc: Services, s: Session, caller: Caller, url: str, force: bool) -> dict[str, Any]:
    from stratus.storage.url_policy import FetchRefused, check_url_syntax

    if url.startswith(UPLOAD_SCHEME):
        upload_id = url[len(UPLOAD_SCHEME):]
        upload = s.get(Upload, upload_id) if ids.is_id("upload", upload_id) else None
        if upload is None or upload.account_id != caller.account_id:
            raise errors.InvalidParameterUrlError(
                detail=f"No upload {upload_id!r}; upload the file first with `stratus image import FILE`."
            )
        if upload.state == "CONSUMED":
            raise errors.InvalidParameterUrlError(
                detail=f"Upload {upload_id} was already imported as {upload.image_id}; an upload is consumed by "
                "one import. Upload the file again to import it again."
            )
        if upload.state != "COMPLETE":
            raise errors.InvalidParameterUrlError(
                detail=f"Upload {upload_id} has {upload.received} of {upload.size} bytes; finish it first."
            )
        return {"upload_id": upload_id, "declared": upload.declared_format}
    try:
        check_url_syntax(url)
    except FetchRefused as exc:
        raise errors.InvalidParameterUrlError(detail=str(exc)) from None
    if url.lower().split("?")[0].endswith(".iso") and not force:
        raise errors.ISOMustImportByForce()
    return {"url": url}


def _consume_upload(s: Session, upload_id: str, image_id: str) -> None:
    """Compare-and-set COMPLETE → CONSUMED: of two imports naming one upload (or one import naming it twice),
    exactly one gets it. On PostgreSQL the loser's UPDATE waits for the winner's row lock, then matches nothing."""
    taken = rowcount(s.execute(
        update(Upload).where(Upload.id == upload_id, Upload.state == "COMPLETE")
        .values(state="CONSUMED", image_id=image_id).execution_options(synchronize_session=False)
    ))
    if taken != 1:
        raise errors.InvalidParameterUrlError(
            detail=f"Upload {upload_id} is already being imported (or named twice in this request); an upload is "
            "consumed by one import. Upload the file again to import it again."
        )


def import_image(svc: Services, caller: Caller, region: str, req: ImportRequest) -> str | None:
    """ImportImage: any account, into its own images. Reserves quota and the name at once; the bytes
    are fetched, inspected and stored by an `import` task (IMPORTING → NORMAL | IMPORTFAILED).
    Raises the §5.3 codes; returns the new ImageId, or None for a DryRun that passed."""
    validate_name(req.name)
    description = validate_description(req.description)
    family = validate_family(req.family)
    if req.architecture not in os_catalog.ARCHITECTURES:
        raise errors.InvalidParameterValue(
            detail=f"Architecture must be one of {', '.join(os_catalog.ARCHITECTURES)}, not {req.architecture!r}."
        )
    fam = os_catalog.family(req.os_type)
    if fam is None:
        raise errors.InvalidImageOsTypeUnsupported(os_type=req.os_type)
    if req.os_version not in fam.versions:
        raise errors.InvalidImageOsVersionUnsupported(os_type=req.os_type, os_version=req.os_version)
    if req.boot_mode not in ("Legacy BIOS", "UEFI"):
        raise errors.InvalidBootMode(value=req.boot_mode)
    if req.license_type not in ("TencentCloud", "BYOL"):
        raise errors.InvalidLicenseType(value=req.license_type)
    if len(req.data_disk_urls) > 20:
        raise errors.InvalidParameterValueLimitExceeded(detail="At most 20 data disks per image.")
    image_id = ids.new_image_id()
    try:
        with svc.db.write() as s:
            sources = [_check_source_url(svc, s, caller, url, req.force)
                       for url in [req.image_url, *req.data_disk_urls]]
            reserve_quota(svc, s, caller.account_id, region)
            check_name_free(s, caller.account_id, region, req.name)
            if req.dry_run:
                raise DryRunPassed()
            image = Image(
                id=image_id,
                region=region,
                owner_id=caller.account_id,
                name=req.name,
                description=description,
                state=ImageState.IMPORTING,
                source=ImageSource.EXTERNAL_IMPORT,
                os_type=req.os_type,
                os_version=req.os_version,
                os_name=os_catalog.os_name(req.os_type, req.os_version, req.architecture),
                platform=os_catalog.platform_of(req.os_type),
                architecture=os_catalog.image_architecture(req.architecture),
                boot_mode=req.boot_mode,
                license_type=req.license_type,
                family=family,
                source_url=req.image_url,
            )
            image.disks = [
                ImageDisk(
                    index=i,
                    snapshot_id=ids.new_snapshot_id(),
                    usage="SYSTEM_DISK" if i == 0 else "DATA_DISK",
                    source_url=url,
                )
                for i, url in enumerate([req.image_url, *req.data_disk_urls])
            ]
            image.tags = [ImageTag(key=k, value=v) for k, v in req.tags]
            s.add(image)
            commit_or_duplicate(s, req.name, region)
            for src in sources:
                if "upload_id" in src:
                    _consume_upload(s, src["upload_id"], image_id)
            check_tasks(svc, s, caller.account_id)  # limits.tasks_per_account
            enqueue(
                s, "import", {"disks": sources, "force": req.force},
                account_id=caller.account_id, region=region, image_id=image_id,
            )
    except DryRunPassed:
        return None
    svc.on_task_queued()
    return image_id
