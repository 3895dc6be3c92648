"""The client-side token bucket (neoleads_provider/ratelimit.py), with a fake clock and for real."""

from __future__ import annotations

import threading
import time

import pytest

from neoleads_provider.ratelimit import DEFAULT_REQUESTS_PER_MINUTE, SERVER_REQUESTS_PER_MINUTE, TokenBucket


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_the_default_stays_under_the_server_limit_with_its_burst() -> None:
    bucket = TokenBucket(DEFAULT_REQUESTS_PER_MINUTE)
    assert DEFAULT_REQUESTS_PER_MINUTE + bucket.capacity < SERVER_REQUESTS_PER_MINUTE


def test_a_burst_then_the_steady_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(600, burst=5, clock=clock, sleep=clock.sleep)
    waits = [bucket.acquire() for _ in range(5)]
    assert waits == [0.0] * 5
    # Empty now: 10 per second means one more every 0.1 s.
    assert bucket.acquire() == pytest.approx(0.1)
    assert bucket.acquire() == pytest.approx(0.1)
    clock.now += 10.0
    # A long pause refills only up to the burst.
    assert [bucket.acquire() for _ in range(5)] == [0.0] * 5
    assert bucket.acquire() > 0


def test_at_most_rate_plus_burst_in_any_minute() -> None:
    clock = FakeClock()
    bucket = TokenBucket(2400, clock=clock, sleep=clock.sleep)
    times = []
    for _ in range(6000):
        bucket.acquire()
        times.append(clock.now)
    start = 0
    for end, moment in enumerate(times):
        while moment - times[start] >= 60.0:
            start += 1
        assert end - start + 1 <= 2400 + bucket.capacity


def test_threads_share_the_rate() -> None:
    # Real time: 4 threads x 5 requests at 1200/min (20/s, burst 1).
    bucket = TokenBucket(1200, burst=1)
    started = time.monotonic()
    threads = [threading.Thread(target=lambda: [bucket.acquire() for _ in range(5)]) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    elapsed = time.monotonic() - started
    # 20 tokens, the first free: 19 waits of 1/20 s.
    assert elapsed >= 19 / 20 - 0.02


@pytest.mark.parametrize("rate", [0, -1, True])
def test_a_bad_rate_is_refused(rate) -> None:
    with pytest.raises(ValueError, match="rate_per_minute"):
        TokenBucket(rate)


def test_a_bad_burst_is_refused() -> None:
    with pytest.raises(ValueError, match="burst"):
        TokenBucket(60, burst=0)


def test_a_deep_copy_is_a_fresh_bucket_with_the_same_limits() -> None:
    import copy

    clock = FakeClock()
    bucket = TokenBucket(600, burst=2, clock=clock, sleep=clock.sleep)
    bucket.acquire()
    bucket.acquire()
    twin = copy.deepcopy(bucket)
    assert (twin.rate_per_second, twin.capacity) == (bucket.rate_per_second, bucket.capacity)
    assert twin.acquire() == 0.0  # full again
    assert bucket.acquire() > 0
