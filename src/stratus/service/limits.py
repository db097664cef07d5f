"""Per-account limits that aren't quotas of one resource: tasks in flight, and the request rate.

Counting limits are checked inside the transaction that creates the work, serialized per account (the
account row locked on PostgreSQL, BEGIN IMMEDIATE on SQLite), so concurrent requests can't overshoot.

The request rate is a token bucket per account in this process's memory: `limits.requests_per_second`
tokens a second, at most `limits.request_burst` saved up. With several API processes each keeps its own
buckets, so an account may make that many calls per second to each (docs/config.md).
"""

from __future__ import annotations

import threading
import time

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from stratus.catalog.models import Account, Task
from stratus.domain import errors
from stratus.service.context import Services

IN_FLIGHT = ("QUEUED", "RUNNING")


def lock_account(svc: Services, s: Session, account_id: str) -> None:
    """Serialize the quota and limit checks of one account until `s` commits: the account row locked on
    PostgreSQL (SQLite's BEGIN IMMEDIATE already serializes writers). Every count-then-create of an
    account's images, instances, uploads or tasks takes it first, so two requests can't both take the
    last slot."""
    if svc.db.is_postgresql:
        s.execute(select(Account.id).where(Account.id == account_id).with_for_update())


def check_tasks(svc: Services, s: Session, account_id: str, wanted: int = 1) -> None:
    """Refuse work that would take the account past `limits.tasks_per_account` tasks queued or running."""
    limit = svc.settings.limits.tasks_per_account
    lock_account(svc, s, account_id)
    running = s.scalar(select(func.count()).select_from(Task).where(
        Task.account_id == account_id, Task.state.in_(IN_FLIGHT))) or 0
    if running + wanted > limit:
        raise errors.LimitExceeded(
            detail=f"You have {running} tasks queued or running; the limit is {limit} (limits.tasks_per_account). "
            "Retry when some finish (DescribeTasks)."
        )


class RateLimiter:
    """Token buckets per account, for one process. Thread-safe; idle accounts' buckets are dropped."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, max(1, burst)
        self._buckets: dict[str, tuple[float, float]] = {}  # account → (tokens, when)
        self._lock = threading.Lock()

    def take(self, account_id: str, now: float | None = None) -> None:
        """Spend one token of the account's bucket, or raise RequestLimitExceeded."""
        if self.rate <= 0:
            return
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, when = self._buckets.get(account_id, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - when) * self.rate)
            if tokens < 1.0:
                self._buckets[account_id] = (tokens, now)
                wait = (1.0 - tokens) / self.rate
                raise errors.RequestLimitExceeded(
                    detail=f"more than {self.rate:g} requests a second (bursts of {self.burst}) from this account; "
                    f"retry in {wait:.2f} s"
                )
            self._buckets[account_id] = (tokens - 1.0, now)
            if len(self._buckets) > 10_000:  # forget full buckets: they are what a new one would be
                full = [a for a, (t, w) in self._buckets.items() if t + (now - w) * self.rate >= self.burst]
                for a in full:
                    del self._buckets[a]
