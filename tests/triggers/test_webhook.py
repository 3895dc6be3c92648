"""NeoleadsWebhookTrigger: serialization, and run() against a real SQLite event store."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import threading
import time
from typing import Any

import pytest

from neoleads_provider.events.filter import EventFilter
from neoleads_provider.store.engine import dispose_engines, get_engine
from neoleads_provider.store.migrate import migrate
from neoleads_provider.store.queries import load_event
from neoleads_provider.triggers import webhook as trigger_module
from neoleads_provider.triggers.webhook import NeoleadsWebhookTrigger
from tests._helpers import message_payload, store_payloads, use_sandbox_connection

CLASSPATH = "neoleads_provider.triggers.webhook.NeoleadsWebhookTrigger"
FILTER = EventFilter(account_id=1, conversation_id=7, after_message_id=100)


@pytest.fixture
def looks(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record when the trigger looks in the store, to prove it sleeps between looks."""
    calls: list[float] = []
    real = trigger_module.look_in_store

    def counting(url: str | None, flt: EventFilter) -> Any:
        calls.append(time.monotonic())
        return real(url, flt)

    monkeypatch.setattr(trigger_module, "look_in_store", counting)
    return calls


def trigger(events_url: str, **kwargs: Any) -> NeoleadsWebhookTrigger:
    kwargs.setdefault("event_filter", FILTER.to_dict())
    kwargs.setdefault("poll_interval", 0.05)
    return NeoleadsWebhookTrigger(events_db_url=events_url, **kwargs)


async def first_event(trig: NeoleadsWebhookTrigger, timeout: float = 10) -> dict[str, Any]:
    gen = trig.run()
    try:
        event = await asyncio.wait_for(anext(gen), timeout=timeout)
        # A single-event trigger returns after yielding.
        with pytest.raises(StopAsyncIteration):
            await anext(gen)
        return event.payload
    finally:
        await gen.aclose()
        await trig.cleanup()


# -- serialization --------------------------------------------------------------------------------------


def test_serialization():
    kwargs = {
        "event_filter": EventFilter(
            conn_id="neoleads_other",
            account_id=1,
            conversation_id=7,
            after_message_id=100,
            content_pattern="(?i)yes",
        ).to_dict(),
        "neoleads_conn_id": "neoleads_other",
        "events_db_url": "postgresql+psycopg://u:p@db/neoleads",
        "poll_interval": 2.0,
        "poll_api": True,
        "api_poll_interval": 45.0,
        "end_time": 1_800_000_000.0,
    }
    trig = NeoleadsWebhookTrigger(**kwargs)
    classpath, serialized = trig.serialize()
    assert classpath == CLASSPATH
    assert serialized == kwargs
    assert json.loads(json.dumps(serialized)) == serialized
    again = NeoleadsWebhookTrigger(**serialized)
    assert again.serialize() == (classpath, serialized)


def test_serialization_defaults_and_normalised_filter():
    trig = NeoleadsWebhookTrigger(
        event_filter={"conversation_id": 7, "account_id": 1, "events": "message_created"}
    )
    classpath, kwargs = trig.serialize()
    assert kwargs == {
        "event_filter": EventFilter(account_id=1, conversation_id=7).to_dict(),
        "neoleads_conn_id": "neoleads_default",
        "events_db_url": None,
        "poll_interval": 1.0,
        "poll_api": False,
        "api_poll_interval": 30.0,
        "end_time": None,
    }
    assert NeoleadsWebhookTrigger(**kwargs).serialize() == (classpath, kwargs)


def test_a_filter_without_a_connection_belongs_to_the_triggers():
    """A filter serialised before filters named their connection waits on the trigger's connection."""
    trig = NeoleadsWebhookTrigger(
        event_filter={"conversation_id": 7, "account_id": 1}, neoleads_conn_id="neoleads_other"
    )
    _, kwargs = trig.serialize()
    assert kwargs["event_filter"]["conn_id"] == "neoleads_other"
    assert (
        kwargs["event_filter"]
        == EventFilter(conn_id="neoleads_other", account_id=1, conversation_id=7).to_dict()
    )
    assert NeoleadsWebhookTrigger(**kwargs).serialize() == trig.serialize()


def test_a_filter_for_another_connection_is_refused():
    with pytest.raises(ValueError, match=r"'neoleads_a'.*'neoleads_b'"):
        NeoleadsWebhookTrigger(
            event_filter=EventFilter(conn_id="neoleads_a", conversation_id=7).to_dict(),
            neoleads_conn_id="neoleads_b",
        )
    with pytest.raises(ValueError, match="neoleads_default"):
        NeoleadsWebhookTrigger(event_filter=FILTER.to_dict(), neoleads_conn_id="neoleads_other")


def test_repr_hides_the_database_password():
    trig = NeoleadsWebhookTrigger(
        event_filter=FILTER.to_dict(), events_db_url="postgresql+psycopg://u:s3cret-pw@db/neoleads"
    )
    assert "s3cret-pw" not in repr(trig)
    assert "db/neoleads" in repr(trig)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"event_filter": {"conversation": 7}}, "Unknown event filter keys"),
        ({"event_filter": {"content_pattern": "("}}, "content_pattern"),
        ({"event_filter": {}, "poll_interval": 0}, "poll_interval must be a positive number"),
        ({"event_filter": {}, "end_time": "tomorrow"}, "end_time must be a unix time"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NeoleadsWebhookTrigger(**kwargs)


# -- run() ------------------------------------------------------------------------------------------------


async def test_run_fires_when_a_row_is_inserted_from_another_thread(events_url, looks):
    store_payloads(
        events_url, message_payload(100, message_type="outgoing"), message_payload(99, content="too old")
    )
    inserter = threading.Timer(
        0.4, lambda: store_payloads(events_url, message_payload(101, content="the reply"))
    )
    inserter.start()
    # The event loop stays free while the trigger waits: this ticker keeps running alongside it.
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    ticking = asyncio.create_task(ticker())
    started = time.monotonic()
    try:
        event = await first_event(trigger(events_url))
    finally:
        ticking.cancel()
        inserter.join()
    assert time.monotonic() - started >= 0.35
    assert event["status"] == "success"
    assert event["source"] == "webhook"
    assert stored(events_url, event)["payload"]["content"] == "the reply"
    assert event["message_id"] == 101
    assert json.loads(json.dumps(event)) == event
    assert ticks >= 10
    # It looked several times, never faster than the poll interval allows.
    assert len(looks) >= 3
    gaps = [b - a for a, b in itertools.pairwise(looks)]
    assert min(gaps) >= 0.04


def stored(url: str, event: dict[str, Any], conn_id: str = "neoleads_default") -> dict[str, Any]:
    """The stored event a success event points at (what the sensor reads back on resuming)."""
    found = load_event(url, event["event_id"], conn_id)
    assert found is not None
    return found.to_xcom()


async def test_a_success_event_names_the_match_without_the_message_or_the_contact(events_url):
    """The triggerer logs every event it fires and Airflow keeps it: no personal data may ride in it."""
    store_payloads(events_url, message_payload(101, content="my address is 1 Secret Lane"))
    event = await first_event(trigger(events_url, poll_interval=30))
    text = json.dumps(event)
    assert "Secret Lane" not in text
    assert "Ada" not in text  # the sender's name in the payload
    assert len(text) < 300
    assert set(event) == {"status", "source", "event_id", "event_name", "message_id", "conversation_id"}


async def test_run_fires_at_once_for_a_reply_already_stored(events_url):
    store_payloads(events_url, message_payload(101, content="early bird"))
    event = await first_event(trigger(events_url, poll_interval=30))
    assert stored(events_url, event)["payload"]["content"] == "early bird"
    assert stored(events_url, event)["conn_id"] == "neoleads_default"


async def test_run_never_fires_for_a_reply_received_for_another_connection(events_url, looks):
    store_payloads(events_url, message_payload(101, content="sent to B"), conn_id="neoleads_b")
    end = time.time() + 0.3
    event = await first_event(trigger(events_url, end_time=end))
    assert event["status"] == "timeout"
    # The same row answers a trigger of the connection it was received for.
    own = trigger(
        events_url, event_filter={**FILTER.to_dict(), "conn_id": "neoleads_b"}, neoleads_conn_id="neoleads_b"
    )
    found = await first_event(own)
    assert found["status"] == "success"
    event = stored(events_url, found, conn_id="neoleads_b")
    assert (event["conn_id"], event["payload"]["content"]) == ("neoleads_b", "sent to B")


async def test_run_yields_a_timeout_event_at_the_end_time(events_url, looks):
    end = time.time() + 0.3
    event = await first_event(trigger(events_url, end_time=end))
    assert event["status"] == "timeout"
    assert event["end_time"] == end
    assert time.time() >= end
    assert 3 <= len(looks) <= 10


async def test_a_store_outage_is_waited_out_with_backoff_then_the_event_fires(tmp_path, looks):
    # The directory is missing, so SQLite cannot open the file: an outage until it is created.
    store_dir = tmp_path / "volume"
    url = f"sqlite:///{store_dir / 'events.db'}"

    def recover() -> None:
        store_dir.mkdir()
        migrate(get_engine(url))
        store_payloads(url, message_payload(101, content="after the outage"))

    recovery = threading.Timer(0.8, recover)
    recovery.start()
    try:
        event = await first_event(trigger(url, poll_interval=0.02))
    finally:
        recovery.join()
        dispose_engines()
    assert event["status"] == "success"
    assert stored(url, event)["payload"]["content"] == "after the outage"
    # Backing off (0.04, 0.08, 0.16, ...) keeps an outage of 0.8 s to a handful of looks.
    assert 3 <= len(looks) <= 10


async def test_a_store_that_was_never_migrated_ends_with_an_error_event(tmp_path):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    try:
        event = await first_event(trigger(url))
    finally:
        dispose_engines()
    assert event["status"] == "error"
    assert "neoleads events migrate" in event["message"]


async def test_a_bad_store_url_ends_with_an_error_event():
    event = await first_event(trigger("nosuchdb://x/y"))
    assert event["status"] == "error"
    assert "nosuchdb" in event["message"]


# -- poll_api ---------------------------------------------------------------------------------------------


def api_filter(neoleads_sandbox, sandbox_conversation: dict[str, int]) -> dict[str, Any]:
    return EventFilter(
        account_id=neoleads_sandbox.account_id,
        conversation_id=sandbox_conversation["conversation_id"],
        after_message_id=sandbox_conversation["message_id"],
    ).to_dict()


async def test_poll_api_fills_a_lost_delivery(events_url, neoleads_sandbox, sandbox_conversation, looks):
    conversation_id = sandbox_conversation["conversation_id"]
    threading.Timer(0.3, lambda: neoleads_sandbox.reply(conversation_id, "Tuesday works")).start()
    trig = trigger(
        events_url,
        event_filter=api_filter(neoleads_sandbox, sandbox_conversation),
        poll_api=True,
        api_poll_interval=0.2,
    )
    event = await first_event(trig)
    assert event["status"] == "success"
    assert event["source"] == "api"
    assert event["event_id"] is None
    assert event["message_id"] > sandbox_conversation["message_id"]
    assert event["conversation_id"] == conversation_id
    api_looks = [r for r in neoleads_sandbox.requests if r[0] == "GET" and r[1].endswith("/messages")]
    # One look at the start, then one per api_poll_interval, not one per store look.
    assert 1 <= len(api_looks) <= 6
    assert len(looks) > len(api_looks)


async def test_poll_api_rides_out_a_transient_api_failure(events_url, neoleads_sandbox, sandbox_conversation):
    neoleads_sandbox.reply(sandbox_conversation["conversation_id"], "Tuesday works")
    neoleads_sandbox.inject(503, path="/messages", method="GET", count=2)
    trig = trigger(
        events_url,
        event_filter=api_filter(neoleads_sandbox, sandbox_conversation),
        poll_api=True,
        api_poll_interval=0.1,
    )
    event = await first_event(trig)
    assert event["status"] == "success"
    assert event["source"] == "api"
    statuses = [r[2] for r in neoleads_sandbox.requests if r[0] == "GET" and r[1].endswith("/messages")]
    assert statuses[:3] == [503, 503, 200]


async def test_poll_api_ends_with_an_error_when_the_conversation_is_gone(
    events_url, neoleads_sandbox, monkeypatch
):
    use_sandbox_connection(monkeypatch, neoleads_sandbox, max_retries=0)
    trig = trigger(
        events_url,
        event_filter=EventFilter(account_id=neoleads_sandbox.account_id, conversation_id=999_999).to_dict(),
        poll_api=True,
    )
    event = await first_event(trig)
    assert event["status"] == "error"
    assert "404" in event["message"]
    assert neoleads_sandbox.token not in event["message"]


async def test_poll_api_ends_with_an_error_when_the_connection_is_missing(events_url, monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_NEOLEADS_DEFAULT", raising=False)
    trig = trigger(
        events_url,
        event_filter={**FILTER.to_dict(), "conn_id": "neoleads_missing"},
        poll_api=True,
        neoleads_conn_id="neoleads_missing",
    )
    event = await first_event(trig)
    assert event["status"] == "error"
    assert "neoleads_missing" in event["message"]


async def test_the_trigger_says_what_it_waits_for_and_that_it_still_waits(
    events_url, monkeypatch, caplog, capfd
):
    from neoleads_provider.triggers import webhook as trigger_module

    monkeypatch.setattr(trigger_module, "STILL_WAITING_LOG_EVERY", 0.1)
    caplog.set_level(logging.INFO)
    event = await first_event(trigger(events_url, end_time=time.time() + 0.5))
    out, err = capfd.readouterr()
    text = out + err + caplog.text
    assert "Waiting for message_created (incoming) in conversation 7" in text
    assert "looking in the event store every 0.05 s" in text
    assert 2 <= text.count("Still waiting for message_created") <= 8
    assert event["status"] == "timeout"
    assert "waited for message_created (incoming) in conversation 7" in event["message"]
