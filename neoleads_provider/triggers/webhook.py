"""Wait in the triggerer for a stored Neoleads webhook event (and, optionally, for the message in the API).

The trigger runs the same indexed query the sensor uses every ``poll_interval`` seconds, in a worker thread
so the triggerer's event loop never blocks on the database, and also as soon as the triggerer's shared
:class:`~neoleads_provider.store.watch.StoreWatcher` sees new rows for its conversation or inbox (within about
0.2 s): a reply wakes its trigger quickly even with a long ``poll_interval``, which then only bounds the idle
load (one query per waiting trigger per ``poll_interval``, plus the watcher's five a second). Neoleads never
retries a webhook it failed to deliver, so with ``poll_api`` the trigger also reads the conversation's
messages through the API every ``api_poll_interval`` seconds and accepts a match found there.

The helpers :func:`look_in_store` and :func:`look_in_api` are shared with
:class:`~neoleads_provider.sensors.webhook.NeoleadsWebhookSensor`, so both modes match the same events.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NoReturn

from airflow.triggers.base import BaseTrigger, TriggerEvent

from neoleads_provider.connection import DEFAULT_CONN_ID
from neoleads_provider.store.matching import EventFilter, sender_type_of, webhook_payload_from_api_message

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from neoleads_provider.hooks.neoleads import NeoleadsHook

__all__ = [
    "DEFAULT_API_POLL_INTERVAL",
    "DEFAULT_POLL_INTERVAL",
    "NeoleadsWebhookTrigger",
    "is_transient_api_error",
    "is_transient_store_error",
    "look_in_api",
    "look_in_store",
    "raise_explained",
    "repr_without_password",
]

log = logging.getLogger(__name__)

CLASSPATH = "neoleads_provider.triggers.webhook.NeoleadsWebhookTrigger"
DEFAULT_POLL_INTERVAL = 1.0
DEFAULT_API_POLL_INTERVAL = 30.0
# While the store is down the wait between looks doubles up to this, so a long outage costs little.
MAX_OUTAGE_BACKOFF = 30.0
# Woken by the store watcher, a trigger still waits this long after its previous look (or poll_interval, if
# shorter), so a burst of deliveries to its conversation costs it a few queries, not one per delivery.
MIN_LOOK_GAP = 0.1
# A store or API outage is logged when it starts and then at most this often, not on every look.
OUTAGE_LOG_EVERY = 60.0
# GET .../messages?after=<id> returns at most this many newer messages per call.
API_PAGE_SIZE = 100
# Pages read per API look; a conversation with more unread traffic than this is looked at again next time.
API_MAX_PAGES = 10


# -- the event store ---------------------------------------------------------------------------------------


def is_transient_store_error(exc: BaseException) -> bool:
    """Whether a store error is an outage worth waiting out (connection refused, lock, pool timeout...).

    A bad URL, a missing driver or a programming error is not: waiting would never fix it.
    """
    from sqlalchemy import exc as sa_exc

    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(
        exc, sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.TimeoutError | sa_exc.DisconnectionError
    )


def raise_explained(engine: Any, exc: BaseException) -> NoReturn:
    """Raise the schema error that explains ``exc`` (the store was never migrated), else ``exc`` itself.

    Asks the schema table rather than parsing each database's error text; if that check fails too, ``exc``
    is the error to report.
    """
    from sqlalchemy.exc import SQLAlchemyError

    from neoleads_provider.store.migrate import EventStoreSchemaError, check_schema

    try:
        check_schema(engine)
    except EventStoreSchemaError as schema_error:
        raise schema_error from exc
    except SQLAlchemyError:
        pass
    raise exc


def look_in_store(events_db_url: str | None, flt: EventFilter) -> dict[str, Any] | None:
    """Look once in the event store; return the oldest match as an XCom dict (``source: "webhook"``) or None.

    Blocking: call it from a worker thread in async code.

    :param events_db_url: the store's SQLAlchemy URL; None reads ``[neoleads] events_db_url``.
    :raises EventStoreSchemaError: the store has no (or an old) schema; the message says to migrate it.
    :raises sqlalchemy.exc.SQLAlchemyError: the store failed; see :func:`is_transient_store_error`.
    """
    from sqlalchemy.exc import DBAPIError

    from neoleads_provider.store.engine import get_engine
    from neoleads_provider.store.matching import find_first_match

    engine = get_engine(events_db_url)
    try:
        with engine.connect() as conn:
            found = find_first_match(conn, flt)
    except DBAPIError as exc:
        raise_explained(engine, exc)
    return None if found is None else {**found.to_xcom(), "source": "webhook"}


# -- the API ---------------------------------------------------------------------------------------------


def is_transient_api_error(exc: BaseException) -> bool:
    """Whether an API error may go away by itself (network, 429, 5xx) rather than needing a fix."""
    from neoleads_provider.exceptions import (
        NeoleadsRateLimitError,
        NeoleadsServerError,
        NeoleadsTransportError,
    )

    return isinstance(exc, NeoleadsTransportError | NeoleadsRateLimitError | NeoleadsServerError)


def _api_event(payload: dict[str, Any]) -> dict[str, Any]:
    """The XCom dict for a message found through the API: the stored-event keys, with no store ids."""
    sender_type = sender_type_of(payload)
    sender = payload.get("sender")
    return {
        "source": "api",
        "event_id": None,
        "delivery_id": None,
        "event": payload["event"],
        "account_id": payload["account"]["id"],
        "inbox_id": payload["inbox"]["id"],
        "conversation_id": payload["conversation"]["id"],
        "message_id": payload["id"],
        "contact_id": sender.get("id") if sender_type == "contact" and isinstance(sender, Mapping) else None,
        "message_type": payload["message_type"],
        "private": payload["private"],
        "sender_type": sender_type,
        "received_at": None,
        "payload": payload,
    }


def look_in_api(
    hook: NeoleadsHook, flt: EventFilter, *, max_pages: int = API_MAX_PAGES
) -> dict[str, Any] | None:
    """Read the conversation's messages after the watermark and return the first that ``flt`` matches.

    Only ``message_created`` can be recovered this way (the API has no history of other events), and only
    for a filter on one conversation. The message is reshaped as a webhook payload first, so every
    criterion means what it means for stored events. Blocking: call it from a worker thread in async code.

    :return: an XCom dict with ``source: "api"``, or None.
    :raises NeoleadsError: the API call failed; see :func:`is_transient_api_error`.
    """
    if "message_created" not in flt.events or flt.conversation_id is None:
        return None
    # The hook's account, not the filter's: a display id only means something within its account.
    account_id = hook.account_id
    after = flt.after_message_id
    for _ in range(max_pages):
        page = [m for m in hook.list_messages(flt.conversation_id, after=after) if isinstance(m, Mapping)]
        ids = [m["id"] for m in page if isinstance(m.get("id"), int)]
        for message in sorted(page, key=lambda m: m.get("id") if isinstance(m.get("id"), int) else 0):
            payload = webhook_payload_from_api_message(message, account_id=account_id)
            if flt.matches(payload):
                return _api_event(payload)
        # Without a cursor the API only returns the latest page; with one, a short page is the last.
        if after is None or len(page) < API_PAGE_SIZE or not ids:
            return None
        after = max(ids)
    return None


# -- the trigger -----------------------------------------------------------------------------------------


def repr_without_password(trigger: BaseTrigger) -> str:
    """The trigger's repr, with the store URL's password hidden: the triggerer logs triggers by repr."""
    classpath, kwargs = trigger.serialize()
    if kwargs.get("events_db_url"):
        from neoleads_provider.store.engine import safe_url

        kwargs["events_db_url"] = safe_url(kwargs["events_db_url"])
    return trigger.repr(classpath, kwargs)


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"NeoleadsWebhookTrigger {name} must be a positive number of seconds, got {value!r}")
    return float(value)


class NeoleadsWebhookTrigger(BaseTrigger):
    """Fire once a stored webhook event (or, with ``poll_api``, an API message) matches a filter.

    Events: ``{"status": "success", "event": <XCom dict>}`` on a match; ``{"status": "timeout", ...}``
    once ``end_time`` passes; ``{"status": "error", "message": ...}`` when waiting cannot succeed
    (the store has no schema, the connection is missing or refused). A store outage is logged and
    waited out.

    :param event_filter: :meth:`EventFilter.to_dict` of what to wait for.
    :param neoleads_conn_id: the ``neoleads`` connection, used for ``poll_api``.
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
        self._filter = EventFilter.from_dict(event_filter)
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
        try:
            from airflow.sdk.exceptions import AirflowNotFoundException
        except ImportError:  # Airflow 3.1 has it in airflow.exceptions only.
            from airflow.exceptions import AirflowNotFoundException
        from sqlalchemy.exc import SQLAlchemyError

        from neoleads_provider.exceptions import NeoleadsError
        from neoleads_provider.store.migrate import EventStoreSchemaError
        from neoleads_provider.store.watch import interest_of, watcher_for

        loop = asyncio.get_running_loop()
        next_api_look = loop.time()
        store_failures = 0
        last_outage_log = float("-inf")
        # One watcher per triggerer wakes the triggers waiting on a conversation (or inbox) as soon as rows
        # for it are stored, so a reply is seen within a fraction of a second whatever poll_interval is.
        watcher = watcher_for(self.events_db_url)
        interest = interest_of(self._filter)
        while True:
            # Read before looking: a change during the look then ends the wait below at once.
            seen_version = watcher.version
            looked_at = loop.time()
            delay = self.poll_interval
            try:
                found = await asyncio.to_thread(look_in_store, self.events_db_url, self._filter)
            except EventStoreSchemaError as exc:
                yield TriggerEvent({"status": "error", "message": str(exc)})
                return
            except SQLAlchemyError as exc:
                if not is_transient_store_error(exc):
                    yield TriggerEvent(
                        {"status": "error", "message": f"The Neoleads event store failed: {exc}"}
                    )
                    return
                store_failures += 1
                if loop.time() - last_outage_log >= OUTAGE_LOG_EVERY:
                    last_outage_log = loop.time()
                    self.log.warning(
                        "The Neoleads event store is unavailable (%s failed looks); still waiting: %s",
                        store_failures,
                        type(exc).__name__,
                    )
                delay = min(
                    self.poll_interval * 2 ** min(store_failures, 10),
                    max(self.poll_interval, MAX_OUTAGE_BACKOFF),
                )
                found = None
            else:
                if store_failures:
                    self.log.info("The Neoleads event store is back after %s failed looks", store_failures)
                store_failures = 0
            if found is not None:
                yield TriggerEvent({"status": "success", "event": found})
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
                    yield TriggerEvent({"status": "success", "event": found})
                    return

            if self.end_time is not None:
                remaining = self.end_time - time.time()
                if remaining <= 0:
                    yield TriggerEvent(
                        {
                            "status": "timeout",
                            "message": "No matching Neoleads event arrived before the sensor's timeout",
                            "end_time": self.end_time,
                        }
                    )
                    return
                delay = min(delay, remaining)
            if store_failures:
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
