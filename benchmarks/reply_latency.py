"""Benchmark 2: from a delivery's acknowledgement to the deferred trigger firing, and the idle query load.

The receiver (``neoleads webhooks serve``) runs in a subprocess. In this process, ``--waiting`` deferred
triggers wait in one event loop, as they would in a triggerer, each on its own conversation with the
sensor's default ``poll_interval`` of 1 s. Then, one at a time with random gaps, a signed reply is posted
for ``--samples`` of those conversations; the latency is the time from the receiver's 200 (the row is
committed by then) to that conversation's trigger yielding its event. Queries are counted with a SQLAlchemy
``before_cursor_execute`` listener on the triggers' engine, over an idle window before the replies.

The baseline is the trigger's previous loop, measured the same way in the same run: every trigger runs
its match query every ``poll_interval`` and sleeps in between. The trigger is also measured with a 30 s
``poll_interval`` (``trigger_poll_interval=30`` on the sensor), which the store watcher makes safe.

    python benchmarks/reply_latency.py [--waiting 100] [--samples 40] [--idle-seconds 5] [--db sqlite|postgresql|both]

Goal: median under 250 ms, without hammering the database.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import threading
import time
from typing import TYPE_CHECKING, Any

from _common import (
    PYTHON,
    base_env,
    drop_pg_schema,
    emit,
    free_port,
    log,
    median,
    message_payload,
    percentile,
    pg_schema_url,
    raw_post,
    server_process,
    signed_delivery,
    workdir,
)

if TYPE_CHECKING:
    from pathlib import Path

SECRET = "benchmark-webhook-secret-0123456789"
CONN_ID = "neoleads_default"
POLL_INTERVAL = 1.0
LONG_POLL_INTERVAL = 30.0
GOAL_MEDIAN_MS = 250.0
FIRST_CONVERSATION = 1000


class QueryCounter:
    def __init__(self, engine: Any) -> None:
        from sqlalchemy import event

        self.count = 0
        self._lock = threading.Lock()
        event.listen(engine, "before_cursor_execute", self._on_execute)
        self._engine = engine

    def _on_execute(self, *args: Any) -> None:
        with self._lock:
            self.count += 1

    def close(self) -> None:
        from sqlalchemy import event

        event.remove(self._engine, "before_cursor_execute", self._on_execute)


async def post(port: int, body: bytes, headers: dict[str, str]) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw_post("127.0.0.1", port, f"/neoleads/webhooks/{CONN_ID}", body, headers))
        head = await reader.readuntil(b"\r\n\r\n")
        return int(head[9:12])
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def event_filter(conversation_id: int) -> Any:
    from neoleads_provider.events.filter import EventFilter

    return EventFilter(
        conn_id=CONN_ID, events=("message_created",), account_id=1, conversation_id=conversation_id
    )


async def stagger(conversation_id: int, poll_interval: float) -> None:
    """Start each waiter at its own point of the poll cycle, as deferred sensors do in a triggerer.

    Started together, every waiter would look at the same moments, and a reply's latency would depend on
    when the benchmark happens to post it relative to that shared beat.
    """
    await asyncio.sleep(random.Random(conversation_id).uniform(0, min(poll_interval, 1.0)))


async def wait_with_trigger(
    db_url: str, conversation_id: int, fired: dict[int, float], poll_interval: float
) -> None:
    from neoleads_provider.triggers.webhook import NeoleadsWebhookTrigger

    await stagger(conversation_id, poll_interval)
    trigger = NeoleadsWebhookTrigger(
        event_filter=event_filter(conversation_id).to_dict(),
        events_db_url=db_url,
        poll_interval=poll_interval,
    )
    async for event in trigger.run():
        if event.payload["status"] == "success":
            fired[conversation_id] = time.perf_counter()
        return


async def wait_by_polling(
    db_url: str, conversation_id: int, fired: dict[int, float], poll_interval: float
) -> None:
    """The baseline: the trigger's loop before the store watcher (look, sleep poll_interval, repeat)."""
    from neoleads_provider.waiting import look_in_store

    flt = event_filter(conversation_id)
    await stagger(conversation_id, poll_interval)
    while True:
        if await asyncio.to_thread(look_in_store, db_url, flt) is not None:
            fired[conversation_id] = time.perf_counter()
            return
        await asyncio.sleep(poll_interval)


async def scenario(
    mode: str, poll_interval: float, db_url: str, port: int, args: argparse.Namespace, first_message_id: int
) -> dict[str, Any]:
    from neoleads_provider.store.engine import get_engine

    counter = QueryCounter(get_engine(db_url))
    waiter = wait_with_trigger if mode == "watcher" else wait_by_polling
    fired: dict[int, float] = {}
    conversations = [FIRST_CONVERSATION + first_message_id + number for number in range(args.waiting)]
    tasks = [
        asyncio.create_task(waiter(db_url, conversation, fired, poll_interval))
        for conversation in conversations
    ]
    try:
        await asyncio.sleep(2.0)  # every trigger has looked once and settled into waiting
        before = counter.count
        await asyncio.sleep(args.idle_seconds)
        idle_qps = (counter.count - before) / args.idle_seconds
        latencies = []
        rng = random.Random(7)
        for number, conversation in enumerate(conversations[: args.samples]):
            await asyncio.sleep(rng.uniform(0.05, 0.35))
            payload = message_payload(
                conversation_id=conversation, message_id=first_message_id + number, content="yes please"
            )
            body, headers = signed_delivery(SECRET, payload)
            status = await post(port, body, headers)
            acked = time.perf_counter()
            if status != 200:
                raise RuntimeError(f"the receiver answered {status}")
            deadline = acked + 10
            while conversation not in fired:
                if time.perf_counter() > deadline:
                    raise RuntimeError(
                        f"the trigger for conversation {conversation} did not fire within 10 s"
                    )
                await asyncio.sleep(0.001)
            latencies.append((fired[conversation] - acked) * 1000)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        counter.close()
    return {
        "mode": mode,
        "poll_interval_s": poll_interval,
        "waiting_triggers": args.waiting,
        "samples": len(latencies),
        "median_ms": round(median(latencies), 1),
        "p90_ms": round(percentile(latencies, 0.9), 1),
        "max_ms": round(max(latencies), 1),
        "idle_queries_per_second": round(idle_qps, 1),
    }


def measure(db: str, db_url: str, args: argparse.Namespace, home: Path) -> list[dict[str, Any]]:
    env = base_env(home)
    env[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = json.dumps(
        {
            "conn_type": "neoleads",
            "host": "http://127.0.0.1:9",
            "password": "unused",
            "extra": {"account_id": 1, "webhook_secrets": [SECRET]},
        }
    )
    port = free_port()
    command = [
        PYTHON,
        "-m",
        "neoleads_provider.cli",
        "webhooks",
        "serve",
        "--port",
        str(port),
        "--db-url",
        db_url,
    ]
    results = []
    with server_process(
        command, env, f"http://127.0.0.1:{port}/neoleads/_health", home / f"receiver-{db}.log"
    ):
        # The trigger at the sensor's default poll_interval, the same with a long one (the watcher makes that
        # safe for latency), and the baseline loop.
        modes = (("watcher", POLL_INTERVAL), ("watcher", LONG_POLL_INTERVAL), ("polling", POLL_INTERVAL))
        for offset, (mode, poll_interval) in enumerate(modes):
            log(f"[{db}] {mode} poll_interval={poll_interval}: {args.waiting} waiting triggers")
            result = asyncio.run(
                scenario(mode, poll_interval, db_url, port, args, first_message_id=offset * 100_000 + 1)
            )
            result["db"] = db
            log(f"[{db}] {mode}: {result}")
            results.append(result)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waiting", type=int, default=100, help="triggers waiting at once")
    parser.add_argument("--samples", type=int, default=40, help="replies to time")
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    pg_default = "both" if os.environ.get("NEOLEADS_TEST_PG_URL") else "sqlite"
    parser.add_argument("--db", choices=("sqlite", "postgresql", "both"), default=pg_default)
    args = parser.parse_args()
    args.samples = min(args.samples, args.waiting)
    results: list[dict[str, Any]] = []
    with workdir("neoleads-bench-latency-") as home:
        # Before anything imports Airflow, which reads AIRFLOW_HOME once.
        os.environ.update({k: v for k, v in base_env(home).items() if k.startswith("AIRFLOW")})
        from neoleads_provider.store.engine import get_engine
        from neoleads_provider.store.migrate import migrate

        targets = []
        if args.db in ("sqlite", "both"):
            targets.append(("sqlite", f"sqlite:///{home / 'events.db'}", None))
        if args.db in ("postgresql", "both"):
            base = os.environ.get("NEOLEADS_TEST_PG_URL")
            if not base:
                raise SystemExit("--db postgresql needs NEOLEADS_TEST_PG_URL")
            url, schema = pg_schema_url(base)
            targets.append(("postgresql", url, (base, schema)))
        try:
            for db, url, _ in targets:
                migrate(get_engine(url))
                results.extend(measure(db, url, args, home))
        finally:
            for _, _, pg in targets:
                if pg is not None:
                    drop_pg_schema(*pg)
    emit(
        "reply_latency",
        {
            "goal_median_ms": GOAL_MEDIAN_MS,
            "meets_goal": all(r["median_ms"] < GOAL_MEDIAN_MS for r in results if r["mode"] == "watcher"),
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
