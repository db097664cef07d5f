"""DescribeImages and the other read-only image actions (DescribeImageQuota, DescribeImageFromFamily):
filters, paging and the lean read path."""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Connection, and_, false, func, literal, or_, select, true, union_all
from sqlalchemy.orm import selectinload

from stratus.catalog.models import Image, ImageDisk, ImageShare, ImageTag
from stratus.domain import errors, query
from stratus.domain.states import ImageState, ImageType
from stratus.service.context import Caller, Services
from stratus.service.image_rules import MAX_IDS, count_images
from stratus.service.instance_types import find_instance_type
from stratus.service.visibility import check_image_id, visible_clause

# Filter names of contract §5.1, plus a few extensions (documented in docs/api.md).
FILTER_NAMES = frozenset({
    "image-id", "image-type", "image-name", "platform", "tag-key", "tag-value", "image-state",
    "dedicated-cluster-id", "cdc-cache-status", "image-family", "architecture", "image-source", "os-type",
})
# DescribeImages' own codes (§5.1) for ImageIds with Filters and for a page out of range.
IMAGE_QUERY = query.QueryRules(
    ids_param="ImageIds", filter_names=FILTER_NAMES, check_id=check_image_id, max_ids=MAX_IDS,
    coexist=errors.InvalidParameterCoexistImageIdsFilters,
    bad_page=errors.InvalidParameterValueInvalidParameterValueLimit,
)


@dataclass(frozen=True)
class ImagePage:
    total: int
    images: list[Any]  # read-only views with Image's attributes (see _image_views)


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
        patterns = ["%" + query.escape_like(v) + "%" for v in values]
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
    query.check_query(IMAGE_QUERY, image_ids, filters, offset, limit)
    where: list[Any] = []
    kinds = list(ImageType)
    if image_ids is not None:
        where.append(Image.id.in_(image_ids))
    for f in filters or []:
        name, values = f["Name"], f["Values"]
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


def _instance_type_clause(svc: Services, instance_type: str) -> Any:
    return Image.architecture == find_instance_type(svc, instance_type).architecture


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
            .where(visible_clause(caller, region), Image.family == family, Image.state == ImageState.NORMAL,
                   ~Image.deprecated)
            .order_by(Image.created_at.desc(), Image.id.desc())
            .limit(1)
            .options(selectinload(Image.disks), selectinload(Image.tags))
        ).first()
