"""Run blocking work for async request handlers on one thread, in batches (group commit).

The receiver commits every delivery before it answers. One transaction per delivery, each on its own
worker thread, spends most of its time on per-transaction overhead and on threads taking turns at the
interpreter lock and at SQLite's single write lock. Instead, handlers :meth:`BatchRunner.submit` their
delivery and await the answer; one thread takes everything queued so far (up to ``max_batch``), commits
it in one transaction, and answers each handler. An idle receiver still commits a lone delivery at once:
nothing waits to fill a batch, batches form only while the previous commit is running.

Standard library only; nothing here knows about deliveries or databases.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import threading
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["BatchRunner"]

log = logging.getLogger(__name__)

_current_pid = os.getpid()


def _note_fork() -> None:
    global _current_pid
    _current_pid = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_note_fork)

T = TypeVar("T")
R = TypeVar("R")

# An idle runner's thread exits after this long and starts again with the next item, so apps that are
# built and dropped (tests, reloads) do not leave threads behind.
IDLE_EXIT_SECONDS = 10.0

_Job = tuple[Any, "asyncio.Future[Any]", asyncio.AbstractEventLoop]


def _settle_all(settled: list[tuple[asyncio.Future[Any], Any]]) -> None:
    for future, outcome in settled:
        if future.done():  # the handler was cancelled (client gone); the work was still done
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


class BatchRunner(Generic[T, R]):
    """Call ``handle(items)`` on one background thread with every item queued so far, in order.

    :param handle: takes a batch and returns one outcome per item, in the same order: a result, or an
        exception instance that :meth:`submit` raises for that item. If ``handle`` itself raises, every
        item of the batch gets that exception.
    :param max_batch: the most items per call.
    :param name: the thread's name.
    :param on_idle: called on the thread just before it exits for want of work, to release what ``handle``
        keeps for that thread (a database connection); its errors are logged and ignored.
    """

    def __init__(
        self,
        handle: Callable[[Sequence[T]], Sequence[R | BaseException]],
        *,
        max_batch: int = 256,
        name: str = "neoleads-batch",
        on_idle: Callable[[], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self._handle = handle
        self._max_batch = max_batch
        self._name = name
        self._on_idle = on_idle
        self._queue: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    async def submit(self, item: T) -> R:
        """Queue ``item`` and wait for its outcome.

        :raises BaseException: the exception ``handle`` gave (or raised) for this item.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._queue.put((item, future, loop))
        self._ensure_thread()
        return await future

    def _ensure_thread(self) -> None:
        thread = self._thread
        # The fast path of every delivery: Thread.is_alive() takes a lock and os.getpid() is a system call.
        # The thread clears self._thread whenever it stops serving (see _run), and the pid is the one seen
        # at the last fork.
        if thread is not None and self._pid == _current_pid:
            return
        with self._lock:
            if self._pid != os.getpid():
                # A forked child inherits the queue's items but not the thread that would serve them.
                self._pid = os.getpid()
                self._thread = None
            thread = self._thread
            if thread is None or not thread.is_alive():
                thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                # Posted only once it runs: a start that fails (no memory, no threads left) must leave the
                # next submit to try again, not to wait for a thread that never ran.
                thread.start()
                self._thread = thread

    def _run(self) -> None:
        try:
            self._serve()
        finally:
            with self._lock:
                # Gone for any reason (idle, or a bug): the next submit must start another thread.
                if self._thread is threading.current_thread():
                    self._thread = None
        if self._on_idle is not None:
            try:
                self._on_idle()
            except Exception:
                log.exception("Batch runner %s: releasing its resources failed", self._name)

    def _serve(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=IDLE_EXIT_SECONDS)
            except queue.Empty:
                with self._lock:
                    # Give up the post first, then look: a submit that still saw this thread queued its item
                    # before the look (so the look finds it), and one that did not starts a new thread.
                    current, self._thread = self._thread, None
                    if self._queue.empty():
                        break
                    self._thread = current
                continue
            jobs = [first]
            while len(jobs) < self._max_batch:
                try:
                    jobs.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._process(jobs)

    def _process(self, jobs: list[_Job]) -> None:
        try:
            outcomes: Sequence[Any] = self._handle([item for item, _, _ in jobs])
            if len(outcomes) != len(jobs):
                raise RuntimeError(f"batch handler returned {len(outcomes)} outcomes for {len(jobs)} items")
        except BaseException as exc:
            log.exception("Batch handler %s failed", self._name)
            outcomes = [exc] * len(jobs)
        # One wake-up per event loop for the whole batch: each call_soon_threadsafe writes to the loop's
        # self-pipe, a system call and a wake-up per delivery otherwise.
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any]]] = {}
        for (_, future, loop), outcome in zip(jobs, outcomes, strict=True):
            by_loop.setdefault(loop, []).append((future, outcome))
        for loop, settled in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the handler's event loop is closed: nobody is waiting
                loop.call_soon_threadsafe(_settle_all, settled)
