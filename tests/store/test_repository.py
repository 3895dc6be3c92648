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

from neoleads_provider.store import engine as engine_module
from neoleads_provider.store.engine import dispose_engines, get_engine, get_events_db_url, safe_url
from neoleads_provider.store.migrate import EventStoreSchemaError, check_schema, current_version, migrate
from neoleads_provider.store.repository import (
    count_older_than,
    get_event,
    insert_event,
    last_received_at,
    list_events,
    purge_older_than,
)
from neoleads_provider.store.schema import SCHEMA_VERSION, schema_versions, webhook_events
from neoleads_provider.webhooks.payload import EventFields

if TYPE_CHECKING:
    from sqlalchemy import Engine

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


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


def add(
    engine: Engine,
    delivery_id: str,
    *,
    received_at: datetime = T0,
    conn_id: str = "neoleads_default",
    event_fields: EventFields | None = None,
    body: dict | None = None,
) -> bool:
    with engine.begin() as conn:
        return insert_event(
            conn,
            delivery_id=delivery_id,
            conn_id=conn_id,
            fields=event_fields or fields(),
            body=json.dumps(body or {"event": "message_created"}),
            received_at=received_at,
        )


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
        assert get_event(conn, delivery_id="keep-me") is not None


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
    assert not add(engine, "d-1", event_fields=fields("conversation_created"), body={"event": "other"})
    with engine.connect() as conn:
        stored = get_event(conn, delivery_id="d-1")
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
    assert stored.conn_id == "neoleads_default"


def test_duplicate_does_not_abort_the_transaction(engine: Engine) -> None:
    with engine.begin() as conn:
        assert insert_event(conn, delivery_id="a", conn_id="c", fields=fields(), body="{}", received_at=T0)
        assert not insert_event(
            conn, delivery_id="a", conn_id="c", fields=fields(), body="{}", received_at=T0
        )
        # On PostgreSQL a failed INSERT would poison the rest of the transaction; ON CONFLICT does not.
        assert insert_event(conn, delivery_id="b", conn_id="c", fields=fields(), body="{}", received_at=T0)
        assert get_event(conn, delivery_id="a") is not None
    with engine.connect() as conn:
        assert {event.delivery_id for event in list_events(conn)} == {"a", "b"}


def test_uncommitted_insert_is_not_visible_after_rollback(engine: Engine) -> None:
    with engine.connect() as conn:
        with conn.begin() as transaction:
            insert_event(conn, delivery_id="gone", conn_id="c", fields=fields(), body="{}", received_at=T0)
            transaction.rollback()
        assert get_event(conn, delivery_id="gone") is None


def test_received_at_round_trips_as_aware_utc(engine: Engine) -> None:
    local = datetime(2026, 5, 1, 14, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2)))
    add(engine, "tz", received_at=local)
    add(engine, "naive", received_at=datetime(2026, 5, 1, 8, 0))
    with engine.connect() as conn:
        stored = get_event(conn, delivery_id="tz")
        naive = get_event(conn, delivery_id="naive")
    assert stored is not None
    assert naive is not None
    assert stored.received_at == local
    assert stored.received_at.utcoffset() == timedelta(0)
    assert naive.received_at == datetime(2026, 5, 1, 8, 0, tzinfo=UTC)


def test_get_event_missing_and_bad_arguments(engine: Engine) -> None:
    with engine.connect() as conn:
        assert get_event(conn, 999) is None
        assert get_event(conn, delivery_id="nope") is None
        with pytest.raises(ValueError, match="exactly one"):
            get_event(conn)
        with pytest.raises(ValueError, match="exactly one"):
            get_event(conn, 1, delivery_id="x")


def test_to_xcom_is_json_safe(engine: Engine) -> None:
    add(
        engine,
        "x",
        event_fields=fields(conversation_id=3),
        body={"event": "message_created", "content": "hé"},
    )
    with engine.connect() as conn:
        stored = get_event(conn, delivery_id="x")
    assert stored is not None
    xcom = json.loads(json.dumps(stored.to_xcom()))
    assert xcom["conversation_id"] == 3
    assert xcom["payload"]["content"] == "hé"
    assert xcom["received_at"].startswith("2026-05-01T12:00:00")


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
        assert get_event(conn, delivery_id="old") is not None


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
