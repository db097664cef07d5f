"""DescribeTasks (an extension action): the caller's own tasks and the files its exports wrote."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import select

from stratus.catalog.models import ExportObject, Task
from stratus.service.context import Caller, Services


def describe_tasks(svc: Services, caller: Caller, task_ids: Sequence[int]) -> list[Task]:
    """The caller's own tasks (unknown or foreign ids are simply absent)."""
    with svc.db.read() as s:
        return list(
            s.scalars(select(Task).where(Task.id.in_(list(task_ids)), Task.account_id == caller.account_id)).all()
        )


def export_objects_of(svc: Services, task_ids: Iterable[int]) -> dict[int, list[ExportObject]]:
    with svc.db.read() as s:
        rows = s.scalars(select(ExportObject).where(ExportObject.task_id.in_(list(task_ids)))).all()
    out: dict[int, list[ExportObject]] = {}
    for row in rows:
        out.setdefault(row.task_id, []).append(row)
    return out
