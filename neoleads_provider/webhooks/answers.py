"""What the receiver answers a refused delivery, and how often it says so in its log."""

from __future__ import annotations

import threading
import time
from typing import Any

from neoleads_provider.webhooks.connections import MAX_CACHED_CONNECTIONS

__all__ = ["LOG_INTERVAL_SECONDS", "Answer", "LogThrottle", "Refusal"]

# Refusals and store errors are logged at most this often per kind, with a count of those suppressed.
LOG_INTERVAL_SECONDS = 60.0

#: An answer: the status, the JSON body and any extra headers.
Answer = tuple[int, dict[str, Any], dict[str, str] | None]


class LogThrottle:
    """Log a kind of problem at most once per interval, so an outage or a scan cannot flood the log."""

    def __init__(self, interval: float = LOG_INTERVAL_SECONDS) -> None:
        self._interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def check(self, key: str) -> int | None:
        """Return the number suppressed since the last line if this one should be logged, else None."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._interval:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return None
            if len(self._last) > MAX_CACHED_CONNECTIONS:
                self._last.clear()
                self._suppressed.clear()
            self._last[key] = now
            return self._suppressed.pop(key, 0)


class Refusal(Exception):
    """The answer to a delivery that is not accepted: its status, body and headers."""

    def __init__(
        self, status_code: int, detail: str, *, headers: dict[str, str] | None = None, logged: bool = False
    ) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail
        self.headers = headers
        # Already logged where it happened (store errors), with more detail than the refusal line would have.
        self.logged = logged
