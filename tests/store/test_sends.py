"""The bulk operator's idempotency record (store/sends.py), on a SQLite file and on PostgreSQL."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import inspect

from neoleads_provider.store.engine import get_engine
from neoleads_provider.store.migrate import migrate
from neoleads_provider.store.sends import (
    SendKey,
    count_by_state,
    load_records,
    mark_pending,
    mark_sent,
    purge_older_than,
)

if TYPE_CHECKING:
    from sqlalchemy import Engine

KEY = SendKey(dag_id="outreach", run_id="manual__2026-05-01", task_id="send", map_index=-1)


pytestmark = pytest.mark.usefixtures("fresh_engines")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request, tmp_path) -> Engine:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'events.db'}"
    else:
        url = request.getfixturevalue("pg_schema_url")
    engine = get_engine(url)
    migrate(engine)
    return engine


def test_migration_creates_the_table_with_its_key(engine: Engine) -> None:
    columns = inspect(engine).get_pk_constraint("neoleads_send_record")["constrained_columns"]
    assert columns == ["dag_id", "run_id", "task_id", "map_index", "row_key"]


def test_pending_then_sent(engine: Engine) -> None:
    with engine.begin() as conn:
        mark_pending(conn, KEY, "email:a@example.com", source_id="s-1", contact_id=5, conversation_id=9)
    with engine.connect() as conn:
        [record] = load_records(conn, KEY).values()
    assert (record.row_key, record.state, record.source_id, record.conversation_id, record.message_id) == (
        "email:a@example.com",
        "pending",
        "s-1",
        9,
        None,
    )
    assert record.updated_at.tzinfo is not None
    with engine.begin() as conn:
        mark_sent(
            conn, KEY, "email:a@example.com", source_id="s-1", contact_id=5, conversation_id=9, message_id=77
        )
    with engine.connect() as conn:
        record = load_records(conn, KEY)["email:a@example.com"]
        assert count_by_state(conn, KEY) == {"sent": 1}
    assert (record.state, record.message_id) == ("sent", 77)


def test_a_pending_write_never_downgrades_a_sent_record(engine: Engine) -> None:
    with engine.begin() as conn:
        mark_sent(conn, KEY, "k", source_id="s", contact_id=1, conversation_id=2, message_id=3)
        mark_pending(conn, KEY, "k", source_id="s", contact_id=1, conversation_id=4)
    with engine.connect() as conn:
        record = load_records(conn, KEY)["k"]
    assert (record.state, record.conversation_id, record.message_id) == ("sent", 2, 3)


def test_records_are_per_task_instance(engine: Engine) -> None:
    other_run = SendKey(KEY.dag_id, "manual__2026-05-02", KEY.task_id, -1)
    mapped = SendKey(KEY.dag_id, KEY.run_id, KEY.task_id, 3)
    with engine.begin() as conn:
        mark_sent(conn, KEY, "k", source_id="a", contact_id=1, conversation_id=1, message_id=1)
        mark_pending(conn, other_run, "k", source_id="b", contact_id=1, conversation_id=1)
        mark_pending(conn, mapped, "k", source_id="c", contact_id=1, conversation_id=1)
    with engine.connect() as conn:
        assert load_records(conn, KEY)["k"].source_id == "a"
        assert load_records(conn, other_run)["k"].state == "pending"
        assert load_records(conn, mapped)["k"].source_id == "c"
        assert load_records(conn, SendKey("x", "y", "z")) == {}


def test_concurrent_writers(engine: Engine) -> None:
    errors: list[BaseException] = []

    def write(start: int) -> None:
        try:
            for number in range(start, start + 25):
                with engine.begin() as conn:
                    mark_pending(conn, KEY, f"row-{number}", source_id="s", contact_id=1, conversation_id=1)
                with engine.begin() as conn:
                    mark_sent(
                        conn,
                        KEY,
                        f"row-{number}",
                        source_id="s",
                        contact_id=1,
                        conversation_id=1,
                        message_id=number,
                    )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(index * 25,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    with engine.connect() as conn:
        assert count_by_state(conn, KEY) == {"sent": 200}


def test_row_keys_longer_than_the_column_are_refused(engine: Engine) -> None:
    with engine.begin() as conn, pytest.raises(ValueError, match="at most 255"):
        mark_pending(conn, KEY, "k" * 256, source_id="s", contact_id=None, conversation_id=1)


def test_purge_older_than(engine: Engine) -> None:
    with engine.begin() as conn:
        mark_pending(conn, KEY, "k", source_id="s", contact_id=None, conversation_id=1)
    with engine.begin() as conn:
        assert purge_older_than(conn, datetime.now(UTC) - timedelta(days=1)) == 0
        assert purge_older_than(conn, datetime.now(UTC) + timedelta(seconds=1)) == 1
        assert load_records(conn, KEY) == {}
