"""DescribeImages and the other read-only image actions (DescribeImageQuota, DescribeImageFromFamily):
filters, paging and the lean read path."""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from sqlalchemy import (
    Connection,
    and_,
    any_,
    bindparam,
    false,
    func,
    literal,
    or_,
    select,
    true,
    union_all,
)
from sqlalchemy.orm import selectinload

from stratus.catalog import compiled
from stratus.catalog.models import Image, ImageCount, ImageDisk, ImageShare, ImageTag
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


@dataclass(frozen=True)
class Filter:
    """One validated condition (a filter, ImageIds, or InstanceType as an architecture); its SQL is built once
    per shape by _filter_sql, with its values as bind parameters `f<i>_<j>` (catalog/compiled.py)."""

    name: str
    values: tuple[str, ...]

    @property
    def shape(self) -> tuple[str, int]:
        return ("tag:" if self.name.startswith("tag:") else self.name, len(self.values))


def _filter_clause(caller: Caller, name: str, values: list[str], sqlite: bool = False) -> Filter:
    """The filter, validated: InvalidImageId.Malformed, InvalidFilter for an unknown name or image-type."""
    if name == "image-id":
        for v in values:
            check_image_id(v)
    elif name == "image-type":
        for v in values:
            if v not in (ImageType.PUBLIC, ImageType.PRIVATE, ImageType.SHARED):
                raise errors.InvalidFilter(
                    detail=f"image-type {v!r} is not one of PUBLIC_IMAGE, PRIVATE_IMAGE, SHARED_IMAGE."
                )
    elif name not in FILTER_NAMES and not name.startswith("tag:"):
        raise errors.InvalidFilter(detail=f"Unknown filter {name!r}; see docs/api.md for the filter names.")
    return Filter(name, tuple(values))


_EQUALITY = {"image-id": Image.id, "image-state": Image.state, "image-family": Image.family,
             "architecture": Image.architecture, "image-source": Image.source, "os-type": Image.os_type}


def _filter_sql(i: int, f: Filter, sqlite: bool) -> Any:
    """The WHERE clause of the i-th condition, its values bound as `f<i>_<j>` (see _params)."""
    values: list[Any] = [bindparam(f"f{i}_{j}") for j in range(len(f.values))]
    if not values:  # ImageIds: []: nothing (an empty IN would be rendered per call, not once per shape)
        return false()
    if f.name in _EQUALITY:
        return _EQUALITY[f.name].in_(values)
    if f.name in ("image-name", "platform"):
        col = Image.name if f.name == "image-name" else Image.platform
        if sqlite:  # SQLite's LIKE already ignores ASCII case, as its lower() does: skip lower() on each row
            return or_(*(col.like(p, escape="\\") for p in values))
        return or_(*(col.ilike(p, escape="\\") for p in values))  # ILIKE: served by the trigram index
    # Tag filters combined with others: membership in the set of tagged ids, built once from the image_tags
    # indexes, instead of a lookup per visible image; `id || ''` keeps SQLite from driving the query from
    # that set (one lookup per tagged image of every account) rather than from the caller's index range.
    if f.name in ("tag-key", "tag-value") or f.name.startswith("tag:"):
        return (Image.id + literal("")).in_(select(ImageTag.image_id).where(_tag_match(i, f)))
    return false()  # dedicated-cluster-id, cdc-cache-status: no dedicated clusters here, nothing cached in one


def _tag_match(i: int, f: Filter) -> Any:
    values: list[Any] = [bindparam(f"f{i}_{j}") for j in range(len(f.values))]
    if f.name == "tag-key":
        return ImageTag.key.in_(values)
    if f.name == "tag-value":
        return ImageTag.value.in_(values)
    return and_(ImageTag.key == bindparam(f"f{i}_key"), ImageTag.value.in_(values))


def _params(caller: Caller, region: str, conditions: list[Filter]) -> dict[str, Any]:
    """The bind parameters of the statements built from these conditions."""
    params: dict[str, Any] = {"region": region, "me": caller.account_id}
    for i, f in enumerate(conditions):
        if f.name.startswith("tag:"):
            params[f"f{i}_key"] = f.name[4:]
        like = f.name in ("image-name", "platform")
        for j, v in enumerate(f.values):
            params[f"f{i}_{j}"] = "%" + query.escape_like(v) + "%" if like else v
    return params


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
    if not kinds:
        return ImagePage(0, [])
    conditions = [w for w in where if isinstance(w, Filter)]
    if image_ids is not None:
        conditions.insert(0, Filter("image-id", tuple(image_ids)))
    sqlite = svc.db.is_sqlite
    shape = (tuple(kinds), tuple(c.shape for c in conditions), sqlite)
    params = _params(caller, region, conditions) | {"window": window, "limit": limit, "offset": offset}
    with svc.db.read_connection() as conn:
        total = compiled.run(conn, ("describe total", shape),
                             lambda: _total_statement(kinds, conditions, sqlite), params).scalar() or 0
        page_ids: list[str] = []
        if window and offset < total:
            page = compiled.run(conn, ("describe page", shape), lambda: _page_statement(kinds, conditions, sqlite),
                                params)
            page_ids = list(page.scalars(1))
        views = _image_views(conn, page_ids)
    return ImagePage(total, [views[i] for i in page_ids if i in views])


def _kind_selects(kinds: list[ImageType], conditions: list[Filter], sqlite: bool) -> list[tuple[Any, Any]]:
    """For each kind, the select of its matching (created_at, id) and the scalar subquery of their number."""
    if not conditions or (len(conditions) == 1 and conditions[0].shape[0] in ("tag-key", "tag-value", "tag:")):
        tag = conditions[0] if conditions else None  # only image-type, or one tag filter: index ranges, counters
        out = []
        for kind in kinds:
            rows = _kind_rows(kind, tag, sqlite)
            out.append((rows, _kind_count(kind, tag, rows)))
        return out
    where = [_filter_sql(i, c, sqlite) for i, c in enumerate(conditions)]
    indexed = any(c.name in ("image-id", "image-family", "image-name", "platform") for c in conditions)
    out = []
    for kind in kinds:
        source, kind_of = _kind_source(kind, sqlite, indexed)
        rows = select(Image.created_at, Image.id).select_from(source).where(kind_of, *where)
        out.append((rows, select(func.count()).select_from(source).where(kind_of, *where).scalar_subquery()))
    return out


def _total_statement(kinds: list[ImageType], conditions: list[Filter], sqlite: bool) -> Any:
    counts = [count for _rows, count in _kind_selects(kinds, conditions, sqlite)]
    return select(functools.reduce(operator.add, counts))


def _page_statement(kinds: list[ImageType], conditions: list[Filter], sqlite: bool) -> Any:
    """(created_at, id) of the page, newest first: each kind's head (`window` rows) on its own index, merged."""
    heads = [rows.order_by(rows.selected_columns[0].desc(), rows.selected_columns[1].desc())
             .limit(bindparam("window")) for rows, _count in _kind_selects(kinds, conditions, sqlite)]
    if len(heads) == 1:
        return heads[0].offset(bindparam("offset"))
    merged = union_all(*(select(h.subquery()) for h in heads)).subquery()
    created, image_id = merged.c
    return (select(created, image_id).order_by(created.desc(), image_id.desc())
            .limit(bindparam("limit")).offset(bindparam("offset")))


def _kind_rows(kind: ImageType, tag: Filter | None, sqlite: bool) -> Any:
    """(created_at, id) of the caller's images of one kind, with the one tag filter if any, from the kind
    copied onto image_tags and image_shares (migration 0013): one index range each, in page order."""
    region: Any = bindparam("region")
    me: Any = bindparam("me")
    if tag is None:
        if kind is not ImageType.SHARED:
            return select(Image.created_at, Image.id).where(_kind_source(kind, sqlite)[1])
        sh = ImageShare
        return select(sh.image_created_at, sh.image_id).where(
            sh.account_id == me, sh.image_region == region, sh.image_public == false(), sh.image_owner_id != me)
    t = ImageTag
    match = _tag_match(0, tag)
    if kind is ImageType.PUBLIC:
        rows = select(t.image_created_at, t.image_id).where(match, t.image_region == region, t.image_public == true())
    elif kind is ImageType.PRIVATE:
        rows = select(t.image_created_at, t.image_id).where(
            match, t.image_region == region, t.image_public == false(), t.image_owner_id == me)
    elif not sqlite:  # as in _kind_source: the grants as one array, each looked up by the tag's key
        rows = select(t.image_created_at, t.image_id).where(match, t.image_id == _granted_ids())
    else:
        sh = ImageShare
        rows = (select(t.image_created_at, t.image_id).join_from(sh, t, t.image_id == sh.image_id)
                .where(match, sh.account_id == me, sh.image_region == region, sh.image_public == false(),
                       sh.image_owner_id != me))
    # An image has one value per key: several keys, or a value under several keys, can match it twice.
    once = tag.name.startswith("tag:") or (tag.name == "tag-key" and len(tag.values) == 1)
    return rows if once else rows.distinct()


def _kind_count(kind: ImageType, tag: Filter | None, rows: Any) -> Any:
    """The number of `rows`: for a kind without filters the counter kept by triggers (migration 0013)."""
    if tag is None and kind is not ImageType.SHARED:
        public = kind is ImageType.PUBLIC
        owner = [] if public else [ImageCount.owner_id == bindparam("me")]
        return (select(func.coalesce(func.sum(ImageCount.n), 0))
                .where(ImageCount.region == bindparam("region"),
                       ImageCount.is_public == (true() if public else false()), *owner)
                .scalar_subquery())
    return select(func.count()).select_from(rows.subquery()).scalar_subquery()


def _image_views(conn: Connection, image_ids: list[str]) -> dict[str, SimpleNamespace]:
    """Read-only views of the images, with the attributes of `Image` (and its `disks` and `tags` in their
    relationship order) that response shaping reads; no ORM objects, no session."""
    if not image_ids:
        return {}
    n = len(image_ids)
    params = {f"i{j}": v for j, v in enumerate(image_ids)}

    def rows(table: Any, key: Any, order: Any) -> list[dict[str, Any]]:
        def build() -> Any:
            q = select(table).where(key.in_([bindparam(f"i{j}") for j in range(n)]))
            return q if order is None else q.order_by(order)
        return compiled.table_rows(compiled.run(conn, ("describe views", table.name, n), build, params), table)

    images, disks, tags = Image.__table__, ImageDisk.__table__, ImageTag.__table__
    views = {row["id"]: SimpleNamespace(**row, disks=[], tags=[]) for row in rows(images, images.c.id, None)}
    for row in rows(disks, disks.c.image_id, disks.c.index):
        views[row["image_id"]].disks.append(SimpleNamespace(**row))
    for row in rows(tags, tags.c.image_id, tags.c.key):
        views[row["image_id"]].tags.append(SimpleNamespace(**row))
    return views


def _kind_source(kind: ImageType, sqlite: bool, indexed_filter: bool = False) -> tuple[Any, Any]:
    """(FROM, WHERE) of the caller's (`me`) images of one kind in the region (the three kinds are disjoint)."""
    region: Any = bindparam("region")
    me: Any = bindparam("me")
    # `is_public == True`, not the bare column: an equality is what lets the index range (and its order)
    # be used for the kind.
    if kind is ImageType.PUBLIC:
        return Image, and_(Image.region == region, Image.is_public == true())
    if kind is ImageType.PRIVATE:
        return Image, and_(Image.region == region, Image.owner_id == me, Image.is_public == false())
    # A join, so that the planner drives it from whichever side is smaller: the caller's grants in the region
    # (ix_image_shares_account_kind, the image's kind copied onto them), each image looked up by id, or the
    # images of an ImageIds/image-id filter, each grant looked up by its key. (`id IN (grants)` built the
    # list of every grant first, 2 ms for 2,800 of them even when one image was asked for.)
    # PostgreSQL hash-joins it with a scan of every image instead; there the ids come as one array, each
    # looked up in ix_images_id_cover (3-8x faster at 2,300 grants), unless a filter has an index of its
    # own to start from: ids (the primary key), family (ix_images_family), a substring (its trigram index;
    # the join: 1.5 ms instead of 36 for an exact name, under load).
    if not sqlite and not indexed_filter:
        return Image, Image.id == _granted_ids()
    sh = ImageShare
    return (sh.__table__.join(Image.__table__, Image.id == sh.image_id),
            and_(sh.account_id == me, sh.image_region == region, sh.image_public == false(), sh.image_owner_id != me))


def _granted_ids() -> Any:
    """`= ANY(ARRAY(the ids of the images shared with the caller in the region))`, for PostgreSQL."""
    sh = ImageShare
    me: Any = bindparam("me")
    grants = select(sh.image_id).where(sh.account_id == me, sh.image_region == bindparam("region"),
                                       sh.image_public == false(), sh.image_owner_id != me)
    return any_(func.array(grants.scalar_subquery()))


def _instance_type_clause(svc: Services, instance_type: str) -> Filter:
    return Filter("architecture", (find_instance_type(svc, instance_type).architecture,))


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
