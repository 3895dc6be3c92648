"""A thread-safe token bucket: the client-side request rate limit for bulk sends.

Neoleads (Chatwoot's Rack::Attack) allows 3000 requests per minute per client IP and answers a 429 without
``Retry-After`` beyond that, so a client that bursts into the limit stalls for up to a minute. Staying under
the limit on our side keeps a bulk send flowing. :class:`TokenBucket` refills continuously; callers that
find it empty reserve their token and sleep outside the lock, so waiting threads are served in order and
never spin.

Standard library only: DAG files import the operators, which import this.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["DEFAULT_REQUESTS_PER_MINUTE", "SERVER_REQUESTS_PER_MINUTE", "RateLimiter", "TokenBucket"]

# The server's default per-IP limit (RACK_ATTACK_LIMIT).
SERVER_REQUESTS_PER_MINUTE = 3000
# 80 % of it: room for the burst allowance and for other clients (a sensor, the UI) behind the same IP.
DEFAULT_REQUESTS_PER_MINUTE = 2400


class RateLimiter(Protocol):
    """Anything that blocks until one more request may be sent."""

    def acquire(self) -> float:
        """Block until a request may be sent; return the seconds waited."""
        ...


class TokenBucket:
    """Allow ``rate_per_minute`` requests per minute on average, with bursts of at most ``burst``.

    In any 60-second window at most ``rate_per_minute + burst`` requests pass, so the default burst of one
    second's worth keeps 2400/min safely under a 3000/min server limit.

    :param rate_per_minute: the sustained rate; must be positive.
    :param burst: the bucket's capacity (default: one second's worth, at least 1).
    :param clock: a monotonic clock in seconds (tests pass a fake one).
    :param sleep: how to wait (tests pass a fake one).
    :raises ValueError: a non-positive rate or burst.
    """

    def __init__(
        self,
        rate_per_minute: float,
        *,
        burst: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if isinstance(rate_per_minute, bool) or not rate_per_minute > 0:
            raise ValueError(f"rate_per_minute must be a positive number, got {rate_per_minute!r}")
        self.rate_per_second = float(rate_per_minute) / 60.0
        capacity = burst if burst is not None else max(1, int(self.rate_per_second))
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"burst must be a whole number >= 1, got {burst!r}")
        self.capacity = capacity
        self._clock = clock
        self._sleep = sleep
        self._tokens = float(capacity)
        self._updated = clock()
        self._lock = threading.Lock()

    def __deepcopy__(self, memo: dict[int, object]) -> TokenBucket:
        # Airflow deep-copies operators (and the hooks they cached); a lock cannot be copied, and a copy
        # should start with a full bucket of its own anyway.
        return TokenBucket(
            self.rate_per_second * 60, burst=self.capacity, clock=self._clock, sleep=self._sleep
        )

    def __repr__(self) -> str:
        return f"TokenBucket(rate_per_minute={self.rate_per_second * 60:g}, burst={self.capacity})"

    def acquire(self) -> float:
        """Take one token, waiting for it if the bucket is empty; return the seconds waited."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate_per_second)
            self._updated = now
            # Reserve the token even when it is not there yet: the balance goes negative, and the next
            # caller's wait includes this one's, which queues waiting threads fairly without a condition.
            self._tokens -= 1.0
            wait = -self._tokens / self.rate_per_second if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)
        return wait
