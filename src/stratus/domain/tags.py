"""Tag rules (contract §6, Tag / TagSpecification), for images and instances alike: a key of 1-127
characters, a value of at most 255, at most 50 tags on a resource; a key given twice keeps its last value."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from stratus.domain import errors

MAX_KEY = 127
MAX_VALUE = 255
MAX_TAGS = 50


def from_specs(specs: list[dict[str, Any]] | None, resource_types: Collection[str], *, noun: str,
               refuse_others: bool) -> list[tuple[str, str]]:
    """The (key, value) pairs of the TagSpecification entries whose ResourceType is one of `resource_types`,
    sorted by key. Entries for other resource types are refused (`refuse_others`) or skipped."""
    tags: dict[str, str] = {}
    for spec in specs or []:
        if spec.get("ResourceType") not in resource_types:
            if refuse_others:
                wanted = " or ".join(repr(t) for t in resource_types)
                raise errors.InvalidParameterValue(
                    detail=f"TagSpecification.ResourceType must be {wanted} here, not {spec.get('ResourceType')!r}.")
            continue
        for tag in spec.get("Tags") or []:
            key, value = tag.get("Key"), tag.get("Value") or ""
            if not key or len(key) > MAX_KEY or len(value) > MAX_VALUE:
                raise errors.IllegalTagKey(key=key)
            tags[key] = value
    if len(tags) > MAX_TAGS:
        raise errors.InvalidParameterValueLimitExceeded(detail=f"At most {MAX_TAGS} tags per {noun}.")
    return sorted(tags.items())
