"""domain/tags.py: the one set of tag rules, as images (strict about ResourceType) and instances (which skip
other resource types) apply it."""

from __future__ import annotations

import pytest

from stratus.domain import errors, tags
from stratus.service.image_rules import validate_tags as image_tags
from stratus.service.instances import validate_tags as instance_tags


def spec(resource: str, *pairs: tuple[str, str | None]) -> dict[str, object]:
    return {"ResourceType": resource, "Tags": [{"Key": k, "Value": v} for k, v in pairs]}


def test_last_value_wins_sorted_and_none_is_empty() -> None:
    specs = [spec("image", ("b", "1"), ("a", None), ("b", "2"))]
    assert image_tags(specs) == instance_tags(specs) == [("a", ""), ("b", "2")]
    assert image_tags(None) == instance_tags([]) == []


def test_resource_types() -> None:
    with pytest.raises(errors.InvalidParameterValue, match="must be 'image' here, not 'instance'"):
        image_tags([spec("instance", ("k", "v"))])
    assert instance_tags([spec("instance", ("i", "1")), spec("image", ("m", "2")), spec("eip", ("x", "3"))]) == [
        ("i", "1"), ("m", "2")]


@pytest.mark.parametrize("key, value", [("", "v"), (None, "v"), ("k" * 128, "v"), ("k", "v" * 256)])
def test_key_and_value_bounds(key: str | None, value: str) -> None:
    for validate in (image_tags, instance_tags):
        with pytest.raises(errors.IllegalTagKey):
            validate([spec("image", (key, value))])  # type: ignore[arg-type]
    assert image_tags([spec("image", ("k" * 127, "v" * 255))]) == [("k" * 127, "v" * 255)]


def test_at_most_fifty_tags() -> None:
    fifty = [spec("image", *((f"k{n}", "") for n in range(tags.MAX_TAGS)))]
    assert len(image_tags(fifty)) == tags.MAX_TAGS
    for validate in (image_tags, instance_tags):
        with pytest.raises(errors.InvalidParameterValueLimitExceeded, match="At most 50 tags"):
            validate([spec("image", *((f"k{n}", "") for n in range(tags.MAX_TAGS + 1)))])
