"""Logging: one JSON object per line (or plain text), each line carrying the request or task it is about.

The API layer sets the RequestId of the request being served and the task runner's handlers set the
task id and kind, both in context variables; a filter copies them onto every record, so any line logged
while serving a request or running a task says which one (`request_id`, `task_id`, `task_kind`).
Context variables follow the request into the thread pool (Starlette copies the context), and each
worker thread runs one task at a time.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Literal

from pythonjsonlogger.json import JsonFormatter

LogFormat = Literal["json", "text"]

REQUEST_ID: ContextVar[str | None] = ContextVar("stratus_request_id", default=None)
TASK: ContextVar[tuple[int, str] | None] = ContextVar("stratus_task", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s%(context)s"
JSON_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class ContextFilter(logging.Filter):
    """Copies the current request id and task onto the record (only those that are set)."""

    def filter(self, record: logging.LogRecord) -> bool:
        parts = []
        request_id = REQUEST_ID.get()
        if request_id is not None:
            record.request_id = request_id
            parts.append(f"request_id={request_id}")
        task = TASK.get()
        if task is not None:
            record.task_id, record.task_kind = task
            parts.append(f"task={task[0]} kind={task[1]}")
        record.context = f" [{' '.join(parts)}]" if parts else ""
        return True


class _Json(JsonFormatter):
    def process_log_record(self, log_record: dict) -> dict:
        log_record.pop("context", None)  # the text form of request_id/task_id, already fields here
        return log_record


def default_format(stream: object = None) -> LogFormat:
    """JSON when the output is a file or a pipe (a service manager, a collector), text on a terminal."""
    stream = stream or sys.stderr
    isatty = getattr(stream, "isatty", None)
    return "text" if isatty is not None and isatty() else "json"


def setup(level: str = "info", fmt: LogFormat | None = None) -> None:
    """Configure the root logger once for `stratus serve` / `stratus worker` (stderr)."""
    fmt = fmt or default_format(sys.stderr)
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    if fmt == "json":
        handler.setFormatter(_Json(JSON_FORMAT, rename_fields={"asctime": "time", "levelname": "level",
                                                                "name": "logger"}))
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # uvicorn's own loggers go through ours (uvicorn.run gets log_config=None); its access log is ours too.
    logging.getLogger("uvicorn").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))  # a line per URL-import request


@contextmanager
def task_context(task_id: int, kind: str) -> Iterator[None]:
    token = TASK.set((task_id, kind))
    try:
        yield
    finally:
        TASK.reset(token)
