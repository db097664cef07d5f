"""Bring the service up: migrate the catalog, create the region directories, start the workers."""

from __future__ import annotations

from stratus.catalog import migrate
from stratus.config import Settings
from stratus.service.context import Services
from stratus.service.export_task import ExportHandler
from stratus.service.import_task import ImportHandler
from stratus.tasks.runner import Handler, TaskRunner


def prepare(settings: Settings) -> Services:
    """Open the catalog (upgrading its schema) and lay out the data directory."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.tmp_dir.mkdir(parents=True, exist_ok=True)
    settings.uploads_dir.mkdir(parents=True, exist_ok=True)
    for region in settings.regions:
        region.store_path.mkdir(parents=True, exist_ok=True)
        region.host_path.mkdir(parents=True, exist_ok=True)
        for bucket in region.buckets:
            bucket.path.mkdir(parents=True, exist_ok=True)
    svc = Services.open(settings)
    migrate.upgrade(svc.db)
    return svc


def task_handlers(svc: Services) -> dict[str, Handler]:
    return {"import": ImportHandler(svc), "export": ExportHandler(svc)}


def start_workers(svc: Services) -> TaskRunner:
    runner = TaskRunner(svc.db, task_handlers(svc), workers=svc.settings.workers,
                        lease_seconds=svc.settings.limits.task_lease_seconds)
    svc.on_task_queued = runner.wake
    runner.start()
    return runner
