"""The state machines of images, instances and tasks: every pair of states, legal or not, and the catalog
writers that must consult them (a real catalog, SQLite or PostgreSQL).

The legal moves are written out here by hand from the contract (§9) and docs/design.md, not read back from
domain/states.py, so a table edited by mistake fails this test."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from stratus.catalog import migrate
from stratus.catalog.db import Database, open_database
from stratus.catalog.models import Account, Image, Instance, Task
from stratus.domain import errors
from stratus.domain.states import (
    IllegalTransition,
    ImageState,
    InstanceState,
    TaskState,
    check_image,
    check_instance,
    check_task,
)
from stratus.service.image_rules import set_image_state
from stratus.service.instances import set_states
from stratus.tasks.runner import TaskContext, TaskRunner, enqueue
from tests.conftest import new_db_url

Im, N, T = ImageState, InstanceState, TaskState

IMAGE_LEGAL = {
    (Im.IMPORTING, Im.NORMAL), (Im.IMPORTING, Im.IMPORTFAILED),
    (Im.CREATING, Im.NORMAL), (Im.CREATING, Im.CREATEFAILED),
    (Im.SYNCING, Im.NORMAL), (Im.SYNCING, Im.CREATEFAILED),
}
INSTANCE_LEGAL = {
    (N.PENDING, N.RUNNING), (N.PENDING, N.LAUNCH_FAILED),
    (N.RUNNING, N.RUNNING), (N.RUNNING, N.STOPPED), (N.RUNNING, N.STOPPING), (N.RUNNING, N.REBOOTING),
    (N.RUNNING, N.TERMINATING),
    (N.STOPPED, N.STOPPED), (N.STOPPED, N.RUNNING), (N.STOPPED, N.STARTING), (N.STOPPED, N.TERMINATING),
    (N.LAUNCH_FAILED, N.TERMINATING),
    (N.STARTING, N.RUNNING), (N.STARTING, N.STOPPED),
    (N.STOPPING, N.STOPPED), (N.STOPPING, N.RUNNING),
    (N.REBOOTING, N.RUNNING), (N.REBOOTING, N.STOPPED),
    (N.TERMINATING, N.RUNNING), (N.TERMINATING, N.STOPPED), (N.TERMINATING, N.LAUNCH_FAILED),
}
TASK_LEGAL = {
    (T.QUEUED, T.RUNNING),
    (T.RUNNING, T.RUNNING), (T.RUNNING, T.QUEUED), (T.RUNNING, T.DONE), (T.RUNNING, T.FAILED),
}
MACHINES = [("image", ImageState, IMAGE_LEGAL, check_image),
            ("instance", InstanceState, INSTANCE_LEGAL, check_instance),
            ("task", TaskState, TASK_LEGAL, check_task)]


@pytest.mark.parametrize("what, states, legal, check", MACHINES, ids=[m[0] for m in MACHINES])
def test_every_pair_of_states(what: str, states: type, legal: set[tuple[str, str]], check: Any) -> None:
    assert len(list(states)) ** 2 > len(legal) > 0
    for old, new in itertools.product(states, states):
        if (old, new) in legal:
            check(old.value, new)  # accepted: no exception
        else:
            with pytest.raises(IllegalTransition) as info:
                check(old.value, new)
            assert (info.value.what, info.value.old, info.value.new) == (what, old.value, new)
            assert f"{old.value} → {new.value}" in str(info.value)


def test_each_instance_state_has_its_refusal_code() -> None:
    codes = {N.PENDING: "Pending", N.LAUNCH_FAILED: "LaunchFailed", N.RUNNING: "Running", N.STOPPED: "Stopped",
             N.STARTING: "Starting", N.STOPPING: "Stopping", N.REBOOTING: "Rebooting",
             N.TERMINATING: "Terminating"}
    for state in InstanceState:
        exc = errors.InstanceStateError.of("ins-00000001", state, "StartInstances", "STOPPED")
        assert exc.code == "UnsupportedOperation.InstanceState" + codes[state]
        assert exc.message == f"The instance ins-00000001 is {state}; StartInstances needs it STOPPED."


def test_failed_and_normal_images_are_final() -> None:
    for final in (Im.NORMAL, Im.IMPORTFAILED, Im.CREATEFAILED):
        for new in ImageState:
            with pytest.raises(IllegalTransition):
                check_image(final, new)


# --------------------------------------------------------------------------- the writers consult the tables


@pytest.fixture()
def db(tmp_path: Path, db_url: str) -> Iterator[Database]:
    assert db_url  # runs on both databases
    database = open_database(new_db_url(tmp_path))
    migrate.upgrade(database)
    with database.write() as s:
        s.add(Account(id="100000000001", name="alice"))
        s.add(Image(id="img-00000001", region="r", owner_id="100000000001", name="a", state=Im.IMPORTING,
                    source="EXTERNAL_IMPORT"))
        s.add(Instance(id="ins-00000001", region="r", zone="r-1", owner_id="100000000001", instance_type="S5",
                       image_id="img-00000001", state=N.PENDING))
    try:
        yield database
    finally:
        database.dispose()


def test_image_writer_refuses_an_illegal_move_and_writes_nothing(db: Database) -> None:
    with db.write() as s:
        set_image_state(s, "img-00000001", Im.NORMAL, progress=100.0)
    with pytest.raises(IllegalTransition), db.write() as s:
        set_image_state(s, "img-00000001", Im.IMPORTFAILED, reason="too late")
    with db.read() as s:
        assert s.scalar(select(Image.state).where(Image.id == "img-00000001")) == Im.NORMAL


def test_instance_writer_refuses_an_illegal_move(db: Database) -> None:
    with pytest.raises(IllegalTransition), db.write() as s:
        set_states(s, ["ins-00000001"], N.STOPPING)  # a launch never stops half-way
    with db.write() as s:
        set_states(s, ["ins-00000001"], N.RUNNING, op_state="SUCCESS")
    with db.read() as s:
        assert s.scalar(select(Instance.state).where(Instance.id == "ins-00000001")) == N.RUNNING


class _Done:
    def run(self, ctx: TaskContext) -> dict[str, Any]:
        return {"ok": True}

    def fail(self, ctx: TaskContext, reason: str) -> None:
        raise AssertionError(reason)


def test_task_runner_moves_a_task_along_the_table(db: Database) -> None:
    """QUEUED → RUNNING (claim) → DONE through the checks; a DONE task is never claimed again (the claim's
    query and check_task both stand in the way)."""
    with db.write() as s:
        task_id = enqueue(s, "t", {}).id
    runner = TaskRunner(db, {"t": _Done()}, lease_seconds=30)
    claimed = runner.claim()
    assert claimed is not None and claimed.id == task_id and claimed.state == T.RUNNING
    runner.run_one(claimed)
    with db.read() as s:
        assert s.scalar(select(Task.state).where(Task.id == task_id)) == T.DONE
    assert runner.claim() is None
