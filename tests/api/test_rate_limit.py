"""The per-account token bucket, on a clock the test drives."""

from __future__ import annotations

import pytest

from stratus.domain import errors
from stratus.service.limits import RateLimiter


def test_burst_then_rate_per_account() -> None:
    bucket = RateLimiter(rate=2.0, burst=3)
    for _ in range(3):
        bucket.take("a", now=100.0)
    with pytest.raises(errors.RequestLimitExceeded) as info:
        bucket.take("a", now=100.0)
    assert info.value.code == "RequestLimitExceeded" and "retry in 0.50 s" in info.value.message
    bucket.take("b", now=100.0)  # its own bucket
    bucket.take("a", now=100.5)  # one token back after half a second
    with pytest.raises(errors.RequestLimitExceeded):
        bucket.take("a", now=100.6)
    for _ in range(3):  # a long idle time refills to the burst, not beyond
        bucket.take("a", now=200.0)
    with pytest.raises(errors.RequestLimitExceeded):
        bucket.take("a", now=200.0)


def test_zero_rate_is_no_limit() -> None:
    bucket = RateLimiter(rate=0, burst=1)
    for _ in range(1000):
        bucket.take("a", now=1.0)
