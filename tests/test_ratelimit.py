"""The per-key token bucket behind RequestLimitExceeded, on a clock the test moves."""

from __future__ import annotations

from ebsemu.api.ratelimit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_key_gets_its_burst_then_its_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(2.0, 3, clock=clock)
    assert [limiter.allow("k") for _ in range(4)] == [True, True, True, False]
    clock.now += 0.5  # one request's worth at 2 per second
    assert [limiter.allow("k") for _ in range(2)] == [True, False]
    clock.now += 60  # refills to the burst, no further
    assert [limiter.allow("k") for _ in range(4)] == [True, True, True, False]


def test_keys_have_buckets_of_their_own() -> None:
    clock = Clock()
    limiter = RateLimiter(1.0, 1, clock=clock)
    assert limiter.allow("a") and not limiter.allow("a")
    assert limiter.allow("b")


def test_rate_zero_means_no_limit() -> None:
    limiter = RateLimiter(0.0, 1, clock=Clock())
    assert all(limiter.allow("k") for _ in range(10_000))
