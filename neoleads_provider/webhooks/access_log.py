"""The standalone receiver's access log: a line per request, without holding up the event loop.

The event loop only appends what it saw to a queue; a thread of its own formats the lines and writes them
to standard error every :data:`FLUSH_INTERVAL_SECONDS`, in one piece. Logging each request through
:mod:`logging` as it finished cost the receiver a quarter of its throughput at the default settings: about
15 microseconds of record-making and formatting per line, and a ``write()`` per request that released the
interpreter lock, after which the loop waited for the writer thread to hand it back before it could
answer the next delivery.

Lines look as they did when written by :mod:`logging`, named ``neoleads_provider.webhooks.access``:
``2026-05-01 12:00:00,123 [INFO] neoleads_provider.webhooks.access: 10.0.0.7 "POST /neoleads/webhooks/x" 200 1.4 ms``.
"""

from __future__ import annotations

import collections
import sys
import threading
import time
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, MutableMapping

__all__ = ["AccessLog", "AccessLogMiddleware"]

#: How long an access line may wait before it is written.
FLUSH_INTERVAL_SECONDS = 0.2
#: Lines kept when the stream cannot keep up (a full pipe); beyond them lines are counted, not kept.
MAX_PENDING_LINES = 100_000

_NAME = "neoleads_provider.webhooks.access"

# (unix time, client, method, path, status, milliseconds)
_Entry = tuple[float, str, Any, Any, int, float]


def _printable(text: Any) -> str:
    """The path as one log line: a percent-decoded ``%0d%0a`` must not forge a second line."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


class AccessLog:
    """Queue access entries from any thread; format and write them from a thread of its own.

    :param stream: where lines go; default: standard error as it is when this is made (as logging's
        ``StreamHandler`` does: a later swap of ``sys.stderr`` does not move the lines).
    :param interval: the longest a line waits, in seconds.
    :param clock: the unix time of an entry.
    """

    def __init__(
        self,
        stream: IO[str] | None = None,
        *,
        interval: float = FLUSH_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._stream: IO[str] = stream if stream is not None else sys.stderr
        self._interval = interval
        self._clock = clock
        # deque.append and popleft are atomic: the event loop takes no lock and makes no system call.
        self._pending: collections.deque[_Entry] = collections.deque()
        self._dropped = 0
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self._flush_lock = threading.Lock()
        self._second = -1
        self._second_text = ""

    def record(self, client: str, method: Any, path: Any, status: int, milliseconds: float) -> None:
        if len(self._pending) < MAX_PENDING_LINES:
            self._pending.append((self._clock(), client, method, path, status, milliseconds))
        else:
            self._dropped += 1
        if self._thread is None:
            self._start()

    def _start(self) -> None:
        with self._flush_lock:
            if self._thread is None and not self._closed.is_set():
                self._thread = threading.Thread(target=self._run, name="neoleads-access-log", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while not self._closed.wait(self._interval):
            self.flush()

    def _stamp(self, when: float) -> str:
        second = int(when)
        if second != self._second:
            self._second = second
            self._second_text = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        return f"{self._second_text},{int((when - second) * 1000):03d}"

    def flush(self) -> None:
        """Write every queued line now."""
        with self._flush_lock:
            lines = []
            while self._pending:
                when, client, method, path, status, milliseconds = self._pending.popleft()
                lines.append(
                    f'{self._stamp(when)} [INFO] {_NAME}: {client} "{method} {_printable(path)}" '
                    f"{status} {milliseconds:.1f} ms\n"
                )
            dropped, self._dropped = self._dropped, 0
            if dropped:
                lines.append(f"({dropped} access lines were dropped: the log stream was not keeping up)\n")
            if not lines:
                return
            try:
                self._stream.write("".join(lines))
                self._stream.flush()
            except (OSError, ValueError):  # a closed or broken stream: there is nowhere else to say so
                pass

    def close(self) -> None:
        """Stop the writing thread and write what is left."""
        self._closed.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        self.flush()


class AccessLogMiddleware:
    """Log client, method, path, status and time of each request; never the query string (``?token=``)."""

    def __init__(self, app: Any, log: AccessLog | None = None) -> None:
        self.app = app
        self.log = log if log is not None else AccessLog()

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0
        started = time.perf_counter()

        async def send_and_record(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            client = scope.get("client")
            self.log.record(
                client[0] if client else "-",
                scope.get("method"),
                scope.get("path"),
                status or 500,
                (time.perf_counter() - started) * 1000,
            )
