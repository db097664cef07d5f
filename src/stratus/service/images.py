"""Image use cases: one function per CVM action.

Visibility is the first rule of every action: an image exists for a caller only if it is public in
the region, owned by the caller, or shared with the caller. Anything else answers
InvalidImageId.NotFound, never a permission error that would reveal that it exists.
"""

from __future__ import annotations

import functools
import operator
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Connection, and_, false, func, literal, or_, select, true, union_all, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from stratus.catalog.db import rowcount
from stratus.catalog.models import Account, ExportObject, Image, ImageDisk, ImageShare, ImageTag, Task, Upload
from stratus.domain import errors, ids, os_catalog, tags
from stratus.domain.states import BUSY_STATES, ImageSource, ImageState, ImageType, check_image
from stratus.service.context import Caller, Services
from stratus.service.limits import check_tasks, lock_account
from stratus.tasks.runner import enqueue

MAX_FILTERS = 10
MAX_FILTER_VALUES = 5
MAX_LIMIT = 100
MAX_IDS = 100
NAME_MAX = 60
DESCRIPTION_MAX = 256
FAMILY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,59}$")
EXPORT_FORMATS = {"RAW": ("raw", "raw"), "QCOW2": ("qcow2", "qcow2"), "VHD": ("vpc", "vhd"), "VMDK": ("vmdk", "vmdk")}
EXPORT_MAX_IMAGES = 20

# Filter names of contract §5.1, plus a few extensions (documented in docs/api.md).
FILTER_NAMES = {
    "image-id", "image-type", "image-name", "platform", "tag-key", "tag-value", "image-state",
    "dedicated-cluster-id", "cdc-cache-status", "image-family", "architecture", "image-source", "os-type",
}


class DryRunPassed(Exception):
    """Raised inside a transaction to roll it back after every check of a DryRun passed."""


@dataclass(frozen=True)
class ImagePage:
    total: int
    images: list[Any]  # read-only views with Image's attributes (see _image_views)


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


# --------------------------------------------------------------------------- visibility


def _visible(caller: Caller, region: str) -> Any:
    shared = select(ImageShare.image_id).where(ImageShare.account_id == caller.account_id)
    return and_(
        Image.region == region,
        or_(Image.is_public, Image.owner_id == caller.account_id, Image.id.in_(shared)),
    )


def image_type(image: Image, caller: Caller) -> ImageType:
    if image.is_public:
        return ImageType.PUBLIC
    if image.owner_id == caller.account_id:
        return ImageType.PRIVATE
    return ImageType.SHARED


def check_image_id(image_id: Any) -> str:
    if not ids.is_id("image", image_id):
        raise errors.InvalidImageIdMalformed(image_id=image_id)
    return image_id


def get_visible(s: Session, caller: Caller, region: str, image_id: str, *, for_update: bool = False) -> Image:
    check_image_id(image_id)
    q = (
        select(Image)
        .where(Image.id == image_id, _visible(caller, region))
        .options(selectinload(Image.disks), selectinload(Image.tags))
    )
    if for_update:
        q = q.with_for_update()
    image = s.scalars(q).first()
    if image is None:
        raise not_found(s, caller, region, image_id)
    return image


def not_found(s: Session, caller: Caller, region: str, image_id: str) -> errors.CvmError:
    """InvalidImageId.NotFound; when the caller can see the id in another region, the message says where (an id
    is unique across regions, so this tells nothing the caller couldn't list)."""
    shared = select(ImageShare.image_id).where(ImageShare.account_id == caller.account_id)
    elsewhere = s.scalars(select(Image.region).where(
        Image.id == image_id, Image.region != region,
        or_(Image.is_public, Image.owner_id == caller.account_id, Image.id.in_(shared)))).first()
    if elsewhere is None:
        return errors.InvalidImageIdNotFound(image_id=image_id)
    return errors.InvalidImageIdNotFound(
        f"The image {image_id} does not exist in {region}; it is in {elsewhere}: use that region "
        f"(`--region {elsewhere}`, X-TC-Region: {elsewhere}).", image_id=image_id)


def not_normal(image: Image) -> errors.CvmError:
    """InvalidParameterValue.InvalidImageState for an action that needs NORMAL: a failed image never gets there."""
    if image.state in (ImageState.IMPORTFAILED, ImageState.CREATEFAILED):
        return errors.InvalidImageState(
            f"The image {image.id} is {image.state} ({image.state_reason or 'no reason recorded'}) and will never "
            f"be NORMAL: delete it (`stratus image delete {image.id}`) and "
            f"{'import the file' if image.state == ImageState.IMPORTFAILED else 'capture the instance'} again.",
            image_id=image.id, state=image.state)
    return errors.InvalidImageState(image_id=image.id, state=image.state)


def _owned_or_operator(image: Image, caller: Caller) -> bool:
    return image.owner_id == caller.account_id or (image.is_public and caller.is_operator)


# --------------------------------------------------------------------------- DescribeImages


def _filter_clause(caller: Caller, name: str, values: list[str], sqlite: bool = False) -> Any:
    if name == "image-id":
        for v in values:
            check_image_id(v)
        return Image.id.in_(values)
    if name == "image-type":
        shared = select(ImageShare.image_id).where(ImageShare.account_id == caller.account_id)
        clauses: list[Any] = []
        for v in values:
            if v == ImageType.PUBLIC:
                clauses.append(Image.is_public)
            elif v == ImageType.PRIVATE:
                clauses.append(and_(Image.owner_id == caller.account_id, ~Image.is_public))
            elif v == ImageType.SHARED:
                clauses.append(and_(Image.id.in_(shared), Image.owner_id != caller.account_id, ~Image.is_public))
            else:
                raise errors.InvalidFilter(
                    detail=f"image-type {v!r} is not one of PUBLIC_IMAGE, PRIVATE_IMAGE, SHARED_IMAGE."
                )
        return or_(*clauses)
    if name in ("image-name", "platform"):
        col = Image.name if name == "image-name" else Image.platform
        patterns = ["%" + escape_like(v) + "%" for v in values]
        if sqlite:  # SQLite's LIKE already ignores ASCII case, as its lower() does: skip lower() on each row
            return or_(*(col.like(p, escape="\\") for p in patterns))
        return or_(*(col.ilike(p, escape="\\") for p in patterns))  # ILIKE: served by the trigram index
    # Tag filters: membership in the set of tagged ids, built once from the image_tags indexes, instead of a
    # lookup per visible image; `id || ''` keeps SQLite from driving the query from that set (one lookup
    # per tagged image of every account) rather than from the caller's index range.
    if name in ("tag-key", "tag-value") or name.startswith("tag:"):
        if name == "tag-key":
            tagged = select(ImageTag.image_id).where(ImageTag.key.in_(values))
        elif name == "tag-value":
            tagged = select(ImageTag.image_id).where(ImageTag.value.in_(values))
        else:
            tagged = select(ImageTag.image_id).where(ImageTag.key == name[4:], ImageTag.value.in_(values))
        return (Image.id + literal("")).in_(tagged)
    if name == "image-state":
        return Image.state.in_(values)
    if name == "image-family":
        return Image.family.in_(values)
    if name == "architecture":
        return Image.architecture.in_(values)
    if name == "image-source":
        return Image.source.in_(values)
    if name == "os-type":
        return Image.os_type.in_(values)
    if name in ("dedicated-cluster-id", "cdc-cache-status"):
        return false()  # no dedicated clusters here: nothing is cached in one
    raise errors.InvalidFilter(detail=f"Unknown filter {name!r}; see docs/api.md for the filter names.")


def escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def describe_images(
    svc: Services,
    caller: Caller,
    region: str,
    *,
    image_ids: list[str] | None = None,
    filters: list[dict[str, Any]] | None = None,
    offset: int = 0,
    limit: int = 20,
    instance_type: str | None = None,
) -> ImagePage:
    """Images visible to the caller in the region. Anyone may call it."""
    if image_ids is not None and filters is not None:
        raise errors.InvalidParameterCoexistImageIdsFilters()
    if offset < 0:
        raise errors.InvalidParameterValueInvalidParameterValueLimit(detail="Offset must be 0 or more.")
    if not 0 <= limit <= MAX_LIMIT:
        raise errors.InvalidParameterValueInvalidParameterValueLimit(
            detail=f"Limit must be between 0 and {MAX_LIMIT}, not {limit}."
        )
    where: list[Any] = []
    kinds = list(ImageType)
    if image_ids is not None:
        if len(image_ids) > MAX_IDS:
            raise errors.InvalidParameterValueLimitExceeded(detail=f"At most {MAX_IDS} ImageIds per request.")
        for image_id in image_ids:
            check_image_id(image_id)
        where.append(Image.id.in_(image_ids))
    if filters:
        if len(filters) > MAX_FILTERS:
            raise errors.InvalidParameterValueLimitExceeded(
                detail=f"At most {MAX_FILTERS} Filters per request, got {len(filters)}."
            )
        for f in filters:
            name, values = f["Name"], f["Values"]
            if name not in FILTER_NAMES and not name.startswith("tag:"):
                raise errors.InvalidFilter(detail=f"Unknown filter {name!r}; see docs/api.md for the filter names.")
            if len(values) > MAX_FILTER_VALUES:
                raise errors.InvalidFilterValueLimitExceeded(limit=MAX_FILTER_VALUES, name=name, count=len(values))
            if not values:
                raise errors.InvalidFilter(detail=f"Filter {name!r} has no Values.")
            if name == "image-type":
                _filter_clause(caller, name, values)  # validates the values
                kinds = [k for k in kinds if k in values]
            else:
                where.append(_filter_clause(caller, name, values, svc.db.is_sqlite))
    if instance_type is not None:
        where.append(_instance_type_clause(svc, instance_type))
    # The visible set is the disjoint union of three kinds, each an index range: public in the region,
    # the caller's own, shared with the caller. Counting and paging each kind on its own index is what
    # keeps DescribeImages at a few ms with 100,000 images (an OR across them scans the region).
    # Core, not the ORM, and one statement each for the total, the page and the page's rows, disks and
    # tags: the ORM's per-statement and per-object work was most of a call (bench/results-describe.md).
    window = min(offset + limit, 2**63 - 1)  # SQL LIMIT is an int64: Offset 2**63-1 plus Limit would overflow
    with svc.db.read_connection() as conn:
        parts = [and_(_kind_clause(caller, kind, region), *where) for kind in kinds]
        if not parts:
            return ImagePage(0, [])
        counts = [select(func.count()).select_from(Image).where(part).scalar_subquery() for part in parts]
        total = conn.scalar(select(functools.reduce(operator.add, counts))) or 0
        page_ids: list[str] = []
        if window and offset < total:
            heads = [select(Image.created_at, Image.id).where(part)
                     .order_by(Image.created_at.desc(), Image.id.desc()).limit(window) for part in parts]
            if len(heads) == 1:
                page = heads[0].offset(offset)
            else:  # each kind's head on its own index, merged: at most `window` rows of each
                merged = union_all(*(select(h.subquery()) for h in heads)).subquery()
                page = (select(merged.c.created_at, merged.c.id)
                        .order_by(merged.c.created_at.desc(), merged.c.id.desc()).limit(limit).offset(offset))
            page_ids = [row[1] for row in conn.execute(page)]
        views = _image_views(conn, page_ids)
    return ImagePage(total, [views[i] for i in page_ids if i in views])


def _image_views(conn: Connection, image_ids: list[str]) -> dict[str, SimpleNamespace]:
    """Read-only views of the images, with the attributes of `Image` (and its `disks` and `tags` in their
    relationship order) that response shaping reads; no ORM objects, no session."""
    if not image_ids:
        return {}
    views = {row.id: SimpleNamespace(**row._mapping, disks=[], tags=[])
             for row in conn.execute(select(Image.__table__).where(Image.id.in_(image_ids)))}
    disks = select(ImageDisk.__table__).where(ImageDisk.image_id.in_(image_ids)).order_by(ImageDisk.index)
    for row in conn.execute(disks):
        views[row.image_id].disks.append(SimpleNamespace(**row._mapping))
    tags = select(ImageTag.__table__).where(ImageTag.image_id.in_(image_ids)).order_by(ImageTag.key)
    for row in conn.execute(tags):
        views[row.image_id].tags.append(SimpleNamespace(**row._mapping))
    return views


def _kind_clause(caller: Caller, kind: ImageType, region: str) -> Any:
    """The images of one kind for the caller in the region (the three kinds are disjoint)."""
    # `is_public == True`, not the bare column: an equality is what lets the index range (and its order)
    # be used for the kind.
    if kind is ImageType.PUBLIC:
        return and_(Image.region == region, Image.is_public == true())
    if kind is ImageType.PRIVATE:
        return and_(Image.region == region, Image.owner_id == caller.account_id, Image.is_public == false())
    # Driven from the grants (ix_image_shares_account_image), each looked up in ix_images_id_cover, in the
    # same statement. `region || ''` keeps SQLite, when it has no statistics, from preferring a region index
    # and scanning the whole region instead (bench/profile_paths.py --describe-only).
    shared = select(ImageShare.image_id).where(ImageShare.account_id == caller.account_id)
    return and_(Image.id.in_(shared), (Image.region + literal("")) == region,
                Image.owner_id != caller.account_id, Image.is_public == false())


INSTANCE_TYPE_RE = re.compile(r"^[A-Z][A-Z0-9]*\.[A-Z0-9]+$")


def find_instance_type(svc: Services, instance_type: str) -> Any:
    """The configured instance type; InvalidInstanceType.Malformed or InstanceTypeNotFound."""
    if not INSTANCE_TYPE_RE.match(instance_type):
        raise errors.InvalidInstanceTypeMalformed(value=instance_type)
    itype = svc.settings.instance_type(instance_type)
    if itype is None:
        raise errors.InstanceTypeNotFound(value=instance_type)
    return itype


def _instance_type_clause(svc: Services, instance_type: str) -> Any:
    return Image.architecture == find_instance_type(svc, instance_type).architecture


# --------------------------------------------------------------------------- quota and names


def count_images(s: Session, owner_id: str, region: str) -> int:
    return s.scalar(select(func.count()).select_from(Image).where(Image.owner_id == owner_id,
                                                                    Image.region == region)) or 0


def reserve_quota(svc: Services, s: Session, owner_id: str, region: str, wanted: int = 1) -> None:
    """Serialize reservations per account (row lock on PostgreSQL, BEGIN IMMEDIATE on SQLite), so two
    concurrent imports can't both take the last slot: the new image row itself is the reservation."""
    if svc.db.is_postgresql:
        s.execute(select(Account.id).where(Account.id == owner_id).with_for_update())
    quota = svc.settings.quotas.images_per_region
    if count_images(s, owner_id, region) + wanted > quota:
        raise errors.ImageQuotaLimitExceeded(quota=quota, region=region)


def check_name_free(s: Session, owner_id: str, region: str, name: str, *, except_id: str | None = None) -> None:
    q = select(Image.id).where(Image.owner_id == owner_id, Image.region == region, Image.name == name)
    if except_id:
        q = q.where(Image.id != except_id)
    if s.scalar(q) is not None:
        raise errors.InvalidImageNameDuplicate(name=name, region=region)


def validate_name(name: str) -> str:
    if not name or not name.strip():
        raise errors.InvalidParameterValue(detail="ImageName must not be empty.")
    if len(name) > NAME_MAX:
        raise errors.InvalidParameterValueTooLarge(
            detail=f"ImageName is {len(name)} characters; the limit is {NAME_MAX}."
        )
    return name


def validate_description(text: str | None) -> str:
    text = text or ""
    if len(text) > DESCRIPTION_MAX:
        raise errors.InvalidParameterValueTooLarge(
            detail=f"ImageDescription is {len(text)} characters; the limit is {DESCRIPTION_MAX}."
        )
    return text


def validate_family(family: str | None) -> str:
    if family is None or family == "":
        return ""
    if not FAMILY_RE.match(family):
        raise errors.InvalidImageFamily(value=family)
    return family


def validate_tags(tag_specs: list[dict[str, Any]] | None) -> list[tuple[str, str]]:
    """The tags of a new image: TagSpecification entries must be for ResourceType 'image'."""
    return tags.from_specs(tag_specs, ("image",), noun="image", refuse_others=True)


def _commit_or_duplicate(s: Session, name: str, region: str) -> None:
    try:
        s.flush()
    except IntegrityError:
        # Two requests raced past check_name_free; the unique key decides.
        raise errors.InvalidImageNameDuplicate(name=name, region=region) from None


# --------------------------------------------------------------------------- ImportImage


UPLOAD_SCHEME = "upload://"


def _check_source_url(svc: Services, s: Session, caller: Caller, url: str, force: bool) -> dict[str, Any]:
    from stratus.storage.fetch import FetchRefused, check_url_syntax

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
            _commit_or_duplicate(s, req.name, region)
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


# --------------------------------------------------------------------------- ModifyImageAttribute


def modify_image_attribute(
    svc: Services,
    caller: Caller,
    region: str,
    image_id: str,
    *,
    name: str | None = None,
    description: str | None = None,
    family: str | None = None,
    deprecated: bool | None = None,
) -> None:
    """The owner (or an operator, for a public image) changes name, description, family or the
    deprecated flag. Not while the image is being created, imported or synced."""
    with svc.db.write() as s:
        image = get_visible(s, caller, region, image_id, for_update=svc.db.is_postgresql)
        if image_type(image, caller) is ImageType.SHARED:
            raise errors.SharedImageModifyUnsupported(image_id=image_id)
        if not _owned_or_operator(image, caller):
            raise errors.InvalidImageIdParam(
                detail=f"The image {image_id} is a public image; only an operator can change it."
            )
        if image.state in BUSY_STATES:
            raise errors.InvalidImageIdIncorrectState(image_id=image_id, state=image.state,
                                                      needed="NORMAL or a failed state")
        if name is not None:
            validate_name(name)
            check_name_free(s, image.owner_id, region, name, except_id=image.id)
            image.name = name
        if description is not None:
            image.description = validate_description(description)
        if family is not None:
            image.family = validate_family(family)
        if deprecated is not None:
            image.deprecated = deprecated
        _commit_or_duplicate(s, image.name, region)


# --------------------------------------------------------------------------- DeleteImages


def delete_images(svc: Services, caller: Caller, region: str, image_ids: list[str], *, dry_run: bool = False) -> None:
    """The owner deletes custom images (an operator may delete public ones). All or nothing: every
    image is checked before any is deleted. Instances made from an image keep working (their base
    stays until nothing needs it); the image's chunks are reclaimed by `stratus gc`."""
    if not image_ids:
        raise errors.MissingParameter(name="ImageIds")
    if len(image_ids) > MAX_IDS:
        raise errors.InvalidParameterValueLimitExceeded(detail=f"At most {MAX_IDS} ImageIds per request.")
    with svc.db.write() as s:
        images = []
        for image_id in dict.fromkeys(image_ids):
            image = get_visible(s, caller, region, image_id, for_update=svc.db.is_postgresql)
            kind = image_type(image, caller)
            if kind is ImageType.SHARED:
                raise errors.InvalidImageIdIsShared(image_id=image_id)
            if not _owned_or_operator(image, caller):
                raise errors.InvalidImageIdParam(
                    detail=f"The image {image_id} is a public image; only an operator can delete it."
                )
            if image.state in BUSY_STATES:
                raise errors.InvalidImageIdIncorrectState(image_id=image_id, state=image.state,
                                                          needed="NORMAL or a failed state")
            if s.scalar(select(func.count()).select_from(ImageShare).where(ImageShare.image_id == image_id)):
                raise errors.InvalidImageIdInShared(image_id=image_id)
            in_flight = (Task.state.in_(("QUEUED", "RUNNING")))
            # An export of several images has no Task.image_id: its export objects name each image.
            if s.scalar(select(Task.id).where(in_flight, Task.image_id == image_id, Task.kind == "export")) or \
                    s.scalar(select(ExportObject.task_id).where(ExportObject.image_id == image_id,
                                                                ExportObject.state == "PENDING").limit(1)):
                raise errors.MutexOperationTaskRunning(
                    detail=f"The image {image_id} is being exported; delete it when the export finishes."
                )
            # A copy reads the source's chunks until it ends: deleting the source would let gc take them.
            if s.scalar(select(Task.id).where(in_flight, Task.kind == "sync",
                                              Task.payload.contains(f'"source_image_id": "{image_id}"'))):
                raise errors.MutexOperationTaskRunning(
                    detail=f"The image {image_id} is being copied to another region; delete it when the copy ends."
                )
            images.append(image)
        if dry_run:
            return
        for image in images:
            s.delete(image)
    from stratus.service.bases import release_unused_bases  # bases depend on images, not the other way

    release_unused_bases(svc, region)


# --------------------------------------------------------------------------- quota, families, OS list


def describe_image_quota(svc: Services, caller: Caller, region: str) -> tuple[int, int]:
    """(quota, used) of custom images for the caller in the region."""
    with svc.db.read() as s:
        used = count_images(s, caller.account_id, region)
    return svc.settings.quotas.images_per_region, used


def describe_image_from_family(svc: Services, caller: Caller, region: str, family: str | None) -> Image | None:
    """The newest NORMAL, non-deprecated image of the family that the caller can see, or None."""
    if not family:
        return None
    with svc.db.read() as s:
        return s.scalars(
            select(Image)
            .where(_visible(caller, region), Image.family == family, Image.state == ImageState.NORMAL,
                   ~Image.deprecated)
            .order_by(Image.created_at.desc(), Image.id.desc())
            .limit(1)
            .options(selectinload(Image.disks), selectinload(Image.tags))
        ).first()


# --------------------------------------------------------------------------- ExportImages


@dataclass(frozen=True)
class ExportStarted:
    task_id: int
    cos_paths: list[str]


def export_images(
    svc: Services,
    caller: Caller,
    region: str,
    *,
    bucket: str,
    image_ids: list[str] | None,
    export_format: str = "RAW",
    prefixes: list[str] | None = None,
    only_root_disk: bool = False,
    dry_run: bool = False,
) -> ExportStarted | None:
    """The owner exports NORMAL custom images into a bucket configured for the region; an `export`
    task writes the files and can be followed with DescribeTasks."""
    reg = svc.region(region)
    if not image_ids:
        raise errors.ImageIdsSnapshotIdsMustOne()
    if len(image_ids) > EXPORT_MAX_IMAGES:
        raise errors.InvalidParameterValueLimitExceeded(detail=f"At most {EXPORT_MAX_IMAGES} images per export.")
    fmt = export_format.upper()
    if fmt not in EXPORT_FORMATS:
        raise errors.InvalidParameterValue(
            detail=f"ExportFormat must be RAW, QCOW2, VHD or VMDK, not {export_format!r}."
        )
    if prefixes is not None and len(prefixes) != len(image_ids):
        raise errors.InvalidFileNamePrefixList(got=len(prefixes), want=len(image_ids))
    for p in prefixes or []:
        if not re.match(r"^[A-Za-z0-9._-]{0,64}$", p):
            raise errors.InvalidParameterValue(detail=f"FileNamePrefix {p!r} may use letters, digits, '.', '_', '-'.")
    if reg.bucket(bucket) is None:
        raise errors.BucketNotFound(bucket=bucket, region=region, known=", ".join(b.name for b in reg.buckets))
    qemu_fmt, ext = EXPORT_FORMATS[fmt]
    with svc.db.write() as s:
        lock_account(svc, s, caller.account_id)  # the limits below are counted one request at a time
        running = s.scalar(
            select(func.count()).select_from(Task).where(
                Task.kind == "export", Task.account_id == caller.account_id, Task.state.in_(("QUEUED", "RUNNING"))
            )
        ) or 0
        limit = svc.settings.limits.export_tasks_per_account
        if running >= limit:
            raise errors.ExportImageTaskLimitExceeded(running=running, limit=limit)
        items: list[dict[str, Any]] = []
        for n, image_id in enumerate(image_ids):
            # Locked like DeleteImages locks it: a delete and an export of one image are serialized.
            image = get_visible(s, caller, region, image_id, for_update=svc.db.is_postgresql)
            kind = image_type(image, caller)
            if kind is ImageType.SHARED:
                raise errors.SharedImageExportUnsupported(image_id=image_id)
            if kind is ImageType.PUBLIC and not caller.is_operator:
                raise errors.PublicImageExportUnsupported(image_id=image_id)
            if image.state != ImageState.NORMAL:
                raise not_normal(image)
            prefix = (prefixes[n] + "_") if prefixes and prefixes[n] else ""
            for disk in image.disks:
                if only_root_disk and disk.index > 0:
                    continue
                role = "system" if disk.index == 0 else "data"
                items.append({
                    "image_id": image_id,
                    "disk_index": disk.index,
                    "manifest": disk.manifest_digest,
                    "key": f"{prefix}{image_id}_{role}_{disk.snapshot_id}.{ext}",
                })
        replaced = _check_export_keys(svc, s, caller, region, bucket, [item["key"] for item in items])
        if dry_run:
            return None
        check_tasks(svc, s, caller.account_id)  # limits.tasks_per_account
        task = enqueue(
            s, "export", {"bucket": bucket, "format": qemu_fmt, "items": items},
            account_id=caller.account_id, region=region,
            image_id=image_ids[0] if len(image_ids) == 1 else None,
        )
        for existing in replaced:
            s.delete(existing)
        s.flush()
        for item in items:
            s.add(ExportObject(region=region, bucket=bucket, key=item["key"], account_id=caller.account_id,
                               task_id=task.id, image_id=item["image_id"]))
        task_id = task.id
    svc.on_task_queued()
    return ExportStarted(task_id, ["/" + item["key"] for item in items])


def _check_export_keys(svc: Services, s: Session, caller: Caller, region: str, bucket: str, keys: list[str]
                       ) -> list[ExportObject]:
    """The export objects the new export replaces. Refuses a key named twice, a key whose export is still
    running (two tasks would write one file), and going past `limits.exports_per_account` files kept."""
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise errors.InvalidParameterValueDuplicate(
            detail=f"The export names the file {dup!r} twice; list each image once (or give distinct prefixes)."
        )
    existing = s.scalars(select(ExportObject).where(ExportObject.region == region, ExportObject.bucket == bucket,
                                                    ExportObject.key.in_(keys))).all()
    for obj in existing:
        # Keys name the image, disk and format, not the account: two operators exporting one public image
        # write the same bytes under one key, and the later export takes the file over (as before).
        if obj.state == "PENDING":
            raise errors.MutexOperationTaskRunning(
                detail=f"/{obj.key} is being exported by task {obj.task_id}; export it again when that finishes."
            )
    kept = s.scalar(select(func.count()).select_from(ExportObject)
                    .where(ExportObject.account_id == caller.account_id)) or 0
    limit = svc.settings.limits.exports_per_account
    if kept - len(existing) + len(keys) > limit:
        raise errors.LimitExceeded(
            detail=f"You keep {kept} exported files; {len(keys)} more would pass the limit of {limit} "
            "(limits.exports_per_account). Exported files expire after limits.export_ttl_seconds."
        )
    return list(existing)


# --------------------------------------------------------------------------- operator: publish


def publish_image(svc: Services, caller: Caller, region: str, image_id: str) -> None:
    """An operator publishes one of its own NORMAL images as a public image of the region."""
    if not caller.is_operator:
        raise errors.PermissionDenied(
            detail="Only an operator account can publish public images (`stratus account create --operator`)."
        )
    with svc.db.write() as s:
        image = get_visible(s, caller, region, image_id)
        if image.owner_id != caller.account_id:
            raise errors.InvalidImageIdParam(detail=f"The image {image_id} is not yours to publish.")
        if image.state != ImageState.NORMAL:
            raise errors.InvalidImageState(image_id=image_id, state=image.state)
        if s.scalar(select(func.count()).select_from(ImageShare).where(ImageShare.image_id == image_id)):
            raise errors.InvalidImageIdInShared(image_id=image_id)
        image.is_public = True
        image.source = ImageSource.OFFICIAL


# --------------------------------------------------------------------------- tasks (extension action)


def describe_tasks(svc: Services, caller: Caller, task_ids: Sequence[int]) -> list[Task]:
    """The caller's own tasks (unknown or foreign ids are simply absent)."""
    with svc.db.read() as s:
        return list(
            s.scalars(select(Task).where(Task.id.in_(list(task_ids)), Task.account_id == caller.account_id)).all()
        )


def export_objects_of(svc: Services, task_ids: Iterable[int]) -> dict[int, list[ExportObject]]:
    with svc.db.read() as s:
        rows = s.scalars(select(ExportObject).where(ExportObject.task_id.in_(list(task_ids)))).all()
    out: dict[int, list[ExportObject]] = {}
    for row in rows:
        out.setdefault(row.task_id, []).append(row)
    return out


def set_image_state(s: Session, image_id: str | None, state: ImageState, *, reason: str | None = None,
                    progress: float | None = None) -> None:
    """Move an image along the state machine (IllegalTransition if it can't go there). An image deleted
    meanwhile has no state to change."""
    assert image_id is not None, "an image task without an image"
    old = s.scalar(select(Image.state).where(Image.id == image_id))
    if old is None:
        return
    check_image(old, state)
    values: dict[str, Any] = {"state": state, "state_reason": reason, "updated_at": time.time()}
    if progress is not None:
        values["progress"] = progress
    s.execute(update(Image).where(Image.id == image_id).values(**values))
