"""The task mutexes, in-process on SQLite and PostgreSQL with no worker running (so every task stays
QUEUED): one capture of an instance at a time, and no DeleteImages of an image a copy reads. They find
their task by `tasks.instance_id` and `tasks.source_image_id` (migration 0012), which the requests set."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, update

from stratus.catalog import migrate
from stratus.catalog.models import Account, Image, ImageDisk, Instance, InstanceDisk, Task
from stratus.config import load_settings
from stratus.domain import errors
from stratus.service.capture import create_image
from stratus.service.context import Caller, Services
from stratus.service.images import delete_images
from stratus.service.instances import reset_instance
from stratus.service.sync import sync_images

GZ, SH = "ap-guangzhou", "ap-shanghai"
ME = Caller("acc-mutex0001")
IMAGE = "img-mutex001"
FIRST, SECOND = "ins-mutex001", "ins-mutex002"


@pytest.fixture(scope="module")
def svc(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    tmp: Path = tmp_path_factory.mktemp("mutex")
    services = Services.open(load_settings(data_dir=tmp, config_file=None, env={"STRATUS_DATABASE_URL": db_url}))
    migrate.upgrade(services.db)
    with services.db.write() as s:
        s.add(Account(id=ME.account_id, name="mutex"))
        s.flush()
        s.add(Image(id=IMAGE, region=GZ, owner_id=ME.account_id, name="source", state="NORMAL",
                    source="EXTERNAL_IMPORT",
                    disks=[ImageDisk(index=0, snapshot_id="snap-mutex001", usage="SYSTEM_DISK",
                                     virtual_size=1 << 30, manifest_digest="ab" * 32)]))
        for iid in (FIRST, SECOND):
            s.add(Instance(id=iid, region=GZ, zone=f"{GZ}-1", owner_id=ME.account_id, instance_type="S5.SMALL1",
                           image_id=IMAGE, state="RUNNING",
                           disks=[InstanceDisk(id="disk-" + iid[4:], index=0, usage="SYSTEM_DISK", size_gib=1,
                                               path=str(tmp / f"{iid}.qcow2"))]))
    yield services
    services.db.dispose()


def _tasks(svc: Services, kind: str) -> list[Task]:
    with svc.db.read() as s:
        return list(s.scalars(select(Task).where(Task.kind == kind).order_by(Task.id)))


def test_a_second_create_image_of_an_instance_waits_for_the_first(svc: Services) -> None:
    create_image(svc, ME, GZ, name="first-capture", instance_id=FIRST)
    with pytest.raises(errors.MutexOperationTaskRunning):
        create_image(svc, ME, GZ, name="second-capture", instance_id=FIRST)
    # Another instance's capture is not held up by it.
    create_image(svc, ME, GZ, name="other-capture", instance_id=SECOND)
    assert [t.instance_id for t in _tasks(svc, "capture")] == [FIRST, SECOND]
    # Once the first capture has ended, the instance may be captured again (as far as the mutex goes).
    with svc.db.write() as s:
        s.execute(update(Task).where(Task.kind == "capture", Task.instance_id == FIRST).values(state="DONE"))
        s.execute(update(Instance).where(Instance.id == FIRST).values(latest_operation_state="SUCCESS"))
    create_image(svc, ME, GZ, name="again-capture", instance_id=FIRST)


def test_a_reset_names_its_instance(svc: Services) -> None:
    with svc.db.write() as s:
        s.execute(update(Instance).where(Instance.id == SECOND).values(latest_operation_state="SUCCESS"))
    reset_instance(svc, ME, GZ, SECOND)
    [reset] = _tasks(svc, "instance")
    assert (reset.instance_id, reset.source_image_id) == (SECOND, None)


def test_delete_images_refuses_the_source_of_a_copy_in_flight(svc: Services) -> None:
    [copy] = sync_images(svc, ME, GZ, [IMAGE], [SH])
    [task] = _tasks(svc, "sync")
    assert (task.source_image_id, task.image_id, task.instance_id) == (IMAGE, copy.image_id, None)
    with pytest.raises(errors.MutexOperationTaskRunning):
        delete_images(svc, ME, GZ, [IMAGE])
    with svc.db.write() as s:  # the copy ends: the source may go
        s.execute(update(Task).where(Task.id == task.id).values(state="DONE"))
    delete_images(svc, ME, GZ, [IMAGE], dry_run=True)
