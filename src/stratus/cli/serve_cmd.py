"""`stratus serve`: the API and the workers in one process."""

from __future__ import annotations

import logging

import typer

from stratus.cli.common import EXIT_FAILED, ConfigOpt, DataDirOpt, die, settings
from stratus.config import Settings


def _ready(cfg: Settings):  # type: ignore[no-untyped-def]
    """The service, its catalog migrated and its stores checked: an S3 store that doesn't answer or whose
    bucket is missing stops the start with one line naming region, endpoint and bucket."""
    from stratus.service.runtime import prepare
    from stratus.storage.chunkstore import StoreUnavailable

    svc = prepare(cfg)
    try:
        svc.check_stores()
    except StoreUnavailable as exc:
        svc.db.dispose()
        die(str(exc), EXIT_FAILED)
    return svc


def serve(
    data_dir: str = DataDirOpt,
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8700, "--port"),
    config: str = ConfigOpt,
    no_workers: bool = typer.Option(False, "--no-workers", help="Serve the API only; run `stratus worker` elsewhere."),
    log_level: str = typer.Option("info", "--log-level"),
) -> None:
    """Serve the CVM API and the data API, and run the task workers."""
    import uvicorn

    from stratus.api.app import create_app
    from stratus.service.runtime import start_workers

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = settings(data_dir, config)
    svc = _ready(cfg)
    runner = None if no_workers else start_workers(svc)
    logging.getLogger("stratus").info(
        "serving on http://%s:%d, data in %s, catalog %s", host, port, cfg.data_dir, cfg.database_url.split("@")[-1]
    )
    try:
        uvicorn.run(create_app(svc), host=host, port=port, log_level="warning", http="httptools",
                    timeout_keep_alive=75)
    finally:
        if runner is not None:
            runner.stop()
        svc.db.dispose()


def worker(
    data_dir: str = DataDirOpt,
    config: str = ConfigOpt,
    log_level: str = typer.Option("info", "--log-level"),
) -> None:
    """Run task workers only (beside `stratus serve --no-workers`)."""
    import signal
    import threading

    from stratus.service.runtime import start_workers

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    svc = _ready(settings(data_dir, config))
    runner = start_workers(svc)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    runner.stop()
