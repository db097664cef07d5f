"""Request bodies read into page-aligned, reused buffers: the chunk batches of a chunked upload.

A batch's chunks sit at page-aligned offsets of its body (domain/chunkframes.py), so once the body is in a
page-aligned buffer each chunk goes to the store's O_DIRECT write as it is: no copy to align it, and no
fresh pages for every request (on a VM, faulting in new memory costs more than the copy it would hold).
"""

from __future__ import annotations

import contextlib
import mmap
import threading
from collections.abc import AsyncIterator, Iterator

from starlette.requests import Request

from stratus.domain import errors

_POOLED_MAX = 16 * 1024 * 1024  # larger buffers are not kept (a client sending 64 MiB batches pays for its pages)
_POOL_SIZE = 8
_pool: list[mmap.mmap] = []
_lock = threading.Lock()


@contextlib.contextmanager
def _buffer(size: int) -> Iterator[mmap.mmap]:
    with _lock:
        found = next((b for b in _pool if len(b) >= size), None)
        if found is not None:
            _pool.remove(found)
    buf = found if found is not None else mmap.mmap(-1, max(size, 1))
    try:
        yield buf
    finally:
        if len(buf) <= _POOLED_MAX:
            with _lock:
                if len(_pool) < _POOL_SIZE:
                    _pool.append(buf)
                    buf = None  # type: ignore[assignment]  # kept: not closed below
        if buf is not None:
            with contextlib.suppress(BufferError):  # a view still held: let the garbage collector close it
                buf.close()


@contextlib.asynccontextmanager
async def aligned_body(request: Request, limit: int) -> AsyncIterator[memoryview]:
    """The request body in a page-aligned buffer, valid inside the ``async with`` only. The request must
    say its Content-Length (RequestSizeLimitExceeded past ``limit``, MissingParameter without one)."""
    declared = request.headers.get("content-length")
    if declared is None or not declared.isdigit():
        raise errors.MissingParameter(name="Content-Length (a chunk batch says its size)")
    size = int(declared)
    if size > limit:
        raise errors.RequestSizeLimitExceeded(limit=limit)
    with _buffer(size) as buf:
        view = memoryview(buf)
        pos = 0
        async for piece in request.stream():
            if pos + len(piece) > size:
                raise errors.InvalidParameterValue(detail=f"The body is longer than its Content-Length {size}.")
            view[pos : pos + len(piece)] = piece
            pos += len(piece)
        if pos != size:
            raise errors.InvalidParameterValue(detail=f"The body ended after {pos} of {size} bytes.")
        yield view[:size]
