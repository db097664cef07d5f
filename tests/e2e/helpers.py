"""Helpers for end-to-end tests: a file server on a loopback address, polling images."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tencentcloud.cvm.v20170312 import models

from tests.conftest import Account, Server, free_port, wait_for


class _Quiet(http.server.SimpleHTTPRequestHandler):
    hits: list[str]

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        type(self).hits.append(self.path)
        if self.path.startswith("/redirect/"):
            self.send_response(302)
            self.send_header("Location", "http://" + self.path[len("/redirect/"):])
            self.end_headers()
            return
        super().do_GET()


@contextmanager
def file_server(directory: Path, host: str = "127.0.0.2") -> Iterator[tuple[str, list[str]]]:
    """Serve `directory` over HTTP on `host`; yields (base URL, list of paths requested)."""
    handler = type("Handler", (_Quiet,), {"hits": []})
    port = free_port(host)
    httpd = http.server.ThreadingHTTPServer((host, port), functools.partial(handler, directory=str(directory)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{port}", handler.hits
    finally:
        httpd.shutdown()
        httpd.server_close()


def import_request(name: str, url: str, **extra: Any) -> models.ImportImageRequest:
    req = models.ImportImageRequest()
    req._deserialize({"ImageName": name, "ImageUrl": url, "OsType": "CentOS", "OsVersion": "7",
                      "Architecture": "x86_64", **extra})
    return req


def describe(server: Server, account: Account, image_id: str, region: str = "ap-guangzhou") -> dict[str, Any] | None:
    resp = server.common(account, region).call_json("DescribeImages", {"ImageIds": [image_id]})["Response"]
    return resp["ImageSet"][0] if resp["ImageSet"] else None


def wait_image(server: Server, account: Account, image_id: str, *, region: str = "ap-guangzhou",
               timeout: float = 120) -> dict[str, Any]:
    """Wait until the image leaves IMPORTING/CREATING/SYNCING; return its full JSON."""

    def settled() -> dict[str, Any] | None:
        image = describe(server, account, image_id, region)
        assert image is not None, f"{image_id} vanished"
        return image if image["ImageState"] not in ("IMPORTING", "CREATING", "SYNCING") else None

    return wait_for(settled, timeout=timeout, what=f"{image_id} to settle")


def wait_task(server: Server, account: Account, task_id: int, timeout: float = 120) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        task = server.common(account).call_json("DescribeTasks", {"TaskIds": [task_id]})["Response"]["TaskSet"][0]
        return task if task["TaskState"] in ("SUCCESS", "FAILED") else None

    return wait_for(done, timeout=timeout, what=f"task {task_id}")


def catalog_task_result(server: Server, task_id: int) -> dict[str, Any]:
    """A task's whole result as the catalog holds it: the operator's view, with the store-level figures
    (BytesCopied, new_bytes, ...) that DescribeTasks leaves out for other accounts."""
    import json

    from sqlalchemy import select

    from stratus.catalog.db import open_database
    from stratus.catalog.models import Task

    db = open_database(server.env["STRATUS_DATABASE_URL"])
    try:
        with db.read() as s:
            raw = s.scalar(select(Task.result).where(Task.id == task_id))
    finally:
        db.dispose()
    assert raw is not None, f"task {task_id} has no result"
    return json.loads(raw)
