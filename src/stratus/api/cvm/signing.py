"""TC3-HMAC-SHA256, verified exactly as the SDK and tccli sign (contract §2.5).

The canonical headers are rebuilt from the names the client lists in SignedHeaders, with the raw
header values (tccli signs `Host: http://127.0.0.1:8700` literally); the payload is the raw body
bytes, never a re-serialisation. `sign()` is the client half, used by our CLI for the data API.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from stratus.domain import errors

ALGORITHM = "TC3-HMAC-SHA256"
SERVICE = "cvm"
MAX_SKEW_SECONDS = 300
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"

_AUTH_RE = re.compile(
    r"^TC3-HMAC-SHA256 Credential=(?P<cred>[^,\s]+),\s*SignedHeaders=(?P<signed>[^,\s]+),"
    r"\s*Signature=(?P<sig>[0-9a-fA-F]{64})$"
)


@dataclass(frozen=True)
class SignedRequest:
    secret_id: str
    date: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()


def _signing_key(secret_key: str, date: str, service: str) -> bytes:
    k = _hmac(("TC3" + secret_key).encode("utf-8"), date)
    k = _hmac(k, service)
    return _hmac(k, "tc3_request")


def string_to_sign(
    method: str,
    path: str,
    query: str,
    headers: dict[str, str],
    signed_headers: tuple[str, ...],
    payload_hash: str,
    timestamp: str,
    date: str,
    service: str,
) -> str:
    canonical_headers = "".join(f"{h}:{headers.get(h, '').strip()}\n" for h in signed_headers)
    canonical_request = "\n".join(
        [method, path, "" if method == "POST" else query, canonical_headers, ";".join(signed_headers),
         payload_hash]
    )
    scope = f"{date}/{service}/tc3_request"
    digest = hashlib.sha256(canonical_request.encode("utf-8")).hexdigest()
    return "\n".join([ALGORITHM, timestamp, scope, digest])


def parse_authorization(value: str | None) -> SignedRequest:
    if not value:
        raise errors.AuthFailureInvalidAuthorization(detail="the Authorization header is missing")
    m = _AUTH_RE.match(value.strip())
    if not m:
        raise errors.AuthFailureInvalidAuthorization(
            detail="expected 'TC3-HMAC-SHA256 Credential=..., SignedHeaders=..., Signature=...'"
        )
    parts = m["cred"].split("/")
    if len(parts) != 4 or parts[3] != "tc3_request" or not re.match(r"^\d{4}-\d{2}-\d{2}$", parts[1]):
        raise errors.AuthFailureInvalidAuthorization(
            detail="Credential must be SecretId/YYYY-MM-DD/service/tc3_request"
        )
    signed = tuple(h.strip().lower() for h in m["signed"].split(";"))
    if "host" not in signed or "content-type" not in signed:
        raise errors.AuthFailureInvalidAuthorization(detail="SignedHeaders must include content-type and host")
    return SignedRequest(parts[0], parts[1], parts[2], signed, m["sig"].lower())


def check_timestamp(raw: str | None, now: float | None = None) -> int:
    # ASCII digits, and few enough to be a time: "\xb2".isdigit() is True but int() refuses it, and a
    # 400-digit number overflows the float subtraction below.
    if raw is None or not re.fullmatch(r"[0-9]{1,12}", raw.strip()):
        raise errors.AuthFailureInvalidAuthorization(detail="X-TC-Timestamp must be Unix seconds")
    ts = int(raw)
    now = time.time() if now is None else now
    if abs(now - ts) > MAX_SKEW_SECONDS:
        raise errors.AuthFailureSignatureExpire()
    return ts


def verify(
    signed: SignedRequest,
    secret_key: str,
    *,
    method: str,
    path: str,
    query: str,
    headers: dict[str, str],
    body: bytes,
    timestamp: int,
) -> None:
    """Raise AuthFailure.SignatureFailure unless the signature matches. `headers` has lower-case names."""
    date = datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d")
    if headers.get("x-tc-content-sha256", "").strip() == UNSIGNED_PAYLOAD:
        payload_hash = hashlib.sha256(UNSIGNED_PAYLOAD.encode()).hexdigest()
    else:
        payload_hash = hashlib.sha256(body if method == "POST" else b"").hexdigest()
    sts = string_to_sign(
        method, path, query, headers, signed.signed_headers, payload_hash, str(timestamp), signed.date,
        signed.service,
    )
    expected = hmac.new(_signing_key(secret_key, signed.date, signed.service), sts.encode(), hashlib.sha256)
    if signed.date != date or not hmac.compare_digest(expected.hexdigest(), signed.signature):
        raise errors.AuthFailureSignatureFailure()


def sign(
    secret_id: str,
    secret_key: str,
    *,
    method: str,
    host: str,
    path: str = "/",
    query: str = "",
    content_type: str = "application/json",
    body: bytes | None = b"",
    timestamp: int | None = None,
    service: str = SERVICE,
) -> dict[str, str]:
    """Headers that sign a request. `body=None` signs UNSIGNED-PAYLOAD (for streamed uploads)."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    date = datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d")
    headers = {"content-type": content_type, "host": host}
    extra: dict[str, str] = {}
    if body is None:
        payload_hash = hashlib.sha256(UNSIGNED_PAYLOAD.encode()).hexdigest()
        extra["X-TC-Content-SHA256"] = UNSIGNED_PAYLOAD
    else:
        payload_hash = hashlib.sha256(body if method == "POST" else b"").hexdigest()
    signed_headers = ("content-type", "host")
    sts = string_to_sign(method, path, query, headers, signed_headers, payload_hash, str(timestamp), date,
                         service)
    signature = hmac.new(_signing_key(secret_key, date, service), sts.encode(), hashlib.sha256).hexdigest()
    auth = (
        f"{ALGORITHM} Credential={secret_id}/{date}/{service}/tc3_request, "
        f"SignedHeaders={';'.join(signed_headers)}, Signature={signature}"
    )
    return {"Authorization": auth, "Content-Type": content_type, "Host": host, "X-TC-Timestamp": str(timestamp),
            **extra}
