"""The `--whole-file` path of `stratus image import/export` (and `stratus image upload`, `stratus demo`): the
file goes up as it is, resumably, for the server to check and convert, and a server-side export comes down
as a sparse file. The chunked path, the default, is cli/chunked.py; both talk through cli/dataclient.py."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from stratus.cli.common import EXIT_FAILED, Endpoint, console, die
from stratus.cli.dataclient import BLOCK, bytes_progress, http_client, refused, signed_get, signed_post
from stratus.cli.resume import Unfinished

if TYPE_CHECKING:
    import httpx

UNFINISHED = Unfinished("uploads.json")


# --------------------------------------------------------------------------- upload


def upload_file(ep: Endpoint, path: Path, declared_format: str | None = None) -> str:
    """Upload (or resume uploading) a file; returns its upload id."""
    size = path.stat().st_size
    key = Unfinished.key(ep, path)
    with http_client(ep) as client:
        upload_id = UNFINISHED.recall(key)
        received = 0
        if upload_id:
            r = signed_get(client, ep, f"/uploads/{upload_id}")
            if r.status_code == 200:
                info = r.json()["Response"]
                received = info["Received"]
                if info["State"] == "COMPLETE":
                    return upload_id
                console.print(f"resuming upload {upload_id} at {received} of {size} bytes")
            else:
                upload_id = None
        if not upload_id:
            body = json.dumps({"Size": size, "Name": path.name,
                               **({"Format": declared_format} if declared_format else {})})
            r = signed_post(client, ep, "/uploads", body.encode())
            if r.status_code != 200:
                refused("upload", r)
            upload_id = r.json()["Response"]["UploadId"]
            UNFINISHED.remember(key, upload_id)
        _send(client, ep, path, upload_id, size, received)
    UNFINISHED.remember(key, None)
    return upload_id


def _send(client: httpx.Client, ep: Endpoint, path: Path, upload_id: str, size: int, received: int) -> None:
    """PUT the file from ``received`` on; after a dropped connection or a refused offset, go on from where the
    server says it is."""
    import httpx

    with bytes_progress() as progress, path.open("rb") as f:
        bar = progress.add_task(f"upload {path.name}", total=size, completed=received)
        attempts = 0
        while received < size:
            start = received

            def body_iter(start: int = start) -> Iterator[bytes]:
                f.seek(start)
                while True:
                    block = f.read(BLOCK)
                    if not block:
                        return
                    progress.advance(bar, len(block))
                    yield block

            query = f"offset={start}"
            headers = ep.signed_headers("PUT", f"/uploads/{upload_id}", query=query, body=None,
                                        content_type="application/octet-stream")
            headers["Content-Length"] = str(size - start)
            try:
                r = client.put(f"/uploads/{upload_id}?{query}", content=body_iter(), headers=headers)
            except httpx.TransportError as exc:
                attempts += 1
                if attempts > 5:
                    die(f"upload interrupted ({exc}); run the same command again to resume", EXIT_FAILED)
                time.sleep(min(2**attempts, 10))
                r = signed_get(client, ep, f"/uploads/{upload_id}")
                received = r.json()["Response"]["Received"] if r.status_code == 200 else start
                progress.update(bar, completed=received)
                continue
            if r.status_code == 409 and "Received" in r.json().get("Response", {}):
                # Our earlier request is still being read, or landed: resume where the server says.
                attempts += 1
                if attempts > 5:
                    refused("upload", r)
                time.sleep(min(2**attempts, 10))
                received = r.json()["Response"]["Received"]
                progress.update(bar, completed=received)
                continue
            if r.status_code != 200:
                refused("upload", r)
            received = r.json()["Response"]["Received"]
            progress.update(bar, completed=received)


# --------------------------------------------------------------------------- download


def download_sparse(ep: Endpoint, path: str, dest: Path, label: str) -> None:
    """Fetch only the data runs of an exported file (Range requests) into a sparse file: a raw disk of
    4 GiB holding 1 GiB of data costs 1 GiB on the wire and on disk, not 4."""
    with http_client(ep) as client:
        r = signed_get(client, ep, path, query="extents")
        if r.status_code != 200:
            refused("download", r)
        info = r.json()["Response"]
        extents = info["Extents"]
        with bytes_progress() as progress, dest.open("wb") as f:
            f.truncate(info["Size"])
            bar = progress.add_task(f"download {label}", total=sum(n for _, n in extents))
            for start, length in extents:
                headers = ep.signed_headers("GET", path)
                headers["Range"] = f"bytes={start}-{start + length - 1}"
                with client.stream("GET", path, headers=headers) as resp:
                    if resp.status_code != 206:
                        resp.read()
                        refused("download", resp)
                    offset = start
                    for block in resp.iter_bytes(BLOCK):
                        os.pwrite(f.fileno(), block, offset)
                        offset += len(block)
                        progress.advance(bar, len(block))
                    if offset != start + length:
                        die(f"download of {label} ended early at byte {offset}; run the command again", EXIT_FAILED)
