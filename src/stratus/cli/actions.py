"""CVM actions as one signed POST over http.client, for the `stratus` verbs: the official SDK (which the
CLI keeps for its typed requests) costs a quarter of a second of imports per command, more than most
actions take. The wire is the SDK's: TC3-HMAC-SHA256, JSON body, X-TC-* headers, the Response envelope."""

from __future__ import annotations

import http.client
import json
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from stratus.api.cvm.signing import sign

if TYPE_CHECKING:
    from stratus.cli.common import Endpoint

VERSION = "2017-03-12"


class ActionError(Exception):
    """The server's error for an action (or ClientNetworkError when it could not be reached), named as the
    SDK names it so the CLI renders both alike."""

    def __init__(self, code: str, message: str, request_id: str = "") -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.request_id = code, message, request_id


def call_action(ep: Endpoint, action: str, params: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
    """The ``Response`` of ``action``; ActionError if the server answers an error or can't be reached."""
    body = json.dumps(params).encode()
    headers = sign(ep.secret_id, ep.secret_key, method="POST", host=ep.host, body=body)
    headers.update({"X-TC-Action": action, "X-TC-Version": VERSION, "X-TC-Region": ep.region})
    parts = urlsplit(ep.url)
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = cls(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        conn.request("POST", "/", body=body, headers=headers)
        resp = conn.getresponse()
        status, raw = resp.status, resp.read()
    except (OSError, http.client.HTTPException) as exc:
        raise ActionError("ClientNetworkError", f"{type(exc).__name__}: {exc}") from exc
    finally:
        conn.close()
    try:
        answer = json.loads(raw)["Response"]
    except (ValueError, KeyError, TypeError):
        raise ActionError("ServerNetworkError", f"HTTP {status}: {raw[:200]!r}") from None
    error = answer.get("Error")
    if error is not None:
        raise ActionError(error.get("Code", ""), error.get("Message", ""), answer.get("RequestId", ""))
    return answer
