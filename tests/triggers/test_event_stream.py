"""NeoleadsEventTrigger on Airflow 3.3+: the shared stream in ack mode, against a real SQLite event store.

The producer is driven the way Airflow's ``SharedStreamManager`` drives it (``open_stream`` for offers,
``advance`` with each event's outcome once it is resolved), first by hand, so that every outcome can be
chosen, then by the real manager, with the calls the triggerer makes (``subscribe``,
``bind_pending_event``, ``confirm_persisted``). A "kill" drops everything without another call, as a killed
triggerer would; a new producer then starts from the cursor saved in the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any

import pytest

from neoleads_provider.store.queries import load_watch_cursor
from neoleads_provider.triggers import events as events_module
from neoleads_provider.triggers.event_watch import CursorState, NeoleadsEventStreamProducer
from neoleads_provider.triggers.events import NeoleadsEventTrigger
from tests._helpers import message_payload as message
from tests._helpers import store_payloads

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

shared_stream = pytest.importorskip(
    "airflow.triggers.shared_stream", reason="shared streams need Airflow 3.3+ (3.1/3.2 use run())"
)
AdvanceItem = shared_stream.AdvanceItem
AdvanceOutcome = shared_stream.AdvanceOutcome

pytestmark = pytest.mark.usefixtures("fresh_engines")

CLEAN = AdvanceOutcome(acked=1, failed=0)
FAILED = AdvanceOutcome(acked=0, failed=1)
NOBODY = AdvanceOutcome(acked=0, failed=0)
REJECTED = AdvanceOutcome(acked=0, failed=0, rejected=1)


def make(url: str, **kwargs: Any) -> NeoleadsEventTrigger:
    kwargs.setdefault("poll_interval", 0.05)
    kwargs.setdefault("settle_seconds", 0.05)
    return NeoleadsEventTrigger(events_db_url=url, **kwargs)


def saved_cursor(trig: NeoleadsEventTrigger) -> CursorState | None:
    value = load_watch_cursor(trig.events_db_url, trig.cursor_key)
    return None if value is None else CursorState.from_json(value)


async def eventually(check: Callable[[], Any], what: str, timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class Stream:
    """A producer's ``open_stream`` run in the background, as the manager's poll task runs it.

    Each offer goes through the trigger's ``filter_shared_stream`` (the subscriber), and the
    ``TriggerEvent`` payloads it yields are collected with the stored event id they came from.
    """

    def __init__(self, trig: NeoleadsEventTrigger) -> None:
        self.trigger = trig
        _, kwargs = trig.serialize()
        producer = type(trig).create_shared_stream_producer(kwargs)
        assert isinstance(producer, NeoleadsEventStreamProducer)
        self.producer = producer
        self.offered: list[tuple[int, dict[str, Any]]] = []
        self._raws: asyncio.Queue[tuple[dict[str, Any], int]] = asyncio.Queue()
        self._current: list[int] = []
        self._tasks: list[asyncio.Task[None]] = []

    async def _raw_stream(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            raw, event_id = await self._raws.get()
            self._current.append(event_id)
            yield raw

    async def __aenter__(self) -> Stream:
        async def poll() -> None:
            async for raw, event_id in self.producer.open_stream():
                self._raws.put_nowait((raw, event_id))

        async def subscribe() -> None:
            async for event in self.trigger.filter_shared_stream(self._raw_stream()):
                self.offered.append((self._current[-1], event.payload))

        self._tasks = [asyncio.create_task(poll()), asyncio.create_task(subscribe())]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.kill()

    async def kill(self) -> None:
        """Drop everything at once, without another advance: what a killed triggerer does."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    def ids(self) -> list[int]:
        return [event_id for event_id, _ in self.offered]

    async def wait_for(self, count: int) -> list[int]:
        await eventually(lambda: len(self.offered) >= count, f"{count} offers, got {self.offered}")
        return self.ids()

    async def advance(self, *items: tuple[int, Any]) -> None:
        await self.producer.advance([AdvanceItem(event_id, outcome) for event_id, outcome in items])


# -- the key, the producer factory and the subscriber --------------------------------------------------------


def test_the_stream_key_is_the_watchers_own_and_never_holds_the_password():
    url = "postgresql+psycopg://u:s3cret-pw@db/x"
    trig = NeoleadsEventTrigger(inbox_id=1, events_db_url=url)
    key = trig.shared_stream_key()
    assert key[0] == "neoleads-event-stream"
    assert trig.cursor_key in key
    assert "s3cret-pw" not in repr(key)
    # The same configuration (a new instance, as the triggerer builds it) is the same stream.
    _, kwargs = trig.serialize()
    assert NeoleadsEventTrigger(**kwargs).shared_stream_key() == key
    for other in (
        {"inbox_id": 2},
        {"neoleads_conn_id": "neoleads_sales"},
        {"cursor_key": "mine"},
        {"content_pattern": "price"},
        {"events_db_url": "postgresql+psycopg://u:s3cret-pw@db/y"},
    ):
        assert NeoleadsEventTrigger(**{**kwargs, **other}).shared_stream_key() != key


def test_without_shared_streams_there_is_no_key(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(events_module, "HAS_SHARED_STREAMS", False)
    assert NeoleadsEventTrigger().shared_stream_key() is None


def test_the_factory_opts_into_ack_mode_and_does_not_connect():
    from airflow.triggers.shared_stream import SharedStreamProducer

    # Nothing listens there: building the producer must not try.
    trig = NeoleadsEventTrigger(events_db_url="postgresql+psycopg://u:p@127.0.0.1:1/nothing")
    producer = NeoleadsEventTrigger.create_shared_stream_producer(trig.serialize()[1])
    assert isinstance(producer, SharedStreamProducer)
    assert producer.trigger.serialize() == trig.serialize()
    assert "create_shared_stream_producer" in NeoleadsEventTrigger.__dict__


async def test_the_subscriber_fires_one_event_per_raw_event():
    async def raws() -> AsyncIterator[dict[str, Any]]:
        for n in range(3):
            yield {"event_id": n}

    events = [event async for event in NeoleadsEventTrigger().filter_shared_stream(raws())]
    assert [event.payload for event in events] == [{"event_id": 0}, {"event_id": 1}, {"event_id": 2}]


# -- the producer, driven by hand ----------------------------------------------------------------------------


async def test_the_producer_offers_only_its_connections_matching_events(events_url):
    store_payloads(events_url, message(91000), conn_id="neoleads_sales")
    trig = make(events_url, neoleads_conn_id="neoleads_sales")
    async with Stream(trig) as stream:
        await eventually(lambda: saved_cursor(trig) is not None, "the start to be saved")
        mine = store_payloads(events_url, message(91001), message(91002), conn_id="neoleads_sales")
        store_payloads(events_url, message(91001), message(91003), conn_id="neoleads_default")
        store_payloads(events_url, message(91004, message_type="outgoing"), conn_id="neoleads_sales")
        await stream.wait_for(2)
        await asyncio.sleep(0.3)
    assert stream.ids() == mine
    assert {payload["conn_id"] for _, payload in stream.offered} == {"neoleads_sales"}
    assert [payload["message_id"] for _, payload in stream.offered] == [91001, 91002]


async def test_an_event_is_offered_once_while_in_flight_and_recorded_only_when_persisted(events_url):
    trig = make(events_url, start_from="beginning")
    ids = store_payloads(events_url, message(91010), message(91011))
    async with Stream(trig) as stream:
        await stream.wait_for(2)
        # Many looks later, still in flight: not offered again, and not in the saved cursor.
        await asyncio.sleep(0.3)
        assert stream.ids() == ids
        assert saved_cursor(trig) == CursorState(after_id=0)
        await stream.advance((ids[0], CLEAN), (ids[1], CLEAN))
        await eventually(lambda: saved_cursor(trig).after_id == ids[1], "the watermark to pass both")
        await asyncio.sleep(0.2)
    assert stream.ids() == ids


@pytest.mark.parametrize("outcome", [FAILED, NOBODY], ids=["failed", "no-subscriber"])
async def test_an_event_not_persisted_is_offered_again_and_the_cursor_stays_below_it(events_url, outcome):
    trig = make(events_url, start_from="beginning")
    first, second, third = store_payloads(events_url, message(91020), message(91021), message(91022))
    async with Stream(trig) as stream:
        await stream.wait_for(3)
        # The middle one's asset event was not persisted (or nobody was subscribed when it was offered).
        await stream.advance((first, CLEAN), (second, outcome), (third, CLEAN))
        await stream.wait_for(4)
        assert stream.ids() == [first, second, third, second]
        await asyncio.sleep(0.2)
        # The watermark passes the first only; the third is saved as fired above it.
        assert saved_cursor(trig) == CursorState(after_id=first, fired={third: None})
        # Persisted at the second attempt: the watermark moves over all three.
        await stream.advance((second, CLEAN))
        await eventually(lambda: saved_cursor(trig) == CursorState(after_id=third), "the watermark to move")
        await asyncio.sleep(0.2)
    assert stream.ids() == [first, second, third, second]


async def test_a_rejected_event_is_not_offered_again(events_url):
    trig = make(events_url, start_from="beginning")
    (event_id,) = store_payloads(events_url, message(91030))
    async with Stream(trig) as stream:
        await stream.wait_for(1)
        await stream.advance((event_id, REJECTED))
        await eventually(
            lambda: saved_cursor(trig) == CursorState(after_id=event_id), "the cursor to pass it"
        )
        await asyncio.sleep(0.2)
    assert stream.ids() == [event_id]


async def test_no_more_than_batch_size_events_wait_for_persistence(events_url):
    trig = make(events_url, start_from="beginning", batch_size=2)
    ids = store_payloads(events_url, *(message(91040 + n) for n in range(5)))
    async with Stream(trig) as stream:
        await stream.wait_for(2)
        await asyncio.sleep(0.2)
        assert stream.ids() == ids[:2]
        await stream.advance((ids[0], CLEAN), (ids[1], CLEAN))
        await stream.wait_for(4)
        await stream.advance((ids[2], CLEAN), (ids[3], CLEAN))
        await stream.wait_for(5)
    assert stream.ids() == ids


async def test_a_triggerer_killed_mid_stream_neither_loses_nor_repeats_an_event(events_url):
    """Persist some offers, kill, restart from the saved cursor: every event is persisted exactly once."""
    trig = make(events_url, start_from="beginning")
    stored = store_payloads(events_url, *(message(91100 + n) for n in range(6)))
    persisted: list[int] = []

    stream = Stream(trig)
    async with stream:
        await stream.wait_for(6)
        # The triggerer persisted the first three asset events and acknowledged them; the others were
        # handed to it but not persisted yet when it was killed.
        persisted += stream.ids()[:3]
        await stream.advance(*((event_id, CLEAN) for event_id in stream.ids()[:3]))
        await eventually(
            lambda: all(saved_cursor(trig).is_done(event_id) for event_id in persisted), "the cursor save"
        )
        await stream.kill()
    assert not any(saved_cursor(trig).is_done(event_id) for event_id in stored[3:])

    # Stored while no triggerer ran.
    stored += store_payloads(events_url, message(91106), message(91107))
    # A new triggerer process: a new trigger instance from the serialized kwargs, a new producer.
    restarted = Stream(NeoleadsEventTrigger(**trig.serialize()[1]))
    async with restarted:
        await restarted.wait_for(5)
        await asyncio.sleep(0.2)
        assert restarted.ids() == stored[3:]
        persisted += restarted.ids()
        await restarted.advance(*((event_id, CLEAN) for event_id in restarted.ids()))
        await eventually(lambda: saved_cursor(trig) == CursorState(after_id=stored[-1]), "the last save")

    assert sorted(persisted) == stored
    assert len(set(persisted)) == len(persisted)


# -- the real SharedStreamManager ----------------------------------------------------------------------------


class Triggerer:
    """What the triggerer's TriggerRunner does with a watcher, on a real ``SharedStreamManager``."""

    def __init__(self, trig: NeoleadsEventTrigger, *, trigger_id: int = 1, ack_timeout: float = 30) -> None:
        from airflow.triggers.shared_stream import SharedStreamManager

        self.manager = SharedStreamManager(ack_timeout=ack_timeout)
        self.trigger = trig
        self.trigger_id = trigger_id
        self.key = trig.shared_stream_key()
        # (persist seq, payload) of every event the trigger fired.
        self.fired: list[tuple[int | None, dict[str, Any]]] = []
        self.error: BaseException | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Triggerer:
        stream = self.manager.subscribe(trigger_id=self.trigger_id, trigger=self.trigger, key=self.key)

        async def run_trigger() -> None:
            try:
                async for event in self.trigger.filter_shared_stream(stream):
                    seq = self.manager.bind_pending_event(trigger_id=self.trigger_id, key=self.key)
                    self.fired.append((seq, event.payload))
            except Exception as exc:
                self.error = exc

        self._task = asyncio.create_task(run_trigger())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.kill()

    async def kill(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        await self.manager.unsubscribe(self.trigger_id, self.key)

    def persisted(self, *event_ids: int) -> None:
        """The supervisor stored these asset events: confirm their seqs, as the runner does."""
        seqs = [seq for seq, payload in self.fired if payload["event_id"] in event_ids]
        assert len(seqs) == len(event_ids)
        self.manager.confirm_persisted(seqs)

    def ids(self) -> list[int]:
        return [payload["event_id"] for _, payload in self.fired]

    async def wait_for(self, count: int) -> list[int]:
        await eventually(lambda: len(self.fired) >= count or self.error, f"{count} events, got {self.ids()}")
        return self.ids()


async def test_the_real_shared_stream_manager_moves_the_cursor_only_over_persisted_events(events_url):
    trig = make(events_url, start_from="beginning")
    stored = store_payloads(events_url, *(message(91200 + n) for n in range(3)))
    async with Triggerer(trig) as triggerer:
        await triggerer.wait_for(3)
        assert triggerer.ids() == stored
        assert all(seq is not None for seq, _ in triggerer.fired), "events must bind to their raw event"
        await asyncio.sleep(0.3)
        assert saved_cursor(trig) == CursorState(after_id=0)
        triggerer.persisted(*stored[:2])
        await eventually(lambda: saved_cursor(trig).after_id == stored[1], "the advance over two events")
        await asyncio.sleep(0.2)
        assert saved_cursor(trig) == CursorState(after_id=stored[1])
        # Killed before the third asset event was persisted.
        await triggerer.kill()

    stored += store_payloads(events_url, message(91203))
    async with Triggerer(NeoleadsEventTrigger(**trig.serialize()[1]), trigger_id=2) as restarted:
        await restarted.wait_for(2)
        await asyncio.sleep(0.2)
        assert restarted.ids() == stored[2:]
        restarted.persisted(*stored[2:])
        await eventually(lambda: saved_cursor(trig) == CursorState(after_id=stored[-1]), "the last advance")
    assert restarted.error is None
    assert triggerer.ids()[:2] + restarted.ids() == stored


async def test_an_asset_event_never_confirmed_times_out_and_is_offered_again(events_url):
    trig = make(events_url, start_from="beginning")
    (event_id,) = store_payloads(events_url, message(91300))
    async with Triggerer(trig, ack_timeout=0.3) as triggerer:
        await triggerer.wait_for(1)
        # Nobody confirms it: the manager fails the subscriber and advances the event as failed.
        await eventually(lambda: triggerer.error is not None, "the ack timeout")
        assert type(triggerer.error).__name__ == "AckTimeout"
        await asyncio.sleep(0.3)
        assert not saved_cursor(trig).is_done(event_id)
    async with Triggerer(NeoleadsEventTrigger(**trig.serialize()[1]), trigger_id=2) as restarted:
        await restarted.wait_for(1)
        assert restarted.ids() == [event_id]
        restarted.persisted(event_id)
        await eventually(lambda: saved_cursor(trig) == CursorState(after_id=event_id), "the advance")
