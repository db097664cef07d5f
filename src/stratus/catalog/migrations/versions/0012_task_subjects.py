"""task subjects: the instance a task works on and the image a copy reads, as indexed columns

The mutexes of CreateImage (one capture of an instance at a time) and DeleteImages (not while a copy reads
the image) found their task with a LIKE over the JSON payload: a scan of every task. They compare
`tasks.instance_id` and `tasks.source_image_id` now, through partial indexes over the tasks that have one.
The columns of the tasks in flight (QUEUED or RUNNING) are filled from their payload, so a task running
across the upgrade keeps its mutex; finished tasks keep NULL (nothing looks them up by subject).

Revision ID: 0012_task_subjects
Revises: 0011_describe_indexes
"""

import json
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0012_task_subjects"
down_revision = "0011_describe_indexes"
branch_labels = None
depends_on = None

# index name -> its column; each is partial over the rows that have the column
INDEXES = {"ix_tasks_instance_kind_state": "instance_id", "ix_tasks_source_image_kind_state": "source_image_id"}


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("instance_id", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("source_image_id", sa.String(length=16), nullable=True))
    for name, column in INDEXES.items():
        where = sa.text(f"{column} IS NOT NULL")
        op.create_index(name, "tasks", [column, "kind", "state"], sqlite_where=where, postgresql_where=where)
    _backfill()


def _subjects(kind: str, payload: dict[str, Any]) -> dict[str, str]:
    """The subject columns of a task as the code of this revision sets them (tasks/runner.py `enqueue`)."""
    if kind == "capture":
        return {"instance_id": payload["instance_id"]}
    if kind == "instance" and payload.get("op") == "reset":
        return {"instance_id": payload["instance_ids"][0]}
    if kind == "sync":
        return {"source_image_id": payload["source_image_id"]}
    return {}


def _backfill() -> None:
    conn = op.get_bind()
    tasks = sa.table("tasks", sa.column("id"), sa.column("kind"), sa.column("state"), sa.column("payload"),
                     sa.column("instance_id"), sa.column("source_image_id"))
    rows = conn.execute(sa.select(tasks.c.id, tasks.c.kind, tasks.c.payload).where(
        tasks.c.state.in_(("QUEUED", "RUNNING")), tasks.c.kind.in_(("capture", "instance", "sync")))).all()
    for task_id, kind, payload in rows:
        values = _subjects(kind, json.loads(payload or "{}"))
        if values:
            conn.execute(sa.update(tasks).where(tasks.c.id == task_id).values(**values))


def downgrade() -> None:
    for name in INDEXES:
        op.drop_index(name, "tasks")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("source_image_id")
        batch.drop_column("instance_id")
