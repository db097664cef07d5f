"""The client of the data API (`/uploads`, `/buckets/...`), in one place for both transfer paths (the
whole file, cli/wholefile.py; chunks, cli/chunked.py): the HTTP client for an Endpoint, requests signed as its
key, an error response in the user's words, and the bar that counts bytes. Only the chunk batches themselves
go another way, over cli/bulk.py's connections (their refusals still read through error_message)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NoReturn, Protocol

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from stratus.cli.common import EXIT_REFUSED, HINTS, Endpoint, console, die

if TYPE_CHECKING:
    import httpx

BLOCK = 1024 * 1024  # bytes per read of a streamed body


class Answer(Protocol):
    """What an error message needs of a response: httpx's, or cli/bulk.py's."""

    @property
    def status_code(self) -> int: ...

    @property
    def text(self) -> str: ...

    def json(self) -> Any: ...


def http_client(ep: Endpoint, timeout: float = 60.0) -> httpx.Client:
    """A keep-alive client to the endpoint's data API; each request is signed on its own (signed_get, ...)."""
    import httpx  # here, not at the top: a CLI start without a data transfer doesn't pay for it

    return httpx.Client(base_url=ep.url, timeout=httpx.Timeout(timeout, connect=10.0))


def signed_get(client: httpx.Client, ep: Endpoint, path: str, query: str = "") -> httpx.Response:
    return client.get(f"{path}?{query}" if query else path, headers=ep.signed_headers("GET", path, query=query))


def signed_post(client: httpx.Client, ep: Endpoint, path: str, body: bytes) -> httpx.Response:
    """POST a JSON body."""
    return client.post(path, content=body, headers=ep.signed_headers("POST", path, body=body))


def error_message(resp: Answer) -> str:
    """The server's error code and message (and what to do about it, where we know), or the HTTP status and
    the start of the body when the answer is no CVM error."""
    try:
        err = resp.json()["Response"]["Error"]
        hint = HINTS.get(err["Code"])
        return f"{err['Code']}: {err['Message']}" + (f" ({hint})" if hint else "")
    except Exception:
        return f"HTTP {resp.status_code}: {resp.text[:200]}"


def refused(what: str, resp: Answer) -> NoReturn:
    """Exit 1: the server refused ``what`` (an upload, a download)."""
    die(f"{what} refused: {error_message(resp)}", EXIT_REFUSED)


def bytes_progress() -> Progress:
    """A bar per transfer on stderr: bytes done, rate and time left."""
    return Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeRemainingColumn(), console=console, transient=False)
