"""Engine settings, migrations and the repository queries, on a SQLite file and on PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import create_engine, delete, insert, select, text

from neoleads_provider.events import EventFields
from neoleads_provider.store import engine as engine_module
from neoleads_provider.store.engine import dispose_engines, get_engine, get_events_db_url, safe_url
from neoleads_provider.store.errors import EventStoreSchemaError
from neoleads_provider.store.migrate import check_schema, current_version, migrate
from neoleads_provider.store.repository import (
    NewEvent,
    count_older_than,
    get_event,
    insert_event,
    insert_events,
    last_received_at,
    list_events,
    purge_older_than,
)
from neoleads_provider.store.schema import SCHEMA_VERSION, schema_versions, webhook_events
from tests._helpers import message_payload, new_event

if TYPE_CHECKING:
    from sqlalchemy import Engine

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
DEFAULT = "neoleads_default"


pytestmark = pytest.mark.usefixtures("fresh_engines")


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'events.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request) -> str:
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_schema_url")


@pytest.fixture
def engine(db_url: str) -> Engine:
    engine = get_engine(db_url)
    migrate(engine)
    return engine


def fields(event: str = "message_created", **values: object) -> EventFields:
    return EventFields(event=event, **values)  # type: ignore[arg-type]


def new(
    delivery_id: str,
    *,
    conn_id: str = "c",
    event_key: str | None = None,
    event_fields: EventFields | None = None,
    body: str = "{}",
    received_at: datetime = T0,
) -> NewEvent:
    """A row to insert; its event key is its delivery id's unless given (each row a logical event of its own)."""
    return NewEvent(
        conn_id=conn_id,
        delivery_id=delivery_id,
        event_key=event_key or f"key:{delivery_id}",
        fields=event_fields or fields(),
        body=body,
        received_at=received_at,
    )


def add(
    engine: Engine,
    delivery_id: str,
    *,
    received_at: datetime = T0,
    conn_id: str = DEFAULT,
    event_key: str | None = None,
    event_fields: EventFields | None = None,
    body: dict | None = None,
) -> bool:
    with engine.begin() as conn:
        _, inserted = insert_event(
            conn,
            new(
                delivery_id,
                conn_id=conn_id,
                event_key=event_key,
                event_fields=event_fields,
                body=json.dumps(body or {"event": "message_created"}),
                received_at=received_at,
            ),
        )
    return inserted


def rows(engine: Engine) -> list[tuple[str, str, str]]:
    """Every stored row's (conn_id, delivery_id, event_key), oldest first."""
    with engine.connect() as conn:
        table = webhook_events.c
        statement = select(table.conn_id, table.delivery_id, table.event_key).order_by(table.id)
        return [tuple(row) for row in conn.execute(statement)]


# --------------------------------------------------------------------------- engine


def test_default_url_is_a_sqlite_file_in_airflow_home(monkeypatch, airflow_home) -> None:
    monkeypatch.delenv("AIRFLOW__NEOLEADS__EVENTS_DB_URL", raising=False)
    assert get_events_db_url() == f"sqlite:///{airflow_home / 'neoleads_events.db'}"


def test_url_from_airflow_config_env(monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW__NEOLEADS__EVENTS_DB_URL", "  postgresql+psycopg://u:p@db:5432/events  ")
    assert get_events_db_url() == "postgresql+psycopg://u:p@db:5432/events"


def test_one_engine_per_url_per_process(sqlite_url: str, tmp_path) -> None:
    engines: list[Engine] = []
    threads = [threading.Thread(target=lambda: engines.append(get_engine(sqlite_url))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(engine) for engine in engines}) == 1
    assert get_engine(f"sqlite:///{tmp_path / 'other.db'}") is not engines[0]
    dispose_engines()
    assert get_engine(sqlite_url) is not engines[0]


def test_default_engine_uses_the_configured_url(monkeypatch, sqlite_url: str) -> None:
    monkeypatch.setenv("AIRFLOW__NEOLEADS__EVENTS_DB_URL", sqlite_url)
    assert get_engine() is get_engine(sqlite_url)


def test_sqlite_connections_use_wal_busy_timeout_and_normal_sync(sqlite_url: str) -> None:
    with get_engine(sqlite_url).connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == engine_module.SQLITE_BUSY_TIMEOUT_MS
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL


def test_postgresql_url_uses_psycopg3_and_pre_ping() -> None:
    engine = get_engine("postgresql://user:secret-pw@127.0.0.1:1/events")
    assert engine.dialect.driver == "psycopg"
    assert engine.pool._pre_ping is True
    assert "secret-pw" not in safe_url(engine.url)


@pytest.mark.postgres
def test_postgresql_engine_round_trip(pg_schema_url: str) -> None:
    engine = get_engine(pg_schema_url)
    assert engine.pool._pre_ping is True
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar() == 1


# --------------------------------------------------------------------------- migrations


def test_migrate_is_idempotent(db_url: str) -> None:
    engine = get_engine(db_url)
    assert current_version(engine) is None
    assert migrate(engine) == SCHEMA_VERSION
    assert migrate(engine) == SCHEMA_VERSION
    assert current_version(engine) == SCHEMA_VERSION
    with engine.connect() as conn:
        assert conn.execute(select(schema_versions.c.version)).scalars().all() == [SCHEMA_VERSION]
    check_schema(engine)


def test_migrate_keeps_existing_rows(engine: Engine) -> None:
    assert add(engine, "keep-me")
    migrate(engine)
    with engine.connect() as conn:
        assert get_event(conn, conn_id=DEFAULT, delivery_id="keep-me") is not None


def test_migrate_finishes_a_half_created_schema(db_url: str) -> None:
    engine = get_engine(db_url)
    # The table exists but its version row was never written (an interrupted first migration).
    with engine.begin() as conn:
        webhook_events.create(conn)
    assert current_version(engine) is None
    assert migrate(engine) == SCHEMA_VERSION
    check_schema(engine)


def test_concurrent_migrations_from_several_engines(db_url: str) -> None:
    results: list[int] = []
    errors: list[BaseException] = []

    def run() -> None:
        separate = create_engine(get_engine(db_url).url)
        try:
            results.append(migrate(separate))
        except BaseException as exc:
            errors.append(exc)
        finally:
            separate.dispose()

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert results == [SCHEMA_VERSION] * 4


def test_concurrent_migrations_from_several_processes(db_url: str, tmp_path) -> None:
    # Each process imports first and reports ready; then all are released at once, so they really race.
    go = tmp_path / "go"
    code = (
        "import os, sys, time\n"
        "from sqlalchemy import create_engine\n"
        "from neoleads_provider.store.migrate import migrate\n"
        "engine = create_engine(sys.argv[1])\n"
        "print('ready', flush=True)\n"
        "while not os.path.exists(sys.argv[2]):\n"
        "    time.sleep(0.005)\n"
        "print(migrate(engine))\n"
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", code, db_url, str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    for process in processes:
        assert process.stdout is not None
        while process.stdout.readline().strip() != "ready":
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
    go.touch()
    outputs = [process.communicate(timeout=120) for process in processes]
    assert [process.returncode for process in processes] == [0] * 3, [err for _, err in outputs]
    assert [out.strip().splitlines()[-1] for out, _ in outputs] == [str(SCHEMA_VERSION)] * 3
    with get_engine(db_url).connect() as conn:
        assert conn.execute(select(schema_versions.c.version)).scalars().all() == [SCHEMA_VERSION]
    check_schema(get_engine(db_url))


def test_check_schema_on_an_empty_database(db_url: str) -> None:
    with pytest.raises(EventStoreSchemaError, match="neoleads events migrate") as info:
        check_schema(get_engine(db_url))
    assert "has no schema" in str(info.value)


def test_check_schema_on_an_older_schema(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(delete(schema_versions))
        conn.execute(insert(schema_versions).values(version=SCHEMA_VERSION - 1, applied_at=T0))
    with pytest.raises(EventStoreSchemaError, match=r"needs \d+: run `neoleads events migrate`"):
        check_schema(engine)
    assert migrate(engine) == SCHEMA_VERSION
    check_schema(engine)


def test_check_schema_without_the_event_table(engine: Engine) -> None:
    with engine.begin() as conn:
        webhook_events.drop(conn)
    with pytest.raises(EventStoreSchemaError, match="no table 'neoleads_webhook_event'"):
        check_schema(engine)


def test_check_schema_hides_the_password() -> None:
    engine = get_engine("postgresql+psycopg://user:hunter2-pw@127.0.0.1:1/events?connect_timeout=1")
    with pytest.raises(Exception) as info:
        check_schema(engine)
    assert "hunter2-pw" not in str(info.value)


# --------------------------------------------------------------------------- insert / get


def test_insert_then_duplicate(engine: Engine) -> None:
    event_fields = fields(
        account_id=1,
        inbox_id=2,
        conversation_id=3,
        message_id=4,
        contact_id=5,
        message_type="incoming",
        private=False,
        sender_type="contact",
    )
    assert add(engine, "d-1", event_fields=event_fields, body={"event": "message_created", "id": 4})
    assert not add(
        engine,
        "d-1",
        event_key="another-key",
        event_fields=fields("conversation_created"),
        body={"event": "other"},
    )
    with engine.connect() as conn:
        stored = get_event(conn, conn_id=DEFAULT, delivery_id="d-1")
        assert stored is not None
        assert get_event(conn, stored.id) == stored
        assert conn.execute(select(webhook_events.c.id)).scalars().all() == [stored.id]
    # The first delivery wins; the duplicate changed nothing.
    assert stored.event == "message_created"
    assert stored.payload == {"event": "message_created", "id": 4}
    assert (
        stored.account_id,
        stored.inbox_id,
        stored.conversation_id,
        stored.message_id,
        stored.contact_id,
    ) == (
        1,
        2,
        3,
        4,
        5,
    )
    assert (stored.message_type, stored.private, stored.sender_type) == ("incoming", False, "contact")
    assert stored.conn_id == DEFAULT
    assert stored.event_key == "key:d-1"


def test_duplicate_does_not_abort_the_transaction(engine: Engine) -> None:
    with engine.begin() as conn:
        first_id, inserted = insert_event(conn, new("a"))
        assert inserted
        assert insert_event(conn, new("a")) == (first_id, False)
        # On PostgreSQL a failed INSERT would poison the rest of the transaction; ON CONFLICT does not.
        assert insert_event(conn, new("b"))[1]
        assert get_event(conn, conn_id="c", delivery_id="a") is not None
    with engine.connect() as conn:
        assert {event.delivery_id for event in list_events(conn)} == {"a", "b"}


def test_a_second_copy_of_a_logical_event_is_not_stored_again(engine: Engine) -> None:
    # The same message_created reaches the receiver through the account webhook and the inbox's
    # webhook_url, each copy with its own delivery id (and a replay may even change other bytes).
    payload = message_payload(101, content="yes please")
    first, second = (
        new_event(payload, delivery_id="path-a"),
        new_event({**payload, "content": "replayed"}, delivery_id="path-b"),
    )
    assert first.event_key == second.event_key == "message_created:1:101"
    with engine.begin() as conn:
        [(first_id, inserted)] = insert_events(conn, [first])
    assert inserted
    with engine.begin() as conn:
        assert insert_events(conn, [second]) == [(first_id, False)]
        assert insert_event(conn, second) == (first_id, False)
    assert rows(engine) == [(DEFAULT, "path-a", first.event_key)]
    with engine.connect() as conn:
        stored = get_event(conn, first_id)
        assert stored is not None
        assert stored.payload["content"] == "yes please"  # the first copy wins
        assert get_event(conn, conn_id=DEFAULT, delivery_id="path-b") is None


def test_two_copies_of_a_logical_event_in_one_batch_store_one_row(engine: Engine) -> None:
    payload = message_payload(202)
    other = new_event(message_payload(203))
    copies = [new_event(payload, delivery_id="copy-1"), other, new_event(payload, delivery_id="copy-2")]
    with engine.begin() as conn:
        outcomes = insert_events(conn, copies)
    (first_id, first_inserted), (other_id, other_inserted), second = outcomes
    assert (first_inserted, other_inserted) == (True, True)
    assert second == (first_id, False)
    assert other_id != first_id
    assert rows(engine) == [
        (DEFAULT, "copy-1", copies[0].event_key),
        (DEFAULT, other.delivery_id, other.event_key),
    ]


def test_the_same_delivery_id_twice_in_one_batch(engine: Engine) -> None:
    with engine.begin() as conn:
        (first_id, inserted), again = insert_events(conn, [new("d"), new("d")])
        assert inserted
        assert again == (first_id, False)
        # The same delivery id with another body is a duplicate of the first too: never an error, which
        # would refuse the whole batch (other connections' deliveries included).
        (e_id, e_inserted), e_again = insert_events(conn, [new("e"), new("e", event_key="other")])
        assert e_inserted
        assert e_again == (e_id, False)
    assert [delivery_id for _, delivery_id, _ in rows(engine)] == ["d", "e"]


def test_a_delivery_id_is_unique_per_connection_not_globally(engine: Engine) -> None:
    # Deliberately changed in schema version 3: one connection's sender cannot claim (and so shadow) a
    # delivery id another connection will receive.
    payload = message_payload(303)
    with engine.begin() as conn:
        one = insert_event(conn, new_event(payload, conn_id="one", delivery_id="same-id"))
        two = insert_event(conn, new_event(payload, conn_id="two", delivery_id="same-id"))
    assert one[1] is True
    assert two[1] is True
    assert one[0] != two[0]
    with engine.begin() as conn:
        # A copy on each connection is a duplicate of that connection's row only.
        assert insert_event(conn, new_event(payload, conn_id="two", delivery_id="same-id")) == (two[0], False)
        assert insert_event(conn, new_event(payload, conn_id="one", delivery_id="same-id")) == (one[0], False)
    assert sorted((conn_id, delivery_id) for conn_id, delivery_id, _ in rows(engine)) == [
        ("one", "same-id"),
        ("two", "same-id"),
    ]


def test_a_delivery_id_on_two_connections_in_one_batch(engine: Engine) -> None:
    # The receiver's batches mix connections; a delivery id without X-Chatwoot-Delivery is the body's
    # digest, so two connections receiving the same body in one batch share it.
    payload = message_payload(303)
    with engine.begin() as conn:
        one = insert_event(conn, new_event(payload, conn_id="one", delivery_id="same-id"))
        two = insert_event(conn, new_event(payload, conn_id="two", delivery_id="same-id"))
    with engine.begin() as conn:
        batch = insert_events(
            conn,
            [
                new_event(message_payload(304), conn_id="one", delivery_id="batch-id"),
                new_event(message_payload(304), conn_id="two", delivery_id="batch-id"),
                new_event(payload, conn_id="two", delivery_id="same-id"),
                new_event(payload, conn_id="one", delivery_id="same-id"),
            ],
        )
    assert [inserted for _, inserted in batch] == [True, True, False, False]
    assert batch[0][0] != batch[1][0]
    assert batch[2] == (two[0], False)
    assert batch[3] == (one[0], False)
    with engine.connect() as conn:
        # Each new row's id is its own connection's row.
        for (event_id, _), conn_id in zip(batch[:2], ("one", "two"), strict=True):
            stored = get_event(conn, event_id)
            assert stored is not None
            assert (stored.conn_id, stored.delivery_id) == (conn_id, "batch-id")
    assert sorted((conn_id, delivery_id) for conn_id, delivery_id, _ in rows(engine)) == [
        ("one", "batch-id"),
        ("one", "same-id"),
        ("two", "batch-id"),
        ("two", "same-id"),
    ]


def test_uncommitted_insert_is_not_visible_after_rollback(engine: Engine) -> None:
    with engine.connect() as conn:
        with conn.begin() as transaction:
            insert_event(conn, new("gone"))
            transaction.rollback()
        assert get_event(conn, conn_id="c", delivery_id="gone") is None


def test_received_at_round_trips_as_aware_utc(engine: Engine) -> None:
    local = datetime(2026, 5, 1, 14, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2)))
    add(engine, "tz", received_at=local)
    add(engine, "naive", received_at=datetime(2026, 5, 1, 8, 0))
    with engine.connect() as conn:
        stored = get_event(conn, conn_id=DEFAULT, delivery_id="tz")
        naive = get_event(conn, conn_id=DEFAULT, delivery_id="naive")
    assert stored is not None
    assert naive is not None
    assert stored.received_at == local
    assert stored.received_at.utcoffset() == timedelta(0)
    assert naive.received_at == datetime(2026, 5, 1, 8, 0, tzinfo=UTC)


def test_get_event_missing_and_bad_arguments(engine: Engine) -> None:
    with engine.connect() as conn:
        assert get_event(conn, 999) is None
        assert get_event(conn, conn_id=DEFAULT, delivery_id="nope") is None
        with pytest.raises(ValueError, match="exactly one"):
            get_event(conn)
        with pytest.raises(ValueError, match="exactly one"):
            get_event(conn, 1, delivery_id="x")
        # Delivery ids are unique per connection only: a lookup by one must say which connection.
        with pytest.raises(ValueError, match="pass conn_id"):
            get_event(conn, delivery_id="x")


def test_get_event_is_scoped_to_its_connection(engine: Engine) -> None:
    add(engine, "shared", conn_id="one", body={"event": "message_created", "who": "one"})
    add(engine, "shared", conn_id="two", body={"event": "message_created", "who": "two"})
    with engine.connect() as conn:
        one = get_event(conn, conn_id="one", delivery_id="shared")
        two = get_event(conn, conn_id="two", delivery_id="shared")
        assert one is not None
        assert two is not None
        assert (one.payload["who"], two.payload["who"]) == ("one", "two")
        assert get_event(conn, conn_id="three", delivery_id="shared") is None
        # By id, conn_id is an extra condition.
        assert get_event(conn, one.id, conn_id="one") == one
        assert get_event(conn, one.id, conn_id="two") is None
        assert get_event(conn, one.id) == one


def test_to_xcom_is_json_safe(engine: Engine) -> None:
    add(
        engine,
        "x",
        event_fields=fields(conversation_id=3),
        body={"event": "message_created", "content": "hé"},
    )
    with engine.connect() as conn:
        stored = get_event(conn, conn_id=DEFAULT, delivery_id="x")
    assert stored is not None
    xcom = json.loads(json.dumps(stored.to_xcom()))
    assert xcom["conn_id"] == DEFAULT
    assert xcom["delivery_id"] == "x"
    assert xcom["conversation_id"] == 3
    assert xcom["payload"]["content"] == "hé"
    assert xcom["received_at"].startswith("2026-05-01T12:00:00")


def test_to_xcom_neutralises_text_the_metadata_database_cannot_hold(engine: Engine) -> None:
    # The receiver now refuses such bodies; a row stored before it did must still reach a DAG.
    with engine.begin() as conn:
        insert_event(conn, new("nul", body='{"event":"message_created","content":"a\\u0000b \\ud800"}'))
    with engine.connect() as conn:
        stored = get_event(conn, conn_id="c", delivery_id="nul")
    assert stored is not None
    assert stored.payload["content"] == "a\x00b \ud800"
    xcom = stored.to_xcom()
    assert xcom["payload"]["content"] == "a\ufffdb \ufffd"
    json.dumps(xcom).encode("utf-8")


# --------------------------------------------------------------------------- list


def test_list_events_newest_first_with_filters(engine: Engine) -> None:
    add(engine, "1", received_at=T0, event_fields=fields(conversation_id=1))
    add(
        engine,
        "2",
        received_at=T0 + timedelta(minutes=1),
        event_fields=fields("conversation_created", conversation_id=1),
    )
    add(
        engine,
        "3",
        received_at=T0 + timedelta(minutes=2),
        event_fields=fields(conversation_id=2),
        conn_id="other",
    )
    add(engine, "4", received_at=T0 + timedelta(minutes=3), event_fields=fields(conversation_id=1))
    with engine.connect() as conn:
        assert [e.delivery_id for e in list_events(conn)] == ["4", "3", "2", "1"]
        assert [e.delivery_id for e in list_events(conn, limit=2)] == ["4", "3"]
        assert [e.delivery_id for e in list_events(conn, conn_id="other")] == ["3"]
        assert [e.delivery_id for e in list_events(conn, event="message_created")] == ["4", "3", "1"]
        assert [e.delivery_id for e in list_events(conn, conversation_id=1)] == ["4", "2", "1"]
        assert [e.delivery_id for e in list_events(conn, since=T0 + timedelta(minutes=2))] == ["4", "3"]
        assert [
            e.delivery_id
            for e in list_events(
                conn, event="message_created", conversation_id=1, since=T0 + timedelta(seconds=1)
            )
        ] == ["4"]
        # An aware `since` in another zone means the same instant.
        since_local = (T0 + timedelta(minutes=2)).astimezone(timezone(timedelta(hours=-5)))
        assert [e.delivery_id for e in list_events(conn, since=since_local)] == ["4", "3"]
        assert list_events(conn, conn_id="nobody") == []


@pytest.mark.parametrize("limit", [0, -1, 10_001])
def test_list_events_limit_is_checked(engine: Engine, limit: int) -> None:
    with engine.connect() as conn, pytest.raises(ValueError, match="limit"):
        list_events(conn, limit=limit)


# --------------------------------------------------------------------------- purge / last_received_at


def test_purge_older_than_in_batches(engine: Engine) -> None:
    for minute in range(10):
        add(engine, f"d{minute}", received_at=T0 + timedelta(minutes=minute))
    cutoff = T0 + timedelta(minutes=7)
    with engine.connect() as conn:
        assert count_older_than(conn, cutoff) == 7
    with engine.begin() as conn:
        assert purge_older_than(conn, cutoff, batch_size=3, max_batches=1) == 3
    with engine.begin() as conn:
        assert purge_older_than(conn, cutoff, batch_size=3) == 4
    with engine.begin() as conn:
        assert purge_older_than(conn, cutoff, batch_size=3) == 0
    with engine.connect() as conn:
        assert count_older_than(conn, cutoff) == 0
        assert sorted(e.delivery_id for e in list_events(conn)) == ["d7", "d8", "d9"]


def test_purge_cutoff_is_exclusive_and_zone_aware(engine: Engine) -> None:
    add(engine, "at-cutoff", received_at=T0)
    add(engine, "before", received_at=T0 - timedelta(microseconds=1000))
    with engine.begin() as conn:
        assert purge_older_than(conn, T0.astimezone(timezone(timedelta(hours=3)))) == 1
    with engine.connect() as conn:
        assert [e.delivery_id for e in list_events(conn)] == ["at-cutoff"]


def test_purge_rejects_a_bad_batch_size(engine: Engine) -> None:
    with engine.begin() as conn, pytest.raises(ValueError, match="batch_size"):
        purge_older_than(conn, T0, batch_size=0)


def test_purge_is_rolled_back_with_its_transaction(engine: Engine) -> None:
    add(engine, "old", received_at=T0)
    with engine.connect() as conn:
        with conn.begin() as transaction:
            assert purge_older_than(conn, T0 + timedelta(days=1)) == 1
            transaction.rollback()
        assert get_event(conn, conn_id=DEFAULT, delivery_id="old") is not None


def test_last_received_at(engine: Engine) -> None:
    with engine.connect() as conn:
        assert last_received_at(conn) is None
    add(engine, "a", received_at=T0, conn_id="one")
    add(engine, "b", received_at=T0 + timedelta(hours=1), conn_id="two")
    with engine.connect() as conn:
        assert last_received_at(conn) == T0 + timedelta(hours=1)
        assert last_received_at(conn, "one") == T0
        assert last_received_at(conn, "one").tzinfo is not None
        assert last_received_at(conn, "nobody") is None


def test_ids_are_never_reused_after_a_purge_empties_the_table(engine: Engine) -> None:
    """Watchers keep their place as an event id: an id handed out again would be skipped by them."""
    with engine.begin() as conn:
        ids = [insert_event(conn, new(f"old-{n}"))[0] for n in range(3)]
        assert purge_older_than(conn, datetime.now(UTC) + timedelta(days=1)) == 3
        newest, inserted = insert_event(conn, new("after-the-purge"))
    assert inserted
    assert newest > max(ids)
