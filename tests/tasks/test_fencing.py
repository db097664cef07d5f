"""The task runner under faults: a stale execution writes nothing, a lost heartbeat stops its execution,
a catalog error doesn't kill a worker thread, a graceful shutdown is not a crash. Real catalog (SQLite or
PostgreSQL), the real TaskRunner; only the handlers are the tests' own."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text, update

from stratus.catalog import migrate
from stratus.catalog.db import Database, open_database
from stratus.catalog.models import Task
from stratus.tasks.runner import MAX_ATTEMPTS, TaskContext, TaskLost, TaskRunner, enqueue
from tests.conftest import new_db_url, wait_for


@pytest.fixture()
def db(tmp_path: Path, db_url: str) -> Iterator[Database]:
    assert db_url  # marks the test to run on both databases
    database = open_database(new_db_url(tmp_path))
    migrate.upgrade(database)
    try:
        yield database
    finally:
        database.dispose()


def add_task(db: Database, kind: str = "t", payload: dict[str, Any] | None = None) -> int:
    with db.write() as s:
        return enqueue(s, kind, payload or {}).id


def row(db: Database, task_id: int) -> Task:
    with db.read() as s:
        task = s.get(Task, task_id)
        assert task is not None
        s.expunge(task)
        return task


def expire_lease(db: Database, task_id: int) -> None:
    """What time does to a paused worker's lease, without waiting for it."""
    with db.write() as s:
        s.execute(update(Task).where(Task.id == task_id).values(lease_expires_at=time.time() - 1))


class Recorder:
    """A handler that hands its context to the test and waits to be told what to do."""

    def __init__(self) -> None:
        self.ctx: TaskContext | None = None
        self.started = threading.Event()
        self.go = threading.Event()
        self.outcome: list[str] = []

    def run(self, ctx: TaskContext) -> dict[str, Any]:
        self.ctx = ctx
        self.started.set()
        assert self.go.wait(30)
        return {"by": ctx.attempt}

    def fail(self, ctx: TaskContext, reason: str) -> None:
        self.outcome.append(f"fail: {reason}")


def test_a_stale_execution_writes_nothing(db: Database, tmp_path: Path) -> None:
    """Worker A is paused past its lease and B takes the task over; A wakes up while B runs: every write
    it tries (progress, checkpoint, a handler's fenced write, its end state) is refused, and leaving it
    removes only its own scratch, never B's files. Then B finishes."""
    task_id = add_task(db, payload={"step": 0})
    stale = Recorder()
    a = TaskRunner(db, {"t": stale}, lease_seconds=30, owner="worker-a", scratch_root=tmp_path)
    claimed = a.claim()
    assert claimed is not None
    thread_a = threading.Thread(target=a.run_one, args=(claimed,))
    thread_a.start()
    assert stale.started.wait(10)
    ctx_a = stale.ctx
    assert ctx_a is not None
    mine = ctx_a.scratch(tmp_path)
    (mine / "partial").write_bytes(b"a")

    expire_lease(db, task_id)  # A is "paused": its lease runs out
    live_ready, live_go = threading.Event(), threading.Event()
    live_files: list[Path] = []

    class Live:
        def run(self, ctx: TaskContext) -> dict[str, Any]:
            ctx.report("working", 50.0, force=True)
            ctx.checkpoint({"step": 1})
            f = ctx.scratch(tmp_path) / "live"
            f.write_bytes(b"b")
            live_files.append(f)
            live_ready.set()
            assert live_go.wait(30)
            return {"by": "b"}

        def fail(self, ctx: TaskContext, reason: str) -> None:
            raise AssertionError(reason)

    b = TaskRunner(db, {"t": Live()}, lease_seconds=30, owner="worker-b", scratch_root=tmp_path)
    claimed_b = b.claim()
    assert claimed_b is not None and claimed_b.id == task_id
    thread_b = threading.Thread(target=b.run_one, args=(claimed_b,))
    thread_b.start()
    assert live_ready.wait(10)

    # A wakes up and tries everything an execution can write.
    for attempt in (
        lambda: ctx_a.report("stale", 10.0, force=True),
        lambda: ctx_a.checkpoint({"step": "stale"}),
        lambda: ctx_a.renew(),
    ):
        with pytest.raises(TaskLost):
            attempt()
    with pytest.raises(TaskLost), ctx_a.fenced() as s:
        s.execute(update(Task).where(Task.id == task_id).values(error="stale write"))
    assert ctx_a.should_stop()
    stale.go.set()  # its handler returns a result: the runner must not record it
    thread_a.join(10)
    during = row(db, task_id)
    assert (during.state, during.lease_owner, during.progress, during.stage, during.error, during.result) == (
        "RUNNING", "worker-b", 50.0, "working", None, None)
    assert json.loads(during.payload) == {"step": 1}
    assert not mine.exists()  # its own scratch went with it...
    assert live_files[0].read_bytes() == b"b"  # ...and nothing of the live execution's

    live_go.set()
    thread_b.join(10)
    done = row(db, task_id)
    assert (done.state, json.loads(done.result or "{}"), done.progress) == ("DONE", {"by": "b"}, 100.0)


def test_the_same_worker_with_an_older_attempt_is_fenced_too(db: Database) -> None:
    """A fencing token is (owner, attempt): one process whose own thread re-claimed the task after its
    lease lapsed (a stalled heartbeat) must not let the older attempt write."""
    task_id = add_task(db)
    runner = TaskRunner(db, {"t": Recorder()}, lease_seconds=30, owner="one-process")
    first = runner.claim()
    assert first is not None
    old = TaskContext(runner, first.id, "t", {}, first.attempts, None, None, None)
    expire_lease(db, task_id)
    second = runner.claim()
    assert second is not None and second.attempts == first.attempts + 1
    with pytest.raises(TaskLost):
        old.report("stale", 99.0, force=True)
    with pytest.raises(TaskLost):
        old.checkpoint({"x": 1})
    assert row(db, task_id).progress == 0.0
    assert json.loads(row(db, task_id).payload) == {}


def test_a_heartbeat_that_finds_the_task_taken_stops_the_execution(db: Database) -> None:
    """A handler inside one long call (it never reports) learns through the heartbeat that its task was
    taken over, and stops well within a lease."""
    task_id = add_task(db)
    seen: dict[str, float] = {}

    class Long:
        def run(self, ctx: TaskContext) -> dict[str, Any]:
            seen["started"] = time.monotonic()
            while not ctx.should_stop():
                time.sleep(0.05)
                if time.monotonic() - seen["started"] > 20:
                    raise AssertionError("never told to stop")
            seen["stopped"] = time.monotonic()
            raise RuntimeError("stopped")

        def fail(self, ctx: TaskContext, reason: str) -> None:
            seen["failed"] = 1.0

    a = TaskRunner(db, {"t": Long()}, lease_seconds=1.5, owner="worker-a", poll_seconds=0.1)
    a.start()
    try:
        wait_for(lambda: "started" in seen, timeout=10, what="the task to start")
        # Another worker takes the task over (as if A had been cut off past its lease).
        with db.write() as s:
            s.execute(update(Task).where(Task.id == task_id).values(lease_owner="worker-b", attempts=Task.attempts + 1))
        taken = time.monotonic()
        wait_for(lambda: "stopped" in seen, timeout=10, what="the execution to stop")
        assert seen["stopped"] - taken < 1.5
        time.sleep(0.3)
    finally:
        a.stop()
    assert "failed" not in seen  # a lost execution doesn't fail the task it no longer owns
    assert row(db, task_id).state == "RUNNING" and row(db, task_id).lease_owner == "worker-b"


def test_an_execution_whose_lease_could_not_be_renewed_for_a_lease_stops(db: Database) -> None:
    """No heartbeat got through for a whole lease (the catalog was unreachable, or the process was
    paused): the lease can't be trusted any more, so should_stop() turns true."""
    add_task(db)
    runner = TaskRunner(db, {"t": Recorder()}, lease_seconds=0.5, owner="w")
    task = runner.claim()
    assert task is not None
    ctx = TaskContext(runner, task.id, "t", {}, task.attempts, None, None, None)
    assert not ctx.should_stop()
    time.sleep(0.6)
    assert ctx.should_stop()


def test_the_worker_loop_survives_a_catalog_error(db: Database) -> None:
    """The catalog fails under a running task (here: its table is gone for a moment, a real error from
    the database): the worker thread logs it, backs off and keeps working."""
    first = add_task(db)
    blocker = Recorder()
    runs: list[int] = []

    class Quick:
        def run(self, ctx: TaskContext) -> dict[str, Any]:
            runs.append(ctx.task_id)
            return {}

        def fail(self, ctx: TaskContext, reason: str) -> None:
            pass

    runner = TaskRunner(db, {"t": blocker, "q": Quick()}, workers=1, lease_seconds=1.0, poll_seconds=0.05)
    runner.max_backoff = 0.5
    runner.start()
    try:
        assert blocker.started.wait(10)
        with db.write() as s:
            s.execute(text("ALTER TABLE tasks RENAME TO tasks_away"))
        blocker.go.set()  # its end state can't be written: the catalog errors out
        time.sleep(1.0)
        with db.write() as s:
            s.execute(text("ALTER TABLE tasks_away RENAME TO tasks"))
        second = add_task(db, "q")
        runner.wake()
        wait_for(lambda: second in runs, timeout=15, what="the worker to run the next task")
        # The first task's lease ran out; it ran again and finished.
        wait_for(lambda: row(db, first).state == "DONE", timeout=15, what="the interrupted task to finish")
        assert row(db, second).state == "DONE"
    finally:
        runner.stop()


def test_a_graceful_shutdown_is_not_a_crash(db: Database) -> None:
    """A task interrupted by MAX_ATTEMPTS + 1 graceful stops (SIGTERM of `stratus serve`) goes back each
    time without consuming an attempt, and then finishes."""
    task_id = add_task(db)
    started = threading.Event()

    class UntilStopped:
        def run(self, ctx: TaskContext) -> dict[str, Any]:
            started.set()
            while not ctx.should_stop():
                time.sleep(0.02)
            raise RuntimeError("shutting down")

        def fail(self, ctx: TaskContext, reason: str) -> None:
            raise AssertionError(f"failed: {reason}")

    for n in range(MAX_ATTEMPTS + 1):
        started.clear()
        runner = TaskRunner(db, {"t": UntilStopped()}, lease_seconds=30, poll_seconds=0.05)
        runner.start()
        assert started.wait(10)
        runner.stop()
        released = row(db, task_id)
        assert (released.state, released.lease_owner) == ("QUEUED", None)
        assert released.attempts - released.released == 0 and released.released >= n + 1  # no crash counted

    class Finish:
        def run(self, ctx: TaskContext) -> dict[str, Any]:
            return {"ok": True}

        def fail(self, ctx: TaskContext, reason: str) -> None:
            raise AssertionError(f"failed: {reason}")

    TaskRunner(db, {"t": Finish()}, lease_seconds=30).run_until_idle(10)
    done = row(db, task_id)
    assert (done.state, done.error) == ("DONE", None)


def test_crashes_still_count(db: Database) -> None:
    """The other side of the rule: claims that ended in a crash (the lease ran out) do count."""
    task_id = add_task(db)
    failed: list[str] = []

    class Never:
        def run(self, ctx: TaskContext) -> dict[str, Any]:
            raise AssertionError("should not run")

        def fail(self, ctx: TaskContext, reason: str) -> None:
            failed.append(reason)

    for _ in range(MAX_ATTEMPTS):
        crashed = TaskRunner(db, {"t": Never()}, lease_seconds=30).claim()
        assert crashed is not None
        expire_lease(db, task_id)
    TaskRunner(db, {"t": Never()}, lease_seconds=30).run_until_idle(10)
    done = row(db, task_id)
    assert done.state == "FAILED" and f"interrupted {MAX_ATTEMPTS} times" in (done.error or "")
    assert failed == [done.error]


def _lost_catalog_error() -> Exception:
    """What SQLAlchemy raises when PostgreSQL is away (a real refused connection, on a port nobody serves)."""
    from sqlalchemy import create_engine

    from tests.conftest import free_port

    engine = create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x",
                           connect_args={"connect_timeout": 2})
    try:
        engine.connect()
    except Exception as exc:
        return exc
    finally:
        engine.dispose()
    raise AssertionError("nothing listens there, yet it connected")


def test_a_handler_that_lost_the_catalog_hands_the_task_back(db: Database) -> None:
    """A handler whose catalog write failed because the database went away (a PostgreSQL restart) does
    not fail its task: the task is released (not counted as a crash) and resumes, here at once."""
    from stratus.catalog.db import catalog_unavailable

    lost = _lost_catalog_error()
    assert catalog_unavailable(RuntimeError("wrapped")) is False
    task_id = add_task(db)
    runs: list[int] = []

    class LosesTheCatalogOnce:
        def run(self, ctx: TaskContext) -> dict[str, Any]:
            runs.append(ctx.attempt)
            if len(runs) == 1:
                raise RuntimeError("system disk: lost the catalog") from lost  # handlers wrap; the chain tells
            return {"ok": True}

        def fail(self, ctx: TaskContext, reason: str) -> None:
            raise AssertionError(f"failed: {reason}")

    TaskRunner(db, {"t": LosesTheCatalogOnce()}, lease_seconds=30).run_until_idle(10)
    done = row(db, task_id)
    assert runs == [1, 2]
    assert (done.state, done.error, done.released) == ("DONE", None, 1)


def test_sqlite_errors_that_are_not_a_lost_server_still_fail(tmp_path: Path) -> None:
    """SQLite says OperationalError for a missing table too: that is a bug to report, not a retry."""
    from sqlalchemy import text as sql

    from stratus.catalog.db import catalog_unavailable

    database = open_database(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        with pytest.raises(Exception) as info, database.read() as s:
            s.execute(sql("SELECT * FROM no_such_table"))
        assert catalog_unavailable(info.value) is False
    finally:
        database.dispose()
