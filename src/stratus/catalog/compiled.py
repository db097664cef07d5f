"""Statements compiled once per shape, for hot read paths (DescribeImages).

Building a SQLAlchemy statement and executing it through the compiled-statement cache cost ~0.5 ms per
statement in Python (the expression tree, its cache key, the parameters), about ten times what a small indexed
query costs SQLite. A hot path instead names a *shape* (whatever decides the SQL text: which filters, how many
values) and a builder that uses named bind parameters; the statement is built and compiled once per shape and
dialect, and each call only fills in the parameters and runs the SQL text as driver SQL (still through the
SQLAlchemy connection: its transaction, error wrapping and invalidation of a dead connection).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any

from sqlalchemy import Connection, CursorResult, Table
from sqlalchemy.sql.expression import Executable

# A client can make many shapes (ten filters of up to five values each): the cache is bounded, and simply
# emptied when full (each shape costs one build to come back).
MAX_SHAPES = 2048

_statements: dict[tuple[str, Hashable], tuple[str, tuple[str, ...] | None, dict[str, Any]]] = {}


def run(conn: Connection, shape: Hashable, build: Callable[[], Executable],
        params: Mapping[str, Any]) -> CursorResult[Any]:
    """Execute the statement of this shape (built by `build` the first time) with these named parameters;
    parameters the builder bound to a value of its own (literals) keep it."""
    dialect = conn.dialect
    key = (dialect.name, shape)
    entry = _statements.get(key)
    if entry is None:
        compiled = build().compile(dialect=dialect)  # type: ignore[attr-defined]
        if "POSTCOMPILE" in compiled.string:  # an expanding IN: its SQL text would depend on the values
            raise ValueError(f"statement of shape {shape!r} has a post-compile parameter")
        positions = tuple(compiled.positiontup) if dialect.positional else None
        if len(_statements) >= MAX_SHAPES:
            _statements.clear()
        entry = _statements[key] = (compiled.string, positions, dict(compiled.params))
    sql, positions, defaults = entry
    values = {**defaults, **params}
    args: Any = tuple(values[name] for name in positions) if positions is not None else values
    return conn.exec_driver_sql(sql, args)


def table_rows(result: CursorResult[Any], table: Table) -> list[dict[str, Any]]:
    """The rows of a `SELECT <table's columns>` run by `run`, as dicts with the values SQLAlchemy would give
    (driver SQL skips result processing: SQLite returns a Boolean as 0 or 1)."""
    dialect = result.context.dialect
    description = result.cursor.description
    names = [d[0] for d in description]
    processors = [table.c[d[0]].type._cached_result_processor(dialect, d[1]) for d in description]
    return [{name: (proc(value) if proc else value) for name, proc, value in zip(names, processors, row, strict=True)}
            for row in result]
