"""The data API: resumable uploads (`/uploads`) and downloads of exported files (`/buckets/...`).

Requests are signed with TC3 like the CVM API; upload bodies are streamed, so they are signed as
UNSIGNED-PAYLOAD (the offset in the signed query string still binds each request). Errors use the
CVM error body with a real HTTP status, since no SDK parses these routes.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import Route

from stratus.api.cvm import envelope
from stratus.api.cvm.auth import authenticate
from stratus.api.cvm.endpoint import read_body
from stratus.api.cvm.params import ActionSchema, parse_int64, parse_json, validate
from stratus.api.data.aligned import aligned_body
from stratus.domain import chunkframes, errors
from stratus.service import chunked, downloads, uploads
from stratus.service.context import Services

COMMIT_EVERY = 256 * 1024 * 1024  # make progress durable at least this often during one request

_STATUS = {
    "ResourceNotFound": 404,
    "InvalidParameterValue": 409,
    "ResourceInUse": 409,
    "LimitExceeded": 403,
    "RequestLimitExceeded": 429,
    "InvalidParameterValue.TooLarge": 413,
    "RequestSizeLimitExceeded": 413,
    "RequestTimeout": 408,
    "ServiceUnavailable": 503,
}


def _error(exc: BaseException, request_id: str) -> Response:
    exc = envelope.as_cvm_error(exc, request_id)
    code = exc.code
    status = 401 if code.startswith("AuthFailure") else _STATUS.get(code, 400 if code != "InternalError" else 500)
    if isinstance(exc, uploads.UploadConflict):
        # The offset to resume from, beside the error: a client needs no second request to find it.
        body = envelope.error_body(exc, request_id)
        body["Response"]["Received"] = exc.received
        return Response(json.dumps(body).encode(), status_code=status, headers={"Content-Type": "application/json"})
    return envelope.failure(exc, request_id, status)


def _ok(request_id: str, fields: dict[str, Any]) -> Response:
    return envelope.success(request_id, fields)


def data_extents(path: os.PathLike[str] | str) -> tuple[int, list[list[int]]]:
    """(size, [[offset, length], ...]) of the data runs of a file, by SEEK_DATA/SEEK_HOLE."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        extents: list[list[int]] = []
        offset = 0
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole remains
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            extents.append([start, end - start])
            offset = end
        return size, extents
    finally:
        os.close(fd)


async def _bounded(stream: AsyncIterator[bytes], idle: float, total: float) -> AsyncIterator[bytes]:
    """The request body, refused once the client sends nothing for `idle` seconds or the request runs
    over `total`: a stalled or endless upload can't hold a connection forever. What arrived is kept."""
    deadline = time.monotonic() + total
    iterator = stream.__aiter__()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise errors.RequestTimeout(detail=f"the upload request ran over {total:g} s; resume it")
        try:
            chunk = await asyncio.wait_for(iterator.__anext__(), timeout=min(idle, left))
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise errors.RequestTimeout(detail=f"no upload data for {min(idle, left):g} s; resume it") from None
        yield chunk


MAX_MANIFEST_BYTES = 40 * 1024 * 1024  # the SMF2 manifest of the largest disk (32000 GiB of 1 MiB data chunks)
READ_CHUNKS = ActionSchema({"Digests": [str]}, required=frozenset({"Digests"}))
CREATE_UPLOAD = ActionSchema({"Size": int, "Name": str, "Format": str}, required=frozenset({"Size"}))


def routes(svc: Services) -> list[Route]:
    limits = svc.settings.limits

    async def create(request: Request) -> Response:
        rid = str(uuid.uuid4())
        try:
            body = await read_body(request, 64 * 1024)
            caller = await run_in_threadpool(authenticate, svc, request, body)
            params = validate(parse_json(body), CREATE_UPLOAD, "POST /uploads")
            status = await run_in_threadpool(
                uploads.create_upload, svc, caller, params["Size"], params.get("Name", ""), params.get("Format")
            )
        except Exception as exc:
            return _error(exc, rid)
        return _ok(rid, with_chunk_size(request, status.as_json()))

    def with_chunk_size(request: Request, fields: dict[str, Any]) -> dict[str, Any]:
        # The chunk size of the caller's region: what a chunked upload's manifest must use.
        region = svc.settings.region(request.headers.get("x-tc-region") or "")
        return {**fields, "ChunkSize": region.chunk_size} if region is not None else fields

    async def show(request: Request) -> Response:
        rid = str(uuid.uuid4())
        try:
            caller = await run_in_threadpool(authenticate, svc, request, b"")
            status = await run_in_threadpool(uploads.get_upload, svc, caller, request.path_params["upload_id"])
        except Exception as exc:
            return _error(exc, rid)
        return _ok(rid, with_chunk_size(request, status.as_json()))

    async def append(request: Request) -> Response:
        rid = str(uuid.uuid4())
        upload_id = request.path_params["upload_id"]
        try:
            caller = await run_in_threadpool(authenticate, svc, request, b"")
            offset_raw = request.query_params.get("offset")
            if offset_raw is None:
                raise errors.MissingParameter(name="offset")
            offset = parse_int64(offset_raw, "offset")
            status = await run_in_threadpool(uploads.begin_append, svc, caller, upload_id, offset, rid)
        except Exception as exc:
            return _error(exc, rid)
        received = committed = status.received
        claim_until = status.claim_until or 0.0
        fd = os.open(uploads.path_of(svc, upload_id), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            try:
                async for chunk in _bounded(request.stream(), limits.upload_idle_seconds,
                                            limits.upload_request_seconds):
                    if received + len(chunk) > status.size:
                        raise errors.InvalidParameterValue(
                            detail=f"Upload {upload_id} is {status.size} bytes; the body runs past its end."
                        )
                    # Renew the claim (a commit) before half of it is gone, and before writing: a writer that
                    # was paused past its claim finds it taken here and stops without touching the file.
                    if received - committed >= COMMIT_EVERY or \
                            time.time() >= claim_until - uploads.CLAIM_SECONDS / 2:
                        renewed = await run_in_threadpool(uploads.commit_append, svc, caller, upload_id, fd,
                                                          committed, received, rid)
                        committed, claim_until = received, renewed.claim_until or 0.0
                    os.pwrite(fd, chunk, received)
                    received += len(chunk)
            finally:
                # Whatever arrived before a disconnect or an error is kept: the client resumes from here.
                status = await run_in_threadpool(uploads.commit_append, svc, caller, upload_id, fd, committed,
                                                 received, rid, release=True)
        except Exception as exc:
            return _error(exc, rid)
        finally:
            os.close(fd)
        return _ok(rid, status.as_json())

    async def download(request: Request) -> Response:
        rid = str(uuid.uuid4())
        try:
            caller = await run_in_threadpool(authenticate, svc, request, b"")
            found = await run_in_threadpool(downloads.authorize_download, svc, caller,
                                            request.headers.get("x-tc-region"), request.path_params["bucket"],
                                            request.path_params["key"])
            key = found.key
            if found.path is None:
                return await _s3_download(request, rid, found.objects, key)
            path = found.path
            if "extents" in request.query_params:
                # Where the file holds data: a client fetches only those ranges and leaves holes as holes,
                # instead of streaming every zero of a sparse raw disk.
                size, extents = await run_in_threadpool(data_extents, path)
                return _ok(rid, {"Size": size, "Extents": extents})
        except Exception as exc:
            return _error(exc, rid)
        return FileResponse(path, media_type="application/octet-stream", filename=os.path.basename(key))

    async def _s3_download(request: Request, rid: str, objects: Any, key: str) -> Response:
        """An export kept in S3, streamed through the server (same authorization as a directory bucket);
        one byte range per request, as the CLI's sparse download asks."""
        size = await run_in_threadpool(objects.size, key)
        if size is None:
            raise errors.ResourceNotFound(detail=f"No object {key!r} in the bucket.")
        if "extents" in request.query_params:
            return _ok(rid, {"Size": size, "Extents": [[0, size]] if size else []})
        start, end, status = 0, size - 1, 200
        spec = request.headers.get("range", "")
        if spec.startswith("bytes=") and "," not in spec:
            lo, _, hi = spec[6:].partition("-")
            if lo.isdigit():
                start, end, status = int(lo), min(int(hi) if hi.isdigit() else size - 1, size - 1), 206
        if size == 0 or start > end:
            return Response(b"", status_code=200 if size == 0 else 416,
                            headers={"Content-Range": f"bytes */{size}"})
        headers = {"Content-Length": str(end - start + 1), "Accept-Ranges": "bytes",
                   "Content-Disposition": f'attachment; filename="{os.path.basename(key)}"'}
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        pieces = await run_in_threadpool(objects.read, key, start, end)
        return StreamingResponse(iterate_in_threadpool(pieces), status_code=status, headers=headers,
                                 media_type="application/octet-stream")

    async def manifest(request: Request) -> Response:
        rid = str(uuid.uuid4())
        try:
            body = await read_body(request, MAX_MANIFEST_BYTES)
            caller = await run_in_threadpool(authenticate, svc, request, body)
            answer = await run_in_threadpool(chunked.set_manifest, svc, caller, request.path_params["upload_id"],
                                             request.headers.get("x-tc-region"), body)
        except Exception as exc:
            return _error(exc, rid)
        return _ok(rid, answer.as_json())

    async def put_chunks(request: Request) -> Response:
        rid = str(uuid.uuid4())
        try:
            # Unsigned payload, like a PUT of file bytes: every chunk is verified against its digest instead.
            caller = await run_in_threadpool(authenticate, svc, request, b"")
            async with aligned_body(request, chunked.MAX_BATCH_BYTES) as body:
                digest = request.path_params.get("digest")
                records = [(digest, body)] if digest else chunked.parse_chunks(body)
                await run_in_threadpool(chunked.put_chunks, svc, caller, request.path_params["upload_id"], records)
                received = len(records)
                del records  # views of the buffer, which goes back to the pool
        except Exception as exc:
            return _error(exc, rid)
        # Not whether the store already had them: that would tell this account about another's data.
        return _ok(rid, {"Received": received})

    async def image_manifest(request: Request) -> Response:
        rid = str(uuid.uuid4())
        try:
            caller = await run_in_threadpool(authenticate, svc, request, b"")
            region = svc.region(request.headers.get("x-tc-region")).name
            index = parse_int64(request.path_params["index"], "disk index")
            found = await run_in_threadpool(chunked.export_manifest, svc, caller, region,
                                            request.path_params["image_id"], index)
        except Exception as exc:
            return _error(exc, rid)
        return Response(found.encode(), media_type="application/octet-stream")

    async def get_chunks(request: Request) -> Response:
        rid = str(uuid.uuid4())
        try:
            digest = request.path_params.get("digest")
            body = b"" if digest else await read_body(request, 64 * 1024)
            caller = await run_in_threadpool(authenticate, svc, request, body)
            region = svc.region(request.headers.get("x-tc-region")).name
            if digest:
                digests = [digest]
            else:
                digests = validate(parse_json(body), READ_CHUNKS, "POST /images/{id}/chunks")["Digests"]
                if len(digests) > chunked.MAX_READ_CHUNKS:
                    raise errors.InvalidParameterValue(detail=f"At most {chunked.MAX_READ_CHUNKS} digests per request.")
            datas = await run_in_threadpool(chunked.read_chunks, svc, caller, region,
                                            request.path_params["image_id"], digests)
        except Exception as exc:
            return _error(exc, rid)
        if digest:
            return Response(datas[0], media_type="application/octet-stream")
        # A length, not chunked transfer coding: the client reads the batch straight into its buffer.
        size = chunkframes.body_size(len(d) for d in datas)
        return StreamingResponse(chunkframes.encode(zip(digests, datas, strict=True)),
                                 media_type="application/octet-stream", headers={"Content-Length": str(size)})

    return [
        Route("/uploads", create, methods=["POST"]),
        Route("/uploads/{upload_id}/manifest", manifest, methods=["POST"]),
        Route("/uploads/{upload_id}/chunks", put_chunks, methods=["POST"]),
        Route("/uploads/{upload_id}/chunks/{digest}", put_chunks, methods=["PUT"]),
        Route("/images/{image_id}/disks/{index}/manifest", image_manifest, methods=["GET"]),
        Route("/images/{image_id}/chunks", get_chunks, methods=["POST"]),
        Route("/images/{image_id}/chunks/{digest}", get_chunks, methods=["GET"]),
        Route("/uploads/{upload_id}", show, methods=["GET"]),
        Route("/uploads/{upload_id}", append, methods=["PUT"]),
        Route("/buckets/{bucket}/{key:path}", download, methods=["GET"]),
    ]
