"""NeoleadsEventTrigger: serialization, the cursor, and run() against real SQLite and PostgreSQL stores.

``run()`` is the watcher's own poll loop: what Airflow 3.1/3.2 run (3.3+ run the shared-stream producer,
tests/triggers/test_event_stream.py). Its cursor lives in the event store (``neoleads_watch_cursor``) and is
read back here with the store's own ``load_watch_cursor``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import create_engine

from neoleads_provider.store.engine import get_engine
from neoleads_provider.store.migrate import migrate
from neoleads_provider.store.queries import load_watch_cursor, save_watch_cursor
from neoleads_provider.store.repository import insert_event
from neoleads_provider.triggers import event_watch
from neoleads_provider.triggers import events as events_module
from neoleads_provider.triggers.event_watch import CursorState
from neoleads_provider.triggers.events import NeoleadsEventTrigger
from tests._helpers import insert_with_id, new_event, store_payloads
from tests._helpers import message_payload as message

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

CLASSPATH = "neoleads_provider.triggers.events.NeoleadsEventTrigger"

pytestmark = pytest.mark.usefixtures("fresh_engines")


@pytest.fixture
def pg_events_url(pg_schema_url: str) -> str:
    """A migrated event store in a PostgreSQL schema of the test's own."""
    migrate(get_engine(pg_schema_url))
    return pg_schema_url


def make(url: str, **kwargs: Any) -> NeoleadsEventTrigger:
    kwargs.setdefault("poll_interval", 0.05)
    return NeoleadsEventTrigger(events_db_url=url, **kwargs)


class Running:
    """Runs a trigger's generator in the background and collects what it fires, like the triggerer."""

    def __init__(self, trig: NeoleadsEventTrigger) -> None:
        self.trigger = trig
        self.fired: list[dict[str, Any]] = []
        self._gen: AsyncIterator[Any] | None = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Running:
        self._gen = self.trigger.run()

        async def consume() -> None:
            assert self._gen is not None
            async for event in self._gen:
                self.fired.append(event.payload)

        self._task = asyncio.create_task(consume())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self._task
        await self.trigger.cleanup()

    async def wait_for(self, count: int, timeout: float = 10) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.fired) < count:
            assert self._task is not None
            if self._task.done():
                self._task.result()
                raise AssertionError("the trigger's run() ended")
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.fired)} events fired, expected {count}: {self.fired}")
            await asyncio.sleep(0.02)
        return self.fired

    async def started(self, timeout: float = 10) -> CursorState:
        """Wait until the watcher has placed its start (saved before anything fires), however slow the run."""
        return await wait_for_cursor(self.trigger, lambda cursor: True, timeout)

    async def settle(self, seconds: float = 0.4) -> list[dict[str, Any]]:
        """Let it look several more times; return everything fired so far."""
        await asyncio.sleep(seconds)
        return self.fired


def logged(caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> str:
    """What was logged: Airflow 3.3 renders a trigger's ``self.log`` with structlog, to stdout."""
    return caplog.text + capsys.readouterr().out


def message_ids(fired: list[dict[str, Any]]) -> list[int]:
    return [event["message_id"] for event in fired]


def saved_cursor(trig: NeoleadsEventTrigger) -> CursorState | None:
    value = load_watch_cursor(trig.events_db_url, trig.cursor_key)
    return None if value is None else CursorState.from_json(value)


async def wait_for_cursor(trig: NeoleadsEventTrigger, check: Any, timeout: float = 5) -> CursorState:
    deadline = time.monotonic() + timeout
    while True:
        cursor = saved_cursor(trig)
        if cursor is not None and check(cursor):
            return cursor
        if time.monotonic() > deadline:
            raise AssertionError(f"the saved cursor never got there: {cursor}")
        await asyncio.sleep(0.05)


@pytest.fixture
def quick_save(monkeypatch: pytest.MonkeyPatch) -> float:
    """Fired ids are saved this soon after they were yielded (5 s in production)."""
    monkeypatch.setattr(event_watch, "CURSOR_SAVE_DELAY", 0.1)
    return 0.1


# -- construction and serialization --------------------------------------------------------------------------


def test_serialization_round_trip():
    trig = NeoleadsEventTrigger(
        neoleads_conn_id="neoleads_sales",
        events=["message_created", "conversation_created"],
        account_id=1,
        inbox_id=2,
        message_types="incoming",
        content_pattern="(?i)price",
        events_db_url="postgresql+psycopg://u:p@db/neoleads",
        start_from=12,
        poll_interval=3,
        batch_size=50,
        settle_seconds=10,
    )
    classpath, kwargs = trig.serialize()
    assert classpath == CLASSPATH
    assert kwargs == {
        "neoleads_conn_id": "neoleads_sales",
        "events": ["message_created", "conversation_created"],
        "account_id": 1,
        "inbox_id": 2,
        "conversation_id": None,
        "message_types": ["incoming"],
        "include_private": False,
        "sender_types": None,
        "content_pattern": "(?i)price",
        "events_db_url": "postgresql+psycopg://u:p@db/neoleads",
        "start_from": 12,
        "poll_interval": 3.0,
        "batch_size": 50,
        "settle_seconds": 10.0,
        "cursor_key": trig.cursor_key,
    }
    assert json.loads(json.dumps(kwargs)) == kwargs
    assert NeoleadsEventTrigger(**kwargs).serialize() == (classpath, kwargs)
    assert trig.event_filter.conn_id == "neoleads_sales"


def test_the_defaults_watch_incoming_public_messages_of_the_default_connection_from_the_end():
    trig = NeoleadsEventTrigger()
    _, kwargs = trig.serialize()
    assert kwargs["neoleads_conn_id"] == "neoleads_default"
    assert kwargs["events"] == ["message_created"]
    assert kwargs["message_types"] == ["incoming"]
    assert kwargs["include_private"] is False
    assert kwargs["start_from"] == "end"
    assert trig.cursor_key.startswith("neoleads_event_cursor_")


def test_an_asset_watcher_accepts_it():
    from airflow.sdk import Asset, AssetWatcher
    from airflow.triggers.base import BaseEventTrigger

    trig = NeoleadsEventTrigger(inbox_id=1)
    assert isinstance(trig, BaseEventTrigger)
    asset = Asset("neoleads_incoming", watchers=[AssetWatcher(name="incoming", trigger=trig)])
    assert asset.watchers[0].trigger is trig


def test_cursor_key_follows_the_connection_filter_and_store_not_the_timing():
    base = NeoleadsEventTrigger(inbox_id=1, events_db_url="postgresql+psycopg://u:pw1@db/x")
    assert (
        base.cursor_key
        == NeoleadsEventTrigger(
            inbox_id=1, events_db_url="postgresql+psycopg://u:pw1@db/x", poll_interval=9, batch_size=7
        ).cursor_key
    )
    # Another password for the same database is the same store (and the password never enters the key).
    assert (
        base.cursor_key
        == NeoleadsEventTrigger(inbox_id=1, events_db_url="postgresql+psycopg://u:pw2@db/x").cursor_key
    )
    assert (
        base.cursor_key
        != NeoleadsEventTrigger(inbox_id=2, events_db_url="postgresql+psycopg://u:pw1@db/x").cursor_key
    )
    assert (
        base.cursor_key
        != NeoleadsEventTrigger(inbox_id=1, events_db_url="postgresql+psycopg://u:pw1@db/y").cursor_key
    )
    assert (
        base.cursor_key
        != NeoleadsEventTrigger(
            neoleads_conn_id="neoleads_other", inbox_id=1, events_db_url="postgresql+psycopg://u:pw1@db/x"
        ).cursor_key
    )
    assert NeoleadsEventTrigger(cursor_key="mine").cursor_key == "mine"


def test_repr_hides_the_database_password():
    trig = NeoleadsEventTrigger(events_db_url="postgresql+psycopg://u:s3cret-pw@db/neoleads")
    assert "s3cret-pw" not in repr(trig)
    assert "db/neoleads" in repr(trig)


def test_a_misspelt_argument_is_an_error_not_swallowed_by_the_base_class():
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['inbox'\\]"):
        NeoleadsEventTrigger(inbox=1)


def test_base_class_arguments_pass_through_and_round_trip(monkeypatch: pytest.MonkeyPatch):
    """Airflow 3.4's ``BaseEventTrigger.__init__(*, queue=None, **kwargs)``: queue goes to the base class."""
    received: dict[str, Any] = {}
    base_init = events_module.BaseEventTrigger.__init__

    def init_with_queue(self: Any, *, queue: str | None = None, **kwargs: Any) -> None:
        received["queue"] = queue
        base_init(self, **kwargs)

    monkeypatch.setattr(events_module.BaseEventTrigger, "__init__", init_with_queue)
    events_module._base_keywords.cache_clear()
    try:
        trig = NeoleadsEventTrigger(queue="watchers")
        assert received == {"queue": "watchers"}
        classpath, kwargs = trig.serialize()
        assert kwargs["queue"] == "watchers"
        assert NeoleadsEventTrigger(**kwargs).serialize() == (classpath, kwargs)
        # Unset, it is not serialized: the trigger's identity is the same on every Airflow version.
        assert "queue" not in NeoleadsEventTrigger().serialize()[1]
    finally:
        monkeypatch.undo()
        events_module._base_keywords.cache_clear()


@pytest.mark.parametrize(
    ("kwargs", "message_text"),
    [
        ({"events": ["message_sent"]}, "unknown event names"),
        ({"message_types": ["inbound"]}, "unknown types"),
        ({"content_pattern": "("}, "content_pattern"),
        ({"start_from": "middle"}, "start_from must be"),
        ({"start_from": -1}, "start_from must be"),
        ({"poll_interval": 0}, "poll_interval must be a positive number"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"settle_seconds": -1}, "settle_seconds must be a positive number"),
        ({"cursor_key": ""}, "cursor_key must be"),
        ({"events_db_url": " "}, "events_db_url must be"),
        ({"neoleads_conn_id": ""}, "conn_id must be"),
    ],
)
def test_bad_arguments_fail_when_the_dag_is_parsed(kwargs, message_text):
    with pytest.raises(ValueError, match=message_text):
        NeoleadsEventTrigger(**kwargs)


# -- the cursor's saved form ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (41, CursorState(after_id=41)),
        ("41", CursorState(after_id=41)),
        (
            {"version": 1, "after_id": 41, "fired": [40, 43, 45]},
            CursorState(after_id=41, fired={43: None, 45: None}),
        ),
        ({"after_id": -1}, None),
        ({"after_id": 3, "fired": "4"}, None),
        ({"after_id": True}, None),
        (True, None),
        ("soon", None),
        ([1, 2], None),
    ],
)
def test_cursor_state_from_saved_values(value, expected):
    assert CursorState.from_json(value) == expected


def test_only_handed_over_ids_are_saved_and_settled(quick_save):
    now = time.monotonic()
    state = CursorState(after_id=10, fired={11: None, 12: now, 13: now - 1})
    assert state.to_json(now=now)["fired"] == [11, 13]


# -- run(): the cursor in the event store ---------------------------------------------------------------------


async def test_first_start_begins_at_the_end_and_fires_each_new_match_once(events_url, quick_save):
    old = store_payloads(events_url, message(90001), message(90002))
    trig = make(events_url, inbox_id=1)
    async with Running(trig) as running:
        await running.started()
        assert running.fired == []
        # The start is saved at once, so a restart before the first event starts from the same place.
        assert saved_cursor(trig) == CursorState(after_id=old[-1])

        store_payloads(
            events_url,
            message(90003, content="first"),
            message(90004, message_type="outgoing", content="our own answer's echo"),
            message(90005, private=True, content="a private note"),
            message(90006, inbox_id=2, content="another inbox"),
            message(90007, content="second"),
        )
        fired = await running.wait_for(2)
        await running.settle()

    assert message_ids(running.fired) == [90003, 90007]
    first = fired[0]
    assert first["source"] == "webhook"
    assert first["conn_id"] == "neoleads_default"
    assert first["event"] == "message_created"
    assert (first["account_id"], first["inbox_id"], first["conversation_id"]) == (1, 1, 7)
    assert first["message_type"] == "incoming"
    assert first["payload"]["content"] == "first"
    assert first["payload"]["sender"]["name"] == "Ada"
    assert isinstance(first["event_id"], int)
    assert isinstance(first["delivery_id"], str)
    assert json.loads(json.dumps(fired)) == fired


async def test_events_of_another_connection_never_fire(events_url, quick_save):
    """Two connections, one store: each watcher fires its own connection's deliveries only."""
    store_payloads(events_url, message(90400), conn_id="neoleads_sales")
    store_payloads(events_url, message(90401), conn_id="neoleads_default")
    sales = make(events_url, neoleads_conn_id="neoleads_sales")
    default = make(events_url)
    async with Running(sales) as running_sales, Running(default) as running_default:
        await running_sales.started()
        await running_default.started()
        # "end" is the newest event of the watcher's own connection.
        assert saved_cursor(sales).after_id < saved_cursor(default).after_id
        # The same message id on two connections: two stored events, one per connection.
        store_payloads(events_url, message(90402, content="for default"), conn_id="neoleads_default")
        store_payloads(events_url, message(90402, content="for sales"), conn_id="neoleads_sales")
        store_payloads(events_url, message(90403, content="for default"), conn_id="neoleads_default")
        await running_sales.wait_for(1)
        await running_default.wait_for(2)
        await running_sales.settle()
    assert [(e["message_id"], e["payload"]["content"]) for e in running_sales.fired] == [(90402, "for sales")]
    assert {e["conn_id"] for e in running_sales.fired} == {"neoleads_sales"}
    assert message_ids(running_default.fired) == [90402, 90403]
    assert {e["conn_id"] for e in running_default.fired} == {"neoleads_default"}


async def test_a_restarted_trigger_never_refires_and_catches_up_on_what_came_while_down(
    events_url, quick_save
):
    async with Running(make(events_url)) as running:
        await running.started()
        store_payloads(events_url, message(90010, content="before the restart"))
        await running.wait_for(1)
        first_id = running.fired[0]["event_id"]
        # Saved only once the fired id is past the hand-over delay.
        await wait_for_cursor(running.trigger, lambda c: c.is_done(first_id))

    # Stored while no triggerer ran.
    store_payloads(events_url, message(90011, content="while down"))
    # A new instance (a new triggerer process) with the same filter: the same cursor key.
    async with Running(make(events_url)) as restarted:
        await restarted.wait_for(1)
        store_payloads(events_url, message(90012, content="after the restart"))
        await restarted.wait_for(2)
        await restarted.settle()
    assert message_ids(restarted.fired) == [90011, 90012]


async def test_an_event_not_yet_handed_over_fires_again_after_a_crash(events_url, monkeypatch):
    """At-least-once in the crash window: a fired id is saved only CURSOR_SAVE_DELAY after it fired."""
    monkeypatch.setattr(event_watch, "CURSOR_SAVE_DELAY", 60.0)
    async with Running(make(events_url)) as running:
        await running.started()
        store_payloads(events_url, message(90020))
        await running.wait_for(1)
        await running.settle()
    cursor = saved_cursor(running.trigger)
    assert cursor is not None
    assert cursor.fired == {}
    assert not cursor.is_done(running.fired[0]["event_id"])
    async with Running(make(events_url)) as restarted:
        await restarted.wait_for(1)
        await restarted.settle()
    assert message_ids(restarted.fired) == [90020]


@pytest.mark.parametrize(("after_first", "expected"), [(False, [90030, 90031]), (True, [90031])])
async def test_start_from_on_the_very_first_start(events_url, after_first, expected):
    ids = store_payloads(events_url, message(90030), message(90031))
    trig = make(events_url, start_from=ids[0] if after_first else "beginning")
    async with Running(trig) as running:
        await running.wait_for(len(expected))
        await running.settle()
    assert message_ids(running.fired) == expected


async def test_the_cursor_can_be_rewound_by_hand(events_url):
    ids = store_payloads(events_url, message(90040), message(90041), message(90042))
    trig = make(events_url)
    # What an operator does: set the cursor row to a bare event id.
    save_watch_cursor(events_url, trig.cursor_key, ids[0])
    async with Running(trig) as running:
        await running.wait_for(2)
        await running.settle()
    assert message_ids(running.fired) == [90041, 90042]


async def test_a_saved_value_that_is_not_a_cursor_is_ignored_and_logged(events_url, caplog, capsys):
    store_payloads(events_url, message(90050))
    trig = make(events_url)
    save_watch_cursor(events_url, trig.cursor_key, {"after_id": "yesterday"})
    with caplog.at_level(logging.ERROR):
        async with Running(trig) as running:
            await running.settle(0.3)
    assert running.fired == []
    assert "not a cursor" in logged(caplog, capsys)
    assert saved_cursor(trig) is not None


# -- run(): the store ---------------------------------------------------------------------------------------


async def test_content_pattern_and_event_names(events_url):
    trig = make(events_url, events=["message_created"], content_pattern=r"(?i)\bprice\b")
    async with Running(trig) as running:
        await running.started()
        store_payloads(
            events_url, message(90080, content="hello"), message(90081, content="What is the PRICE?")
        )
        await running.wait_for(1)
        await running.settle()
    assert message_ids(running.fired) == [90081]


async def test_a_store_without_schema_yet_is_an_empty_store(tmp_path):
    url = f"sqlite:///{tmp_path / 'not-yet.db'}"
    trig = make(url)
    async with Running(trig) as running:
        await running.settle(0.2)
        # The receiver creates the schema on its first delivery.
        migrate(get_engine(url))
        # The start (the empty store's end) is saved as soon as there is a table for it.
        assert await wait_for_cursor(trig, lambda c: True) == CursorState(after_id=0)
        store_payloads(url, message(90090))
        await running.wait_for(1)
    assert message_ids(running.fired) == [90090]


async def test_an_unreachable_store_is_waited_out_without_ending_the_watcher(caplog, capsys):
    trig = make("postgresql+psycopg://u:p@127.0.0.1:1/nothing")
    with caplog.at_level(logging.WARNING):
        async with Running(trig) as running:
            await running.settle(0.5)
    assert running.fired == []
    assert "cannot place its cursor yet" in logged(caplog, capsys)


async def test_late_commits_below_the_newest_fired_id_still_fire_once(events_url, quick_save):
    """A row whose id is smaller than one already fired (it committed later) fires too, exactly once."""
    start = store_payloads(events_url, message(90100))[0]
    trig = make(events_url, settle_seconds=0.5)
    async with Running(trig) as running:
        await running.started()
        late_id = start + 1
        with get_engine(events_url).begin() as conn:
            # The receiver that took id late_id has not committed yet; a later one already has.
            insert_with_id(
                conn, start + 2, message(90102, content="committed first"), received_at=datetime.now(UTC)
            )
        await running.wait_for(1)
        with get_engine(events_url).begin() as conn:
            insert_with_id(
                conn,
                late_id,
                message(90101, content="committed late"),
                received_at=datetime.now(UTC) - timedelta(seconds=0.2),
            )
        await running.wait_for(2)
        # Both settle: the watermark passes them and the saved cursor no longer lists them.
        cursor = await wait_for_cursor(trig, lambda c: c.after_id == start + 2)
        await running.settle()
    assert message_ids(running.fired) == [90102, 90101]
    assert cursor == CursorState(after_id=start + 2)


@pytest.mark.postgres
async def test_postgresql_concurrent_receivers_commit_out_of_order(pg_events_url, quick_save):
    """Two real transactions: the one holding the smaller id commits after the larger one was fired."""
    trig = make(pg_events_url)
    slow = create_engine(pg_events_url)
    try:
        async with Running(trig) as running:
            await running.started()
            with slow.connect() as slow_conn:
                slow_tx = slow_conn.begin()
                insert_event(slow_conn, new_event(message(90201, content="slow receiver")))
                store_payloads(pg_events_url, message(90202, content="fast receiver"))
                await running.wait_for(1)
                slow_tx.commit()
            await running.wait_for(2)
            await running.settle()
    finally:
        slow.dispose()
    fired = running.fired
    assert message_ids(fired) == [90202, 90201]
    assert fired[1]["event_id"] < fired[0]["event_id"]
