"""Bring the service up: migrate the catalog, create the region directories, start the workers."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from stratus import logs
from stratus.catalog import migrate
from stratus.config import Settings
from stratus.service.bases import sweep_released_bases
from stratus.service.context import Services
from stratus.service.export_task import ExportHandler
from stratus.service.hosts import LOCAL, HostAgent, remove_orphans
from stratus.service.import_task import ImportHandler
from stratus.tasks.runner import Handler, TaskContext, TaskRunner

log = logging.getLogger(__name__)


def catalog_exists(settings: Settings) -> bool:
    """Whether the catalog has been created (by a server's first start, or `--init`); never creates one."""
    from sqlalchemy import inspect

    from stratus.catalog.db import open_database

    url = settings.database_url
    if url.startswith("sqlite"):
        path = url.split("sqlite:///", 1)[-1]
        if path != ":memory:" and not Path(path).is_file():
            return False
    db = open_database(url)
    try:
        return inspect(db.read_engine).has_table("alembic_version")
    finally:
        db.dispose()


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
    from stratus.service.capture import CaptureHandler
    from stratus.service.instance_tasks import InstanceHandler, LaunchHandler
    from stratus.service.sync import SyncHandler

    handlers: dict[str, Handler] = {
        "import": ImportHandler(svc),
        "export": ExportHandler(svc),
        "launch": LaunchHandler(svc),
        "instance": InstanceHandler(svc),
        "capture": CaptureHandler(svc),
        "sync": SyncHandler(svc),
    }
    return {kind: LoggedHandler(h) for kind, h in handlers.items()}


class LoggedHandler:
    """Runs a handler with its task's id and kind in the logging context (every line it logs says which)."""

    def __init__(self, inner: Handler) -> None:
        self.inner = inner

    def run(self, ctx: TaskContext) -> dict[str, Any] | None:
        with logs.task_context(ctx.task_id, ctx.kind):
            log.info("%s task %s started (attempt %d)", ctx.kind, ctx.task_id, ctx.attempt)
            started = time.monotonic()
            result = self.inner.run(ctx)
            log.info("%s task %s done in %.1f s", ctx.kind, ctx.task_id, time.monotonic() - started)
            return result

    def fail(self, ctx: TaskContext, reason: str) -> None:
        with logs.task_context(ctx.task_id, ctx.kind):
            log.warning("%s task %s failed: %s", ctx.kind, ctx.task_id, reason)
            self.inner.fail(ctx, reason)

    def __getattr__(self, name: str) -> Any:  # anything else the runner asks of the handler
        return getattr(self.inner, name)


def start_workers(svc: Services, host: str = LOCAL, *, compute: str = "", capacity: int = 0) -> TaskRunner:
    """Be the compute host `host` (`local`: the single machine of the default setup): adopt the VMs that
    survived a restart (or clean them up) and the disks of instances terminated while it was down,
    register with a heartbeat, then start the task workers, which run its instances' tasks and any
    unbound task. `compute` ("disk" or "qemu") overrides the regions' setting for instances placed here;
    `capacity` caps them (0: no cap)."""
    from stratus.compute.driver import get_driver
    from stratus.service.instance_tasks import adopt_vms, on_vm_exit

    get_driver("qemu").set_exit_callback(lambda instance_id, rc: on_vm_exit(svc, instance_id, rc))
    if compute == "qemu" or (not compute and any(r.compute == "qemu" for r in svc.settings.regions)):
        from stratus.compute import accel

        accel.choose()  # KVM or TCG, decided (with a log line) before the first VM starts
    adopted = adopt_vms(svc, host)
    if any(adopted.values()):
        log.info("VMs after restart: %s", adopted)
    orphans = remove_orphans(svc, host)
    if orphans:
        log.info("host %s: removed the disks of %d instances terminated while it was down", host, len(orphans))
    runner = TaskRunner(svc.db, task_handlers(svc), workers=svc.settings.workers,
                        lease_seconds=svc.settings.limits.task_lease_seconds, scratch_root=svc.settings.tmp_dir,
                        host=host)
    # The heartbeat stops with the workers: a host is up while it can run its instances' tasks.
    HostAgent(svc, host, compute=compute, capacity=capacity, stopping=runner.stopping,
              on_beat=lambda: sweep_released_bases(svc, host)).start()
    svc.on_task_queued = runner.wake
    runner.start()
    threading.Thread(target=_housekeeping, args=(svc, runner), name="stratus-housekeeping", daemon=True).start()
    return runner


def _housekeeping(svc: Services, runner: TaskRunner, every: float = 600.0) -> None:
    """Expire uploads nobody imported and exported files past their time, and refresh the planner's
    statistics as the catalog grows."""
    from stratus.catalog.migrate import analyze
    from stratus.service.export_task import expire_exports
    from stratus.service.uploads import expire_uploads

    while not runner.stopping.wait(every):
        try:
            expired = expire_uploads(svc)
            if expired:
                log.info("expired %d uploads", expired)
            expired = expire_exports(svc)
            if expired:
                log.info("expired %d exported files", expired)
            analyze(svc.db)
        except Exception:
            log.exception("housekeeping failed; trying again in %s s", every)
