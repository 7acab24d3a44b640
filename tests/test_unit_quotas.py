"""Per-caller limits (quotas.py): the session creation token bucket on a fake clock, and the
WebSocket connection caps."""

import pytest

from sarnn_serve.errors import TooManyRequests
from sarnn_serve.quotas import ConnectionLimit, CreationRate


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def refused(rate: CreationRate, caller: str) -> TooManyRequests:
    with pytest.raises(TooManyRequests) as info:
        rate.take(caller)
    assert info.value.code == "rate_limited" and info.value.status == 429
    return info.value


def test_creation_rate_allows_a_burst_then_refills() -> None:
    clock = Clock()
    rate = CreationRate(2.0, 3, clock)
    for _ in range(3):
        rate.take("a")
    err = refused(rate, "a")
    assert err.retry_after_s == pytest.approx(0.5)
    assert err.detail["retry_after_s"] == 0.5
    assert err.http_headers() == {"Retry-After": "1"}
    rate.take("b")  # every caller has its own bucket
    clock.now += 0.25
    assert refused(rate, "a").retry_after_s == pytest.approx(0.25)  # a refusal costs nothing
    clock.now += 0.25
    rate.take("a")
    assert refused(rate, "a").retry_after_s == pytest.approx(0.5)
    clock.now += 100  # refills up to the burst, not beyond
    for _ in range(3):
        rate.take("a")
    refused(rate, "a")


def test_creation_rate_retry_after_covers_slow_rates() -> None:
    clock = Clock()
    rate = CreationRate(0.1, 1, clock)
    rate.take("a")
    err = refused(rate, "a")
    assert err.retry_after_s == pytest.approx(10.0)
    assert err.http_headers() == {"Retry-After": "10"}
    clock.now += 10
    rate.take("a")


def test_connection_limit_caps_per_caller_and_in_total() -> None:
    limit = ConnectionLimit(total=3, per_caller=2)
    with limit.hold("a"), limit.hold("a"):
        with pytest.raises(TooManyRequests) as info, limit.hold("a"):
            pass
        assert info.value.code == "too_many_connections"
        assert limit.open == 2
        with limit.hold("b"):
            assert limit.open == 3
            with pytest.raises(TooManyRequests), limit.hold("c"):
                pass
            assert limit.open == 3
        with limit.hold("c"):
            assert limit.open == 3
    assert limit.open == 0
    with limit.hold("a"), limit.hold("a"):  # released slots can be taken again
        assert limit.open == 2


def test_connection_limit_releases_on_exception() -> None:
    limit = ConnectionLimit(total=2, per_caller=1)
    with pytest.raises(RuntimeError), limit.hold("a"):
        assert limit.open == 1
        raise RuntimeError("stream failed")
    assert limit.open == 0
    with limit.hold("a"), limit.hold("b"):
        assert limit.open == 2
    assert limit.open == 0
