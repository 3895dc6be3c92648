"""Schema version 3 (events scoped to connections, one row per logical event) upgrades a version-2 store.

The version-2 store is built by hand here, as version 2 of ``store/schema.py`` defined it, on a SQLite file
and on PostgreSQL.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    insert,
    inspect,
    select,
)

from neoleads_provider.events import EventFilter, read_event
from neoleads_provider.events.fields import COLUMN_NAMES
from neoleads_provider.store.engine import get_engine
from neoleads_provider.store.matching import find_first_match
from neoleads_provider.store.migrate import check_schema, current_version, migrate
from neoleads_provider.store.repository import get_event, insert_event
from neoleads_provider.store.schema import (
    NAMING_CONVENTION,
    SCHEMA_VERSION,
    schema_versions,
    send_records,
    watch_cursors,
    webhook_events,
)
from neoleads_provider.store.sends import SendKey, load_records, mark_sent
from tests._helpers import message_payload, new_event

if TYPE_CHECKING:
    from sqlalchemy import Engine

pytestmark = pytest.mark.usefixtures("fresh_engines")

T0 = datetime(2026, 4, 1, 9, 30, tzinfo=UTC)
TABLE = "neoleads_webhook_event"
SEND_KEY = SendKey(dag_id="outreach", run_id="manual__2026-04-01", task_id="send")

# Version 2 of neoleads_webhook_event: no event_key, a delivery id unique across connections, indexes
# led by the account.
v2_metadata = MetaData(naming_convention=NAMING_CONVENTION)
v2_events = Table(
    TABLE,
    v2_metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
    Column("delivery_id", String(128), nullable=False, unique=True),
    Column("conn_id", String(250), nullable=False),
    Column("event", String(64), nullable=False),
    Column("account_id", BigInteger),
    Column("inbox_id", BigInteger),
    Column("conversation_id", BigInteger),
    Column("message_id", BigInteger),
    Column("contact_id", BigInteger),
    Column("message_type", String(16)),
    Column("private", Boolean),
    Column("sender_type", String(32)),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("body", Text, nullable=False),
    Index(None, "account_id", "conversation_id", "event", "id"),
    Index(None, "account_id", "inbox_id", "event", "id"),
    Index(None, "received_at"),
)
V2_INDEXES = {
    "ix_neoleads_webhook_event_account_id_conversation_id_event_id",
    "ix_neoleads_webhook_event_account_id_inbox_id_event_id",
}
V3_INDEXES = {
    "ix_neoleads_webhook_event_conn_id_conversation_id_event_id",
    "ix_neoleads_webhook_event_conn_id_inbox_id_event_id",
    "ix_neoleads_webhook_event_received_at",
}

# (conn_id, delivery_id, payload) of the rows stored before the upgrade.
OLD_ROWS: list[tuple[str, str, dict[str, Any]]] = [
    ("neoleads_default", "d-1", message_payload(100, content="before the upgrade")),
    ("neoleads_default", "d-2", message_payload(101, message_type="outgoing", content="our question")),
    ("neoleads_sales", "d-3", message_payload(102, conversation_id=9, content="another connection")),
    (
        "neoleads_sales",
        "d-4",
        {"event": "conversation_status_changed", "id": 9, "inbox_id": 1, "account": {"id": 1}},
    ),
]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def v2_engine(request, tmp_path) -> Engine:
    """A store at schema version 2 holding :data:`OLD_ROWS` and one send record."""
    url = (
        f"sqlite:///{tmp_path / 'events.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("pg_schema_url")
    )
    engine = get_engine(url)
    with engine.begin() as conn:
        v2_events.create(conn)
        send_records.create(conn)
        schema_versions.create(conn)
        conn.execute(insert(schema_versions).values(version=2, applied_at=T0))
        for number, (conn_id, delivery_id, payload) in enumerate(OLD_ROWS):
            fields = read_event(payload)
            conn.execute(
                insert(v2_events).values(
                    conn_id=conn_id,
                    delivery_id=delivery_id,
                    **{name: getattr(fields, name) for name in COLUMN_NAMES},
                    received_at=T0 + timedelta(minutes=number),
                    body=json.dumps(payload),
                )
            )
        mark_sent(
            conn,
            SEND_KEY,
            "email:a@example.com",
            source_id="s-1",
            contact_id=5,
            conversation_id=7,
            message_id=77,
        )
    return engine


def event_rows(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [
            dict(row) for row in conn.execute(select(webhook_events).order_by(webhook_events.c.id)).mappings()
        ]


def test_the_hand_built_store_is_version_2(v2_engine: Engine) -> None:
    assert current_version(v2_engine) == 2
    with v2_engine.connect() as conn:
        inspector = inspect(conn)
        assert "event_key" not in {column["name"] for column in inspector.get_columns(TABLE)}
        assert {index["name"] for index in inspector.get_indexes(TABLE)} >= V2_INDEXES


def test_migrate_upgrades_a_version_2_store_keeping_its_rows(v2_engine: Engine) -> None:
    with v2_engine.connect() as conn:
        before = [dict(row) for row in conn.execute(select(v2_events).order_by(v2_events.c.id)).mappings()]
    assert len(before) == len(OLD_ROWS)

    assert migrate(v2_engine) == SCHEMA_VERSION == 3
    assert current_version(v2_engine) == 3
    assert check_schema(v2_engine) == 3

    after = event_rows(v2_engine)
    # Every row kept with its id and values; its key is its delivery id's, so no two old rows merge.
    assert [{k: v for k, v in row.items() if k != "event_key"} for row in after] == [
        {k: v for k, v in row.items()} for row in before
    ]
    assert [row["event_key"] for row in after] == [f"legacy:{row['delivery_id']}" for row in before]
    with v2_engine.connect() as conn:
        old = get_event(conn, conn_id="neoleads_default", delivery_id="d-1")
        assert old is not None
        assert (old.id, old.event_key, old.payload["content"]) == (
            before[0]["id"],
            "legacy:d-1",
            "before the upgrade",
        )
        assert old.received_at == T0
        # And the migrated rows are found by the connection-scoped query.
        found = find_first_match(conn, EventFilter(conn_id="neoleads_sales", account_id=1, conversation_id=9))
        assert found is not None
        assert found.delivery_id == "d-3"
        assert find_first_match(conn, EventFilter(conn_id="neoleads_default", conversation_id=9)) is None
        # The send records table is left as it was.
        assert load_records(conn, SEND_KEY)["email:a@example.com"].message_id == 77

    # Running it again changes nothing.
    assert migrate(v2_engine) == 3
    assert event_rows(v2_engine) == after


def test_after_the_upgrade_a_delivery_id_is_unique_per_connection(v2_engine: Engine) -> None:
    migrate(v2_engine)
    old_ids = [row["id"] for row in event_rows(v2_engine)]
    with v2_engine.begin() as conn:
        # Refused globally in version 2: d-1 of neoleads_default, now received for another connection.
        reused_id, inserted = insert_event(
            conn,
            new_event(message_payload(200, content="elsewhere"), conn_id="neoleads_other", delivery_id="d-1"),
        )
        assert inserted
        # The same delivery id on its own connection is still the stored event.
        assert insert_event(
            conn, new_event(message_payload(201), conn_id="neoleads_default", delivery_id="d-1")
        ) == (old_ids[0], False)
        # A copy of an old event under a new delivery id is not recognised (its key was not known then).
        copy_id, copy_inserted = insert_event(conn, new_event(OLD_ROWS[0][2], delivery_id="d-1-again"))
        assert copy_inserted
        # A new copy of that copy is.
        assert insert_event(conn, new_event(OLD_ROWS[0][2], delivery_id="d-1-third")) == (copy_id, False)
    # New rows get ids after the old ones (sensors' watermarks are row ids).
    assert min(reused_id, copy_id) > max(old_ids)
    with v2_engine.connect() as conn:
        ours = get_event(conn, conn_id="neoleads_default", delivery_id="d-1")
        theirs = get_event(conn, conn_id="neoleads_other", delivery_id="d-1")
    assert ours is not None
    assert theirs is not None
    assert (ours.id, theirs.id) == (old_ids[0], reused_id)
    assert theirs.payload["content"] == "elsewhere"


def test_the_upgrade_replaces_the_indexes_and_constraints(v2_engine: Engine) -> None:
    migrate(v2_engine)
    with v2_engine.connect() as conn:
        inspector = inspect(conn)
        indexes = {index["name"]: index for index in inspector.get_indexes(TABLE)}
        assert set(indexes) >= V3_INDEXES
        assert not V2_INDEXES & set(indexes)
        assert indexes["ix_neoleads_webhook_event_conn_id_conversation_id_event_id"]["column_names"] == [
            "conn_id",
            "conversation_id",
            "event",
            "id",
        ]
        assert indexes["ix_neoleads_webhook_event_conn_id_inbox_id_event_id"]["column_names"] == [
            "conn_id",
            "inbox_id",
            "event",
            "id",
        ]
        uniques = {
            tuple(constraint["column_names"]) for constraint in inspector.get_unique_constraints(TABLE)
        }
        assert ("conn_id", "delivery_id") in uniques
        assert ("conn_id", "event_key") in uniques
        assert ("delivery_id",) not in uniques
        columns = {column["name"]: column for column in inspector.get_columns(TABLE)}
        assert columns["event_key"]["nullable"] is False
        # The asset watchers' cursor table came with version 3.
        assert inspector.has_table(watch_cursors.name)
        # What version 3 creates from scratch has the same indexes.
        assert {index.name for index in webhook_events.indexes} == V3_INDEXES


@pytest.mark.postgres
def test_after_a_postgresql_upgrade_new_stores_still_have_their_unique_keys(
    pg_schema_url: str, tmp_path
) -> None:
    # One process (an API server with the plugin, a test run) upgrades a version-2 store and later creates
    # another store: that one must refuse a repeated delivery id and a second copy of an event too.
    engine = get_engine(pg_schema_url)
    with engine.begin() as conn:
        v2_events.create(conn)
        schema_versions.create(conn)
        conn.execute(insert(schema_versions).values(version=2, applied_at=T0))
    assert migrate(engine) == 3
    fresh = get_engine(f"sqlite:///{tmp_path / 'fresh.db'}")
    migrate(fresh)
    with fresh.connect() as conn:
        uniques = {tuple(c["column_names"]) for c in inspect(conn).get_unique_constraints(TABLE)}
    assert uniques == {("conn_id", "delivery_id"), ("conn_id", "event_key")}
    payload = message_payload(500)
    with fresh.begin() as conn:
        first_id, inserted = insert_event(conn, new_event(payload, delivery_id="once"))
        assert inserted
        assert insert_event(conn, new_event(payload, delivery_id="once")) == (first_id, False)
        assert insert_event(conn, new_event(payload, delivery_id="twice")) == (first_id, False)
