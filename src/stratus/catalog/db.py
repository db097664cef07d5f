"""Engines and sessions: the one module that owns database connections.

SQLite (the default) gets WAL, a busy timeout and foreign keys. Its write transactions start with
`BEGIN IMMEDIATE`: a deferred transaction that reads and then writes can fail at once with
"database is locked" instead of waiting, which would break quota reservation under concurrent imports.
PostgreSQL uses one engine for both, and writers lock rows explicitly (`FOR UPDATE`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, CursorResult, Engine, Result
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

CONNECT_TIMEOUT = 10  # seconds to reach PostgreSQL before a request or task sees the catalog as unavailable


def _sqlite_engine(url: str, immediate: bool) -> Engine:
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        # A 64 MiB page cache per connection (the default is 2 MiB) and reads through mmap: a DescribeImages
        # that counts 20,000 index entries at 100,000 images re-reads pages instead of copying them again.
        cur.execute("PRAGMA cache_size=-65536")
        cur.execute("PRAGMA mmap_size=268435456")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


@dataclass
class Database:
    url: str
    read_engine: Engine
    write_engine: Engine

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")

    @property
    def is_postgresql(self) -> bool:
        return self.url.startswith("postgresql")

    def __post_init__(self) -> None:
        self._read = sessionmaker(self.read_engine, expire_on_commit=False)
        self._write = sessionmaker(self.write_engine, expire_on_commit=False)

    @contextmanager
    def read(self) -> Iterator[Session]:
        with self._read() as session, session.begin():
            yield session

    @contextmanager
    def read_connection(self) -> Iterator[Connection]:
        """A read transaction on a bare connection (Core statements, no ORM session): for hot read paths."""
        with self.read_engine.connect() as conn, conn.begin():
            yield conn

    def fetch_one(self, sql: str, params: Sequence[Any]) -> Any:
        """The first row of one read-only statement (`?` placeholders), straight on a pooled DBAPI connection:
        for the per-request hot path (the API key), where SQLAlchemy's execution machinery and the
        BEGIN/ROLLBACK around it cost ~8x the query. SQLite reads in autocommit; PostgreSQL's transaction
        is rolled back when the pool takes the connection back."""
        if not self.is_sqlite:
            sql = sql.replace("?", "%s")
        conn = self.read_engine.raw_connection()
        try:
            cur = conn.cursor()
            try:
                cur.execute(sql, tuple(params))
                return cur.fetchone()
            finally:
                cur.close()
        except Exception as exc:
            if catalog_unavailable(exc):
                conn.invalidate()  # a dead connection must not go back to the pool
            raise
        finally:
            conn.close()

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A transaction that commits on success and rolls back on any exception."""
        with self._write() as session, session.begin():
            yield session

    def dispose(self) -> None:
        self.read_engine.dispose()
        if self.write_engine is not self.read_engine:
            self.write_engine.dispose()


def normalize_url(url: str) -> str:
    # Accept the plain postgresql:// form and use psycopg 3, the driver we ship.
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def open_database(url: str) -> Database:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        path = url.split("sqlite:///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        return Database(url, _sqlite_engine(url, immediate=False), _sqlite_engine(url, immediate=True))
    # pre_ping replaces connections a server restart broke before a request gets one; connect_timeout bounds
    # the wait when the server is unreachable (a request fails with ServiceUnavailable instead of hanging).
    engine = create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True,
                           connect_args={"connect_timeout": CONNECT_TIMEOUT})
    return Database(url, engine, engine)


def rowcount(result: Result[Any]) -> int:
    """Rows an UPDATE or DELETE matched. Session.execute is typed as returning a Result, though for DML it is
    a CursorResult, which alone has rowcount."""
    return cast("CursorResult[Any]", result).rowcount


def _psycopg_connection_error(exc: BaseException) -> bool:
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency; SQLite-only installs still work
        return False
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


def catalog_unavailable(exc: BaseException) -> bool:
    """True if ``exc`` (or anything in its cause chain) says the catalog database could not be reached or
    dropped the connection (a restart, a network cut): worth retrying, not a reason to fail anything."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, DBAPIError) and (cur.connection_invalidated or (
                # SQLite says OperationalError for a missing table too: only a server's count here.
                isinstance(cur, OperationalError | InterfaceError) and not isinstance(cur.orig, sqlite3.Error))):
            return True
        if _psycopg_connection_error(cur):  # raised bare by the raw-connection path (fetch_one, pool checkout)
            return True
        cur = cur.__cause__ or cur.__context__
    return False
