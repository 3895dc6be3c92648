"""The receiver's batch insert writes its own SQL: its rows must read back exactly like SQLAlchemy's."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import select

from neoleads_provider.events import EventFields
from neoleads_provider.store.engine import get_engine
from neoleads_provider.store.migrate import migrate
from neoleads_provider.store.repository import (
    _INSERT_COLUMNS,
    NewEvent,
    _insert_one_by_one,
    get_event,
    insert_events,
)
from neoleads_provider.store.schema import webhook_events

if TYPE_CHECKING:
    from sqlalchemy import Engine

pytestmark = pytest.mark.usefixtures("fresh_engines")

FULL = EventFields(
    event="message_created",
    account_id=2**62,
    inbox_id=0,
    conversation_id=-5,
    message_id=123,
    contact_id=7,
    message_type="incoming",
    private=False,
    sender_type="contact",
)
EMPTY = EventFields(event="contact_created")
PRIVATE = dataclasses.replace(FULL, private=True, message_type="outgoing", sender_type="user")
BODIES = [
    '{"event":"message_created","content":"plain"}',
    '{"event":"message_created","content":"caf\u00e9 \\u00e9 \U0001f600 \\\\ \\" % %s ? \' ;"}',
    '{"event":"message_created","content":"\\u0000 escaped, not raw"}',
    "{" + '"x":"' + "y" * 300_000 + '"}',
]
TIMES = [
    datetime(2026, 5, 1, 12, 0, tzinfo=UTC),
    datetime(2026, 5, 1, 12, 0, 0, 1, tzinfo=UTC),
    datetime(2026, 5, 1, 14, 30, 15, 999_999, tzinfo=timezone(timedelta(hours=2, minutes=30))),
    datetime(2026, 5, 1, 9, 0, 7),  # naive: taken to be UTC
]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request, tmp_path) -> Engine:
    url = (
        f"sqlite:///{tmp_path / 'events.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("pg_schema_url")
    )
    engine = get_engine(url)
    migrate(engine)
    return engine


def cases() -> list[tuple[EventFields, str, datetime]]:
    return [
        (fields, body, received_at)
        for fields, body, received_at in zip([FULL, EMPTY, PRIVATE, FULL], BODIES, TIMES, strict=True)
    ]


def test_the_insert_lists_every_column_but_the_id() -> None:
    assert [name for name, _ in _INSERT_COLUMNS] == [c.name for c in webhook_events.columns if c.name != "id"]


def test_batch_rows_read_back_like_rows_inserted_through_sqlalchemy(engine: Engine) -> None:
    with engine.begin() as conn:
        # The SQLAlchemy path: a compiled INSERT per row (what other databases get).
        single = _insert_one_by_one(
            conn,
            [
                NewEvent("c", f"one-{n}", f"key-one-{n}", fields, body, received_at)
                for n, (fields, body, received_at) in enumerate(cases())
            ],
        )
        batch = insert_events(
            conn,
            [
                NewEvent("c", f"many-{n}", f"key-many-{n}", fields, body, received_at)
                for n, (fields, body, received_at) in enumerate(cases())
            ],
        )
    assert len(single) == len(cases())
    assert all(inserted for _, inserted in batch)
    with engine.connect() as conn:
        for n, (fields, body, received_at) in enumerate(cases()):
            one = get_event(conn, conn_id="c", delivery_id=f"one-{n}")
            many = get_event(conn, conn_id="c", delivery_id=f"many-{n}")
            assert one is not None
            assert many is not None
            assert one.id == single[("c", f"one-{n}")]
            assert many.id == batch[n][0]
            assert many.event_key == f"key-many-{n}"
            assert (
                dataclasses.replace(many, id=one.id, delivery_id=one.delivery_id, event_key=one.event_key)
                == one
            )
            assert many.body == body
            assert many.received_at == received_at.replace(tzinfo=received_at.tzinfo or UTC)
            assert many.received_at.tzinfo is not None
        # The raw column values too, not only what the record type makes of them.
        rows = conn.execute(select(webhook_events).order_by(webhook_events.c.delivery_id)).mappings().all()
        # What SQL filters compare: the stored text itself on SQLite, before any type conversion.
        stored_times = dict(
            conn.exec_driver_sql(
                f"SELECT delivery_id, CAST(received_at AS TEXT) FROM {webhook_events.name}"
            ).all()
        )
    for n in range(len(cases())):
        assert stored_times[f"many-{n}"] == stored_times[f"one-{n}"]
    by_id = {row["delivery_id"]: dict(row) for row in rows}
    for n in range(len(cases())):
        one, many = by_id[f"one-{n}"], by_id[f"many-{n}"]
        assert {k: v for k, v in many.items() if k not in ("id", "delivery_id", "event_key")} == {
            k: v for k, v in one.items() if k not in ("id", "delivery_id", "event_key")
        }


_WRITER = """
import json, sys
from datetime import UTC, datetime
from neoleads_provider.events import EventFields
from neoleads_provider.store.engine import get_engine
from neoleads_provider.store.repository import NewEvent, insert_events

url, name = sys.argv[1], sys.argv[2]
engine = get_engine(url)
fields = EventFields(event="message_created")
results = []
for batch in range(40):
    # Each batch: new deliveries, one repeated inside the batch, and one the other writer also sends.
    ids = [f"{name}-{batch}-{n}" for n in range(8)] + [f"{name}-{batch}-0", f"shared-{batch}"]
    events = [NewEvent("c", d, "key-" + d, fields, "{}", datetime.now(UTC)) for d in ids]
    with engine.begin() as conn:
        outcome = insert_events(conn, events)
    results += [[d, event_id, inserted] for d, (event_id, inserted) in zip(ids, outcome)]
print(json.dumps(results))
"""


def test_concurrent_writers_in_two_processes_get_their_own_rows_ids(tmp_path) -> None:
    """SQLite reads a batch's new ids back as the table's newest rows: another process writing to the same
    file at the same moment must never hand one writer the other's ids."""
    import json
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'events.db'}"
    migrate(get_engine(url))
    writers = [
        subprocess.Popen([sys.executable, "-c", _WRITER, url, name], stdout=subprocess.PIPE, text=True)
        for name in ("a", "b")
    ]
    outputs = [json.loads(writer.communicate(timeout=120)[0]) for writer in writers]
    assert all(writer.returncode == 0 for writer in writers)
    with get_engine(url).connect() as conn:
        stored = dict(conn.execute(select(webhook_events.c.delivery_id, webhook_events.c.id)).all())
    first_claims: dict[str, int] = {}
    for results in outputs:
        for delivery_id, event_id, inserted in results:
            assert stored[delivery_id] == event_id, delivery_id
            if inserted:
                assert delivery_id not in first_claims, f"{delivery_id} inserted twice"
                first_claims[delivery_id] = event_id
    # Every stored row was reported inserted by exactly one writer; the in-batch repeats never were.
    assert first_claims == stored
    assert len(stored) == 2 * 40 * 8 + 40
