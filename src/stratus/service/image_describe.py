"""DescribeImages and the other read-only image actions (DescribeImageQuota, DescribeImageFromFamily):
filters, paging and the lean read path."""

from __future__ import annotations

import functools
import operator
import re
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Connection, Select, and_, false, func, literal, or_, select, true, union_all
from sqlalchemy.orm import selectinload

from stratus.catalog.models import Image, ImageCount, ImageDisk, ImageShare, ImageTag
from stratus.domain import errors
from stratus.domain.states import ImageState, ImageType
from stratus.service.context import Caller, Services
from stratus.service.image_rules import MAX_IDS, count_images
from stratus.service.visibility import check_image_id, visible_clause

MAX_FILTERS = 10
MAX_FILTER_VALUES = 5
MAX_LIMIT = 100

# Filter names of contract §5.1, plus a few extensions (documented in docs/api.md).
FILTER_NAMES = {
    "image-id", "image-type", "image-name", "platform", "tag-key", "tag-value", "image-state",
    "dedicated-cluster-id", "cdc-cache-status", "image-family", "architecture", "image-source", "os-type",
}


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
    if not kinds:
        return ImagePage(0, [])
    plain = not where  # only image-type: the totals are counters and the pages index ranges
    tag = _only_tag_filter(filters) if image_ids is None and instance_type is None else None
    with svc.db.read_connection() as conn:
        if plain or tag is not None:
            rows = [_kind_rows(caller, kind, region, tag) for kind in kinds]
            counts = [_kind_count(caller, kind, region, tag, r) for kind, r in zip(kinds, rows, strict=True)]
        else:
            sources = [_kind_source(caller, kind, region) for kind in kinds]
            rows = [select(Image.created_at, Image.id).select_from(src).where(kind_of, *where)
                    for src, kind_of in sources]
            counts = [select(func.count()).select_from(src).where(kind_of, *where).scalar_subquery()
                      for src, kind_of in sources]
        total = conn.scalar(select(functools.reduce(operator.add, counts))) or 0
        page_ids: list[str] = []
        if window and offset < total:
            heads = [r.order_by(r.selected_columns[0].desc(), r.selected_columns[1].desc()).limit(window)
                     for r in rows]
            if len(heads) == 1:
                page = heads[0].offset(offset)
            else:  # each kind's head on its own index, merged: at most `window` rows of each
                merged = union_all(*(select(h.subquery()) for h in heads)).subquery()
                created, image_id = merged.c
                page = select(created, image_id).order_by(created.desc(), image_id.desc()).limit(limit).offset(offset)
            page_ids = [row[1] for row in conn.execute(page)]
        views = _image_views(conn, page_ids)
    return ImagePage(total, [views[i] for i in page_ids if i in views])


def _only_tag_filter(filters: list[dict[str, Any]] | None) -> tuple[str, list[str]] | None:
    """The tag filter, if it is the one filter besides image-type (then image_tags alone answers)."""
    rest = [f for f in filters or [] if f["Name"] != "image-type"]
    if len(rest) != 1:
        return None
    name, values = rest[0]["Name"], rest[0]["Values"]
    return (name, values) if name in ("tag-key", "tag-value") or name.startswith("tag:") else None


def _kind_rows(caller: Caller, kind: ImageType, region: str, tag: tuple[str, list[str]] | None) -> Select[Any]:
    """(created_at, id) of the caller's images of one kind, with the one tag filter if any, from the kind
    copied onto image_tags and image_shares (migration 0013): one index range each, in page order."""
    me = caller.account_id
    if tag is None:
        if kind is not ImageType.SHARED:
            return select(Image.created_at, Image.id).where(_kind_source(caller, kind, region)[1])
        sh = ImageShare
        return select(sh.image_created_at, sh.image_id).where(
            sh.account_id == me, sh.image_region == region, sh.image_public == false(), sh.image_owner_id != me)
    t = ImageTag
    name, values = tag
    if name == "tag-key":
        match = t.key.in_(values)
    elif name == "tag-value":
        match = t.value.in_(values)
    else:
        match = and_(t.key == name[4:], t.value.in_(values))
    if kind is ImageType.PUBLIC:
        rows = select(t.image_created_at, t.image_id).where(match, t.image_region == region, t.image_public == true())
    elif kind is ImageType.PRIVATE:
        rows = select(t.image_created_at, t.image_id).where(
            match, t.image_region == region, t.image_public == false(), t.image_owner_id == me)
    else:
        sh = ImageShare
        rows = (select(t.image_created_at, t.image_id).join_from(sh, t, t.image_id == sh.image_id)
                .where(match, sh.account_id == me, sh.image_region == region, sh.image_public == false(),
                       sh.image_owner_id != me))
    # An image has one value per key: several keys, or a value under several keys, can match it twice.
    once = name.startswith("tag:") or (name == "tag-key" and len(values) == 1)
    return rows if once else rows.distinct()


def _kind_count(caller: Caller, kind: ImageType, region: str, tag: tuple[str, list[str]] | None,
                rows: Select[Any]) -> Any:
    """The number of `rows`: for a kind without filters the counter kept by triggers (migration 0013)."""
    if tag is None and kind is not ImageType.SHARED:
        owner = [ImageCount.owner_id == caller.account_id] if kind is ImageType.PRIVATE else []
        return (select(func.coalesce(func.sum(ImageCount.n), 0))
                .where(ImageCount.region == region, ImageCount.is_public == (kind is ImageType.PUBLIC), *owner)
                .scalar_subquery())
    return select(func.count()).select_from(rows.subquery()).scalar_subquery()


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


def _kind_source(caller: Caller, kind: ImageType, region: str) -> tuple[Any, Any]:
    """(FROM, WHERE) of the images of one kind for the caller in the region (the three kinds are disjoint)."""
    # `is_public == True`, not the bare column: an equality is what lets the index range (and its order)
    # be used for the kind.
    if kind is ImageType.PUBLIC:
        return Image, and_(Image.region == region, Image.is_public == true())
    if kind is ImageType.PRIVATE:
        return Image, and_(Image.region == region, Image.owner_id == caller.account_id, Image.is_public == false())
    # A join, so that the planner drives it from whichever side is smaller: the caller's grants in the region
    # (ix_image_shares_account_kind, the image's kind copied onto them), each image looked up by id, or the
    # images of an ImageIds/image-id filter, each grant looked up by its key. (`id IN (grants)` built the
    # list of every grant first, 2 ms for 2,800 of them even when one image was asked for.)
    sh = ImageShare
    return (sh.__table__.join(Image.__table__, Image.id == sh.image_id),
            and_(sh.account_id == caller.account_id, sh.image_region == region, sh.image_public == false(),
                 sh.image_owner_id != caller.account_id))


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
