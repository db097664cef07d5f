"""Response envelopes as the SDK parses them: always HTTP 200, `Content-Type: application/json`
exactly (with a charset the SDK silently drops errors), `RequestId` always present."""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.responses import Response

from stratus.catalog.db import catalog_unavailable
from stratus.domain import errors

log = logging.getLogger("stratus.api")


def _json(body: dict[str, Any], status: int = 200) -> Response:
    data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return Response(data, status_code=status, headers={"Content-Type": "application/json"})


def success(request_id: str, fields: dict[str, Any] | None = None) -> Response:
    return _json({"Response": {**(fields or {}), "RequestId": request_id}})


def as_cvm_error(exc: BaseException, request_id: str) -> errors.CvmError:
    """The error a client sees: CvmErrors as they are, a lost catalog as ServiceUnavailable (retriable),
    anything else as InternalError (logged with the RequestId)."""
    if isinstance(exc, errors.CvmError):
        return exc
    if catalog_unavailable(exc):
        # A PostgreSQL restart or a network cut: the client may retry; the pool reconnects on its own.
        log.warning("catalog unavailable, RequestId %s: %s", request_id, str(exc).splitlines()[0])
        return errors.ServiceUnavailable()
    log.exception("unexpected error, RequestId %s", request_id, exc_info=exc)
    return errors.InternalError()


def error_body(exc: BaseException, request_id: str) -> dict[str, Any]:
    err = as_cvm_error(exc, request_id)
    return {"Response": {"Error": {"Code": err.code, "Message": err.message}, "RequestId": request_id}}


def failure(exc: BaseException, request_id: str, status: int = 200) -> Response:
    return _json(error_body(exc, request_id), status)
