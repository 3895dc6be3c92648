"""Turn new stored Neoleads webhook events into asset events: event-driven DAGs.

:class:`NeoleadsEventTrigger` is a ``BaseEventTrigger`` for ``AssetWatcher``::

    from airflow.sdk import DAG, Asset, AssetWatcher

    from neoleads_provider.triggers.events import NeoleadsEventTrigger

    incoming = Asset(
        "neoleads_incoming_messages",
        watchers=[
            AssetWatcher(
                name="neoleads_incoming",
                trigger=NeoleadsEventTrigger(neoleads_conn_id="neoleads_default", inbox_id=1),
            )
        ],
    )

    with DAG("answer", schedule=incoming, ...):
        ...  # context["triggering_asset_events"][incoming][i].extra["payload"]

Every stored event of the trigger's connection (``neoleads_conn_id``) that matches the filter and is newer
than the trigger's cursor becomes one ``TriggerEvent`` whose payload is the stored event's ids plus the
webhook ``payload`` (the same dict the sensor returns). The triggerer turns it into one asset event, which
queues a run of every DAG scheduled on the asset. Deliveries received for another connection never fire.

**The cursor** lives in the event store itself (``neoleads_watch_cursor``, one row per
:attr:`NeoleadsEventTrigger.cursor_key`) on every Airflow version, so a restarted triggerer (or another one
taking the watcher over) carries on where the last one stopped: events stored while no triggerer ran fire
when it is back, and old rows never fire again. On its very first start the trigger begins at the newest
stored event of its connection (``start_from="end"``), so installing a DAG never replays history; the start
is saved before anything fires.

**Late commits.** Row ids are allocated at insert, not at commit, so with several receivers on PostgreSQL a
row may become visible after a row with a larger id. The cursor (:class:`~neoleads_provider.triggers.event_watch.CursorState`) is a watermark
(``after_id``) below which every row is *settled* (received more than ``settle_seconds`` before a look
began) and was handed over, plus the ids above it already handed over; each look re-reads the rows above
the watermark and offers only those not handed over yet.

**Delivery guarantees, by Airflow version.**

- *Airflow 3.3+ (shared streams, ack mode).* The triggerer runs the look loop as a
  :class:`~neoleads_provider.triggers.event_watch.NeoleadsEventStreamProducer` and the trigger only wraps each event
  (:meth:`~NeoleadsEventTrigger.filter_shared_stream`). An event is recorded in the cursor only in
  :meth:`~neoleads_provider.triggers.event_watch.NeoleadsEventStreamProducer.advance`, which Airflow calls once the asset event was persisted in
  its metadata database; an event whose asset event failed, timed out (``[triggerer]
  shared_stream_ack_timeout``) or had no subscriber is offered again, and the watermark never passes it.
  So a triggerer killed at any point loses no event, and repeats one only if it dies in the few
  milliseconds between Airflow persisting the asset event and the cursor's commit, or while the store
  cannot save the cursor (the save is retried on every look; events persisted since the last successful
  save repeat after a crash). An event whose persistence Airflow confirms only after the ack timeout is
  offered again too, so it may also repeat.
- *Airflow 3.1/3.2 (no shared streams).* :meth:`~NeoleadsEventTrigger.run` fires the events itself and
  records a fired id in the saved cursor only ``CURSOR_SAVE_DELAY`` (5) seconds after it was handed to the
  triggerer (the triggerer persists events about once a second). No event is lost unless the triggerer
  holds one unpersisted for longer than that and then dies; an event fired less than
  ``CURSOR_SAVE_DELAY`` seconds plus one ``poll_interval`` before a crash fires again after the restart.
  ``run()`` is also what runs the watcher when it is used outside the triggerer's shared streams.

Either way DAGs should be idempotent, as the example ``neoleads_auto_reply`` is (its answer's
``source_id`` is derived from the message id).

The query is :func:`neoleads_provider.store.queries.find_new_events`: the same indexed filter the sensor
uses. A failing store is waited out with :class:`neoleads_provider.waiting.OutagePolicy`.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import inspect
import json
import time
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

from neoleads_provider import version_compat
from neoleads_provider.events.filter import DEFAULT_CONN_ID, EventFilter
from neoleads_provider.triggers.event_watch import (
    NeoleadsEventStreamProducer,
    _Watch,
)
from neoleads_provider.waiting import repr_without_password

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Hashable, Sequence


__all__ = ["HAS_SHARED_STREAMS", "NeoleadsEventTrigger"]

#: Whether this Airflow runs asset watchers through shared streams in ack mode (3.3+).
HAS_SHARED_STREAMS = version_compat.SharedStreamProducer is not None

CLASSPATH = "neoleads_provider.triggers.events.NeoleadsEventTrigger"
SHARED_STREAM_PREFIX = "neoleads-event-stream"
DEFAULT_POLL_INTERVAL = 2.0
DEFAULT_BATCH_SIZE = 100
DEFAULT_SETTLE_SECONDS = 30.0
CURSOR_KEY_PREFIX = "neoleads_event_cursor_"
_START_POINTS = ("end", "beginning")


# -- the trigger -----------------------------------------------------------------------------------------


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"NeoleadsEventTrigger {name} must be a positive number, got {value!r}")
    return float(value)


def _start_from(value: Any) -> str | int:
    if isinstance(value, str) and value in _START_POINTS:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ValueError(
        f"NeoleadsEventTrigger start_from must be 'end', 'beginning' or a stored event id >= 0, got {value!r}"
    )


@functools.cache
def _base_keywords() -> frozenset[str]:
    """The keyword arguments this Airflow's ``BaseEventTrigger.__init__`` names (3.4: ``queue``)."""
    try:
        parameters = inspect.signature(BaseEventTrigger.__init__).parameters.values()
    except (TypeError, ValueError):
        return frozenset()
    return frozenset(
        parameter.name
        for parameter in parameters
        if parameter.kind in (parameter.KEYWORD_ONLY, parameter.POSITIONAL_OR_KEYWORD)
        and parameter.name != "self"
    )


class NeoleadsEventTrigger(BaseEventTrigger):
    """Fire one event per new stored Neoleads webhook event that matches a filter (for ``AssetWatcher``).

    The payload of each ``TriggerEvent`` (and so the asset event's ``extra["payload"]``) is the stored
    event: ``event_id``, ``conn_id``, ``delivery_id``, ``event``, ``account_id``, ``inbox_id``,
    ``conversation_id``, ``message_id``, ``contact_id``, ``message_type``, ``private``, ``sender_type``,
    ``received_at``, ``source`` (``"webhook"``) and ``payload`` (the webhook body).

    :param neoleads_conn_id: the ``neoleads`` connection whose received deliveries fire; no other's do.
    :param events: webhook event names, e.g. ``["message_created"]`` (the default).
    :param account_id: only events of this Neoleads account.
    :param inbox_id: only events of this inbox.
    :param conversation_id: only events of this conversation (display id).
    :param message_types: message types that match; the default ``["incoming"]`` never matches the echo
        of messages the DAG sends itself. None matches any.
    :param include_private: whether private notes match (default: no).
    :param sender_types: sender types that match (``contact``, ``user``, ``agent_bot``...); None is any.
    :param content_pattern: a Python regular expression searched in the message content.
    :param events_db_url: the event store's SQLAlchemy URL; None reads ``[neoleads] events_db_url``.
    :param start_from: where the very first start begins: ``"end"`` (default: only events stored from
        now on), ``"beginning"`` (every stored event), or a stored event id to start after. Later starts
        continue from the saved cursor.
    :param poll_interval: seconds between looks in the store.
    :param batch_size: rows read per query; also how many events may await persistence at once.
    :param settle_seconds: how long after it was received a row is taken as committed together with every
        row of smaller id (see the module's notes on late commits).
    :param cursor_key: the key of the cursor in the event store; default derived from the connection, the
        filter and the store, so several watchers keep separate cursors. Set it to keep the cursor when you
        change the filter; it must be unique per watcher.
    :param kwargs: what this Airflow's ``BaseEventTrigger`` takes (3.4: ``queue``); anything else is an error.
    """

    def __init__(
        self,
        *,
        neoleads_conn_id: str = DEFAULT_CONN_ID,
        events: str | Sequence[str] = ("message_created",),
        account_id: int | None = None,
        inbox_id: int | None = None,
        conversation_id: int | None = None,
        message_types: str | Sequence[str] | None = ("incoming",),
        include_private: bool = False,
        sender_types: str | Sequence[str] | None = None,
        content_pattern: str | None = None,
        events_db_url: str | None = None,
        start_from: str | int = "end",
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        batch_size: int = DEFAULT_BATCH_SIZE,
        settle_seconds: float = DEFAULT_SETTLE_SECONDS,
        cursor_key: str | None = None,
        **kwargs: Any,
    ) -> None:
        # Only what the base class names goes through: on 3.3 and older it would swallow anything, and a
        # misspelt criterion must fail when the DAG is parsed, not silently watch everything.
        unknown = sorted(set(kwargs) - _base_keywords())
        if unknown:
            raise TypeError(f"NeoleadsEventTrigger got unexpected keyword arguments {unknown}")
        super().__init__(**kwargs)
        # Serialized back only when set, so the trigger's identity does not change with the Airflow version.
        self._base_kwargs = {name: value for name, value in kwargs.items() if value is not None}
        self._filter = EventFilter(
            conn_id=neoleads_conn_id,
            events=events,
            account_id=account_id,
            inbox_id=inbox_id,
            conversation_id=conversation_id,
            message_types=message_types,
            include_private=include_private,
            sender_types=sender_types,
            content_pattern=content_pattern,
        )
        self.neoleads_conn_id = self._filter.conn_id
        if events_db_url is not None and (not isinstance(events_db_url, str) or not events_db_url.strip()):
            raise ValueError("NeoleadsEventTrigger events_db_url must be a database URL or None")
        self.events_db_url = events_db_url
        self.start_from = _start_from(start_from)
        self.poll_interval = _positive("poll_interval", poll_interval)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(
                f"NeoleadsEventTrigger batch_size must be a positive integer, got {batch_size!r}"
            )
        self.batch_size = batch_size
        self.settle_seconds = _positive("settle_seconds", settle_seconds)
        if cursor_key is not None and (not isinstance(cursor_key, str) or not 0 < len(cursor_key) <= 200):
            raise ValueError(
                "NeoleadsEventTrigger cursor_key must be a non-empty string of at most 200 characters"
            )
        self.cursor_key = cursor_key or self._default_cursor_key()

    @property
    def event_filter(self) -> EventFilter:
        """What this trigger fires on (its ``conn_id`` is ``neoleads_conn_id``)."""
        return self._filter

    def _safe_store(self) -> str:
        if not self.events_db_url:
            return ""
        from neoleads_provider.store.engine import safe_url

        # The password never enters a key (keys are shown in logs and the UI).
        return safe_url(self.events_db_url)

    def _default_cursor_key(self) -> str:
        criteria = {
            name: value for name, value in self._filter.to_dict().items() if name != "after_message_id"
        }
        digest = hashlib.sha256(
            json.dumps([criteria, self._safe_store()], sort_keys=True).encode()
        ).hexdigest()
        return CURSOR_KEY_PREFIX + digest[:16]

    def serialize(self) -> tuple[str, dict[str, Any]]:
        criteria = self._filter.to_dict()
        return (
            CLASSPATH,
            {
                "neoleads_conn_id": self.neoleads_conn_id,
                "events": criteria["events"],
                "account_id": criteria["account_id"],
                "inbox_id": criteria["inbox_id"],
                "conversation_id": criteria["conversation_id"],
                "message_types": criteria["message_types"],
                "include_private": criteria["include_private"],
                "sender_types": criteria["sender_types"],
                "content_pattern": criteria["content_pattern"],
                "events_db_url": self.events_db_url,
                "start_from": self.start_from,
                "poll_interval": self.poll_interval,
                "batch_size": self.batch_size,
                "settle_seconds": self.settle_seconds,
                "cursor_key": self.cursor_key,
                **self._base_kwargs,
            },
        )

    def __repr__(self) -> str:
        return repr_without_password(self)

    # -- Airflow 3.3+: one shared stream per watcher, in ack mode -------------------------------------------

    def shared_stream_key(self) -> Hashable | None:
        """A key of this watcher's own (its cursor and its whole configuration); None before Airflow 3.3."""
        if not HAS_SHARED_STREAMS:
            return None
        _, kwargs = self.serialize()
        kwargs["events_db_url"] = self._safe_store()
        digest = hashlib.sha256(json.dumps(kwargs, sort_keys=True, default=str).encode()).hexdigest()
        return (SHARED_STREAM_PREFIX, self.cursor_key, digest[:16])

    @classmethod
    def create_shared_stream_producer(cls, kwargs: dict[str, Any]) -> NeoleadsEventStreamProducer:
        """The stream's producer; it connects to the store only once its stream is opened."""
        return NeoleadsEventStreamProducer(cls(**kwargs))

    async def filter_shared_stream(self, shared_stream: AsyncIterator[Any]) -> AsyncIterator[TriggerEvent]:
        """One ``TriggerEvent`` per raw event: the producer already applied this watcher's filter."""
        async for raw in shared_stream:
            yield TriggerEvent(raw)

    # -- Airflow 3.1/3.2 (and direct use): the trigger polls by itself --------------------------------------

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Fire every new matching event; save a fired id ``CURSOR_SAVE_DELAY`` seconds after firing it."""
        watch = _Watch(self)
        state = await watch.start()
        while True:
            looked = await watch.look(state)
            if looked is None:
                continue
            seen, began = looked
            for event, payload in watch.new_events(state, seen):
                yield TriggerEvent(payload)
                # Recorded once the triggerer has taken the event (the generator resumes after that).
                state.fired[event.id] = time.monotonic()
            state.settle(seen, now_utc=began, now=time.monotonic(), settle_seconds=self.settle_seconds)
            await watch.save(state)
            await asyncio.sleep(self.poll_interval)
