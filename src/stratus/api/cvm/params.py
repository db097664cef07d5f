"""Request parameters: a small schema per action, GET un-flattening, strict type checks.

A schema maps each field to its type: `str`, `int`, `bool`, `[T]` for lists, a dict for a nested
model, `ANY` for a field taken as sent. Missing required fields give MissingParameter, wrong types
InvalidParameter, unknown fields UnknownParameter (as the real service does). GET requests arrive
flattened (`Filters.0.Values.1=x`, all values strings); they are rebuilt into JSON shape and coerced by the same schema.
"""

from __future__ import annotations

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


def unflatten(query: str) -> dict[str, Any]:
    """`A.0.B=x&A.0.C.1=y` → {"A": [{"B": "x", "C": [None, "y"]}]}"""
    root: dict[str, Any] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        parts = key.split(".")
        node: Any = root
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            nxt: Any = value if last else ([] if parts[i + 1].isdigit() else {})
            if isinstance(node, list):
                if not part.isdigit() or int(part) > 1000:
                    raise errors.InvalidParameter(detail=f"bad list index in {key!r}")
                idx = int(part)
                while len(node) <= idx:
                    node.append(None)
                if node[idx] is None or last:
                    node[idx] = nxt
                node = node[idx]
            else:
                if part not in node or last:
                    node[part] = nxt
                node = node[part]
    return root


def _type_name(spec: Any) -> str:
    if isinstance(spec, list):
        return "an array"
    if isinstance(spec, dict):
        return "an object"
    return {str: "a string", int: "an integer", bool: "a boolean", float: "a number"}[spec]


ANY = object  # a field accepted as sent (models we take but don't act on: billing, VPC, security groups)


def _check(value: Any, spec: Any, path: str, coerce: bool, action: str) -> Any:
    if spec is ANY:
        return value
    if isinstance(spec, list):
        if not isinstance(value, list):
            raise errors.InvalidParameter(detail=f"{path} must be {_type_name(spec)}.")
        return [_check(v, spec[0], f"{path}.{i}", coerce, action) for i, v in enumerate(value)]
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            raise errors.InvalidParameter(detail=f"{path} must be {_type_name(spec)}.")
        out = {}
        for k, v in value.items():
            if k not in spec:
                raise errors.UnknownParameter(name=f"{path}.{k}".lstrip("."), action=action)
            if v is not None:
                out[k] = _check(v, spec[k], f"{path}.{k}", coerce, action)
        return out
    if coerce and isinstance(value, str):
        if spec is int:
            try:
                return int(value)
            except ValueError:
                raise errors.InvalidParameter(detail=f"{path} must be an integer, not {value!r}.") from None
        if spec is bool:
            if value.lower() in ("true", "false"):
                return value.lower() == "true"
            raise errors.InvalidParameter(detail=f"{path} must be true or false, not {value!r}.")
        if spec is float:
            try:
                return float(value)
            except ValueError:
                raise errors.InvalidParameter(detail=f"{path} must be a number, not {value!r}.") from None
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
    return value


def validate(params: Any, schema: ActionSchema, action: str, *, coerce: bool = False) -> dict[str, Any]:
    if not isinstance(params, dict):
        raise errors.InvalidParameter(detail="The request body must be a JSON object.")
    out = _check(params, schema.fields, "", coerce, action)
    out = {k.lstrip("."): v for k, v in out.items()}
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
