"""The durable task runner: workers claim tasks from the catalog with a lease and heartbeat it.

A task is QUEUED → RUNNING → DONE | FAILED. A RUNNING task whose lease has expired belongs to a
worker that died (`kill -9`, a crash, a lost machine): any worker may claim it again and the handler
runs once more from its last checkpoint. Handlers must therefore be idempotent; ours are, because
chunks are content-addressed and an image only becomes NORMAL in the transaction that records its
complete manifest. After `MAX_ATTEMPTS` crashed claims the task fails for good and the handler's
`fail` puts its image in a failed state with the reason.

Fencing: a worker that was paused or cut off past its lease (SIGSTOP, a partition, a stalled disk) may
wake up after another worker took its task over. Every write an execution makes is a compare-and-set
on (lease_owner, attempts) of the task row, the claim's fencing token: progress, checkpoints, the
handler's final writes (:meth:`TaskContext.fenced`, one transaction with the check) and the task's
end state. A stale execution gets 0 rows, raises :class:`TaskLost` and writes nothing visible. Its
scratch space is its own (`task-N-aM`), so it can't delete the live execution's files either.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.orm import Session

from stratus.catalog.db import Database, catalog_unavailable, rowcount
from stratus.catalog.models import Task
from stratus.domain.states import TaskState, check_task

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3


class TaskLost(Exception):
    """Our lease was taken over by another worker; stop without touching the task."""


class TaskCancelled(Exception):
    """The task was cancelled (for instance its image was deleted)."""


class TaskFailed(Exception):
    """A task (import, capture, copy) failed for a reason its owner can act on: `message` becomes the
    task's error and the image's state reason."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass
class TaskContext:
    """Handed to a handler: its task's data, progress reporting, fenced writes and a stop flag."""

    runner: TaskRunner
    task_id: int
    kind: str
    payload: dict[str, Any]
    attempt: int
    account_id: str | None
    region: str | None
    image_id: str | None
    # The handler's own values for this execution (e.g. the last progress it wrote to its image).
    notes: dict[str, Any] = field(default_factory=dict)
    _last_report: float = 0.0
    _lost: bool = False
    # When the lease was last renewed (monotonic: a SIGSTOP'd process sees the time it was stopped).
    _renewed_at: float = field(default_factory=time.monotonic)
    _finished: bool = False

    def _owned(self) -> ColumnElement[bool]:
        return and_(Task.id == self.task_id, Task.lease_owner == self.runner.owner,
                    Task.attempts == self.attempt, Task.state == "RUNNING")

    def _write_task(self, s: Session, **values: Any) -> None:
        """The compare-and-set every write of this execution goes through; 0 rows means we lost the task."""
        res = s.execute(update(Task).where(self._owned()).values(**values))
        if rowcount(res) != 1:
            self._lost = True
            raise TaskLost()

    def _lease_values(self) -> dict[str, Any]:
        return {"lease_expires_at": time.time() + self.runner.lease_seconds}

    def renew(self, **values: Any) -> None:
        started = time.monotonic()
        with self.runner.db.write() as s:
            self._write_task(s, **self._lease_values(), **values)
        self._renewed_at = started

    def report(self, stage: str, progress: float, *, force: bool = False) -> None:
        """Record stage and percent progress (0..100); also renews the lease. Throttled to ~4/s."""
        if self._lost:
            raise TaskLost()
        now = time.monotonic()
        if not force and now - self._last_report < 0.25:
            return
        self._last_report = now
        self.renew(stage=stage, progress=max(0.0, min(100.0, progress)))

    def lease_lost(self) -> bool:
        """True once the lease is known lost, or can no longer be trusted: not renewed for a whole
        lease (the heartbeat failed, or this process was paused)."""
        if not self._lost and time.monotonic() - self._renewed_at > self.runner.lease_seconds:
            self._lost = True
        return self._lost

    def should_stop(self) -> bool:
        return self.lease_lost() or self.runner.stopping.is_set()

    def checkpoint(self, data: dict[str, Any]) -> None:
        """Persist handler state so a takeover can resume from here (fenced: TaskLost if not ours)."""
        merged = {**self.payload, **data}
        with self.runner.db.write() as s:
            self._write_task(s, payload=json.dumps(merged), **self._lease_values())
        self.payload.update(data)

    @contextmanager
    def fenced(self) -> Iterator[Session]:
        """A write transaction that first checks (and locks) our ownership of the task: the handler's
        visible writes inside it happen iff this execution still holds the lease. Raises TaskLost."""
        with self.runner.db.write() as s:
            self._write_task(s, **self._lease_values())
            yield s

    def complete(self, s: Session, result: dict[str, Any] | None = None) -> None:
        """Mark the task DONE inside a :meth:`fenced` transaction, atomically with the handler's final
        writes (so a crash can't leave an image NORMAL under a task that will run again)."""
        self.runner._finish_in(s, self, "DONE", result=result or {})
        self._finished = True

    def scratch(self, root: Path) -> Path:
        """This execution's own scratch directory under `root` (created): no other attempt writes in it."""
        path = root / f"task-{self.task_id}-a{self.attempt}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def earlier_scratch(self, root: Path) -> list[Path]:
        """Scratch directories of earlier attempts of this task, newest first (to resume from)."""
        found = []
        for p in root.glob(f"task-{self.task_id}-a*"):
            try:
                n = int(p.name.rsplit("-a", 1)[1])
            except ValueError:
                continue
            if n < self.attempt:
                found.append((n, p))
        return [p for _, p in sorted(found, reverse=True)]


class Handler(Protocol):
    def run(self, ctx: TaskContext) -> dict[str, Any] | None: ...

    def fail(self, ctx: TaskContext, reason: str) -> None: ...


def enqueue(
    session: Any,
    kind: str,
    payload: dict[str, Any],
    *,
    account_id: str | None = None,
    region: str | None = None,
    image_id: str | None = None,
    host: str | None = None,
    instance_id: str | None = None,
    source_image_id: str | None = None,
) -> Task:
    """Add a task inside the caller's transaction, so it exists iff the caller's change commits. A task
    bound to a `host` is claimed only by that compute host's workers (an instance's tasks). `instance_id`
    and `source_image_id` are the task's subjects that other requests look it up by (the mutexes)."""
    task = Task(kind=kind, payload=json.dumps(payload), account_id=account_id, region=region, image_id=image_id,
                host=host, instance_id=instance_id, source_image_id=source_image_id)
    session.add(task)
    session.flush()
    return task


class TaskRunner:
    def __init__(
        self,
        db: Database,
        handlers: dict[str, Handler],
        *,
        workers: int = 2,
        lease_seconds: float = 30.0,
        poll_seconds: float = 0.5,
        owner: str | None = None,
        scratch_root: Path | None = None,
        host: str | None = None,
    ) -> None:
        self.db = db
        self.handlers = handlers
        self.workers = workers
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        # Where handlers keep per-attempt scratch (TaskContext.scratch); removed when a task ends.
        self.scratch_root = scratch_root
        # The compute host these workers are: they claim tasks bound to it and unbound ones, never another
        # host's (None: unbound tasks only).
        self.host = host
        self.stopping = threading.Event()
        self._wake = threading.Condition()
        self._threads: list[threading.Thread] = []
        # Keyed by (task, attempt): this process may hold a stale and a live execution of one task.
        self._running: dict[tuple[int, int], TaskContext] = {}
        self._running_lock = threading.Lock()
        self.max_backoff = 10.0

    # --- lifecycle
    def start(self) -> None:
        for i in range(self.workers):
            t = threading.Thread(target=self._work_loop, name=f"stratus-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        hb = threading.Thread(target=self._heartbeat_loop, name="stratus-heartbeat", daemon=True)
        hb.start()
        self._threads.append(hb)

    def stop(self, timeout: float = 10.0) -> None:
        """Ask every execution to stop and wait (`timeout` in all) for their tasks to be handed back."""
        self.stopping.set()
        self.wake()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def wake(self) -> None:
        with self._wake:
            self._wake.notify_all()

    # --- claiming
    def claim(self, kinds: list[str] | None = None) -> Task | None:
        now = time.time()
        kinds = kinds or list(self.handlers)
        with self.db.write() as s:
            q = (
                select(Task)
                .where(Task.kind.in_(kinds))
                .where(Task.host.is_(None) if self.host is None else or_(Task.host.is_(None), Task.host == self.host))
                .where(
                    or_(
                        Task.state == "QUEUED",
                        (Task.state == "RUNNING") & (Task.lease_expires_at < now),
                    )
                )
                .order_by(Task.id)
                .limit(1)
            )
            if self.db.is_postgresql:
                q = q.with_for_update(skip_locked=True)
            task = s.scalars(q).first()
            if task is None:
                return None
            check_task(task.state, TaskState.RUNNING)
            task.state = TaskState.RUNNING
            task.lease_owner = self.owner
            task.lease_expires_at = now + self.lease_seconds
            task.attempts += 1
            task.started_at = task.started_at or now
            s.flush()
            s.expunge(task)
            return task

    def _finish_in(self, s: Session, ctx: TaskContext, state: str, *, result: dict[str, Any] | None = None,
                   error: str | None = None) -> None:
        check_task(TaskState.RUNNING, TaskState(state))  # _write_task only matches our RUNNING execution
        ctx._write_task(
            s,
            state=state,
            result=json.dumps(result) if result is not None else None,
            error=error,
            progress=100.0 if state == "DONE" else Task.progress,
            stage="done" if state == "DONE" else "failed",
            finished_at=time.time(),
            lease_expires_at=None,
        )

    def _finish(self, ctx: TaskContext, state: str, *, result: dict[str, Any] | None = None,
                error: str | None = None) -> None:
        with self.db.write() as s:
            self._finish_in(s, ctx, state, result=result, error=error)

    def _release(self, ctx: TaskContext) -> None:
        """Give a task back on a graceful shutdown: QUEUED again, and the claim is not a crash."""
        with self.db.write() as s:
            check_task(TaskState.RUNNING, TaskState.QUEUED)
            ctx._write_task(s, state=TaskState.QUEUED, lease_owner=None, lease_expires_at=None,
                            released=Task.released + 1)

    def _hand_back(self, ctx: TaskContext, exc: BaseException) -> None:
        """Release a task whose handler lost the catalog, once the catalog answers again, so that it
        resumes from its checkpoint (a release, not a crash). If the catalog stays away longer than the
        lease, the lease lapses instead and the task is taken over as after a crash."""
        log.warning("task %s (%s): the catalog is unreachable (%s); handing it back once it answers",
                    ctx.task_id, ctx.kind, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        delay = self.poll_seconds
        while True:
            try:
                self._release(ctx)
                return
            except TaskLost:
                raise
            except Exception as again:
                if not catalog_unavailable(again):
                    raise
                if ctx.lease_lost() or self.stopping.is_set():
                    raise TaskLost() from again  # the lease lapses; whoever claims the task next resumes it
            self.stopping.wait(delay)
            delay = min(self.max_backoff, delay * 2)

    def _remove_scratch(self, task_id: int) -> None:
        if self.scratch_root is not None:
            for path in self.scratch_root.glob(f"task-{task_id}-a*"):
                shutil.rmtree(path, ignore_errors=True)

    # --- running
    def run_one(self, task: Task) -> None:
        handler = self.handlers[task.kind]
        ctx = TaskContext(
            self, task.id, task.kind, json.loads(task.payload or "{}"), task.attempts, task.account_id,
            task.region, task.image_id,
        )
        with self._running_lock:
            self._running[(task.id, ctx.attempt)] = ctx
        try:
            self._run(handler, ctx, task.attempts - (task.released or 0))
        except TaskLost:
            log.warning("task %s attempt %s: lease lost, another worker has it; stopping without a write",
                        ctx.task_id, ctx.attempt)
        finally:
            with self._running_lock:
                self._running.pop((task.id, ctx.attempt), None)
            if ctx._lost and self.scratch_root is not None:
                # Only our own attempt's files: the live execution's are in its own directory.
                shutil.rmtree(self.scratch_root / f"task-{ctx.task_id}-a{ctx.attempt}", ignore_errors=True)

    def _run(self, handler: Handler, ctx: TaskContext, crashed_claims: int) -> None:
        if self.stopping.is_set():  # claimed just as the stop began: give it straight back
            self._release(ctx)
            return
        if crashed_claims > MAX_ATTEMPTS:
            reason = f"interrupted {crashed_claims - 1} times (worker crashes); giving up"
            handler.fail(ctx, reason)
            self._finish(ctx, "FAILED", error=reason)
            self._remove_scratch(ctx.task_id)
            return
        try:
            result = handler.run(ctx)
        except TaskLost:
            raise
        except Exception as exc:  # every failure becomes a readable FAILED state
            if ctx.lease_lost():
                raise TaskLost() from exc  # whatever it failed with, it is no longer ours to fail
            if catalog_unavailable(exc):
                # The catalog went away under the handler (a PostgreSQL restart): not the task's fault.
                self._hand_back(ctx, exc)
                return
            if self.stopping.is_set() and not isinstance(exc, TaskCancelled):
                # Shutting down: hand the task back; the next worker resumes it from its checkpoint.
                log.info("task %s interrupted by shutdown; released", ctx.task_id)
                self._release(ctx)
                return
            reason = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            log.warning("task %s (%s) failed: %s", ctx.task_id, ctx.kind, reason)
            log.debug("%s", traceback.format_exc())
            try:
                handler.fail(ctx, reason)
            finally:
                self._finish(ctx, "FAILED", error=reason)
            self._remove_scratch(ctx.task_id)
            return
        if not ctx._finished:
            self._finish(ctx, "DONE", result=result or {})
        self._remove_scratch(ctx.task_id)

    def _work_loop(self) -> None:
        failures = 0
        while not self.stopping.is_set():
            try:
                task = self.claim()
                if task is not None:
                    self.run_one(task)
                failures = 0
            except Exception:
                # The catalog went away (a restart, a dropped connection, a full disk): keep the thread,
                # back off, and try again; the pool replaces broken connections. An unfinished task's
                # lease runs out and it is resumed.
                failures += 1
                delay = min(self.max_backoff, self.poll_seconds * 2 ** min(failures, 8))
                log.exception("worker: catalog error (%d in a row); retrying in %.1f s", failures, delay)
                self.stopping.wait(delay)
                continue
            if task is None:
                with self._wake:
                    self._wake.wait(self.poll_seconds)

    def _heartbeat_loop(self) -> None:
        # Keeps leases alive even while a handler sits in one long call (a big qemu-img convert). A
        # renewal that finds the task taken over marks its execution lost (should_stop turns true);
        # one that keeps failing lets the lease lapse, and lease_lost() turns true a lease later.
        while not self.stopping.wait(self.lease_seconds / 3):
            self.heartbeat()

    def heartbeat(self) -> None:
        with self._running_lock:
            running = list(self._running.values())
        for ctx in running:
            try:
                ctx.renew()
            except TaskLost:
                log.warning("task %s attempt %s: lease taken over; stopping its execution", ctx.task_id,
                            ctx.attempt)
            except Exception:
                log.exception("heartbeat for task %s failed", ctx.task_id)

    def run_until_idle(self, timeout: float = 60.0, should_continue: Callable[[], bool] | None = None) -> None:
        """Run tasks in the calling thread until none is claimable (for tests and `stratus worker --once`)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            task = self.claim()
            if task is None:
                return
            self.run_one(task)
