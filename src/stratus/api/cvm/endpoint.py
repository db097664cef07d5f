"""The CVM endpoint: `POST /` (JSON) and `GET /?A.0.B=...`, dispatched on X-TC-Action."""

from __future__ import annotations

import uuid

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from stratus import logs
from stratus.api import metrics as http_metrics
from stratus.api.cvm import envelope
from stratus.api.cvm.auth import authenticate
from stratus.api.cvm.params import parse_json, unflatten, validate
from stratus.api.cvm.registry import ACTIONS
from stratus.api.cvm.table import Call
from stratus.domain import errors
from stratus.service.context import Services
from stratus.service.limits import RateLimiter

VERSION = "2017-03-12"


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise errors.RequestSizeLimitExceeded(limit=limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise errors.RequestSizeLimitExceeded(limit=limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _dispatch(svc: Services, request: Request, body: bytes, request_id: str, rate: RateLimiter) -> dict:
    headers = request.headers
    if "authorization" not in headers and (b"Signature=" in body or "Signature=" in request.url.query):
        raise errors.AuthFailureInvalidAuthorization(
            detail="the legacy HmacSHA1/HmacSHA256 signature is not supported; sign with TC3-HMAC-SHA256 "
            "(the SDK and tccli default)"
        )
    caller = authenticate(svc, request, body)
    rate.take(caller.account_id)  # RequestLimitExceeded past limits.requests_per_second (per process)
    version = headers.get("x-tc-version")
    if version is None:
        raise errors.MissingParameter(name="Version (the X-TC-Version header)")
    if version != VERSION:
        raise errors.NoSuchVersion(version=version)
    name = headers.get("x-tc-action")
    if not name:
        raise errors.MissingParameter(name="Action (the X-TC-Action header)")
    action = ACTIONS.get(name)
    if action is None:
        raise errors.InvalidAction(action=name)
    if request.method == "POST":
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise errors.InvalidParameter(detail=f"Content-Type must be application/json, not {ctype!r}.")
        params = validate(parse_json(body), action.schema, name)
    else:
        params = validate(unflatten(request.url.query), action.schema, name, coerce=True)
    region = headers.get("x-tc-region") or None
    if action.needs_region:
        region = svc.region(region).name
    elif region and svc.settings.region(region) is None:
        raise errors.InvalidRegionNotFound(region=region)
    return action.handler(Call(svc, caller, region, params, request_id))


def make_endpoint(svc: Services):
    limit = svc.settings.limits.max_request_bytes
    rate = RateLimiter(svc.settings.limits.requests_per_second, svc.settings.limits.request_burst)

    async def endpoint(request: Request) -> Response:
        request_id = logs.REQUEST_ID.get() or str(uuid.uuid4())  # set by the Observe middleware
        name = request.headers.get("x-tc-action", "")
        http_metrics.note(action=name if name in ACTIONS else "unknown")  # a bounded label set
        try:
            body = await read_body(request, limit)
            action = ACTIONS.get(name)
            if action is not None and action.on_loop and svc.db.is_sqlite:
                # The key lookup is an in-process SQLite read of microseconds (WAL: it never waits for a
                # writer): cheaper here than the thread hop. PostgreSQL's is a round trip: a thread's.
                fields = _dispatch(svc, request, body, request_id, rate)
            else:
                fields = await run_in_threadpool(_dispatch, svc, request, body, request_id, rate)
        except Exception as exc:
            err = envelope.as_cvm_error(exc, request_id)
            http_metrics.note(code=err.code)
            return envelope.failure(err, request_id)
        http_metrics.note(code="Success")
        return envelope.success(request_id, fields)

    return endpoint
