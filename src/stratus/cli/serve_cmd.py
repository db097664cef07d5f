"""`stratus serve`: the API and the workers in one process."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from stratus.cli.common import EXIT_FAILED, ConfigOpt, DataDirOpt, catalog_label, console, die, settings

if TYPE_CHECKING:
    from stratus.config import Settings

LogLevelOpt = typer.Option("info", "--log-level", help="debug, info, warning or error.")
LogFormatOpt = typer.Option(None, "--log-format", help="json (one object per line) or text; default json "
                            "unless stderr is a terminal.")


def _setup_logs(level: str, fmt: str | None) -> str:
    """Configure logging; returns the format in effect (json or text)."""
    from stratus import logs

    if fmt not in (None, "json", "text"):
        die(f"--log-format must be json or text, not {fmt!r}")
    fmt = fmt or logs.default_format(sys.stderr)
    logs.setup(level, fmt)  # type: ignore[arg-type]  # checked above: "json" or "text", the LogFormat literals
    return fmt


def _ready(cfg: Settings):
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


def first_lines(cfg: Settings, host: str, port: int, config: str | None = None) -> str:
    """Where it serves, and what a new user runs next (in another terminal)."""
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    computes = sorted({r.compute for r in cfg.regions})
    # Admin verbs must find the same catalog: name what they can't guess from the directory they run in.
    data_dir = "" if cfg.data_dir == Path("var").absolute() else f" --data-dir {cfg.data_dir}"
    if config:
        data_dir += f" --config {Path(config).absolute()}"
    return (
        f"Stratus serves {url} (data directory {cfg.data_dir}, catalog {catalog_label(cfg)}, "
        f"compute {'/'.join(computes)})\n"
        f"Next, in another terminal in {Path.cwd()}:\n"
        f"  export PATH={Path(sys.executable).parent}:$PATH STRATUS_ENDPOINT={url}\n"
        f"  stratus demo{data_dir}   # a bootable public image, stratus-tiny-linux, in every region\n"
        f'  eval "$(stratus account create alice{data_dir})"   # admin verbs act on this data directory\n'
        f"  stratus image list   # the README's Quickstart goes on from here"
    )


def serve(
    data_dir: str = DataDirOpt,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
    port: int = typer.Option(8700, "--port", help="Port to listen on (`make run PORT=8800`)."),
    config: str = ConfigOpt,
    no_workers: bool = typer.Option(False, "--no-workers", help="Serve the API only; run `stratus worker` elsewhere."),
    log_level: str = LogLevelOpt,
    log_format: str = LogFormatOpt,
) -> None:
    """Serve the CVM API and the data API, and run the task workers."""
    import uvicorn

    from stratus.api.app import create_app
    from stratus.service.runtime import start_workers

    fmt = _setup_logs(log_level, log_format)
    # uvicorn handles SIGTERM/SIGINT while it serves, then raises the signal again under the handler that
    # was there before: ours turns it into SystemExit, so the `finally` below stops the workers gracefully
    # (their tasks are handed back, not left to look like a crash) instead of the process just dying.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_on_signal)
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("alembic").setLevel(logging.WARNING)  # so the first lines are where and what next
    cfg = settings(data_dir, config)
    svc = _ready(cfg)  # the server's first start creates the catalog
    if fmt == "text":
        console.print(first_lines(cfg, host, port, config), highlight=False, soft_wrap=True)
    else:  # every line of a JSON-logging server's output is one JSON object, the first lines too
        logging.getLogger("stratus").info("%s", first_lines(cfg, host, port, config))
    runner = None if no_workers else start_workers(svc)
    logging.getLogger("stratus").info(
        "serving on http://%s:%d, data in %s, catalog %s", host, port, cfg.data_dir, catalog_label(cfg)
    )
    try:
        uvicorn.run(create_app(svc), host=host, port=port, log_config=None, access_log=False, http="httptools",
                    timeout_keep_alive=75)
    finally:
        if runner is not None:
            runner.stop()
        svc.db.dispose()


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def worker(
    data_dir: str = DataDirOpt,
    config: str = ConfigOpt,
    log_level: str = LogLevelOpt,
    log_format: str = LogFormatOpt,
    metrics_port: int = typer.Option(0, "--metrics-port", help="Serve this process's counters (bytes "
                                     "ingested, exported, copied; chunk verify failures) at "
                                     "http://127.0.0.1:PORT/metrics; 0: don't."),
    host: str = typer.Option("local", "--host", help="Be the compute host NAME: instances placed on it run "
                             "here (its own directory under each region's host dir); `local` is the "
                             "single-machine host `stratus serve` is."),
    compute: str = typer.Option("", "--compute", help="disk or qemu, for the instances placed on this host "
                                "(default: each region's `compute`)."),
    capacity_instances: int = typer.Option(0, "--capacity-instances", min=0, help="At most N instances on this "
                                           "host; 0: no limit."),
) -> None:
    """Run task workers only (beside `stratus serve --no-workers`), as a compute host."""
    import signal
    import threading

    from stratus.service.hosts import check_name
    from stratus.service.runtime import start_workers

    try:
        check_name(host)
    except ValueError as exc:
        die(f"--host: {exc}")
    if compute not in ("", "disk", "qemu"):
        die(f"--compute must be disk or qemu, not {compute!r}")
    _setup_logs(log_level, log_format)
    svc = _ready(settings(data_dir, config))
    if metrics_port:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr="127.0.0.1")
    runner = start_workers(svc, host, compute=compute, capacity=capacity_instances)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    runner.stop()
