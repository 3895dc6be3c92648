"""Turn new stored Neoleads webhook events into asset events: event-driven DAGs.

:class:`NeoleadsEventTrigger` is a ``BaseEventTrigger`` for ``AssetWatcher``::

    from airflow.sdk import DAG, Asset, AssetWatcher

    from neoleads_provider.triggers.events import NeoleadsEventTrigger

    incoming = Asset(
        "neoleads_incoming_messages",
        watchers=[AssetWatcher(name="neoleads_incoming", trigger=NeoleadsEventTrigger(inbox_id=1))],
    )

    with DAG("answer", schedule=incoming, ...):
        ...  # context["triggering_asset_events"][incoming][i].extra["payload"]

Every stored event that matches the filter and is newer than the trigger's cursor becomes one
``TriggerEvent`` whose payload is the stored event's ids plus the webhook ``payload`` (the same dict the
sensor returns). The triggerer turns it into one asset event, which queues a run of every DAG scheduled on
the asset.

**The cursor.** Where Airflow injects the per-asset state store (3.3+: ``self.asset_state_store``), the
cursor lives there under :attr:`NeoleadsEventTrigger.cursor_key`, so a restarted triggerer (or another one
taking the watcher over) carries on where the last one stopped: events stored while no triggerer ran are
fired once, when it is back, and old rows never fire again. On its very first start the trigger begins at
the current end of the table (``start_from="end"``), so installing a DAG never replays history. Without a
state store (Airflow 3.1/3.2) the cursor is kept in memory only and every start begins at the end: nothing
is ever fired twice, but events stored while the triggerer was down are not fired.

**Late commits.** Row ids are allocated at insert, not at commit, so with several receivers (API server
workers or replicas) on PostgreSQL a row may become visible after a row with a larger id. The trigger
therefore keeps a watermark (``after_id``) below which every row is *settled* (received more than
``settle_seconds`` ago) and remembers the ids it already fired above it; each look re-reads the rows above
the watermark and fires only those it has not fired yet.

**Hand-over.** A fired id is written to the state store only ``CURSOR_SAVE_DELAY`` seconds after it was
yielded: by then the triggerer has passed the event on to be committed. If the triggerer is killed in that
window the event fires again after the restart (it is never lost); DAGs should be idempotent, as the
example ``neoleads_auto_reply`` is (its answer's ``source_id`` is derived from the message id).

The query is :func:`neoleads_provider.store.matching.find_matches`: the same indexed filter the sensor uses.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

from neoleads_provider.store.matching import EventFilter
from neoleads_provider.triggers.webhook import raise_explained, repr_without_password

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from neoleads_provider.store.records import StoredEvent

__all__ = [
    "CURSOR_SAVE_DELAY",
    "CursorState",
    "NeoleadsEventTrigger",
    "event_payload",
    "read_current_end",
    "read_new_events",
]

log = logging.getLogger(__name__)

CLASSPATH = "neoleads_provider.triggers.events.NeoleadsEventTrigger"
DEFAULT_POLL_INTERVAL = 2.0
DEFAULT_BATCH_SIZE = 100
DEFAULT_SETTLE_SECONDS = 30.0
# A fired id is saved this long after it was yielded: the triggerer hands events on about once a second.
CURSOR_SAVE_DELAY = 5.0
# Pages of ``batch_size`` rows read per look; more unfired rows than this wait for the next look.
MAX_PAGES_PER_LOOK = 20
# While the store fails, the wait between looks doubles up to this.
MAX_BACKOFF_SECONDS = 60.0
# An outage is logged when it starts and then at most this often.
OUTAGE_LOG_EVERY = 60.0
CURSOR_KEY_PREFIX = "neoleads_event_cursor_"
_CURSOR_VERSION = 1
_START_POINTS = ("end", "beginning")


# -- the store side (blocking: called from worker threads) ---------------------------------------------------


def read_current_end(events_db_url: str | None) -> int:
    """Return the id of the newest stored event, or 0 when the store is empty or has no table yet.

    A store that has no schema yet is empty: the receiver creates it on its first delivery.

    :raises sqlalchemy.exc.SQLAlchemyError: the store failed.
    """
    from sqlalchemy.exc import DBAPIError

    from neoleads_provider.store.engine import get_engine
    from neoleads_provider.store.migrate import EventStoreSchemaError
    from neoleads_provider.store.repository import list_events

    engine = get_engine(events_db_url)
    try:
        with engine.connect() as conn:
            newest = list_events(conn, limit=1)
    except DBAPIError as exc:
        try:
            raise_explained(engine, exc)
        except EventStoreSchemaError:
            return 0
    return newest[0].id if newest else 0


def read_new_events(
    events_db_url: str | None,
    flt: EventFilter,
    *,
    after_id: int,
    fired: Sequence[int] | set[int] = (),
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_pages: int = MAX_PAGES_PER_LOOK,
) -> list[StoredEvent]:
    """Return the matching events with ``id > after_id``, oldest first, paging past already ``fired`` ones.

    At most ``max_pages`` pages of ``batch_size`` rows are read; the ones already fired are included (the
    caller needs them to move its watermark) but do not count towards filling a page of new ones.

    :raises EventStoreSchemaError: the store has no (or an old) schema.
    :raises sqlalchemy.exc.SQLAlchemyError: the store failed.
    """
    from sqlalchemy.exc import DBAPIError

    from neoleads_provider.store.engine import get_engine
    from neoleads_provider.store.matching import find_matches

    engine = get_engine(events_db_url)
    fired_ids = set(fired)
    found: list[StoredEvent] = []
    cursor = after_id
    try:
        with engine.connect() as conn:
            for _ in range(max_pages):
                page = find_matches(conn, flt, after_id=cursor, limit=batch_size)
                found.extend(page)
                if len(page) < batch_size or any(event.id not in fired_ids for event in page):
                    break
                cursor = page[-1].id
    except DBAPIError as exc:
        raise_explained(engine, exc)
    return found


def event_payload(event: StoredEvent) -> dict[str, Any] | None:
    """The TriggerEvent payload for a stored event: its ids and the webhook body; None if the body is not JSON."""
    try:
        payload = event.to_xcom()
    except ValueError:
        return None
    if not isinstance(payload.get("payload"), Mapping):
        return None
    return {**payload, "source": "webhook"}


# -- the cursor ------------------------------------------------------------------------------------------


@dataclass
class CursorState:
    """Where the trigger is: every matching row ``<= after_id`` is settled and was fired (or predates it).

    ``fired`` maps ids above ``after_id`` that were already fired to when (``time.monotonic()``) they were
    yielded, or to ``None`` when they were loaded from the saved cursor.
    """

    after_id: int
    fired: dict[int, float | None] = field(default_factory=dict)

    def to_json(self, *, now: float) -> dict[str, Any]:
        """The saved form: only ids yielded at least :data:`CURSOR_SAVE_DELAY` seconds ago count as fired."""
        confirmed = sorted(
            event_id
            for event_id, fired_at in self.fired.items()
            if fired_at is None or now - fired_at >= CURSOR_SAVE_DELAY
        )
        return {"version": _CURSOR_VERSION, "after_id": self.after_id, "fired": confirmed}

    @classmethod
    def from_json(cls, value: Any) -> CursorState | None:
        """Read a saved cursor: the dict written by :meth:`to_json`, or a bare id (set by hand to rewind).

        :return: None when the value is not a cursor (it is then ignored, and the log says so).
        """
        if isinstance(value, bool):
            return None
        if isinstance(value, int) and value >= 0:
            return cls(after_id=value)
        if isinstance(value, str) and value.strip().isdigit():
            return cls(after_id=int(value.strip()))
        if not isinstance(value, Mapping):
            return None
        after_id = value.get("after_id")
        fired = value.get("fired", [])
        if isinstance(after_id, bool) or not isinstance(after_id, int) or after_id < 0:
            return None
        if not isinstance(fired, list) or not all(
            isinstance(item, int) and not isinstance(item, bool) for item in fired
        ):
            return None
        return cls(after_id=after_id, fired={item: None for item in fired if item > after_id})

    def settle(
        self, seen: Sequence[StoredEvent], *, now_utc: datetime, now: float, settle_seconds: float
    ) -> None:
        """Move ``after_id`` over the leading rows of ``seen`` that are settled and saved as fired.

        A row is settled once it was received ``settle_seconds`` ago: every row with a smaller id has
        committed by then. It must also be old enough to be saved as fired, or moving the watermark over it
        would lose it in a crash.
        """
        cutoff = now_utc - timedelta(seconds=settle_seconds)
        for event in seen:
            if event.id <= self.after_id:
                continue
            if event.id not in self.fired:
                break
            fired_at = self.fired[event.id]
            if fired_at is not None and now - fired_at < CURSOR_SAVE_DELAY:
                break
            received_at = event.received_at
            if received_at.tzinfo is None:
                received_at = received_at.replace(tzinfo=UTC)
            if received_at > cutoff:
                break
            self.after_id = event.id
        for event_id in [event_id for event_id in self.fired if event_id <= self.after_id]:
            del self.fired[event_id]


class _MemoryCursor:
    """No durable store: the cursor lives as long as this trigger instance."""

    durable = False

    async def load(self) -> Any:
        return None

    async def save(self, value: Any) -> None:
        return None


class _AssetStateCursor:
    """The cursor in Airflow's per-asset state store (3.3+), under one key, for every watched asset."""

    durable = True

    def __init__(self, store: Any, key: str) -> None:
        self._key = key
        # One trigger can watch several assets (the same trigger in two watchers): keep the cursor in each.
        accessors = [*getattr(store, "_by_name", {}).values(), *getattr(store, "_by_uri", {}).values()]
        self._accessors = accessors or [store]

    async def load(self) -> Any:
        values = [await accessor.aget(self._key) for accessor in self._accessors]
        cursors = [CursorState.from_json(value) for value in values if value is not None]
        usable = [cursor for cursor in cursors if cursor is not None]
        if len(usable) < len([value for value in values if value is not None]):
            log.error(
                "Ignoring a saved Neoleads event cursor %r that is not a cursor (expected an event id or "
                "{'after_id': id, 'fired': [ids]})",
                self._key,
            )
        if not usable:
            return None
        # With several assets, the one that is furthest behind decides: no asset misses an event.
        return min(usable, key=lambda cursor: cursor.after_id)

    async def save(self, value: Any) -> None:
        for accessor in self._accessors:
            await accessor.aset(self._key, value)


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


class NeoleadsEventTrigger(BaseEventTrigger):
    """Fire one event per new stored Neoleads webhook event that matches a filter (for ``AssetWatcher``).

    The payload of each ``TriggerEvent`` (and so the asset event's ``extra["payload"]``) is the stored
    event: ``event_id``, ``delivery_id``, ``event``, ``account_id``, ``inbox_id``, ``conversation_id``,
    ``message_id``, ``contact_id``, ``message_type``, ``private``, ``sender_type``, ``received_at``,
    ``source`` (``"webhook"``) and ``payload`` (the webhook body).

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
        continue from the saved cursor. Without a durable cursor (Airflow < 3.3) every start is at the end.
    :param poll_interval: seconds between looks in the store.
    :param batch_size: rows read per query.
    :param settle_seconds: how long after it was received a row is taken as committed together with every
        row of smaller id (see the module's notes on late commits).
    :param cursor_key: the state-store key of the cursor; default derived from the filter and the store, so
        several Neoleads watchers on one asset keep separate cursors. Set it to keep the cursor when you
        change the filter.
    """

    def __init__(
        self,
        *,
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
    ) -> None:
        super().__init__()
        self._filter = EventFilter(
            events=events,
            account_id=account_id,
            inbox_id=inbox_id,
            conversation_id=conversation_id,
            message_types=message_types,
            include_private=include_private,
            sender_types=sender_types,
            content_pattern=content_pattern,
        )
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
        """What this trigger fires on."""
        return self._filter

    def _default_cursor_key(self) -> str:
        criteria = {
            name: value for name, value in self._filter.to_dict().items() if name != "after_message_id"
        }
        store = ""
        if self.events_db_url:
            from neoleads_provider.store.engine import safe_url

            # The password never enters the key (the key is shown in the UI and the REST API).
            store = safe_url(self.events_db_url)
        digest = hashlib.sha256(json.dumps([criteria, store], sort_keys=True).encode()).hexdigest()
        return CURSOR_KEY_PREFIX + digest[:16]

    def serialize(self) -> tuple[str, dict[str, Any]]:
        criteria = self._filter.to_dict()
        return (
            CLASSPATH,
            {
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
            },
        )

    def __repr__(self) -> str:
        return repr_without_password(self)

    # -- running -------------------------------------------------------------------------------------------

    def _cursor_store(self) -> _AssetStateCursor | _MemoryCursor:
        store = getattr(self, "asset_state_store", None)
        if store is None:
            return _MemoryCursor()
        return _AssetStateCursor(store, self.cursor_key)

    async def _start(self, cursor: _AssetStateCursor | _MemoryCursor) -> CursorState:
        """Load the saved cursor, or place (and save) the first one; retry until the stores answer."""
        failures = 0
        while True:
            try:
                saved = await cursor.load()
                if saved is not None:
                    self.log.info(
                        "Neoleads event trigger resumes after stored event %s (%s fired above it); cursor %s",
                        saved.after_id,
                        len(saved.fired),
                        self.cursor_key,
                    )
                    return saved
                if not cursor.durable:
                    if self.start_from != "end":
                        self.log.warning(
                            "start_from=%r needs a durable cursor (Airflow's asset state store, 3.3+); "
                            "without one every start begins at the end of the event store, so nothing "
                            "fires twice",
                            self.start_from,
                        )
                    start = await asyncio.to_thread(read_current_end, self.events_db_url)
                elif self.start_from == "end":
                    start = await asyncio.to_thread(read_current_end, self.events_db_url)
                elif self.start_from == "beginning":
                    start = 0
                else:
                    start = int(self.start_from)
                state = CursorState(after_id=start)
                # Saved at once: a restart before the first event must not move the start forward.
                await cursor.save(state.to_json(now=time.monotonic()))
                self.log.info(
                    "Neoleads event trigger starts after stored event %s (cursor %s, %s)",
                    start,
                    self.cursor_key,
                    "saved in the asset state store" if cursor.durable else "in memory only",
                )
                return state
            except Exception as exc:
                # The event store or the state store is not answering yet: wait, never guess a cursor.
                failures += 1
                self.log.warning(
                    "Neoleads event trigger cannot place its cursor yet (%s); retrying: %s",
                    failures,
                    type(exc).__name__,
                )
                await asyncio.sleep(min(self.poll_interval * 2 ** min(failures, 10), MAX_BACKOFF_SECONDS))

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from neoleads_provider.store.migrate import EventStoreSchemaError

        cursor = self._cursor_store()
        state = await self._start(cursor)
        saved = state.to_json(now=time.monotonic())
        failures = 0
        last_outage_log = float("-inf")
        while True:
            delay = self.poll_interval
            try:
                seen = await asyncio.to_thread(
                    read_new_events,
                    self.events_db_url,
                    self._filter,
                    after_id=state.after_id,
                    fired=set(state.fired),
                    batch_size=self.batch_size,
                )
            except EventStoreSchemaError:
                # Not migrated yet: the receiver creates the schema on its first delivery.
                seen = []
            except Exception as exc:
                # Never end the watcher: a triggerer would only start it again at once. Wait the outage out.
                failures += 1
                delay = min(self.poll_interval * 2 ** min(failures, 10), MAX_BACKOFF_SECONDS)
                if time.monotonic() - last_outage_log >= OUTAGE_LOG_EVERY:
                    last_outage_log = time.monotonic()
                    self.log.warning(
                        "The Neoleads event store failed (%s failed looks); still watching: %s",
                        failures,
                        exc,
                    )
                await asyncio.sleep(delay)
                continue
            if failures:
                self.log.info("The Neoleads event store is back after %s failed looks", failures)
                failures = 0

            for event in seen:
                if event.id <= state.after_id or event.id in state.fired:
                    continue
                payload = event_payload(event)
                if payload is None:
                    self.log.error("Skipping stored event %s: its body is not a JSON object", event.id)
                else:
                    yield TriggerEvent(payload)
                # Recorded once the triggerer has taken the event (the generator resumes after that).
                state.fired[event.id] = time.monotonic()

            state.settle(
                seen,
                now_utc=datetime.now(UTC),
                now=time.monotonic(),
                settle_seconds=self.settle_seconds,
            )
            current = state.to_json(now=time.monotonic())
            if current != saved:
                try:
                    await cursor.save(current)
                    saved = current
                except Exception as exc:
                    self.log.warning("Could not save the Neoleads event cursor; will try again: %s", exc)
            await asyncio.sleep(delay)
