"""Request parameters: a small schema per action, GET un-flattening, strict type checks.

A schema maps each field to its type: `str`, `int`, `bool`, `[T]` for lists, a dict for a nested
model, `ANY` for a field taken as sent. Missing required fields give MissingParameter, wrong types
InvalidParameter, unknown fields UnknownParameter (as the real service does). GET requests arrive
flattened (`Filters.0.Values.1=x`, all values strings); they are rebuilt into JSON shape and coerced by the same schema.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from stratus.domain import errors

Schema = dict[str, Any]


@dataclass(frozen=True)
class ActionSchema:
    fields: Schema = field(default_factory=dict)
    required: frozenset[str] = frozenset()
    # nested required fields, as dotted paths relative to list items: "Filters.Name"
    nested_required: frozenset[str] = frozenset()


_INDEX = re.compile(r"[0-9]{1,4}")  # ASCII digits only: "٣".isdigit() is True, and int("²") raises
_INTEGER = re.compile(r"[+-]?[0-9]{1,20}")
INT64 = (-(2**63), 2**63 - 1)  # what the catalog columns and the SDK's Integer hold
MAX_LIST = 1000  # items in any one array; a longer one would only reach the database as a giant IN (...)


def unflatten(query: str) -> dict[str, Any]:
    """`A.0.B=x&A.0.C.1=y` → {"A": [{"B": "x", "C": [None, "y"]}]}

    A key given twice (`A=x&A=y`), or both as a value and as a container (`A=x&A.0=y`, `A.0=x&A.B=y`), is
    InvalidParameter: there is no single meaning to pick.
    """
    root: dict[str, Any] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        parts = key.split(".")
        if not all(parts):
            raise errors.InvalidParameter(detail=f"The parameter name {key!r} has an empty part.")
        node: Any = root
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not _INDEX.fullmatch(part) or int(part) > MAX_LIST:
                    raise errors.InvalidParameter(
                        detail=f"{'.'.join(parts[:i])} is a list, so {key!r} needs an index 0-{MAX_LIST} there.")
                idx = int(part)
                node.extend([None] * (idx + 1 - len(node)))
                slot: Any = idx
            else:
                slot = part
            existing = node[slot] if isinstance(node, list) else node.get(slot)
            if last:
                if existing is not None:
                    raise errors.InvalidParameter(detail=f"The parameter {key} is given more than once.")
                node[slot] = value
                break
            wanted: type = list if _INDEX.fullmatch(parts[i + 1]) else dict
            if existing is None:
                existing = node[slot] = wanted()
            elif not isinstance(existing, wanted):
                raise errors.InvalidParameter(
                    detail=f"The parameter {'.'.join(parts[: i + 1])} is given both as a value and as a list "
                    "or object; send one.")
            node = existing
    return root


def _type_name(spec: Any) -> str:
    if isinstance(spec, list):
        return "an array"
    if isinstance(spec, dict):
        return "an object"
    return {str: "a string", int: "an integer", bool: "a boolean", float: "a number"}[spec]


ANY = object  # a field accepted as sent (models we take but don't act on: billing, VPC, security groups)


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _check(value: Any, spec: Any, path: str, coerce: bool, action: str) -> Any:
    if spec is ANY:
        return value
    if isinstance(spec, list):
        if not isinstance(value, list):
            raise errors.InvalidParameter(detail=f"{path} must be {_type_name(spec)}.")
        if len(value) > MAX_LIST:
            raise errors.InvalidParameterValueLimitExceeded(
                detail=f"{path} has {len(value)} items; at most {MAX_LIST} in one request.")
        return [_check(v, spec[0], _join(path, i), coerce, action) for i, v in enumerate(value)]
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            raise errors.InvalidParameter(detail=f"{path} must be {_type_name(spec)}.")
        out = {}
        for k, v in value.items():
            if k not in spec:
                raise errors.UnknownParameter(name=_join(path, k), action=action)
            if v is not None:
                out[k] = _check(v, spec[k], _join(path, k), coerce, action)
        return out
    if coerce and isinstance(value, str):
        if spec is int:
            if not _INTEGER.fullmatch(value):
                raise errors.InvalidParameter(detail=f"{path} must be an integer, not {value[:40]!r}.")
            value = int(value)
        if spec is bool:
            if value.lower() in ("true", "false"):
                return value.lower() == "true"
            raise errors.InvalidParameter(detail=f"{path} must be true or false, not {value[:40]!r}.")
        if spec is float:
            try:
                return float(value)
            except ValueError:
                raise errors.InvalidParameter(detail=f"{path} must be a number, not {value[:40]!r}.") from None
    ok = (
        isinstance(value, bool)
        if spec is bool
        else (isinstance(value, int) and not isinstance(value, bool))
        if spec is int
        else isinstance(value, (int, float)) and not isinstance(value, bool)
        if spec is float
        else isinstance(value, spec)
    )
    if not ok:
        raise errors.InvalidParameter(detail=f"{path} must be {_type_name(spec)}.")
    if spec is int and not INT64[0] <= value <= INT64[1]:
        raise errors.InvalidParameterValueRange(detail=f"{path} is outside the 64-bit integer range.")
    if spec is str:
        _check_text(value, path)
    return value


def _check_text(value: str, path: str) -> None:
    # PostgreSQL text can't hold NUL, and a lone surrogate (JSON "\ud800") isn't UTF-8 at all: both would
    # fail in the database driver, far from the parameter that carried them.
    if "\x00" in value:
        raise errors.InvalidParameterValue(detail=f"{path} contains a NUL character.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise errors.InvalidParameterValue(detail=f"{path} is not valid Unicode (a lone surrogate).") from None


def parse_json(body: bytes) -> Any:
    """A request body as JSON (empty: {}); InvalidParameter for anything json can't read."""
    try:
        return json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError):  # also an int over Python's 4300-digit limit
        raise errors.InvalidParameter(detail="The request body is not valid JSON.") from None
    except RecursionError:  # json's C scanner gives up on deep nesting with RecursionError, not ValueError
        raise errors.InvalidParameter(detail="The request body is nested too deeply.") from None


def parse_int64(value: str, name: str) -> int:
    """A non-negative integer from a query string or header."""
    if not re.fullmatch(r"[0-9]{1,19}", value) or int(value) > INT64[1]:
        raise errors.InvalidParameterValue(detail=f"{name} must be a whole number from 0 to 2^63-1.")
    return int(value)


def validate(params: Any, schema: ActionSchema, action: str, *, coerce: bool = False) -> dict[str, Any]:
    if not isinstance(params, dict):
        raise errors.InvalidParameter(detail="The request body must be a JSON object.")
    out = _check(params, schema.fields, "", coerce, action)
    for name in sorted(schema.required):
        if out.get(name) is None:
            raise errors.MissingParameter(name=name)
    for dotted in sorted(schema.nested_required):
        head, _, leaf = dotted.partition(".")
        items = out.get(head)
        for i, item in enumerate(items if isinstance(items, list) else [items] if items else []):
            if not isinstance(item, dict) or item.get(leaf) is None:
                raise errors.MissingParameter(name=f"{head}.{i}.{leaf}")
    return out
