"""Wait in the triggerer for a stored Neoleads webhook event (and, optionally, for the message in the API).

The trigger runs the same indexed query the sensor uses every ``poll_interval`` seconds, in a worker thread
so the triggerer's event loop never blocks on the database, and also as soon as the triggerer's shared
:class:`~neoleads_provider.store.watch.StoreWatcher` sees new rows for its conversation or inbox (within about
0.2 s): a reply wakes its trigger quickly even with a long ``poll_interval``, which then only bounds the idle
load (one query per waiting trigger per ``poll_interval``, plus the watcher's five a second). Neoleads never
retries a webhook it failed to deliver, so with ``poll_api`` the trigger also reads the conversation's
messages through the API every ``api_poll_interval`` seconds and accepts a match found there.

The looks and the outage policy are :mod:`neoleads_provider.waiting`'s, shared with the sensor and the
asset watchers' trigger, so every mode matches the same events.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from neoleads_provider.connection import DEFAULT_CONN_ID
from neoleads_provider.events.filter import EventFilter
from neoleads_provider.waiting import (
    STILL_WAITING_LOG_EVERY,
    OutagePolicy,
    is_transient_api_error,
    look_in_api,
    look_in_store,
    repr_without_password,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

    from neoleads_provider.hooks.neoleads import NeoleadsHook

__all__ = ["DEFAULT_API_POLL_INTERVAL", "DEFAULT_POLL_INTERVAL", "NeoleadsWebhookTrigger"]

log = logging.getLogger(__name__)

CLASSPATH = "neoleads_provider.triggers.webhook.NeoleadsWebhookTrigger"
DEFAULT_POLL_INTERVAL = 1.0
DEFAULT_API_POLL_INTERVAL = 30.0
# Woken by the store watcher, a trigger still waits this long after its previous look (or poll_interval, if
# shorter), so a burst of deliveries to its conversation costs it a few queries, not one per delivery.
MIN_LOOK_GAP = 0.1


# -- the trigger -----------------------------------------------------------------------------------------


def _success(found: Mapping[str, Any]) -> dict[str, Any]:
    """The success event: where the match is, not what it says.

    The triggerer logs every event it fires and Airflow keeps it in the metadata database; the customer's
    message and contact stay in the event store (or the API), from where the sensor reads them on resuming.
    """
    return {
        "status": "success",
        "source": found["source"],
        "event_id": found.get("event_id"),
        "event_name": found.get("event"),
        "message_id": found.get("message_id"),
        "conversation_id": found.get("conversation_id"),
    }


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"NeoleadsWebhookTrigger {name} must be a positive number of seconds, got {value!r}")
    return float(value)


class NeoleadsWebhookTrigger(BaseTrigger):
    """Fire once a stored webhook event (or, with ``poll_api``, an API message) matches a filter.

    Events: ``{"status": "success", "source": "webhook" | "api", "event_id": ..., "message_id": ...}`` on a
    match (where it is, never the message itself: the sensor reads it back); ``{"status": "timeout", ...}``
    once ``end_time`` passes; ``{"status": "error", "message": ...}`` when waiting cannot succeed
    (the store has no schema, the connection is missing or refused). A store outage is logged and
    waited out.

    :param event_filter: :meth:`EventFilter.to_dict` of what to wait for; its ``conn_id`` is
        ``neoleads_conn_id``'s.
    :param neoleads_conn_id: the ``neoleads`` connection: only its deliveries match, and ``poll_api`` reads
        its API.
    :param events_db_url: the store's SQLAlchemy URL; None reads ``[neoleads] events_db_url``.
    :param poll_interval: seconds between store looks; new rows also wake the trigger in between.
    :param poll_api: also look for the message through the API (fills lost deliveries).
    :param api_poll_interval: seconds between API looks.
    :param end_time: unix time (seconds) after which to give up with a ``timeout`` event; None waits
        until Airflow's deferral timeout.
    """

    def __init__(
        self,
        *,
        event_filter: Mapping[str, Any],
        neoleads_conn_id: str = DEFAULT_CONN_ID,
        events_db_url: str | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        poll_api: bool = False,
        api_poll_interval: float = DEFAULT_API_POLL_INTERVAL,
        end_time: float | None = None,
    ) -> None:
        super().__init__()
        # A filter serialised before filters carried their connection belongs to the trigger's.
        self._filter = EventFilter.from_dict({"conn_id": neoleads_conn_id, **event_filter})
        if self._filter.conn_id != neoleads_conn_id:
            raise ValueError(
                f"NeoleadsWebhookTrigger event_filter is for connection {self._filter.conn_id!r}, "
                f"but neoleads_conn_id is {neoleads_conn_id!r}"
            )
        # Kept normalised, so serialize() hands back exactly what rebuilds this trigger.
        self.event_filter = self._filter.to_dict()
        self.neoleads_conn_id = neoleads_conn_id
        self.events_db_url = events_db_url
        self.poll_interval = _positive("poll_interval", poll_interval)
        self.poll_api = bool(poll_api)
        self.api_poll_interval = _positive("api_poll_interval", api_poll_interval)
        if end_time is not None and (isinstance(end_time, bool) or not isinstance(end_time, int | float)):
            raise ValueError(
                f"NeoleadsWebhookTrigger end_time must be a unix time in seconds, got {end_time!r}"
            )
        self.end_time = None if end_time is None else float(end_time)
        self._hook: NeoleadsHook | None = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            CLASSPATH,
            {
                "event_filter": self.event_filter,
                "neoleads_conn_id": self.neoleads_conn_id,
                "events_db_url": self.events_db_url,
                "poll_interval": self.poll_interval,
                "poll_api": self.poll_api,
                "api_poll_interval": self.api_poll_interval,
                "end_time": self.end_time,
            },
        )

    def __repr__(self) -> str:
        return repr_without_password(self)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from neoleads_provider.exceptions import NeoleadsError
        from neoleads_provider.store.errors import EventStoreError, EventStoreSchemaError
        from neoleads_provider.store.watch import interest_of, watcher_for
        from neoleads_provider.version_compat import AirflowNotFoundException

        loop = asyncio.get_running_loop()
        next_api_look = loop.time()
        outage = OutagePolicy(self.poll_interval)
        # One watcher per triggerer wakes the triggers waiting on a conversation (or inbox) as soon as rows
        # for it are stored, so a reply is seen within a fraction of a second whatever poll_interval is.
        watcher = watcher_for(self.events_db_url)
        interest = interest_of(self._filter)
        waiting_since = last_said = loop.time()
        self.log.info(
            "Waiting for %s; looking in the event store every %g s and whenever it stores a row for it%s",
            self._filter.describe(),
            self.poll_interval,
            f", and through the API every {self.api_poll_interval:g} s" if self.poll_api else "",
        )
        while True:
            if loop.time() - last_said >= STILL_WAITING_LOG_EVERY:
                last_said = loop.time()
                self.log.info(
                    "Still waiting for %s (%d s so far)", self._filter.describe(), last_said - waiting_since
                )
            # Read before looking: a change during the look then ends the wait below at once.
            seen_version = watcher.version
            looked_at = loop.time()
            delay = self.poll_interval
            try:
                found = await asyncio.to_thread(look_in_store, self.events_db_url, self._filter)
            except EventStoreSchemaError as exc:
                yield TriggerEvent({"status": "error", "message": str(exc)})
                return
            except EventStoreError as exc:
                if not exc.transient:
                    yield TriggerEvent(
                        {"status": "error", "message": f"The Neoleads event store failed: {exc}"}
                    )
                    return
                delay, log_it = outage.failed(loop.time())
                if log_it:
                    self.log.warning(
                        "The Neoleads event store is unavailable (%s failed looks); still waiting: %s",
                        outage.failures,
                        exc,
                    )
                found = None
            else:
                ended = outage.recovered()
                if ended:
                    self.log.info("The Neoleads event store is back after %s failed looks", ended)
            if found is not None:
                yield TriggerEvent(_success(found))
                return

            if self.poll_api and loop.time() >= next_api_look:
                next_api_look = loop.time() + self.api_poll_interval
                try:
                    found = await self._look_in_api()
                except (NeoleadsError, AirflowNotFoundException) as exc:
                    if not is_transient_api_error(exc):
                        yield TriggerEvent(
                            {
                                "status": "error",
                                "message": f"Looking for the message through the API failed: {exc}",
                            }
                        )
                        return
                    self.log.warning(
                        "Looking for the message through the API failed; will try again: %s", exc
                    )
                if found is not None:
                    yield TriggerEvent(_success(found))
                    return

            if self.end_time is not None:
                remaining = self.end_time - time.time()
                if remaining <= 0:
                    yield TriggerEvent(
                        {
                            "status": "timeout",
                            "message": "No matching Neoleads event arrived before the sensor's timeout: "
                            f"waited for {self._filter.describe()}",
                            "end_time": self.end_time,
                        }
                    )
                    return
                delay = min(delay, remaining)
            if outage.failures:
                await asyncio.sleep(delay)
            elif await watcher.wait(seen_version, delay, interest):
                # Woken by new rows: look now, but never more often than every MIN_LOOK_GAP seconds.
                await asyncio.sleep(max(0.0, min(delay, MIN_LOOK_GAP) - (loop.time() - looked_at)))

    async def _look_in_api(self) -> dict[str, Any] | None:
        if self._hook is None:
            from airflow.sdk import BaseHook

            from neoleads_provider.hooks.neoleads import NeoleadsHook

            # Resolved asynchronously first: a sync lookup on the event loop thread can deadlock on the
            # supervisor channel. The hook then reads it again from its worker thread, where blocking is fine.
            await BaseHook.aget_connection(self.neoleads_conn_id)
            self._hook = NeoleadsHook(neoleads_conn_id=self.neoleads_conn_id)
        return await asyncio.to_thread(look_in_api, self._hook, self._filter)

    async def cleanup(self) -> None:
        if self._hook is not None:
            self._hook.close()
            self._hook = None
