"""TC3-HMAC-SHA256 against the contract's test vector (computed by the SDK's own code)."""

from __future__ import annotations

import pytest

from stratus.api.cvm import signing
from stratus.domain import errors

BODY = b'{"ImageIds": ["img-abcdefgh"], "Limit": 1}'
HEADERS = {"content-type": "application/json", "host": "127.0.0.1:18765"}
VECTOR_SIG = "2875dcd380ddf60b51b98e6f46d55214df7dc1345b4acc55a56424856ef157c3"


def test_sign_reproduces_the_sdk_test_vector() -> None:
    headers = signing.sign("AKIDEXAMPLE", "SECRETKEYEXAMPLE", method="POST", host="127.0.0.1:18765",
                           body=BODY, timestamp=1700000000)
    assert headers["Authorization"] == (
        "TC3-HMAC-SHA256 Credential=AKIDEXAMPLE/2023-11-14/cvm/tc3_request, "
        f"SignedHeaders=content-type;host, Signature={VECTOR_SIG}"
    )


def _signed() -> signing.SignedRequest:
    return signing.parse_authorization(
        "TC3-HMAC-SHA256 Credential=AKIDEXAMPLE/2023-11-14/cvm/tc3_request, "
        f"SignedHeaders=content-type;host, Signature={VECTOR_SIG}"
    )


def test_verify_accepts_the_vector_and_refuses_any_change() -> None:
    kw = dict(method="POST", path="/", query="", headers=HEADERS, body=BODY, timestamp=1700000000)
    signing.verify(_signed(), "SECRETKEYEXAMPLE", **kw)  # type: ignore[arg-type]
    with pytest.raises(errors.AuthFailureSignatureFailure):
        signing.verify(_signed(), "WRONGKEY", **kw)  # type: ignore[arg-type]
    with pytest.raises(errors.AuthFailureSignatureFailure):
        signing.verify(_signed(), "SECRETKEYEXAMPLE", **{**kw, "body": BODY + b" "})  # type: ignore[arg-type]
    with pytest.raises(errors.AuthFailureSignatureFailure):
        signing.verify(_signed(), "SECRETKEYEXAMPLE",  # type: ignore[arg-type]
                       **{**kw, "headers": {**HEADERS, "host": "127.0.0.1:18766"}})
    with pytest.raises(errors.AuthFailureSignatureFailure):  # credential date must match the timestamp's date
        signing.verify(_signed(), "SECRETKEYEXAMPLE", **{**kw, "timestamp": 1700000000 + 86400})  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [
    None, "", "Basic abc", "TC3-HMAC-SHA256 Credential=x, SignedHeaders=host, Signature=" + "0" * 64,
    "TC3-HMAC-SHA256 Credential=AKID/2023-11-14/cvm/tc3_request, SignedHeaders=host, Signature=" + "0" * 64,
    "TC3-HMAC-SHA256 Credential=AKID/2023-11-14/cvm/tc3_request, SignedHeaders=content-type;host, Signature=zz",
])
def test_malformed_authorization(value: str | None) -> None:
    with pytest.raises(errors.AuthFailureInvalidAuthorization):
        signing.parse_authorization(value)


def test_timestamp_window() -> None:
    assert signing.check_timestamp("1000", now=1300) == 1000
    with pytest.raises(errors.AuthFailureSignatureExpire):
        signing.check_timestamp("1000", now=1301)
    with pytest.raises(errors.AuthFailureSignatureExpire):
        signing.check_timestamp("1301", now=1000)
    with pytest.raises(errors.AuthFailureInvalidAuthorization):
        signing.check_timestamp("soon", now=1000)
