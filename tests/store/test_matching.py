"""EventFilter semantics and the store query, on a real SQLite file and on PostgreSQL."""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import create_engine, event, text

from neoleads_provider.store import matching
from neoleads_provider.store.matching import (
    EventFilter,
    find_first_match,
    find_matches,
    webhook_payload_from_api_message,
)
from neoleads_provider.store.migrate import migrate
from neoleads_provider.store.schema import webhook_events
from neoleads_provider.webhooks.payload import extract_event_fields
from tests._helpers import AGENT, BOT, CONTACT, message_payload, store_payloads

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
    rows = [
        {
            "delivery_id": str(uuid.uuid4()),
            "conn_id": "neoleads_default",
            **extract_event_fields(payload).as_columns(),
            "received_at": now,
            "body": json.dumps(payload),
        }
        for payload in payloads
    ]
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


def test_sql_and_python_agree_on_a_random_mix(engine):
    """``EventFilter.matches`` on the payload and the store query must select the same events."""
    rng = random.Random(20260601)
    payloads: list[dict[str, Any]] = []
    for n in range(160):
        if rng.random() < 0.15:
            payloads.append(status_payload(rng.choice([7, 8]), account_id=rng.choice([1, 2])))
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
    assert _index_name("account_id", "conversation_id", "event", "id") in plan
    assert "SCAN neoleads_webhook_event" not in plan.replace("USING INDEX", "")
    inbox_plan = _explain(sqlite_engine, EventFilter(account_id=1, inbox_id=2), "EXPLAIN QUERY PLAN")
    assert _index_name("account_id", "inbox_id", "event", "id") in inbox_plan


@pytest.mark.postgres
def test_postgresql_query_plan_uses_the_conversation_index(pg_engine):
    bulk_store(
        pg_engine,
        [message_payload(100 + n, conversation_id=n % 200, inbox_id=1 + n % 20) for n in range(4000)],
    )
    with pg_engine.begin() as conn:
        conn.execute(text("ANALYZE neoleads_webhook_event"))
    plan = _explain(pg_engine, EventFilter(account_id=1, conversation_id=7, after_message_id=5), "EXPLAIN")
    assert _index_name("account_id", "conversation_id", "event", "id") in plan
    assert "Seq Scan" not in plan
    inbox_plan = _explain(pg_engine, EventFilter(account_id=1, inbox_id=3, after_message_id=5), "EXPLAIN")
    assert _index_name("account_id", "inbox_id", "event", "id") in inbox_plan
    assert "Seq Scan" not in inbox_plan


# -- the filter itself --------------------------------------------------------------------------------


def test_filter_round_trips_through_a_dict():
    flt = EventFilter(
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
    assert data["events"] == ["message_created", "message_updated"]
    assert data["message_types"] == ["incoming", "template"]
    assert data["sender_types"] == ["contact"]
    assert "_pattern" not in data
    again = EventFilter.from_dict(data)
    assert again == flt
    assert hash(again) == hash(flt)
    assert EventFilter.from_dict(EventFilter().to_dict()) == EventFilter()


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
    payload = webhook_payload_from_api_message(rest, account_id=1)
    assert payload["event"] == "message_created"
    assert payload["message_type"] == "incoming"
    assert payload["conversation"] == {"id": 7}
    assert payload["inbox"] == {"id": 1}
    assert payload["account"] == {"id": 1}
    assert payload["created_at"] == "2026-05-28T20:26:40Z"
    assert CONVERSATION_7.matches(payload)
    # The receiver would index it the same way.
    fields = extract_event_fields(payload)
    assert (fields.message_type, fields.sender_type, fields.conversation_id, fields.message_id) == (
        "incoming",
        "contact",
        7,
        321,
    )
    note = webhook_payload_from_api_message({**rest, "message_type": 1, "private": True}, account_id=1)
    assert note["message_type"] == "outgoing"
    assert not EventFilter(account_id=1, conversation_id=7, message_types=("outgoing",)).matches(note)
