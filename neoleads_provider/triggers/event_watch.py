"""The store side of an asset watcher: its cursor, its looks, and (Airflow 3.3+) its shared-stream producer.

:class:`~neoleads_provider.triggers.events.NeoleadsEventTrigger` is the trigger Airflow runs; what it reads
and remembers is here. The delivery guarantees this gives, by Airflow version, are in the trigger module's
docstring.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from neoleads_provider import version_compat
from neoleads_provider.store.errors import EventStoreError, EventStoreSchemaError
from neoleads_provider.waiting import OutagePolicy

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from airflow.triggers.shared_stream import AdvanceItem

    from neoleads_provider.store.records import StoredEvent
    from neoleads_provider.triggers.events import NeoleadsEventTrigger

__all__ = ["CURSOR_SAVE_DELAY", "CursorState", "NeoleadsEventStreamProducer", "event_payload"]

# Without shared streams, a fired id is saved this long after it was yielded: the triggerer persists the
# events it took about once a second.
CURSOR_SAVE_DELAY = 5.0
# Pages of ``batch_size`` rows read per look; more unfired rows than this wait for the next look.
MAX_PAGES_PER_LOOK = 20
_CURSOR_VERSION = 1


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
    """Where the watcher is: every matching row ``<= after_id`` is settled and was handed over (or predates it).

    ``fired`` maps ids above ``after_id`` that were handed over to when (``time.monotonic()``) they were
    yielded, or to ``None`` once they count for sure: loaded from the saved cursor, or acknowledged as
    persisted (shared streams). A time counts once it is :data:`CURSOR_SAVE_DELAY` seconds old.
    """

    after_id: int
    fired: dict[int, float | None] = field(default_factory=dict)

    def _confirmed(self, fired_at: float | None, now: float) -> bool:
        return fired_at is None or now - fired_at >= CURSOR_SAVE_DELAY

    def to_json(self, *, now: float) -> dict[str, Any]:
        """The saved form: only ids that count for sure (see the class) are saved as fired."""
        confirmed = sorted(
            event_id for event_id, fired_at in self.fired.items() if self._confirmed(fired_at, now)
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

    def is_done(self, event_id: int) -> bool:
        """Whether the event was handed over already (or lies below the watermark)."""
        return event_id <= self.after_id or event_id in self.fired

    def settle(
        self, seen: Sequence[StoredEvent], *, now_utc: datetime, now: float, settle_seconds: float
    ) -> None:
        """Move ``after_id`` over the leading rows of ``seen`` that are settled and count as fired.

        A row is settled once it was received ``settle_seconds`` before ``now_utc``, the time the look
        that read ``seen`` began: every row with a smaller id had committed by then, so that look saw it.
        It must also count as fired for sure, or moving the watermark over it would lose it in a crash.
        """
        cutoff = now_utc - timedelta(seconds=settle_seconds)
        for event in seen:
            if event.id <= self.after_id:
                continue
            if event.id not in self.fired or not self._confirmed(self.fired[event.id], now):
                break
            received_at = event.received_at
            if received_at.tzinfo is None:
                received_at = received_at.replace(tzinfo=UTC)
            if received_at > cutoff:
                break
            self.after_id = event.id
        for event_id in [event_id for event_id in self.fired if event_id <= self.after_id]:
            del self.fired[event_id]


# -- looking in the store (shared by run() and the shared-stream producer) -------------------------------


def _error_text(exc: BaseException) -> str:
    # An EventStoreError's message is safe to log (no parameters, no password); anything else: its type.
    return str(exc) if isinstance(exc, EventStoreError) else type(exc).__name__


class _Watch:
    """One watcher's store side: placing the cursor, looking for new events, saving the cursor."""

    def __init__(self, trigger: NeoleadsEventTrigger) -> None:
        self.trigger = trigger
        self.log = trigger.log
        self.outage = OutagePolicy(trigger.poll_interval)
        self._saved: dict[str, Any] | None = None
        self._save_lock = asyncio.Lock()

    async def start(self) -> CursorState:
        """Load the saved cursor, or place (and save) the first one; retry until the store answers."""
        from neoleads_provider.store.queries import load_watch_cursor, save_watch_cursor

        trig = self.trigger
        start: int | None = None
        complained = False
        while True:
            try:
                value = await asyncio.to_thread(load_watch_cursor, trig.events_db_url, trig.cursor_key)
                saved = CursorState.from_json(value) if value is not None else None
                if saved is not None:
                    self._saved = saved.to_json(now=time.monotonic())
                    self.log.info(
                        "Neoleads event watcher resumes after stored event %s (%s handed over above it); "
                        "cursor %s",
                        saved.after_id,
                        len(saved.fired),
                        trig.cursor_key,
                    )
                    return saved
                if value is not None and not complained:
                    complained = True
                    self.log.error(
                        "Ignoring the saved Neoleads event cursor %r: %r is not a cursor (expected an event "
                        "id or {'after_id': id, 'fired': [ids]}); placing a new one",
                        trig.cursor_key,
                        value,
                    )
                if start is None:
                    # Placed once: retrying a failed save must not move the start forward.
                    start = await self._first_start()
                state = CursorState(after_id=start)
                current = state.to_json(now=time.monotonic())
                # Saved before anything fires: a restart must begin at the same place.
                await asyncio.to_thread(save_watch_cursor, trig.events_db_url, trig.cursor_key, current)
                self._saved = current
                self.outage.recovered()
                self.log.info(
                    "Neoleads event watcher starts after stored event %s of connection %s (cursor %s)",
                    start,
                    trig.neoleads_conn_id,
                    trig.cursor_key,
                )
                return state
            except Exception as exc:
                # The event store is not answering yet: wait, never guess a cursor.
                await self._wait_out(exc, "cannot place its cursor yet")

    async def _wait_out(self, exc: BaseException, doing: str) -> None:
        """Wait after a failed store call, logging it at most once a minute.

        A store without a schema yet is simply empty (the receiver creates it on its first delivery): it is
        looked at again every ``poll_interval``. Any other failure is an outage, backed off by the policy.
        """
        delay, log_it = self.outage.failed(time.monotonic())
        if isinstance(exc, EventStoreSchemaError):
            delay = self.trigger.poll_interval
            if log_it:
                self.log.info("Neoleads event watcher %s: the event store has no schema yet: %s", doing, exc)
        elif log_it:
            self.log.warning(
                "Neoleads event watcher %s (%s failed tries): %s",
                doing,
                self.outage.failures,
                _error_text(exc),
            )
        await asyncio.sleep(delay)

    async def _first_start(self) -> int:
        from neoleads_provider.store.queries import newest_event_id

        trig = self.trigger
        if trig.start_from == "end":
            return await asyncio.to_thread(newest_event_id, trig.events_db_url, trig.neoleads_conn_id)
        if trig.start_from == "beginning":
            return 0
        return int(trig.start_from)

    async def look(self, state: CursorState, skip: set[int] | frozenset[int] = frozenset()) -> Any:
        """Read the matching rows above the watermark; None when the look failed (and was waited out).

        :param skip: ids not to count as new (in flight), besides the ones already fired.
        :return: ``(rows, when the look began)``, or None after a failed look and its back-off.
        """
        from neoleads_provider.store.queries import find_new_events

        trig = self.trigger
        began = datetime.now(UTC)
        try:
            seen = await asyncio.to_thread(
                find_new_events,
                trig.events_db_url,
                trig.event_filter,
                after_id=state.after_id,
                fired=set(state.fired) | set(skip),
                batch_size=trig.batch_size,
                max_pages=MAX_PAGES_PER_LOOK,
            )
        except Exception as exc:
            # Never end the watcher: a triggerer would only start it again at once. Wait the outage out.
            await self._wait_out(exc, "cannot read the event store; still watching")
            return None
        failures = self.outage.recovered()
        if failures:
            self.log.info("The Neoleads event store is back after %s failed looks", failures)
        return seen, began

    def new_events(
        self, state: CursorState, seen: Sequence[StoredEvent], skip: set[int] | frozenset[int] = frozenset()
    ) -> Iterator[tuple[StoredEvent, dict[str, Any]]]:
        """The events of a look not handed over yet (nor in ``skip``), with their payloads, oldest first.

        A row whose body is not a JSON object can never fire: it is recorded as handed over and skipped.
        """
        for event in seen:
            if state.is_done(event.id) or event.id in skip:
                continue
            payload = event_payload(event)
            if payload is None:
                self.log.error("Skipping stored event %s: its body is not a JSON object", event.id)
                state.fired[event.id] = None
                continue
            yield event, payload

    async def save(self, state: CursorState) -> None:
        """Save the cursor if it changed; a failure is logged and the next call tries again."""
        from neoleads_provider.store.queries import save_watch_cursor

        trig = self.trigger
        async with self._save_lock:
            current = state.to_json(now=time.monotonic())
            if current == self._saved:
                return
            try:
                await asyncio.to_thread(save_watch_cursor, trig.events_db_url, trig.cursor_key, current)
            except Exception as exc:
                self.log.warning(
                    "Could not save the Neoleads event cursor %s; will try again: %s",
                    trig.cursor_key,
                    _error_text(exc),
                )
                return
            self._saved = current


# -- the shared-stream producer (Airflow 3.3+) -------------------------------------------------------------


class NeoleadsEventStreamProducer(version_compat.SharedStreamProducer or object):  # type: ignore[misc]
    """The look loop of one watcher in ack mode: offers events, records them once Airflow persisted them.

    :meth:`open_stream` yields ``(payload, stored event id)`` for every matching event that was neither
    handed over nor is in flight (offered, not yet advanced); at most ``batch_size`` are in flight.
    :meth:`advance` records an event as handed over when its outcome has no failure and at least one
    subscriber took (or rejected) it, and saves the cursor; any other outcome (a failure, an ack timeout,
    no subscriber online) takes the event out of flight, so the next look offers it again and the watermark
    stays below it.
    """

    def __init__(self, trigger: NeoleadsEventTrigger) -> None:
        self.trigger = trigger
        self._watch = _Watch(trigger)
        self.state: CursorState | None = None
        self.in_flight: set[int] = set()
        self._last_look: tuple[Sequence[StoredEvent], datetime] | None = None

    async def open_stream(self) -> AsyncIterator[tuple[dict[str, Any], int]]:
        trig = self.trigger
        self.state = state = await self._watch.start()
        while True:
            looked = await self._watch.look(state, self.in_flight)
            if looked is None:
                continue
            seen, began = looked
            self._last_look = looked
            for event, payload in self._watch.new_events(state, seen, self.in_flight):
                if len(self.in_flight) >= trig.batch_size:
                    break
                self.in_flight.add(event.id)
                yield payload, event.id
                # Let the subscriber take it before the next one is queued.
                await asyncio.sleep(0)
            state.settle(seen, now_utc=began, now=time.monotonic(), settle_seconds=trig.settle_seconds)
            await self._watch.save(state)
            await asyncio.sleep(trig.poll_interval)

    async def advance(self, batch: Sequence[AdvanceItem]) -> None:
        state = self.state
        held: list[int] = []
        for item in batch:
            event_id = item.broker_payload
            self.in_flight.discard(event_id)
            outcome = item.outcome
            if state is None:
                continue
            if outcome.failed == 0 and (outcome.acked > 0 or outcome.rejected > 0):
                if event_id > state.after_id:
                    state.fired[event_id] = None
            else:
                held.append(event_id)
        if held:
            self.trigger.log.info(
                "Stored events %s were not persisted as asset events (failed, timed out or no subscriber); "
                "they will be offered again",
                held,
            )
        if state is None:
            return
        if self._last_look is not None:
            seen, began = self._last_look
            state.settle(
                seen, now_utc=began, now=time.monotonic(), settle_seconds=self.trigger.settle_seconds
            )
        await self._watch.save(state)

    async def aclose(self) -> None:
        # The store's engines are the process's cached ones: nothing of this producer's own to release.
        return None
