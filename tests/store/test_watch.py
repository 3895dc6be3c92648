"""The store watcher (store/watch.py): who it wakes, when, and what it costs the database."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sqlalchemy import event

from neoleads_provider.events import EventFilter
from neoleads_provider.store import watch
from neoleads_provider.store.engine import get_engine
from neoleads_provider.store.queries import load_event
from neoleads_provider.store.watch import ANY, interest_of, read_new_rows, watcher_for
from neoleads_provider.triggers.webhook import NeoleadsWebhookTrigger
from tests._helpers import later, message_payload, store_payloads

_counter = iter(range(1, 1_000_000))
CONN = "c"


def store(
    url: str, conversation_id: int, *, inbox_id: int = 2, content: str = "hello", conn_id: str = CONN
) -> None:
    """One new incoming message in ``conversation_id``, each with a message id of its own."""
    payload = message_payload(
        50_000 + next(_counter), conversation_id=conversation_id, inbox_id=inbox_id, content=content
    )
    store_payloads(url, payload, conn_id=conn_id)


def conversation(number: int, conn_id: str = CONN) -> frozenset[tuple[Any, ...]]:
    """The interest of a waiter on one conversation of ``conn_id``."""
    return frozenset({("c", conn_id, number)})


def test_interest_of_a_filter() -> None:
    assert interest_of(EventFilter(conversation_id=5)) == {("c", "neoleads_default", 5)}
    assert interest_of(EventFilter(conn_id=CONN, conversation_id=5)) == {("c", CONN, 5)}
    assert interest_of(EventFilter(conn_id=CONN, inbox_id=2)) == {("i", CONN, 2)}
    assert interest_of(EventFilter(conn_id=CONN, account_id=1)) == {("*", CONN)}


def test_read_new_rows(events_url: str) -> None:
    assert read_new_rows(events_url, None) == (None, set())
    store(events_url, 5)
    store(events_url, 6, inbox_id=3)
    store(events_url, 5, conn_id="other")
    newest, keys = read_new_rows(events_url, 0)
    assert keys == {
        ANY,
        ("*", CONN),
        ("*", "other"),
        ("c", CONN, 5),
        ("c", CONN, 6),
        ("c", "other", 5),
        ("i", CONN, 2),
        ("i", CONN, 3),
        ("i", "other", 2),
    }
    assert read_new_rows(events_url, newest) == (newest, set())


async def test_a_row_wakes_only_the_waiters_on_its_conversation(events_url: str) -> None:
    watcher = watcher_for(events_url)
    assert watcher_for(events_url) is watcher
    version = watcher.version
    # Let the watcher read its starting point first.
    assert await watcher.wait(version, 0.5, conversation(5)) is False
    timer = later(0.2, lambda: store(events_url, 5))
    started = time.monotonic()
    woken_5, woken_6, woken_other, woken_conn, woken_any = await asyncio.gather(
        watcher.wait(version, 3, conversation(5)),
        watcher.wait(version, 1.5, conversation(6)),
        # Conversation 5 of another connection is another conversation.
        watcher.wait(version, 1.5, conversation(5, "other")),
        watcher.wait(version, 3, frozenset({("*", CONN)})),
        watcher.wait(version, 3),
    )
    timer.join()
    assert (woken_5, woken_6, woken_other, woken_conn, woken_any) == (True, False, False, True, True)
    assert time.monotonic() - started >= 1.4  # the conversation 6 waiter sat out its whole timeout


async def test_a_change_during_the_look_is_not_missed(events_url: str) -> None:
    watcher = watcher_for(events_url)
    version = watcher.version
    await watcher.wait(version, 0.5)  # starting point read
    version = watcher.version  # "before the look"
    store(events_url, 9)  # arrives while the waiter is looking
    await asyncio.sleep(0.5)  # the watcher has seen it; nobody was waiting
    started = time.monotonic()
    assert await watcher.wait(version, 5, conversation(9)) is True
    assert time.monotonic() - started < 0.1


async def test_idle_cost_does_not_grow_with_waiters(events_url: str) -> None:
    queries: list[str] = []

    def count(conn, cursor, statement, *args: Any) -> None:
        queries.append(statement)

    engine = get_engine(events_url)
    event.listen(engine, "before_cursor_execute", count)
    try:
        watcher = watcher_for(events_url)
        version = watcher.version
        waits = [watcher.wait(version, 2.0, conversation(number)) for number in range(200)]
        await asyncio.gather(*waits)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    # About one read every WATCH_INTERVAL (0.2 s) for two seconds, for all 200 waiters together.
    assert 5 <= len(queries) <= 15


async def test_the_watcher_stops_when_nobody_waits(events_url: str, monkeypatch) -> None:
    monkeypatch.setattr(watch, "IDLE_STOP_SECONDS", 0.3)
    watcher = watcher_for(events_url)
    await watcher.wait(watcher.version, 0.1)
    task = watcher._task
    assert task is not None
    await asyncio.wait_for(task, 3)
    # And it starts again for the next waiter.
    version = watcher.version
    later(0.3, lambda: store(events_url, 4))
    assert await watcher.wait(version, 3, conversation(4)) is True


async def test_a_trigger_with_a_long_poll_interval_fires_within_a_second(events_url: str) -> None:
    flt = EventFilter(conn_id=CONN, events=("message_created",), account_id=1, conversation_id=77)
    trigger = NeoleadsWebhookTrigger(
        event_filter=flt.to_dict(), neoleads_conn_id=CONN, events_db_url=events_url, poll_interval=30
    )
    timer = later(0.6, lambda: store(events_url, 77, content="the reply"))
    started = time.monotonic()
    run = trigger.run()
    try:
        fired = await asyncio.wait_for(anext(run), 5)
    finally:
        await run.aclose()
        timer.join()
    assert fired.payload["status"] == "success"
    stored = load_event(events_url, fired.payload["event_id"], CONN)
    assert stored is not None
    assert stored.to_xcom()["payload"]["content"] == "the reply"
    # Without the watcher the next look would come 30 s after the first.
    assert time.monotonic() - started < 0.6 + 1.0
