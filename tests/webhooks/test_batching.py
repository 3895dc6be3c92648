"""Group commit in the receiver: the BatchRunner on its own, and concurrent deliveries through a real server."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from sqlalchemy import event, func, select
from sqlalchemy.exc import DataError, OperationalError

from neoleads_provider.events.fields import event_identity, read_event
from neoleads_provider.store.engine import get_engine
from neoleads_provider.store.migrate import migrate
from neoleads_provider.store.repository import NewEvent, get_event, insert_events
from neoleads_provider.store.schema import webhook_events
from neoleads_provider.store.writer import EventWriter
from neoleads_provider.webhooks import batching
from neoleads_provider.webhooks.answers import LogThrottle
from neoleads_provider.webhooks.app import create_app
from neoleads_provider.webhooks.batching import BatchRunner
from neoleads_provider.webhooks.delivery_store import Delivery, DeliveryStore
from neoleads_provider.webhooks.verify import signed_headers
from tests._helpers import serving

if TYPE_CHECKING:
    from sqlalchemy import Engine

CONN_ID = "neoleads_batch"
SECRET = "batch-secret-5e2c7a1f"
T0 = 1_780_000_000.0


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request, tmp_path, fresh_engines) -> Engine:
    url = (
        f"sqlite:///{tmp_path / 'events.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("pg_schema_url")
    )
    engine = get_engine(url)
    migrate(engine)
    return engine


def row_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(webhook_events)).scalar_one()


def delivery_store(engine: Engine) -> DeliveryStore:
    return DeliveryStore(EventWriter(lambda: engine), LogThrottle())


def payload(number: int, *, account_id: int = 1) -> dict[str, Any]:
    return {
        "event": "message_created",
        "id": 10_000 + number,
        "content": f"reply {number}",
        "message_type": "incoming",
        "private": False,
        "sender": {"id": 7, "name": "Ada"},
        "account": {"id": account_id, "name": "Acme"},
        "inbox": {"id": 2, "name": "API"},
        "conversation": {"id": 40 + number % 3, "inbox_id": 2},
    }


# --------------------------------------------------------------------------- BatchRunner


async def test_outcomes_reach_the_right_callers_in_batches() -> None:
    seen: list[list[int]] = []
    release = threading.Event()

    def handle(items):
        release.wait(5)  # hold the first call so the rest pile up into one batch
        seen.append(list(items))
        return [ValueError(f"odd {item}") if item % 2 else item * 10 for item in items]

    runner: BatchRunner[int, int] = BatchRunner(handle, max_batch=64)
    tasks = [asyncio.create_task(runner.submit(number)) for number in range(20)]
    await asyncio.sleep(0.1)
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for number, result in enumerate(results):
        if number % 2:
            assert isinstance(result, ValueError)
            assert str(result) == f"odd {number}"
        else:
            assert result == number * 10
    assert sorted(item for batch in seen for item in batch) == list(range(20))
    assert len(seen) < 20  # some items shared a call
    assert max(len(batch) for batch in seen) > 1


async def test_a_handler_that_raises_fails_its_whole_batch_only() -> None:
    calls = []

    def handle(items):
        calls.append(list(items))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return list(items)

    runner: BatchRunner[str, str] = BatchRunner(handle)
    with pytest.raises(RuntimeError, match="boom"):
        await runner.submit("first")
    assert await runner.submit("second") == "second"


async def test_max_batch_is_respected() -> None:
    sizes: list[int] = []
    gate = threading.Event()

    def handle(items):
        gate.wait(5)
        sizes.append(len(items))
        return list(items)

    runner: BatchRunner[int, int] = BatchRunner(handle, max_batch=4)
    tasks = [asyncio.create_task(runner.submit(number)) for number in range(10)]
    await asyncio.sleep(0.1)
    gate.set()
    assert await asyncio.gather(*tasks) == list(range(10))
    assert max(sizes) <= 4


async def test_the_idle_thread_exits_and_comes_back(monkeypatch) -> None:
    monkeypatch.setattr(batching, "IDLE_EXIT_SECONDS", 0.05)
    runner: BatchRunner[int, int] = BatchRunner(lambda items: list(items), name="idle-test")
    assert await runner.submit(1) == 1
    deadline = time.monotonic() + 5
    while any(thread.name == "idle-test" for thread in threading.enumerate()):
        assert time.monotonic() < deadline, "the idle thread never exited"
        await asyncio.sleep(0.02)
    # Many submits racing the exit: none may be stranded.
    for round_number in range(20):
        results = await asyncio.wait_for(asyncio.gather(*(runner.submit(n) for n in range(5))), timeout=5)
        assert results == list(range(5))
        await asyncio.sleep(0.05 * (round_number % 3))


def test_max_batch_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        BatchRunner(lambda items: items, max_batch=0)


# --------------------------------------------------------------------------- insert_events and save_batch


def new_event(number: int, delivery_id: str | None = None) -> NewEvent:
    body = json.dumps(payload(number))
    from datetime import UTC, datetime

    fields = read_event(json.loads(body))
    return NewEvent(
        conn_id=CONN_ID,
        delivery_id=delivery_id or f"d-{number}",
        event_key=event_identity(fields, body.encode()),
        fields=fields,
        body=body,
        received_at=datetime.fromtimestamp(T0, UTC),
    )


def test_insert_events_reports_new_and_duplicate_rows_in_order(engine: Engine) -> None:
    with engine.begin() as conn:
        [(first_id, inserted)] = insert_events(conn, [new_event(0)])
        assert inserted
    with engine.begin() as conn:
        results = insert_events(
            conn,
            [new_event(1), new_event(0), new_event(2), new_event(1, "d-1"), new_event(2, "other-path")],
        )
    assert [inserted for _, inserted in results] == [True, False, True, False, False]
    assert results[1][0] == first_id
    # The same delivery id again, and the same event under another delivery id: the first row's id.
    assert results[3][0] == results[0][0]
    assert results[4][0] == results[2][0]
    with engine.connect() as conn:
        assert get_event(conn, results[2][0]).payload["content"] == "reply 2"
    assert row_count(engine) == 3


def delivery(number: int, delivery_id: str | None = None, body: bytes | None = None) -> Delivery:
    from datetime import UTC, datetime

    raw = body if body is not None else json.dumps(payload(number)).encode()
    return Delivery(CONN_ID, 1, delivery_id or f"d-{number}", raw, datetime.fromtimestamp(T0, UTC))


def test_save_batch_refuses_only_the_bad_body(engine: Engine) -> None:
    store = delivery_store(engine)
    other_account = json.dumps(payload(3, account_id=2)).encode()
    outcomes = store.save_batch(
        [
            delivery(0),
            delivery(1, body=b"{not json"),
            delivery(2),
            delivery(0),
            delivery(3, body=other_account),
            delivery(2, "d-2-through-the-inbox-webhook"),
        ]
    )
    assert outcomes[0][0] == "stored"
    assert outcomes[1].status_code == 400
    assert outcomes[2][0] == "stored"
    assert outcomes[3] == ("duplicate", outcomes[0][1])
    assert outcomes[4].status_code == 422
    assert outcomes[4].detail == "the payload's account 2 is not this endpoint's account"
    assert outcomes[5] == ("duplicate", outcomes[2][1])
    assert row_count(engine) == 2


def test_a_row_level_error_falls_back_to_one_transaction_per_delivery(engine: Engine) -> None:
    refused = []

    def refuse_multi_row_inserts(conn, cursor, statement, parameters, context, executemany) -> None:
        # The batch insert: several VALUES rows on SQLite, a JSON batch of several rows on PostgreSQL
        # (where a single row goes through json_to_recordset too).
        if statement.startswith("INSERT") and (
            statement.count("(?") > 1
            or ("json_to_recordset(" in statement and len(json.loads(parameters[0])) > 1)
        ):
            refused.append(statement)
            raise DataError(statement, parameters, Exception("value too long for one row"))

    event.listen(engine, "before_cursor_execute", refuse_multi_row_inserts)
    try:
        store = delivery_store(engine)
        outcomes = store.save_batch([delivery(n) for n in range(5)])
    finally:
        event.remove(engine, "before_cursor_execute", refuse_multi_row_inserts)
    assert len(refused) == 1
    assert [outcome[0] for outcome in outcomes] == ["stored"] * 5
    assert row_count(engine) == 5


def test_an_outage_refuses_the_whole_batch_and_logs_once(engine: Engine, caplog) -> None:
    def unavailable(conn, cursor, statement, parameters, context, executemany) -> None:
        if statement.startswith("INSERT"):
            raise OperationalError(statement, parameters, Exception("database is locked"))

    event.listen(engine, "before_cursor_execute", unavailable)
    try:
        store = delivery_store(engine)
        outcomes = store.save_batch([delivery(n) for n in range(4)])
    finally:
        event.remove(engine, "before_cursor_execute", unavailable)
    assert [(o.status_code, o.headers) for o in outcomes] == [(503, {"Retry-After": "30"})] * 4
    assert len([r for r in caplog.records if "event store unavailable" in r.getMessage()]) == 1
    assert row_count(engine) == 0


# --------------------------------------------------------------------------- through a real server


def test_concurrent_deliveries_share_commits_and_each_gets_its_own_answer(
    monkeypatch, engine: Engine
) -> None:
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{CONN_ID.upper()}",
        json.dumps(
            {
                "conn_type": "neoleads",
                "host": "http://127.0.0.1:1",
                "password": "x",
                "extra": {"account_id": 1, "webhook_secrets": [SECRET]},
            }
        ),
    )
    commits: list[float] = []

    def slow_first_commit(conn) -> None:
        # The first commit takes a while, so the deliveries arriving meanwhile queue up behind it.
        if not commits:
            time.sleep(0.3)
        commits.append(time.monotonic())

    event.listen(engine, "commit", slow_first_commit)
    requests: list[tuple[str, bytes, dict[str, str]]] = []
    for number in range(60):
        body = json.dumps(payload(number)).encode()
        delivery_id = f"dup-{number - 50}" if number >= 50 else str(uuid.uuid4())
        requests.append(
            ("good", body, signed_headers(SECRET, body, timestamp=int(time.time()), delivery_id=delivery_id))
        )
    # Ten repeats of deliveries 0-9 under the same id, and three bodies that are not JSON.
    for number in range(10):
        _, body, headers = requests[number]
        requests.append(("repeat", body, headers))
    for number in range(3):
        body = b"{broken " + str(number).encode()
        requests.append(
            (
                "bad",
                body,
                signed_headers(SECRET, body, timestamp=int(time.time()), delivery_id=f"bad-{number}"),
            )
        )

    async def send_all(url: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            return await asyncio.gather(
                *(
                    client.post(f"{url}/webhooks/{CONN_ID}", content=body, headers=headers)
                    for _, body, headers in requests
                )
            )

    try:
        with serving(create_app(engine_factory=lambda: engine)) as url:
            responses = asyncio.run(send_all(url))
    finally:
        event.remove(engine, "commit", slow_first_commit)

    by_kind: dict[str, list[httpx.Response]] = {"good": [], "repeat": [], "bad": []}
    for (kind, _, _), response in zip(requests, responses, strict=True):
        by_kind[kind].append(response)
    assert [r.status_code for r in by_kind["bad"]] == [400] * 3
    good = [r.json() for r in by_kind["good"]]
    repeats = [r.json() for r in by_kind["repeat"]]
    assert all(r.status_code == 200 for r in by_kind["good"] + by_kind["repeat"])
    # Each first delivery and its repeat name the same event; exactly one of the two stored it.
    for first, repeat in zip(good[:10], repeats, strict=True):
        assert first["event_id"] == repeat["event_id"]
        assert sorted([first["status"], repeat["status"]]) == ["duplicate", "stored"]
    assert len({answer["event_id"] for answer in good}) == 60
    assert row_count(engine) == 60
    with engine.connect() as conn:
        for answer, (_, body, _) in zip(good, requests[:60], strict=True):
            assert get_event(conn, answer["event_id"]).body == body.decode()
    # Fewer commits than stored deliveries: they were committed in groups.
    assert len(commits) < 60


# --------------------------------------------------------------------------- the writer's kept connection


def test_the_writer_keeps_one_connection_across_batches(engine: Engine) -> None:
    checkouts: list[object] = []
    writer = threading.current_thread()

    def count(*args: object) -> None:
        # On SQLite a checkpointing thread uses a connection of its own now and then.
        if threading.current_thread() is writer:
            checkouts.append(args)

    event.listen(engine.pool, "checkout", count)
    store = delivery_store(engine)
    try:
        for first in range(0, 12, 3):
            outcomes = store.save_batch([delivery(n) for n in range(first, first + 3)])
            assert [outcome[0] for outcome in outcomes] == ["stored"] * 3
    finally:
        store.writer.release()
        event.remove(engine.pool, "checkout", count)
    assert len(checkouts) == 1
    assert row_count(engine) == 12


@pytest.mark.parametrize("engine", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True)
def test_a_connection_the_database_dropped_is_replaced_without_refusing_the_batch(engine: Engine) -> None:
    """A PostgreSQL restart or idle timeout closes the kept connection: the batch is retried, not refused."""
    from sqlalchemy import create_engine, text

    store = delivery_store(engine)
    try:
        assert [o[0] for o in store.save_batch([delivery(n) for n in range(3)])] == ["stored"] * 3
        with store.writer._held.conn.begin():
            held_pid = store.writer._held.conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        admin = create_engine(engine.url)
        with admin.begin() as conn:
            assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": held_pid}).scalar_one()
        admin.dispose()
        outcomes = store.save_batch([delivery(n) for n in range(3, 6)])
        assert [o[0] for o in outcomes] == ["stored"] * 3, outcomes
        assert row_count(engine) == 6
    finally:
        store.writer.release()


async def test_the_idle_writer_releases_its_connection(monkeypatch, engine: Engine) -> None:
    monkeypatch.setattr(batching, "IDLE_EXIT_SECONDS", 0.05)
    store = delivery_store(engine)
    released = threading.Event()

    def release() -> None:
        store.writer.release()
        released.set()

    runner = BatchRunner(store.save_batch, name="idle-release-test", on_idle=release)
    status, _ = await runner.submit(delivery(1))
    assert status == "stored"
    assert await asyncio.to_thread(released.wait, 5)
    assert engine.pool.checkedout() == 0


@pytest.mark.parametrize("engine", ["sqlite"], indirect=True)
def test_sqlite_checkpoints_happen_off_the_writer_thread(engine: Engine) -> None:
    checkpoints: list[str] = []

    def spy(conn, cursor, statement, parameters, context, executemany) -> None:
        if statement.startswith("PRAGMA wal_checkpoint"):
            checkpoints.append(threading.current_thread().name)

    event.listen(engine, "before_cursor_execute", spy)
    store = delivery_store(engine)
    try:
        store.save_batch([delivery(n) for n in range(3)])
        writer = store.writer._held.conn.connection.driver_connection
        # The writer's own commits copy the log into the database only as a safety net...
        assert writer.execute("PRAGMA wal_autocheckpoint").fetchone() == (100_000,)
        deadline = time.monotonic() + 5
        while not checkpoints and time.monotonic() < deadline:
            time.sleep(0.05)
        # ...a thread of its own does, soon after.
        assert checkpoints
        assert set(checkpoints) == {"neoleads-wal-checkpoint"}
    finally:
        store.writer.release()
        event.remove(engine, "before_cursor_execute", spy)
    # Released: the connection goes back to the pool with SQLite's default, and the thread ends.
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one() == 1000
    thread = store.writer._checkpointers[engine]._thread
    assert thread is not None
    assert not thread.is_alive()
    assert row_count(engine) == 3


def test_a_thread_that_failed_to_start_is_started_again_by_the_next_submit(monkeypatch) -> None:
    """Out of threads or memory once: the runner must not keep waiting for a thread that never ran."""
    import threading as threading_module

    from neoleads_provider.webhooks.batching import BatchRunner

    runner = BatchRunner(lambda items: [item * 2 for item in items], name="test-start-failure")
    real_start = threading_module.Thread.start
    failures = iter([RuntimeError("can't start new thread")])

    def start_once_failing(self) -> None:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        real_start(self)

    monkeypatch.setattr(threading_module.Thread, "start", start_once_failing)

    async def submit_twice() -> int:
        with pytest.raises(RuntimeError, match="can't start new thread"):
            await runner.submit(1)
        return await asyncio.wait_for(runner.submit(2), timeout=5)

    assert asyncio.run(submit_twice()) == 4
