"""The shape of a Describe* query (ids or Filters, Offset and Limit), checked in one order for every action.

DescribeImages and DescribeInstances take the same parameters with the same limits (contract §5.1, §8,
§11.2): ids xor `Filters`, `Limit` 0-100, at most 100 ids, 10 Filters and 5 Values a filter. The
contract names the same codes for both but two: ids with Filters, and a page out of range (for
DescribeImages `InvalidParameter.InvalidParameterCoexistImageIdsFilters` and
`InvalidParameterValue.InvalidParameterValueLimit`, which DescribeInstances does not list); those come
from the action's `QueryRules`. What each filter's values mean, and their format, is the action's own.

Also here: `escape_like`, how a fuzzy filter's value becomes a literal inside a LIKE pattern.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from stratus.domain import errors

MAX_LIMIT = 100  # Limit, for every Describe* action
MAX_IDS = 100  # ImageIds / InstanceIds in one request
MAX_FILTERS = 10
MAX_FILTER_VALUES = 5
TAG_FILTER_PREFIX = "tag:"  # `tag:<key>`, a filter name of every action that has tags


@dataclass(frozen=True)
class QueryRules:
    """One action's query parameters: their names, its filter names, and the codes it answers with where
    the contract gives it its own. The error classes are built with `detail=` (a class whose message
    has no `{detail}`, like InvalidParameterCoexistImageIdsFilters, keeps its own message)."""

    ids_param: str  # "ImageIds"
    filter_names: frozenset[str]  # besides `tag:<key>`
    check_id: Callable[[Any], object]  # raises the action's *.Malformed for a bad id
    coexist: type[errors.CvmError]  # ids and Filters both given
    bad_page: type[errors.CvmError]  # Offset or Limit out of range
    max_ids: int = MAX_IDS


def check_query(rules: QueryRules, ids: Sequence[Any] | None, filters: Sequence[dict[str, Any]] | None,
                offset: int, limit: int) -> None:
    """Refuse a query whose shape is wrong, in this order: ids with Filters, Offset, Limit, the number of
    ids, each id's format, the number of Filters, then each filter's name, number of Values, and no
    Values at all."""
    if ids is not None and filters is not None:
        raise rules.coexist(detail=f"{rules.ids_param} and Filters cannot be given together; use one of them.")
    if offset < 0:
        raise rules.bad_page(detail=f"Offset must be 0 or more, not {offset}.")
    if not 0 <= limit <= MAX_LIMIT:
        raise rules.bad_page(detail=f"Limit must be between 0 and {MAX_LIMIT}, not {limit}.")
    if ids is not None:
        if len(ids) > rules.max_ids:
            raise errors.InvalidParameterValueLimitExceeded(
                detail=f"At most {rules.max_ids} {rules.ids_param} per request, got {len(ids)}.")
        for one in ids:
            rules.check_id(one)
    if filters:
        _check_filters(filters, rules.filter_names)


def _check_filters(filters: Sequence[dict[str, Any]], names: Collection[str]) -> None:
    """The number of Filters, then each one's name (one of `names` or `tag:<key>`) and Values (1-5)."""
    if len(filters) > MAX_FILTERS:
        raise errors.InvalidParameterValueLimitExceeded(
            detail=f"At most {MAX_FILTERS} Filters per request, got {len(filters)}.")
    for f in filters:
        name, values = f["Name"], f["Values"]
        if name not in names and not name.startswith(TAG_FILTER_PREFIX):
            raise errors.InvalidFilter(detail=f"Unknown filter {name!r}; see docs/api.md for the filter names.")
        if len(values) > MAX_FILTER_VALUES:
            raise errors.InvalidFilterValueLimitExceeded(limit=MAX_FILTER_VALUES, name=name, count=len(values))
        if not values:
            raise errors.InvalidFilter(detail=f"Filter {name!r} has no Values.")



def escape_like(value: str) -> str:
    """`value` as a literal in a LIKE pattern with `escape='\\'`: its `%`, `_` and `\\` match only themselves."""
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
