"""DescribeImages on the indexes of migration 0010: the substring filters mean what they meant (literal
`%`, `_` and `\\`, any ASCII case), tag filters as id sets, and paging that neither repeats nor skips an image
when many share a creation time across the three kinds. In-process, on SQLite and on PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, text

from stratus.catalog import migrate
from stratus.catalog.models import Account, Image, ImageDisk, ImageShare, ImageTag
from stratus.config import load_settings
from stratus.service.context import Caller, Services
from stratus.service.image_describe import describe_images

REGION = "ap-guangzhou"
ME, OTHER = "acc-me000001", "acc-other0001"


def _image(i: int, name: str, *, owner: str = ME, public: bool = False, created: float = 1000.0,
           platform: str = "Ubuntu") -> dict[str, Any]:
    return {"id": f"img-{i:08d}", "region": REGION, "owner_id": owner, "name": name, "state": "NORMAL",
            "source": "OFFICIAL" if public else "EXTERNAL_IMPORT", "is_public": public, "platform": platform,
            "os_type": platform, "created_at": created, "updated_at": created}


@pytest.fixture(scope="module")
def svc(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp: Path = tmp_path_factory.mktemp("describe")
    services = Services.open(load_settings(data_dir=tmp, config_file=None, env={"STRATUS_DATABASE_URL": db_url}))
    migrate.upgrade(services.db)
    names = ["web-50%-off", "web-5000-off", "a_b-server", "axb-server", "back\\slash", "MixedCase-WEB", "db-1"]
    rows = [_image(i, n) for i, n in enumerate(names)]
    rows.append(_image(90, "centos-public", owner=OTHER, public=True, platform="CentOS"))
    rows.append(_image(91, "shared-web", owner=OTHER))
    rows.append(_image(92, "hidden-web", owner=OTHER))  # neither public nor shared: never counted
    # 30 images created at the same second, across the three kinds: the page order is (created_at, id) desc.
    rows += [_image(100 + i, f"same-{i}", owner=ME if i % 3 else OTHER, public=i % 3 == 0, created=2000.0)
             for i in range(30)]
    with services.db.write() as s:
        s.execute(insert(Account), [{"id": ME, "name": "me"}, {"id": OTHER, "name": "other"}])
        s.execute(insert(Image), rows)
        s.execute(insert(ImageDisk), [{"image_id": r["id"], "index": 0, "snapshot_id": "snap-" + r["id"][4:],
                                        "usage": "SYSTEM_DISK"} for r in rows])
        s.execute(insert(ImageShare), [{"image_id": "img-00000091", "account_id": ME}])
        s.execute(insert(ImageTag), [{"image_id": "img-00000000", "key": "team", "value": "web"},
                                     {"image_id": "img-00000091", "key": "team", "value": "db"},
                                     {"image_id": "img-00000092", "key": "team", "value": "web"},
                                     {"image_id": "img-00000006", "key": "env", "value": "web"}])
    migrate.analyze(services.db)
    yield services
    services.db.dispose()


def _names(svc: Services, name: str, *values: str) -> set[str]:
    page = describe_images(svc, Caller(ME), REGION, filters=[{"Name": name, "Values": list(values)}], limit=100)
    assert page.total == len(page.images)
    return {img.name for img in page.images}


def test_substring_filters_are_literal_and_ignore_case(svc: Services) -> None:
    assert _names(svc, "image-name", "50%") == {"web-50%-off"}  # % is a character, not a wildcard
    assert _names(svc, "image-name", "a_b") == {"a_b-server"}  # so is _
    assert _names(svc, "image-name", "k\\s") == {"back\\slash"}
    assert _names(svc, "image-name", "web") == {"web-50%-off", "web-5000-off", "MixedCase-WEB", "shared-web"}
    assert _names(svc, "image-name", "mixedcase-w") == {"MixedCase-WEB"}
    assert _names(svc, "image-name", "b", "zzz") >= {"a_b-server", "axb-server", "back\\slash", "db-1"}
    assert _names(svc, "image-name", "no such name") == set()
    assert _names(svc, "platform", "ENTO") == {"centos-public"}  # public images are visible to all
    assert _names(svc, "platform", "x") == set()


def test_tag_filters_count_only_visible_images(svc: Services) -> None:
    assert _names(svc, "tag-key", "team") == {"web-50%-off", "shared-web"}  # not the hidden image
    assert _names(svc, "tag-value", "web") == {"web-50%-off", "db-1"}
    assert _names(svc, "tag:team", "db", "web") == {"web-50%-off", "shared-web"}
    assert _names(svc, "tag:env", "db") == set()


def test_paging_is_stable_across_kinds_and_equal_times(svc: Services) -> None:
    caller = Caller(ME)
    everything = describe_images(svc, caller, REGION, limit=100)
    order = [(img.created_at, img.id) for img in everything.images]
    assert order == sorted(order, reverse=True) and everything.total == len(order) == 30 + 7 + 2
    for limit in (1, 7, 20):
        seen = []
        for offset in range(0, everything.total + limit, limit):
            page = describe_images(svc, caller, REGION, offset=offset, limit=limit)
            assert page.total == everything.total
            seen += [img.id for img in page.images]
        assert seen == [i for _, i in order]  # every image once, in the same order
    assert describe_images(svc, caller, REGION, offset=10**6, limit=20).images == []
    assert describe_images(svc, caller, REGION, limit=0).images == []


def test_postgresql_has_the_trigram_indexes(svc: Services) -> None:
    if not svc.db.is_postgresql:
        pytest.skip("trigram indexes are PostgreSQL's (SQLite scans the covering index)")
    with svc.db.read() as s:
        defs = dict(s.execute(text("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'images' "
                                   "AND indexname LIKE '%trgm'")).all())
    assert set(defs) == {"ix_images_name_trgm", "ix_images_platform_trgm"}
    assert all("gin" in d and "gin_trgm_ops" in d for d in defs.values()), defs
