"""Authenticate a request: TC3 signature → the calling account. Shared by the CVM and data APIs."""

from __future__ import annotations

from starlette.requests import Request

from stratus.api.cvm import signing
from stratus.service import accounts
from stratus.service.context import Caller, Services


def authenticate(svc: Services, request: Request, body: bytes) -> Caller:
    headers = {k.lower(): v for k, v in request.headers.items()}
    signed = signing.parse_authorization(headers.get("authorization"))
    timestamp = signing.check_timestamp(headers.get("x-tc-timestamp"))
    secret_key, caller = accounts.lookup_key(svc, signed.secret_id)
    signing.verify(
        signed,
        secret_key,
        method=request.method,
        path=request.url.path,
        query=request.scope.get("query_string", b"").decode("latin-1"),
        headers=headers,
        body=body,
        timestamp=timestamp,
    )
    return caller
