"""The durable task runner: workers claim tasks from the catalog with a lease and heartbeat it.

A task is QUEUED → RUNNING → DONE | FAILED. A RUNNING task whose lease has expired belongs to a
worker that died (`kill -9`, a crash, a lost machine): any worker may claim it again and the handler
runs once more from its last checkpoint. Handlers must therefore be idempotent; ours are, because
chunks are content-addressed and an image only becomes NORMAL in the transaction that records its
complete manifest. After `max_attempts` claims the task fails for good and the handler's `give_up`
puts its image in a failed state with the reason.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import or_, select, update

from stratus.catalog.db import Database
from stratus.catalog.models import Task

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3


class TaskLost(Exception):
    """Our lease was taken over by another worker; stop without touching the task."""


class TaskCancelled(Exception):
    """The task was cancelled (for instance its image was deleted)."""


@dataclass
class TaskContext:
    """Handed to a handler: its task's data, progress reporting and a stop flag."""

    runner: TaskRunner
    task_id: int
    kind: str
    payload: dict[str, Any]
    attempt: int
    account_id: str | None
    region: str | None
    image_id: str | None
    _last_report: float = 0.0
    _lost: bool = False

    def report(self, stage: str, progress: float, *, force: bool = False) -> None:
        """Record stage and percent progress (0..100); also renews the lease. Throttled to ~4/s."""
        now = time.monotonic()
        if not force and now - self._last_report < 0.25:
            return
        self._last_report = now
        if not self.runner.renew(self.task_id, stage=stage, progress=progress):
            self._lost = True
            raise TaskLost()

    def should_stop(self) -> bool:
        return self._lost or self.runner.stopping.is_set()

    def checkpoint(self, data: dict[str, Any]) -> None:
        """Persist handler state so a takeover can resume from here."""
        self.payload.update(data)
        with self.runner.db.write() as s:
            s.execute(update(Task).where(Task.id == self.task_id).values(payload=json.dumps(self.payload)))


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
) -> Task:
    """Add a task inside the caller's transaction, so it exists iff the caller's change commits."""
    task = Task(kind=kind, payload=json.dumps(payload), account_id=account_id, region=region, image_id=image_id)
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
    ) -> None:
        self.db = db
        self.handlers = handlers
        self.workers = workers
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.stopping = threading.Event()
        self._wake = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._running: set[int] = set()
        self._running_lock = threading.Lock()

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
        self.stopping.set()
        self.wake()
        for t in self._threads:
            t.join(timeout)

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
            task.state = "RUNNING"
            task.lease_owner = self.owner
            task.lease_expires_at = now + self.lease_seconds
            task.attempts += 1
            task.started_at = task.started_at or now
            s.flush()
            s.expunge(task)
            return task

    def renew(self, task_id: int, *, stage: str | None = None, progress: float | None = None) -> bool:
        values: dict[str, Any] = {"lease_expires_at": time.time() + self.lease_seconds}
        if stage is not None:
            values["stage"] = stage
        if progress is not None:
            values["progress"] = max(0.0, min(100.0, progress))
        with self.db.write() as s:
            res = s.execute(
                update(Task)
                .where(Task.id == task_id, Task.lease_owner == self.owner, Task.state == "RUNNING")
                .values(**values)
            )
            return res.rowcount == 1

    def _finish(self, task_id: int, state: str, *, result: dict[str, Any] | None = None,
                error: str | None = None) -> None:
        with self.db.write() as s:
            s.execute(
                update(Task)
                .where(Task.id == task_id, Task.lease_owner == self.owner)
                .values(
                    state=state,
                    result=json.dumps(result) if result is not None else None,
                    error=error,
                    progress=100.0 if state == "DONE" else Task.progress,
                    stage="done" if state == "DONE" else "failed",
                    finished_at=time.time(),
                    lease_expires_at=None,
                )
            )

    # --- running
    def run_one(self, task: Task) -> None:
        handler = self.handlers[task.kind]
        ctx = TaskContext(
            self, task.id, task.kind, json.loads(task.payload or "{}"), task.attempts, task.account_id,
            task.region, task.image_id,
        )
        with self._running_lock:
            self._running.add(task.id)
        try:
            if task.attempts > MAX_ATTEMPTS:
                reason = f"interrupted {task.attempts - 1} times (worker crashes); giving up"
                handler.fail(ctx, reason)
                self._finish(task.id, "FAILED", error=reason)
                return
            try:
                result = handler.run(ctx)
            except TaskLost:
                log.warning("task %s: lease lost, another worker took it over", task.id)
                return
            except Exception as exc:  # every failure becomes a readable FAILED state
                if self.stopping.is_set() and not isinstance(exc, TaskCancelled):
                    # Shutting down: leave the task RUNNING; its lease expires and it is resumed.
                    log.info("task %s interrupted by shutdown", task.id)
                    return
                reason = getattr(exc, "message", None) or str(exc) or type(exc).__name__
                log.warning("task %s (%s) failed: %s", task.id, task.kind, reason)
                log.debug("%s", traceback.format_exc())
                try:
                    handler.fail(ctx, reason)
                finally:
                    self._finish(task.id, "FAILED", error=reason)
                return
            self._finish(task.id, "DONE", result=result or {})
        finally:
            with self._running_lock:
                self._running.discard(task.id)

    def _work_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                task = self.claim()
            except Exception:
                log.exception("claiming a task failed; retrying")
                task = None
            if task is None:
                with self._wake:
                    self._wake.wait(self.poll_seconds)
                continue
            self.run_one(task)

    def _heartbeat_loop(self) -> None:
        # Keeps leases alive even while a handler sits in one long call (a big qemu-img convert).
        while not self.stopping.wait(self.lease_seconds / 3):
            with self._running_lock:
                running = list(self._running)
            for task_id in running:
                try:
                    self.renew(task_id)
                except Exception:
                    log.exception("heartbeat for task %s failed", task_id)

    def run_until_idle(self, timeout: float = 60.0, should_continue: Callable[[], bool] | None = None) -> None:
        """Run tasks in the calling thread until none is claimable (for tests and `stratus worker --once`)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            task = self.claim()
            if task is None:
                return
            self.run_one(task)
