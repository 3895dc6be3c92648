"""Benchmark 3: the sensor's match query (store/matching.py find_first_match) at 10k, 100k and 1M events.

The store is filled with ``message_created`` events (full sample bodies, about 1.8 kB) spread over conversations of
20 events each (half incoming, half outgoing) in 10 inboxes, bulk-inserted in large transactions, and grown
10k -> 100k -> 1M. At each size two waits are timed, each as the median of ``--repeats`` runs on one open
connection:

* ``waiting``: a sensor still waiting (its conversation has 20 events, none past its watermark);
* ``found``: a sensor whose reply is stored (the newest event of a conversation created first, so far from
  the end of the table).

SQLite always; PostgreSQL too when ``NEOLEADS_TEST_PG_URL`` is set (``--db``).

    python benchmarks/store_scaling.py [--sizes 10000,100000,1000000] [--repeats 300] [--db sqlite|postgresql|both]

Goal: the 1M time within 2x of the 10k time.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from _common import drop_pg_schema, emit, log, median, pg_schema_url, workdir

EVENTS_PER_CONVERSATION = 20
INBOXES = 10
GOAL_FACTOR = 2.0
T0 = datetime(2026, 1, 1, tzinfo=UTC)
# Every body's stamps show T0, so the bodies are the same on every run.
PAYLOAD_NOW = T0.timestamp()


def rows(start: int, stop: int) -> list[dict[str, Any]]:
    """Events ``start``..``stop-1``: conversation = number // 20, alternating incoming and outgoing.

    The indexed columns and the event key are read from the body as the receiver reads them.
    """
    from neoleads_provider.events.build import sample_event
    from neoleads_provider.events.fields import COLUMN_NAMES, event_identity, read_event

    batch = []
    for number in range(start, stop):
        conversation = number // EVENTS_PER_CONVERSATION + 1
        payload = sample_event(
            "message_created",
            account_id=1,
            inbox_id=conversation % INBOXES + 1,
            conversation_id=conversation,
            contact_id=conversation,
            message_id=number + 1,
            content=f"message {number} " + "x" * 200,
            message_type="incoming" if number % 2 == 0 else "outgoing",
            now=PAYLOAD_NOW,
        )
        body = json.dumps(payload)
        fields = read_event(payload)
        batch.append(
            {
                "delivery_id": f"bench-{number}",
                "conn_id": "neoleads_default",
                "event_key": event_identity(fields, body.encode("utf-8")),
                **{name: getattr(fields, name) for name in COLUMN_NAMES},
                "received_at": T0 + timedelta(seconds=number),
                "body": body,
            }
        )
    return batch


def fill(engine: Any, start: int, stop: int, chunk: int = 20_000) -> float:
    from sqlalchemy import insert

    from neoleads_provider.store.schema import webhook_events

    started = time.perf_counter()
    for low in range(start, stop, chunk):
        with engine.begin() as conn:
            conn.execute(insert(webhook_events), rows(low, min(stop, low + chunk)))
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE neoleads_webhook_event")
            conn.commit()
    return time.perf_counter() - started


def time_query(engine: Any, flt: Any, repeats: int) -> tuple[float, Any]:
    from neoleads_provider.store.matching import find_first_match

    timings = []
    with engine.connect() as conn:
        found = find_first_match(conn, flt)  # warm the statement cache and the pages
        for _ in range(repeats):
            started = time.perf_counter()
            find_first_match(conn, flt)
            timings.append(time.perf_counter() - started)
    return median(timings) * 1e6, found


def measure(db: str, url: str, sizes: list[int], repeats: int) -> dict[str, Any]:
    from neoleads_provider.events.filter import EventFilter
    from neoleads_provider.store.engine import get_engine
    from neoleads_provider.store.migrate import migrate

    engine = get_engine(url)
    migrate(engine)
    stored = 0
    points = []
    for size in sizes:
        seconds = fill(engine, stored, size)
        log(f"[{db}] filled to {size} events (+{size - stored} in {seconds:.1f} s)")
        stored = size
        # A conversation in the middle of the table, whose sensor has seen its last message: still waiting.
        middle = size // EVENTS_PER_CONVERSATION // 2
        waiting = EventFilter(
            account_id=1, conversation_id=middle, after_message_id=middle * EVENTS_PER_CONVERSATION
        )
        # The first conversation: its incoming message 17 is the oldest answer for a sensor whose watermark is 16.
        found_filter = EventFilter(account_id=1, conversation_id=1, after_message_id=16)
        waiting_us, none = time_query(engine, waiting, repeats)
        found_us, found = time_query(engine, found_filter, repeats)
        if none is not None or found is None or found.message_id != 17:
            raise RuntimeError(f"unexpected match results at {size}: {none!r} / {found!r}")
        points.append({"events": size, "waiting_us": round(waiting_us, 1), "found_us": round(found_us, 1)})
        log(f"[{db}] {size}: waiting {waiting_us:.1f} us, found {found_us:.1f} us")
    first, last = points[0], points[-1]
    factors = {
        "waiting": round(last["waiting_us"] / first["waiting_us"], 2),
        "found": round(last["found_us"] / first["found_us"], 2),
    }
    return {
        "db": db,
        "points": points,
        f"factor_{last['events']}_vs_{first['events']}": factors,
        "goal_factor": GOAL_FACTOR,
        "meets_goal": max(factors.values()) <= GOAL_FACTOR,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--repeats", type=int, default=300)
    pg_default = "both" if os.environ.get("NEOLEADS_TEST_PG_URL") else "sqlite"
    parser.add_argument("--db", choices=("sqlite", "postgresql", "both"), default=pg_default)
    args = parser.parse_args()
    sizes = sorted(int(size) for size in args.sizes.split(","))
    results = []
    with workdir("neoleads-bench-store-") as home:
        os.environ["AIRFLOW_HOME"] = str(home)
        from neoleads_provider.store.engine import dispose_engines

        if args.db in ("sqlite", "both"):
            results.append(measure("sqlite", f"sqlite:///{home / 'events.db'}", sizes, args.repeats))
            dispose_engines()
        if args.db in ("postgresql", "both"):
            base = os.environ.get("NEOLEADS_TEST_PG_URL")
            if not base:
                raise SystemExit("--db postgresql needs NEOLEADS_TEST_PG_URL")
            url, schema = pg_schema_url(base)
            try:
                results.append(measure("postgresql", url, sizes, args.repeats))
            finally:
                dispose_engines()
                drop_pg_schema(base, schema)
    emit("store_scaling", {"repeats": args.repeats, "results": results})


if __name__ == "__main__":
    main()
