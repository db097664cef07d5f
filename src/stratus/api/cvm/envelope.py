"""Response envelopes as the SDK parses them: always HTTP 200, `Content-Type: application/json`
exactly (with a charset the SDK silently drops errors), `RequestId` always present."""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.responses import Response

from stratus.domain import errors

log = logging.getLogger("stratus.api")


def _json(body: dict[str, Any], status: int = 200) -> Response:
    data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return Response(data, status_code=status, headers={"Content-Type": "application/json"})


def success(request_id: str, fields: dict[str, Any] | None = None) -> Response:
    return _json({"Response": {**(fields or {}), "RequestId": request_id}})


def error_body(exc: BaseException, request_id: str) -> dict[str, Any]:
    if not isinstance(exc, errors.CvmError):
        log.exception("unexpected error, RequestId %s", request_id, exc_info=exc)
        exc = errors.InternalError()
    return {"Response": {"Error": {"Code": exc.code, "Message": exc.message}, "RequestId": request_id}}


def failure(exc: BaseException, request_id: str, status: int = 200) -> Response:
    return _json(error_body(exc, request_id), status)
