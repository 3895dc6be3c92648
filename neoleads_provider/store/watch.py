"""Wake waiting triggers when events they may be waiting for are stored, with one cheap query for all.

Every deferred :class:`~neoleads_provider.triggers.webhook.NeoleadsWebhookTrigger` in a triggerer shares one
event loop. One :class:`StoreWatcher` per event loop and store reads the rows stored since its last read
every :data:`WATCH_INTERVAL` seconds (only their ids, conversation and inbox: an index range scan that
returns nothing while the store is idle) and wakes the triggers waiting on those conversations or inboxes,
which then run their own match query. A reply therefore reaches its trigger within about
``WATCH_INTERVAL`` seconds, a delivery for another conversation wakes nobody, and the database sees the
same few queries a second however many triggers wait.

Rows can become visible below the newest id the watcher has read (PostgreSQL allocates ids at insert, not
at commit): the watcher does not see those, and the triggers' own periodic looks still find them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable

    from neoleads_provider.events.filter import EventFilter

__all__ = ["ANY", "WATCH_INTERVAL", "StoreWatcher", "interest_of", "read_new_rows", "watcher_for"]

log = logging.getLogger(__name__)

WATCH_INTERVAL = 0.2
# Rows read per query; a larger backlog is read over the next ticks.
MAX_ROWS_PER_READ = 5000
# How many past changes a waiter can catch up on (a change during its own look).
HISTORY = 256
# A watcher nobody has waited on for this long stops polling (its triggers have all fired or gone).
IDLE_STOP_SECONDS = 5.0
MAX_ERROR_BACKOFF = 30.0
ERROR_LOG_EVERY = 60.0

#: The interest key of a waiter that wants to hear about every new row.
ANY = ("*",)

_watchers: dict[tuple[int, str | None], StoreWatcher] = {}


def interest_of(flt: EventFilter) -> frozenset[tuple[Any, ...]]:
    """The keys of new rows that could match ``flt``: its connection's conversation, else inbox, else any row."""
    if flt.conversation_id is not None:
        return frozenset({("c", flt.conn_id, flt.conversation_id)})
    if flt.inbox_id is not None:
        return frozenset({("i", flt.conn_id, flt.inbox_id)})
    return frozenset({("*", flt.conn_id)})


def _row_keys(conn_id: str, conversation_id: int | None, inbox_id: int | None) -> Iterable[tuple[Any, ...]]:
    yield ANY
    yield ("*", conn_id)
    if conversation_id is not None:
        yield ("c", conn_id, int(conversation_id))
    if inbox_id is not None:
        yield ("i", conn_id, int(inbox_id))


def read_new_rows(events_db_url: str | None, after_id: int | None) -> tuple[int | None, set[tuple[Any, ...]]]:
    """Return the newest id and the keys of the rows stored after ``after_id`` (None: just the newest id).

    Blocking: call it from a worker thread in async code.
    """
    from sqlalchemy import func, select

    from neoleads_provider.store.engine import get_engine
    from neoleads_provider.store.schema import webhook_events as table

    with get_engine(events_db_url).connect() as conn:
        if after_id is None:
            return conn.execute(select(func.max(table.c.id))).scalar(), set()
        rows = conn.execute(
            select(table.c.id, table.c.conn_id, table.c.conversation_id, table.c.inbox_id)
            .where(table.c.id > after_id)
            .order_by(table.c.id)
            .limit(MAX_ROWS_PER_READ)
        ).all()
    if not rows:
        return after_id, set()
    keys: set[tuple[Any, ...]] = set()
    for row in rows:
        keys.update(_row_keys(row.conn_id, row.conversation_id, row.inbox_id))
    return int(rows[-1].id), keys


class StoreWatcher:
    """Read one store's new rows on behalf of every waiter in one event loop; use :func:`watcher_for`.

    A waiter reads :attr:`version` *before* it looks in the store and passes it to :meth:`wait`: a relevant
    row that arrived during its look then ends the wait at once instead of being missed.
    """

    def __init__(
        self,
        events_db_url: str | None,
        *,
        loop: asyncio.AbstractEventLoop,
        interval: float = WATCH_INTERVAL,
    ) -> None:
        self.events_db_url = events_db_url
        self.loop = loop
        self.interval = interval
        #: Bumped each time new rows are seen.
        self.version = 0
        self._history: deque[tuple[int, frozenset[tuple[Any, ...]]]] = deque(maxlen=HISTORY)
        self._waiters: list[tuple[frozenset[tuple[Any, ...]], asyncio.Event]] = []
        self._task: asyncio.Task[None] | None = None
        self._last_wait = time.monotonic()

    def changed_since(self, since: int, interest: frozenset[tuple[Any, ...]]) -> bool:
        """Whether rows matching ``interest`` were seen after version ``since``."""
        if since == self.version:
            return False
        if not self._history or self._history[0][0] > since + 1:
            return True  # older than the history: assume it may have
        return any(version > since and not keys.isdisjoint(interest) for version, keys in self._history)

    async def wait(
        self, since: int, timeout: float, interest: frozenset[tuple[Any, ...]] = frozenset({ANY})
    ) -> bool:
        """Wait until rows matching ``interest`` are seen after version ``since``, at most ``timeout`` seconds.

        :return: True when such rows were seen, False on timeout.
        """
        self._ensure_running()
        if self.changed_since(since, interest):
            return True
        woken = asyncio.Event()
        entry = (interest, woken)
        self._waiters.append(entry)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), max(0.0, timeout))
        finally:
            self._waiters.remove(entry)
            self._last_wait = time.monotonic()
        return woken.is_set()

    def _ensure_running(self) -> None:
        self._last_wait = time.monotonic()
        if self._task is None or self._task.done():
            self._task = self.loop.create_task(self._poll(), name="neoleads-store-watcher")

    async def _poll(self) -> None:
        newest: int | None = None
        started = False
        failures = 0
        last_error_log = float("-inf")
        while self._waiters or time.monotonic() - self._last_wait < IDLE_STOP_SECONDS:
            try:
                latest, keys = await asyncio.to_thread(
                    read_new_rows, self.events_db_url, newest if started else None
                )
            except Exception as exc:
                failures += 1
                if time.monotonic() - last_error_log >= ERROR_LOG_EVERY:
                    last_error_log = time.monotonic()
                    # The triggers' own periodic looks carry on meanwhile.
                    log.warning(
                        "The Neoleads event store watcher cannot read the store (%s failures): %s",
                        failures,
                        type(exc).__name__,
                    )
                await asyncio.sleep(min(self.interval * 2**failures, MAX_ERROR_BACKOFF))
                continue
            failures = 0
            if not started:
                started, newest = True, (latest or 0)
            else:
                newest = latest
                if keys:
                    self._signal(frozenset(keys))
            await asyncio.sleep(self.interval)

    def _signal(self, keys: frozenset[tuple[Any, ...]]) -> None:
        self.version += 1
        self._history.append((self.version, keys))
        for interest, woken in self._waiters:
            if not interest.isdisjoint(keys):
                woken.set()


def watcher_for(events_db_url: str | None) -> StoreWatcher:
    """The running event loop's watcher for this store (created on first use)."""
    loop = asyncio.get_running_loop()
    # Closed loops (ended dag.test() runs, tests) leave their watchers behind: drop them here.
    for stale in [key for key, watcher in _watchers.items() if watcher.loop.is_closed()]:
        del _watchers[stale]
    key = (id(loop), events_db_url)
    watcher = _watchers.get(key)
    if watcher is None or watcher.loop is not loop:
        watcher = _watchers[key] = StoreWatcher(events_db_url, loop=loop)
    return watcher
