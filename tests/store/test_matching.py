"""EventFilter semantics and the store query, on a real SQLite file and on PostgreSQL."""

from __future__ import annotations

import json
import random
import re
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, event, text

from neoleads_provider.events import (
    MESSAGE_EVENTS,
    MESSAGE_TYPES,
    EventFields,
    EventFilter,
    event_identity,
    read_event,
)
from neoleads_provider.events.build import message_event_from_api
from neoleads_provider.events.fields import COLUMN_NAMES
from neoleads_provider.store import matching
from neoleads_provider.store.engine import get_engine
from neoleads_provider.store.matching import find_first_match, find_matches
from neoleads_provider.store.migrate import migrate
from neoleads_provider.store.repository import insert_events
from neoleads_provider.store.schema import webhook_events
from tests._helpers import AGENT, BOT, CONTACT, message_payload, new_event, store_payloads

if TYPE_CHECKING:
    from collections.abc import Iterator

    from sqlalchemy import Engine


def status_payload(conversation_id: int = 7, *, account_id: int = 1, inbox_id: int = 1) -> dict[str, Any]:
    return {
        "event": "conversation_status_changed",
        "id": conversation_id,
        "inbox_id": inbox_id,
        "status": "resolved",
        "account": {"id": account_id, "name": "Acme"},
        "changed_attributes": [{"status": {"previous_value": "open", "current_value": "resolved"}}],
    }


def bulk_store(engine: Engine, payloads: list[dict[str, Any]]) -> None:
    """Store many payloads in one executemany (for the query-plan tests, which need volume)."""
    now = datetime.now(UTC)
    rows = []
    for payload in payloads:
        fields = read_event(payload)
        body = json.dumps(payload)
        rows.append(
            {
                "conn_id": "neoleads_default",
                "delivery_id": str(uuid.uuid4()),
                "event_key": event_identity(fields, body.encode()),
                **{name: getattr(fields, name) for name in COLUMN_NAMES},
                "received_at": now,
                "body": body,
            }
        )
    with engine.begin() as conn:
        conn.execute(webhook_events.insert(), rows)


def first(engine: Engine, flt: EventFilter, *, after_id: int = 0) -> Any:
    with engine.connect() as conn:
        return find_first_match(conn, flt, after_id=after_id)


def all_matches(engine: Engine, flt: EventFilter, *, after_id: int = 0, limit: int = 10_000) -> list[Any]:
    with engine.connect() as conn:
        return find_matches(conn, flt, after_id=after_id, limit=limit)


@pytest.fixture
def sqlite_engine(tmp_path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'events.db'}")
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def pg_engine(pg_schema_url: str) -> Iterator[Engine]:
    engine = create_engine(pg_schema_url)
    try:
        migrate(engine)
        yield engine
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request) -> Engine:
    return request.getfixturevalue("sqlite_engine" if request.param == "sqlite" else "pg_engine")


CONVERSATION_7 = EventFilter(account_id=1, conversation_id=7)


# -- filter semantics against the store ---------------------------------------------------------------


def test_reply_matches_and_the_echo_of_our_own_message_does_not(engine):
    echo_id, reply_id = store_payloads(
        engine, message_payload(100, message_type="outgoing"), message_payload(101, content="yes please")
    )
    found = first(engine, CONVERSATION_7)
    assert found is not None
    assert found.id == reply_id
    assert found.message_id == 101
    assert found.payload["content"] == "yes please"
    assert found.received_at.tzinfo is not None
    xcom = found.to_xcom()
    assert xcom["message_type"] == "incoming"
    assert xcom["conversation_id"] == 7
    assert echo_id < reply_id


def test_outgoing_and_template_messages_never_match_by_default(engine):
    store_payloads(
        engine,
        message_payload(100, message_type="outgoing"),
        message_payload(101, message_type="template"),
        message_payload(102, message_type="outgoing", sender=BOT),
    )
    assert first(engine, CONVERSATION_7) is None
    outgoing = EventFilter(account_id=1, conversation_id=7, message_types=("outgoing",))
    assert [e.message_id for e in all_matches(engine, outgoing)] == [100, 102]
    any_type = EventFilter(account_id=1, conversation_id=7, message_types=None)
    assert [e.message_id for e in all_matches(engine, any_type)] == [100, 101, 102]


def test_private_notes_are_excluded_unless_asked_for(engine):
    store_payloads(engine, message_payload(100, message_type="outgoing", private=True, content="internal"))
    notes = EventFilter(account_id=1, conversation_id=7, message_types=("outgoing",))
    assert first(engine, notes) is None
    with_notes = EventFilter(
        account_id=1, conversation_id=7, message_types=("outgoing",), include_private=True
    )
    found = first(engine, with_notes)
    assert found is not None
    assert found.private is True


def test_watermark_catches_a_reply_stored_before_the_first_poke_but_not_older_ones(engine):
    # 100: an earlier customer message; 101: the message the DAG sent; 102: the reply, already stored
    # by the time the sensor first looks.
    store_payloads(
        engine,
        message_payload(100, content="earlier question"),
        message_payload(101, message_type="outgoing", content="our question"),
        message_payload(102, content="the answer"),
    )
    found = first(engine, EventFilter(account_id=1, conversation_id=7, after_message_id=101))
    assert found is not None
    assert found.payload["content"] == "the answer"
    assert first(engine, EventFilter(account_id=1, conversation_id=7, after_message_id=102)) is None
    # Without a watermark the oldest incoming message is taken: that is why sensors should set one.
    assert first(engine, CONVERSATION_7).message_id == 100


def test_watermark_compares_message_ids_not_arrival_order(engine):
    # Deliveries can arrive out of order: a late webhook for an older message is still older.
    store_payloads(engine, message_payload(105, content="new"), message_payload(99, content="late but old"))
    found = first(engine, EventFilter(account_id=1, conversation_id=7, after_message_id=100))
    assert found.message_id == 105
    assert [e.message_id for e in all_matches(engine, EventFilter(account_id=1, conversation_id=7))] == [
        105,
        99,
    ]


def test_other_conversations_and_other_accounts_do_not_match(engine):
    store_payloads(
        engine,
        message_payload(100, conversation_id=8),
        # Display ids are per account: conversation 7 of account 2 is another conversation.
        message_payload(101, conversation_id=7, account_id=2),
    )
    assert first(engine, CONVERSATION_7) is None
    found = first(engine, EventFilter(account_id=2, conversation_id=7))
    assert found is not None
    assert found.message_id == 101


def test_event_names_select_the_event(engine):
    store_payloads(engine, message_payload(100, event_name="message_updated"), status_payload())
    assert first(engine, CONVERSATION_7) is None
    updated = first(engine, EventFilter(events=("message_updated",), account_id=1, conversation_id=7))
    assert updated is not None
    assert updated.event == "message_updated"
    status = EventFilter(events=("conversation_status_changed",), account_id=1, conversation_id=7)
    found = first(engine, status)
    assert found is not None
    assert found.event == "conversation_status_changed"
    assert found.message_id is None


def test_message_criteria_do_not_hold_back_conversation_events(engine):
    store_payloads(
        engine, message_payload(100, message_type="outgoing"), status_payload(), message_payload(101)
    )
    both = EventFilter(
        events=("message_created", "conversation_status_changed"), account_id=1, conversation_id=7
    )
    assert [e.event for e in all_matches(engine, both)] == ["conversation_status_changed", "message_created"]
    assert [e.message_id for e in all_matches(engine, both)] == [None, 101]


def test_content_pattern_is_a_regex_search(engine):
    store_payloads(
        engine, message_payload(100, content="Maybe later"), message_payload(101, content="YES, book it")
    )
    flt = EventFilter(account_id=1, conversation_id=7, content_pattern=r"(?i)\byes\b")
    assert first(engine, flt).message_id == 101
    assert first(engine, EventFilter(account_id=1, conversation_id=7, content_pattern=r"^no$")) is None
    store_payloads(engine, message_payload(102, content=None))
    assert (
        first(
            engine, EventFilter(account_id=1, conversation_id=7, content_pattern=".*", after_message_id=101)
        )
        is None
    )


def test_a_pattern_miss_on_many_rows_is_read_in_bounded_batches(engine, monkeypatch):
    misses = [message_payload(1000 + n, content=f"not it {n}") for n in range(230)]
    store_payloads(engine, *misses, message_payload(5000, content="the one"))
    monkeypatch.setattr(matching, "DEFAULT_BATCH_SIZE", 50)
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda conn, cursor, stmt, *args: statements.append(stmt))
    found = first(engine, EventFilter(account_id=1, conversation_id=7, content_pattern="the one"))
    assert found is not None
    assert found.message_id == 5000
    selects = [s for s in statements if "neoleads_webhook_event" in s]
    # 231 candidates in batches of 50: five queries, each bounded by LIMIT.
    assert len(selects) == 5
    assert all("LIMIT" in s.upper() for s in selects)
    statements.clear()
    assert first(engine, EventFilter(account_id=1, conversation_id=7, content_pattern="nowhere")) is None
    assert len([s for s in statements if "neoleads_webhook_event" in s]) == 5


def test_sender_types(engine):
    store_payloads(
        engine,
        message_payload(100, message_type="outgoing", sender=AGENT),
        message_payload(101, message_type="outgoing", sender=BOT),
        message_payload(102),
    )
    bot = EventFilter(account_id=1, conversation_id=7, message_types=None, sender_types=("agent_bot",))
    assert [e.message_id for e in all_matches(engine, bot)] == [101]
    contact = EventFilter(account_id=1, conversation_id=7, message_types=None, sender_types="contact")
    assert [e.message_id for e in all_matches(engine, contact)] == [102]
    people = EventFilter(
        account_id=1, conversation_id=7, message_types=None, sender_types=["user", "contact"]
    )
    assert [e.message_id for e in all_matches(engine, people)] == [100, 102]


def test_inbox_filter_follows_a_whole_inbox(engine):
    store_payloads(
        engine,
        message_payload(100, conversation_id=7, inbox_id=1),
        message_payload(101, conversation_id=8, inbox_id=2),
        message_payload(102, conversation_id=9, inbox_id=2),
    )
    flt = EventFilter(account_id=1, inbox_id=2)
    assert [e.conversation_id for e in all_matches(engine, flt)] == [8, 9]


def test_find_matches_pages_forward_with_after_id(engine):
    ids = store_payloads(engine, *[message_payload(100 + n, content=f"m{n}") for n in range(7)])
    page1 = all_matches(engine, CONVERSATION_7, limit=3)
    assert [e.id for e in page1] == ids[:3]
    page2 = all_matches(engine, CONVERSATION_7, after_id=page1[-1].id, limit=3)
    assert [e.id for e in page2] == ids[3:6]
    page3 = all_matches(engine, CONVERSATION_7, after_id=page2[-1].id, limit=3)
    assert [e.id for e in page3] == ids[6:]
    assert first(engine, CONVERSATION_7, after_id=ids[-1]) is None
    with pytest.raises(ValueError, match="limit"):
        all_matches(engine, CONVERSATION_7, limit=0)


def test_another_connections_events_never_match(engine):
    # Two connections (two endpoints, perhaps two Neoleads servers) both have a conversation 7 of account 1.
    # The other connection's rows come first: a leak would be the first match.
    other_ids = store_payloads(
        engine,
        message_payload(100, content="yes from the other server"),
        message_payload(101, message_type="outgoing", content="yes"),
        status_payload(),
        conn_id="neoleads_other",
    )
    # The very same message (same event key) on this connection is this connection's own row.
    [own_id] = store_payloads(engine, message_payload(100, content="yes from ours"))
    ours = EventFilter(account_id=1, conversation_id=7)
    theirs = EventFilter(conn_id="neoleads_other", account_id=1, conversation_id=7)
    found = first(engine, ours)
    assert found is not None
    assert (found.id, found.conn_id, found.payload["content"]) == (
        own_id,
        "neoleads_default",
        "yes from ours",
    )
    assert first(engine, theirs).id == other_ids[0]

    wide_filters = [
        EventFilter(),
        EventFilter(message_types=None, include_private=True),
        EventFilter(inbox_id=1, message_types=None),
        EventFilter(conversation_id=7, content_pattern="yes"),
        EventFilter(conversation_id=7, message_types=None, after_message_id=0),
        EventFilter(events=("message_created", "conversation_status_changed"), conversation_id=7),
    ]
    for flt in wide_filters:
        assert [e.id for e in all_matches(engine, flt)] == [own_id], flt
        assert first(engine, flt).id == own_id, flt
        other = EventFilter.from_dict({**flt.to_dict(), "conn_id": "neoleads_other"})
        assert {e.conn_id for e in all_matches(engine, other)} == {"neoleads_other"}, other
        nobody = EventFilter.from_dict({**flt.to_dict(), "conn_id": "neoleads_nobody"})
        assert first(engine, nobody) is None
        assert all_matches(engine, nobody) == []
    # Paging past this connection's rows never falls through to the other's.
    assert first(engine, ours, after_id=own_id) is None
    assert all_matches(engine, theirs, after_id=0) == [
        e for e in all_matches(engine, theirs) if e.id in other_ids
    ]


def test_sql_and_python_agree_on_a_random_mix(engine):
    """``EventFilter.matches`` on the payload and the store query must select the same events."""
    rng = random.Random(20260601)
    payloads: list[dict[str, Any]] = []
    for n in range(160):
        if rng.random() < 0.15:
            # A distinct body each: byte-identical bodies are one logical event, stored once.
            status = status_payload(rng.choice([7, 8]), account_id=rng.choice([1, 2]))
            payloads.append({**status, "updated_at": 1_780_000_000 + n})
            continue
        kind = rng.choice(["incoming", "outgoing", "template"])
        payloads.append(
            message_payload(
                1000 + n,
                conversation_id=rng.choice([7, 8]),
                account_id=rng.choice([1, 2]),
                inbox_id=rng.choice([1, 2]),
                message_type=kind,
                private=kind == "outgoing" and rng.random() < 0.3,
                content=rng.choice(["yes", "no", "maybe yes", None]),
                sender=(CONTACT if kind == "incoming" else rng.choice([AGENT, BOT])),
                event_name=rng.choice(["message_created", "message_created", "message_updated"]),
            )
        )
    store_payloads(engine, *payloads)
    filters = [
        CONVERSATION_7,
        EventFilter(account_id=2, conversation_id=8, message_types=None, include_private=True),
        EventFilter(account_id=1, inbox_id=2, message_types=("outgoing",), sender_types=("agent_bot",)),
        EventFilter(account_id=1, conversation_id=7, after_message_id=1080, content_pattern="yes"),
        EventFilter(
            events=("message_updated", "conversation_status_changed"), account_id=1, conversation_id=8
        ),
        EventFilter(account_id=2, message_types=("incoming", "template"), content_pattern="^maybe"),
    ]
    for flt in filters:
        expected = [p for p in payloads if flt.matches(p)]
        got = [e.payload for e in all_matches(engine, flt)]
        assert got == expected, flt
        assert expected, f"the mix should exercise {flt}"


# -- property: the store query and EventFilter.matches agree -----------------------------------------

PROPERTY_CONN_IDS = ("neoleads_default", "neoleads_other", "neoleads_third")
PROPERTY_EVENTS = (
    "message_created",
    "message_updated",
    "conversation_status_changed",
    "conversation_updated",
    "conversation_typing_on",
)
CONTENTS = ("yes", "no", "maybe yes", "YES!", "", None, 42)
PATTERNS = ("yes", "^maybe", "(?i)yes", "^$", "no|YES")


def _small_id(low: int = 1, high: int = 4) -> st.SearchStrategy[Any]:
    """An id as the server sends it (an integer) or as a digit string, which reads the same."""
    return st.integers(low, high).flatmap(lambda n: st.sampled_from([n, str(n), f" {n} "]))


def _sometimes_missing(
    draw: st.DrawFn, payload: dict[str, Any], key: str, values: st.SearchStrategy[Any]
) -> None:
    """Set ``payload[key]`` to a drawn value, except now and then (the key missing)."""
    if draw(st.sampled_from([True, True, True, False])):
        payload[key] = draw(values)


# Hypothesis favours the first few: the usual values come first.
_message_types = st.sampled_from(
    [
        "incoming",
        "outgoing",
        "Incoming",
        "OUTGOING",
        0,
        1,
        "INCOMING ",
        "template",
        "Activity",
        2,
        3,
        "1",
        7,
        "bogus",
        None,
    ]
)
_sender_types = st.sampled_from(["user", "User", "AGENT_BOT", "agent_bot", "Contact", "contact", 5, ""])


@st.composite
def _senders(draw: st.DrawFn) -> dict[str, Any] | None:
    kind = draw(st.sampled_from(["typed", "contact", "typed", "none", "empty"]))
    if kind == "none":
        return None
    if kind == "empty":
        return {}
    sender: dict[str, Any] = {"id": draw(st.integers(1, 9)), "name": "Someone"}
    # A contact carries no type; users and agent bots do, in whatever case.
    if kind == "typed":
        sender["type"] = draw(_sender_types)
    return sender


@st.composite
def _conversation(draw: st.DrawFn) -> dict[str, Any]:
    # Named by its id, or only by its display_id.
    conversation = {draw(st.sampled_from(["id", "display_id"])): draw(_small_id(1, 3))}
    _sometimes_missing(draw, conversation, "inbox_id", _small_id(1, 2))
    return conversation


@st.composite
def webhookish_payloads(draw: st.DrawFn) -> dict[str, Any]:
    # Mostly message events, which carry every criterion.
    event = draw(st.sampled_from([*PROPERTY_EVENTS, "message_created", "message_created", "message_updated"]))
    payload: dict[str, Any] = {"event": event}
    if draw(st.booleans()):
        payload["account"] = {"id": draw(_small_id(1, 2))}
    else:
        payload["account_id"] = draw(_small_id(1, 2))
    if event.startswith("message_"):
        _sometimes_missing(draw, payload, "id", _small_id(1, 12))
        _sometimes_missing(draw, payload, "message_type", _message_types)
        _sometimes_missing(draw, payload, "private", st.sampled_from([True, False, False, None, "true"]))
        _sometimes_missing(draw, payload, "sender", _senders())
        _sometimes_missing(draw, payload, "content", st.sampled_from(CONTENTS))
        _sometimes_missing(draw, payload, "inbox", _small_id(1, 2).map(lambda n: {"id": n}))
        payload["conversation"] = draw(_conversation())
    elif event == "conversation_typing_on":
        payload["user"] = draw(_senders())
        payload["conversation"] = draw(_conversation())
        _sometimes_missing(draw, payload, "is_private", st.booleans())
    else:
        payload.update(draw(_conversation()), status="open")
    # Other events are one logical event per exact body: a nonce keeps most of them apart.
    payload["nonce"] = draw(st.integers(0, 5))
    return payload


@st.composite
def filters(draw: st.DrawFn, stored: list[tuple[str, dict[str, Any]]]) -> EventFilter:
    """A filter: half of them drawn freely, half aimed at one stored delivery (each criterion either unset
    or what that delivery says), so that many checks expect matches and the rest expect none."""
    aimed = draw(st.booleans())
    if aimed:
        conn_id, anchor = draw(st.sampled_from(stored))
        fields = read_event(anchor)
    else:
        conn_id = draw(st.sampled_from(PROPERTY_CONN_IDS))
        fields = EventFields(event=draw(st.sampled_from(PROPERTY_EVENTS)))

    def pick(value: Any, others: st.SearchStrategy[Any]) -> Any:
        if aimed:
            return draw(st.sampled_from([None, value]))
        return draw(st.none() | others)

    def subset(names: tuple[str, ...], value: str | None) -> tuple[str, ...] | None:
        chosen = draw(st.none() | st.lists(st.sampled_from(names), min_size=1, unique=True))
        if chosen is None or not aimed:
            return None if chosen is None else tuple(chosen)
        if value not in names:
            return None  # only "any" lets a delivery without one through
        return (value, *(name for name in chosen if name != value))

    events = [
        fields.event,
        *(e for e in draw(st.lists(st.sampled_from(PROPERTY_EVENTS), max_size=2)) if e != fields.event),
    ]
    if draw(st.booleans()):
        # Message events only: the message criteria (and a watermark) then apply to every row.
        events = [name for name in events if name in MESSAGE_EVENTS] or ["message_created"]
    watermark = None
    if all(name in MESSAGE_EVENTS for name in events):
        below = fields.message_id - 1 if fields.message_id else None
        watermark = pick(below, st.integers(0, 12))
    content = fields.content if isinstance(fields.content, str) else None
    patterns = [p for p in PATTERNS if content is not None and re.search(p, content)] if aimed else PATTERNS
    return EventFilter(
        conn_id=conn_id,
        events=tuple(events),
        account_id=pick(fields.account_id, st.integers(1, 2)),
        inbox_id=pick(fields.inbox_id, st.integers(1, 2)),
        conversation_id=pick(fields.conversation_id, st.integers(1, 3)),
        message_types=subset(MESSAGE_TYPES, fields.message_type),
        sender_types=subset(("contact", "user", "agent_bot"), fields.sender_type),
        include_private=True if aimed and fields.private is True else draw(st.booleans()),
        after_message_id=watermark,
        content_pattern=draw(st.none() | st.sampled_from(patterns)) if patterns else None,
    )


@settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    deliveries=st.lists(
        st.tuples(st.sampled_from(PROPERTY_CONN_IDS), webhookish_payloads()), min_size=1, max_size=25
    ),
    data=st.data(),
)
def test_the_store_query_and_the_filter_agree_on_any_payload(
    events_url: str, deliveries: list[tuple[str, dict[str, Any]]], data: st.DataObject
) -> None:
    """What ``find_matches`` returns is exactly what ``EventFilter.matches`` accepts, for its connection.

    The store's columns are written when a delivery is stored and the SQL prefilter reads them; the filter
    reads the payload itself. Ids as digit strings, message types in any case or as REST integers, senders
    without a type and conversations named only by display_id must mean the same to both.
    """
    engine = get_engine(events_url)
    with engine.begin() as conn:
        conn.execute(webhook_events.delete())  # one store per example
        outcomes = insert_events(
            conn, [new_event(payload, conn_id=conn_id) for conn_id, payload in deliveries]
        )
    # A later copy of a logical event is not stored again: compare against what was stored.
    stored = {
        event_id: (conn_id, payload)
        for (event_id, inserted), (conn_id, payload) in zip(outcomes, deliveries, strict=True)
        if inserted
    }
    checks = data.draw(st.lists(filters(deliveries), min_size=1, max_size=6), label="filters")
    with engine.connect() as conn:
        for flt in checks:
            expected = {
                event_id
                for event_id, (conn_id, payload) in stored.items()
                if conn_id == flt.conn_id and flt.matches(payload)
            }
            found = find_matches(conn, flt, limit=1000)
            assert [event.id for event in found] == sorted(expected), flt
            assert {event.conn_id for event in found} <= {flt.conn_id}
            oldest = find_first_match(conn, flt)
            assert (oldest.id if oldest else None) == (min(expected) if expected else None), flt


# -- query plans --------------------------------------------------------------------------------------


def _index_name(*columns: str) -> str:
    for index in webhook_events.indexes:
        if [c.name for c in index.columns] == list(columns):
            return index.name
    raise AssertionError(f"no index on {columns}")


def _explain(engine: Engine, flt: EventFilter, prefix: str) -> str:
    statement = matching._candidates(flt, after_id=0, limit=1)
    with engine.connect() as conn:
        sql = str(statement.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
        return "\n".join(str(tuple(row)) for row in conn.exec_driver_sql(f"{prefix} {sql}"))


def test_sqlite_query_plan_uses_the_conversation_index(sqlite_engine):
    bulk_store(sqlite_engine, [message_payload(100 + n, conversation_id=n % 40) for n in range(400)])
    plan = _explain(
        sqlite_engine, EventFilter(account_id=1, conversation_id=7, after_message_id=5), "EXPLAIN QUERY PLAN"
    )
    assert _index_name("conn_id", "conversation_id", "event", "id") in plan
    assert "SCAN neoleads_webhook_event" not in plan.replace("USING INDEX", "")
    inbox_plan = _explain(sqlite_engine, EventFilter(account_id=1, inbox_id=2), "EXPLAIN QUERY PLAN")
    assert _index_name("conn_id", "inbox_id", "event", "id") in inbox_plan


@pytest.mark.postgres
def test_postgresql_query_plan_uses_the_conversation_index(pg_engine):
    bulk_store(
        pg_engine,
        [message_payload(100 + n, conversation_id=n % 200, inbox_id=1 + n % 20) for n in range(4000)],
    )
    with pg_engine.begin() as conn:
        conn.execute(text("ANALYZE neoleads_webhook_event"))
    plan = _explain(pg_engine, EventFilter(account_id=1, conversation_id=7, after_message_id=5), "EXPLAIN")
    assert _index_name("conn_id", "conversation_id", "event", "id") in plan
    assert "Seq Scan" not in plan
    inbox_plan = _explain(pg_engine, EventFilter(account_id=1, inbox_id=3, after_message_id=5), "EXPLAIN")
    assert _index_name("conn_id", "inbox_id", "event", "id") in inbox_plan
    assert "Seq Scan" not in inbox_plan


# -- the filter itself --------------------------------------------------------------------------------


def test_filter_round_trips_through_a_dict():
    flt = EventFilter(
        conn_id="neoleads_sales",
        events=["message_created", "message_updated"],
        account_id=1,
        inbox_id=2,
        conversation_id=7,
        message_types="incoming,template",
        include_private=True,
        sender_types=("Contact",),
        after_message_id=10,
        content_pattern=r"\byes\b",
    )
    data = flt.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["conn_id"] == "neoleads_sales"
    assert data["events"] == ["message_created", "message_updated"]
    assert data["message_types"] == ["incoming", "template"]
    assert data["sender_types"] == ["contact"]
    assert "_pattern" not in data
    again = EventFilter.from_dict(data)
    assert again == flt
    assert hash(again) == hash(flt)
    assert EventFilter.from_dict(EventFilter().to_dict()) == EventFilter()
    assert EventFilter().conn_id == "neoleads_default"
    # Filters are per connection: the same criteria for another connection are another filter.
    assert EventFilter(conn_id="a") != EventFilter(conn_id="b")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"content_pattern": "(unclosed"}, "content_pattern is not a valid Python regular expression"),
        ({"content_pattern": 5}, "content_pattern must be a regular expression string"),
        ({"events": ("message.created",)}, "unknown event names"),
        ({"events": ()}, "events must not be empty"),
        ({"message_types": ("incomming",)}, "message_types has unknown types"),
        ({"conversation_id": "7"}, "conversation_id must be an integer"),
        ({"account_id": 0}, "account_id must be >= 1"),
        ({"after_message_id": -1}, "after_message_id must be >= 0"),
        ({"after_message_id": True}, "after_message_id must be an integer"),
        ({"include_private": "no"}, "include_private must be true or false"),
        ({"conn_id": ""}, "conn_id must be an Airflow connection id"),
        ({"conn_id": None}, "conn_id must be an Airflow connection id"),
        (
            {"events": ("conversation_status_changed",), "after_message_id": 5},
            "after_message_id is a message id",
        ),
    ],
)
def test_bad_filters_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EventFilter(**kwargs)


def test_from_dict_refuses_unknown_keys():
    with pytest.raises(ValueError, match=r"Unknown event filter keys \['conversation'\]"):
        EventFilter.from_dict({"conversation": 7})


def test_matches_on_payloads():
    flt = EventFilter(account_id=1, conversation_id=7, after_message_id=100, content_pattern="yes")
    assert flt.matches(message_payload(101, content="oh yes"))
    assert not flt.matches(message_payload(100, content="oh yes"))
    assert not flt.matches(message_payload(101, content="no"))
    assert not flt.matches(message_payload(101, content="yes", account_id=2))
    assert not flt.matches(message_payload(101, content="yes", conversation_id=8))
    assert not flt.matches(message_payload(101, content="yes", message_type="outgoing"))
    assert not flt.matches({"event": "message_created"})


def test_api_messages_are_reshaped_like_webhooks():
    rest = {
        "id": 321,
        "content": "Sure!",
        "inbox_id": 1,
        "conversation_id": 7,
        "message_type": 0,
        "content_type": "text",
        "status": "sent",
        "content_attributes": {},
        "created_at": 1780000000,
        "private": False,
        "source_id": None,
        "sender": {"id": 55, "name": "Ada", "type": "contact"},
    }
    payload = message_event_from_api(rest, account_id=1)
    assert payload["event"] == "message_created"
    assert payload["message_type"] == "incoming"
    assert payload["conversation"] == {"id": 7}
    assert payload["inbox"] == {"id": 1}
    assert payload["account"] == {"id": 1}
    # As the server renders times in webhooks (events.build.iso8601): milliseconds, UTC.
    assert payload["created_at"] == "2026-05-28T20:26:40.000Z"
    assert CONVERSATION_7.matches(payload)
    # The receiver would index it the same way.
    fields = read_event(payload)
    assert (fields.message_type, fields.sender_type, fields.conversation_id, fields.message_id) == (
        "incoming",
        "contact",
        7,
        321,
    )
    note = message_event_from_api({**rest, "message_type": 1, "private": True}, account_id=1)
    assert note["message_type"] == "outgoing"
    assert not EventFilter(account_id=1, conversation_id=7, message_types=("outgoing",)).matches(note)
