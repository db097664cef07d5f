"""domain/errors.py: one class per contract code, messages from templates with every field filled."""

from __future__ import annotations

import string

import pytest

from stratus.domain import errors

CLASSES = [c for c in vars(errors).values()
           if isinstance(c, type) and issubclass(c, errors.CvmError) and c is not errors.CvmError]


def test_one_class_per_code() -> None:
    codes = [c.code for c in CLASSES]
    assert len(codes) > 90
    assert len(codes) == len(set(codes)), sorted(c for c in codes if codes.count(c) > 1)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.code)
def test_template_fills_in_and_reads_as_one_line(cls: type[errors.CvmError]) -> None:
    fields = {f for _, f, _, _ in string.Formatter().parse(cls.template()) if f}
    exc = cls(**{f: f"<{f}>" for f in fields}) if not issubclass(cls, errors.InstanceStateError) else None
    if exc is not None:
        assert "{" not in exc.message and "\n" not in exc.message and "  " not in exc.message
        assert all(f"<{f}>" in exc.message for f in fields)


def test_a_missing_field_is_a_bug_not_a_raw_template() -> None:
    with pytest.raises(KeyError):
        errors.InvalidImageIdNotFound()
    assert errors.InvalidImageIdNotFound(image_id="img-1").message == "The image img-1 does not exist."
    # A wrapped docstring reads as one line, single-spaced.
    shared = errors.InvalidImageIdInShared(image_id="img-1").message
    assert "`stratus image shares img-1` lists them" in shared
