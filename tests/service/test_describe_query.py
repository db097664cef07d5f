"""DescribeImages and DescribeInstances check the shape of a query (ids xor Filters, Offset, Limit, the number of
ids and Filters, each filter's name and Values) in one order (domain/query.py), with the same codes except
where the contract gives DescribeImages its own (§5.1 vs §11.2). In-process, on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert

from stratus.catalog import migrate
from stratus.catalog.models import Account
from stratus.config import load_settings
from stratus.domain import errors
from stratus.service.context import Caller, Services
from stratus.service.image_describe import describe_images
from stratus.service.instances import describe_instances

REGION = "ap-guangzhou"
ME = "acc-me000001"


@pytest.fixture(scope="module")
def svc(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    tmp: Path = tmp_path_factory.mktemp("query")
    services = Services.open(load_settings(data_dir=tmp, config_file=None, env={"STRATUS_DATABASE_URL": db_url}))
    migrate.upgrade(services.db)
    with services.db.write() as s:
        s.execute(insert(Account), [{"id": ME, "name": "me"}])
    yield services
    services.db.dispose()


def _code(call: Any) -> str:
    with pytest.raises(errors.CvmError) as caught:
        call()
    return caught.value.code


def _filter(name: str, *values: str) -> dict[str, Any]:
    return {"Name": name, "Values": list(values)}


# (what is wrong, DescribeImages' code, DescribeInstances' code, the query: ids, filters, offset, limit);
# `ids` holds one well-formed id of the action's kind for each "ok" and a malformed one for "bad".
CASES = [
    ("ids and Filters", "InvalidParameter.InvalidParameterCoexistImageIdsFilters", "InvalidParameter",
     ["ok"], [_filter("image-id", "x")], 0, 20),
    ("negative Offset", "InvalidParameterValue.InvalidParameterValueLimit", "InvalidParameterValue.LimitExceeded",
     None, None, -1, 20),
    ("Limit over 100", "InvalidParameterValue.InvalidParameterValueLimit", "InvalidParameterValue.LimitExceeded",
     None, None, 0, 101),
    ("negative Limit", "InvalidParameterValue.InvalidParameterValueLimit", "InvalidParameterValue.LimitExceeded",
     None, None, 0, -1),
    ("101 ids", "InvalidParameterValue.LimitExceeded", "InvalidParameterValue.LimitExceeded",
     ["bad"] * 101, None, 0, 20),
    ("a malformed id", "InvalidImageId.Malformed", "InvalidInstanceId.Malformed", ["ok", "bad"], None, 0, 20),
    # The number of Filters is checked before any filter's name (DescribeInstances used to name the
    # unknown filter first).
    ("11 Filters, one unknown", "InvalidParameterValue.LimitExceeded", "InvalidParameterValue.LimitExceeded",
     None, [_filter("colour", "x")] + [_filter("tag:a", "x")] * 10, 0, 20),
    ("an unknown filter", "InvalidFilter", "InvalidFilter", None, [_filter("colour", "x")], 0, 20),
    ("6 values", "InvalidFilterValue.LimitExceeded", "InvalidFilterValue.LimitExceeded",
     None, [_filter("tag-key", *"abcdef")], 0, 20),
    ("no Values", "InvalidFilter", "InvalidFilter", None, [_filter("tag-key")], 0, 20),
]


@pytest.mark.parametrize(("what", "image_code", "instance_code", "ids", "filters", "offset", "limit"), CASES,
                         ids=[c[0] for c in CASES])
def test_same_order_and_codes(svc: Services, what: str, image_code: str, instance_code: str, ids: Any,
                              filters: Any, offset: int, limit: int) -> None:
    def of(kind: str) -> list[str] | None:
        return None if ids is None else [f"{kind}-{'abcd1234' if i == 'ok' else 'BAD'}" for i in ids]

    caller = Caller(ME)
    assert _code(lambda: describe_images(svc, caller, REGION, image_ids=of("img"), filters=filters,
                                         offset=offset, limit=limit)) == image_code
    assert _code(lambda: describe_instances(svc, caller, REGION, instance_ids=of("ins"), filters=filters,
                                            offset=offset, limit=limit)) == instance_code


def test_instance_time_filter_without_values_is_invalid_filter(svc: Services) -> None:
    # It used to reach min() of no moments: InternalError instead of the caller's mistake.
    assert _code(lambda: describe_instances(svc, Caller(ME), REGION,
                                            filters=[_filter("creation-start-time")])) == "InvalidFilter"


def test_well_formed_queries_pass(svc: Services) -> None:
    caller = Caller(ME)
    assert describe_images(svc, caller, REGION, image_ids=[], offset=0, limit=100).total == 0
    assert describe_instances(svc, caller, REGION, filters=[_filter("tag:a", *"abcde")] * 10, limit=0).total == 0
