"""PostgreSQL goes down mid-stream: the receiver answers 503 (never 2xx) until it is back, then resumes;
a deferred sensor waiting on the store rides the outage out instead of failing its task.

The database stopped here is a throwaway instance of the test's own (``throwaway_pg``), never the
machine's shared cluster.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, func, select

from neoleads_provider.store.schema import webhook_events
from neoleads_provider.webhooks.verify import signed_headers

pytestmark = [pytest.mark.reliability, pytest.mark.postgres]

SECRET = "rel-whsec-7c1e0f5a9b3d4e2f"  # the receiver_factory connection's secret
WORKERS = 8
HEALTHY_SECONDS = 2.0
OUTAGE_SECONDS = 6.0
AFTER_SECONDS = 3.0
DEADLINE_SECONDS = 90.0
HERE = Path(__file__).resolve().parent
AIRFLOW = str(Path(os.sys.executable).parent / "airflow")


@dataclass
class Attempt:
    delivery_id: str
    started: float
    ended: float
    status: int | None  # None: no HTTP answer (connection error, timeout)
    retry_after: str | None


def _body(index: int, conversation_id: int = 9100) -> bytes:
    payload = {
        "event": "message_created",
        "id": 700_000 + index,
        "content": f"outage message {index}",
        "message_type": "incoming",
        "private": False,
        "sender": {"id": 42, "name": "Patient Customer"},
        "account": {"id": 1},
        "inbox": {"id": 1},
        "conversation": {"id": conversation_id, "inbox_id": 1},
    }
    return json.dumps(payload, separators=(",", ":")).encode()


def _stored_counts(db_url: str) -> dict[str, int]:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            return dict(
                conn.execute(
                    select(webhook_events.c.delivery_id, func.count()).group_by(webhook_events.c.delivery_id)
                ).all()
            )
    finally:
        engine.dispose()


def test_receiver_answers_503_while_postgres_is_down_then_resumes(throwaway_pg, receiver_factory, figures):
    receiver = receiver_factory(throwaway_pg.url)
    receiver.start()
    url = receiver.url()
    attempts: list[Attempt] = []
    acked: dict[str, str] = {}
    stop_sending = asyncio.Event()
    marks: dict[str, float] = {}
    counter = iter(range(10**9))

    async def deliver(client: httpx.AsyncClient, deadline: float) -> None:
        index = next(counter)
        delivery_id = f"outage-{uuid.uuid4()}"
        body = _body(index)
        failures = 0
        while time.monotonic() < deadline:
            headers = signed_headers(SECRET, body, timestamp=int(time.time()), delivery_id=delivery_id)
            started = time.monotonic()
            try:
                response = await client.post(url, content=body, headers=headers, timeout=5.0)
            except httpx.TransportError:
                attempts.append(Attempt(delivery_id, started, time.monotonic(), None, None))
            else:
                attempts.append(
                    Attempt(
                        delivery_id,
                        started,
                        time.monotonic(),
                        response.status_code,
                        response.headers.get("retry-after"),
                    )
                )
                if 200 <= response.status_code < 300:
                    acked[delivery_id] = response.json()["status"]
                    return
            failures += 1
            # The receiver asks for Retry-After: 30; this sender caps it to keep the test short.
            await asyncio.sleep(random.uniform(0.1, 0.3))

    async def sender(client: httpx.AsyncClient, deadline: float) -> None:
        while not stop_sending.is_set() and time.monotonic() < deadline:
            await deliver(client, deadline)

    async def main() -> None:
        deadline = time.monotonic() + DEADLINE_SECONDS
        async with httpx.AsyncClient() as client:
            workers = [asyncio.create_task(sender(client, deadline)) for _ in range(WORKERS)]
            await asyncio.sleep(HEALTHY_SECONDS)
            marks["stop_begin"] = time.monotonic()
            await asyncio.to_thread(throwaway_pg.stop, "immediate")
            marks["stop_done"] = time.monotonic()
            await asyncio.sleep(OUTAGE_SECONDS)
            marks["start_begin"] = time.monotonic()
            await asyncio.to_thread(throwaway_pg.start)
            marks["start_done"] = time.monotonic()
            await asyncio.sleep(AFTER_SECONDS)
            stop_sending.set()
            await asyncio.gather(*workers)

    try:
        asyncio.run(main())
    finally:
        if not throwaway_pg.running:
            throwaway_pg.start()
    receiver.stop()

    during = [a for a in attempts if a.started >= marks["stop_done"] and a.ended <= marks["start_begin"]]
    answered_during = [a for a in during if a.status is not None]
    ok_during = [a for a in answered_during if 200 <= a.status < 300]
    not_503 = [a for a in answered_during if a.status != 503]
    after = sorted((a for a in attempts if a.started >= marks["start_done"]), key=lambda a: a.started)
    first_ok_after = next((a for a in after if a.status is not None and 200 <= a.status < 300), None)
    counts = _stored_counts(throwaway_pg.url)
    lost = set(acked) - set(counts)
    duplicated = [delivery_id for delivery_id, count in counts.items() if count != 1]
    sent_ids = {a.delivery_id for a in attempts}
    never_acked = sent_ids - set(acked)

    figures.record(
        "store_outage_receiver",
        {
            "outage_seconds": round(marks["start_begin"] - marks["stop_done"], 1),
            "deliveries_sent": len(sent_ids),
            "http_attempts": len(attempts),
            "attempts_during_outage": len(during),
            "answered_503_during_outage": sum(1 for a in answered_during if a.status == 503),
            "answered_2xx_during_outage": len(ok_during),
            "first_2xx_after_restart_seconds": (
                round(first_ok_after.ended - marks["start_done"], 2) if first_ok_after else None
            ),
            "acknowledged": len(acked),
            "stored": len(counts),
            "lost": len(lost),
            "duplicated": len(duplicated),
        },
    )
    assert len(answered_during) >= 20, "the outage saw too little traffic to prove anything"
    assert not ok_during, f"{len(ok_during)} deliveries acknowledged while PostgreSQL was down"
    assert not not_503, f"unexpected answers during the outage: {sorted({a.status for a in not_503})}"
    assert all(a.retry_after for a in answered_during), "a 503 without Retry-After"
    assert first_ok_after is not None, "the receiver did not resume after PostgreSQL came back"
    assert first_ok_after.ended - marks["start_done"] < 10
    assert not lost
    assert not duplicated
    assert not never_acked, f"{len(never_acked)} deliveries never acknowledged after the outage"


def _stream_output(proc: subprocess.Popen[str], sink: list[str]) -> threading.Thread:
    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            sink.append(line)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return thread


def _wait_for(lines: list[str], needle: str, timeout: float, proc: subprocess.Popen[str]) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(needle in line for line in list(lines)):
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.1)
    return False


def test_deferred_sensor_waits_out_a_store_outage(
    throwaway_pg, receiver_factory, migrated_airflow_db, figures
):
    # The DAG's sensor waits on neoleads_default, and only deliveries received for that connection match
    # it: the receiver serves neoleads_default's endpoint too.
    sensor_conn = {
        "conn_type": "neoleads",
        "host": "http://127.0.0.1:1",
        "password": "unused",
        "extra": {"account_id": 1, "webhook_secrets": [SECRET]},
    }
    receiver = receiver_factory(
        throwaway_pg.url, env={"AIRFLOW_CONN_NEOLEADS_DEFAULT": json.dumps(sensor_conn)}
    )
    receiver.start()
    conversation_id = random.randint(10_000, 99_999)
    env = os.environ.copy()
    env["AIRFLOW__NEOLEADS__EVENTS_DB_URL"] = throwaway_pg.url
    env["AIRFLOW__CORE__DAGS_FOLDER"] = str(HERE / "dag_files")
    env["AIRFLOW_CONN_NEOLEADS_DEFAULT"] = json.dumps(sensor_conn)

    # Down before the task's first look: both the sensor's poke and the trigger's polls meet the outage.
    throwaway_pg.stop("immediate")
    outage_started = time.monotonic()
    lines: list[str] = []
    proc = subprocess.Popen(
        [
            AIRFLOW,
            "dags",
            "test",
            "neoleads_rel_wait_through_outage",
            "--conf",
            json.dumps({"conversation_id": conversation_id}),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    pump = _stream_output(proc, lines)
    try:
        saw_trigger_outage = _wait_for(lines, "event store is unavailable", 120, proc)
        time.sleep(2)
        throwaway_pg.start()
        outage_seconds = time.monotonic() - outage_started

        delivery_id = f"outage-reply-{uuid.uuid4()}"
        body = _body(1, conversation_id=conversation_id)
        status = None
        for _ in range(100):
            headers = signed_headers(SECRET, body, timestamp=int(time.time()), delivery_id=delivery_id)
            try:
                status = httpx.post(
                    receiver.url("neoleads_default"), content=body, headers=headers, timeout=5
                ).status_code
            except httpx.TransportError:
                status = None
            if status == 200:
                break
            time.sleep(0.2)
        assert status == 200
        returncode = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if not throwaway_pg.running:
            throwaway_pg.start()
    pump.join(10)
    output = "".join(lines)
    figures.record(
        "store_outage_sensor",
        {
            "outage_seconds": round(outage_seconds, 1),
            "sensor_task_failed": "NEOLEADS OUTAGE MATCH" not in output,
            "trigger_logged_outage": saw_trigger_outage,
        },
    )
    assert saw_trigger_outage, output[-5000:]
    assert "will look again" in output, "the sensor's first poke did not meet the outage"
    assert returncode == 0, output[-5000:]
    assert f"NEOLEADS OUTAGE MATCH delivery_id={delivery_id}" in output, output[-5000:]
    assert "up_for_retry" not in output.lower()
    assert "Marking task as FAILED" not in output
