"""Benchmark 1: signed webhook deliveries stored per second by the receiver, against a bare endpoint.

The servers run side by side as separate uvicorn processes started the same way (``neoleads webhooks
serve`` for the receiver; ``_bare_server.py`` with the same uvicorn settings for the baseline, an endpoint
that only reads the body). The baseline writes no access log, so the receiver is measured like for like
with ``--no-access-log``, and once more as started by default, with its access log. Rounds alternate
between the servers, each sending ``--deliveries`` signed
``message_created`` deliveries (about 2.5 KB each, every one with a new delivery id) over ``--concurrency``
keep-alive connections. Each delivery the receiver acknowledges is verified, parsed and committed to the
event store before the answer; the benchmark checks afterwards that the store holds every one.

    python benchmarks/receiver_throughput.py [--deliveries 5000] [--rounds 3] [--concurrency 32] [--db sqlite|postgresql|both]

Goal: the receiver stores at least 0.75 of the bare endpoint's requests per second.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import TYPE_CHECKING, Any

from _common import (
    PYTHON,
    REPO,
    base_env,
    cpu_seconds,
    drop_pg_schema,
    emit,
    free_port,
    log,
    median,
    message_payload,
    pg_schema_url,
    postgres_cpu_seconds,
    raw_post,
    run_load,
    server_process,
    signed_delivery,
    workdir,
)

if TYPE_CHECKING:
    from pathlib import Path

SECRET = "benchmark-webhook-secret-0123456789"
CONN_ID = "neoleads_default"
GOAL = 0.75


def deliveries(port: int, path: str, count: int, start_id: int) -> list[bytes]:
    requests = []
    for number in range(count):
        payload = message_payload(conversation_id=1 + (start_id + number) % 997, message_id=start_id + number)
        body, headers = signed_delivery(SECRET, payload)
        requests.append(raw_post("127.0.0.1", port, path, body, headers))
    return requests


def stored_count(db_url: str) -> int:
    from sqlalchemy import create_engine, func, select

    from neoleads_provider.store.schema import webhook_events

    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(webhook_events)).scalar_one())
    finally:
        engine.dispose()


def measure(db: str, db_url: str, args: argparse.Namespace, home: Path) -> dict[str, Any]:
    env = base_env(home)
    env[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = json.dumps(
        {
            "conn_type": "neoleads",
            "host": "http://127.0.0.1:9",
            "password": "unused",
            "extra": {"account_id": 1, "webhook_secrets": [SECRET]},
        }
    )
    receiver_port, logging_port, bare_port = free_port(), free_port(), free_port()

    def receiver_args(port: int, *extra: str) -> list[str]:
        serve = [PYTHON, "-m", "neoleads_provider.cli", "webhooks", "serve", "--port", str(port)]
        return [*serve, "--db-url", db_url, *extra]

    bare_args = [PYTHON, str(REPO / "benchmarks" / "_bare_server.py"), str(bare_port)]
    receiver_path = f"/neoleads/webhooks/{CONN_ID}"
    bare_path = f"/bare/webhooks/{CONN_ID}"
    targets = (
        ("bare", bare_port, bare_path),
        ("receiver", receiver_port, receiver_path),
        ("receiver_access_log", logging_port, receiver_path),
    )
    results: dict[str, list[dict[str, Any]]] = {target: [] for target, _, _ in targets}
    next_id = 1
    with (
        server_process(
            receiver_args(receiver_port, "--no-access-log"),
            env,
            f"http://127.0.0.1:{receiver_port}/neoleads/_health",
            home / f"receiver-{db}.log",
        ) as receiver,
        server_process(
            receiver_args(logging_port),
            env,
            f"http://127.0.0.1:{logging_port}/neoleads/_health",
            home / f"receiver-access-log-{db}.log",
        ) as logging_receiver,
        server_process(
            bare_args, env, f"http://127.0.0.1:{bare_port}/bare/_health", home / "bare.log"
        ) as bare,
    ):
        pids = {"receiver": receiver.pid, "receiver_access_log": logging_receiver.pid, "bare": bare.pid}
        log(f"[{db}] warming up")
        sent_to_receiver = 0
        for target, port, path in targets:
            run_load("127.0.0.1", port, deliveries(port, path, 500, next_id), args.concurrency)
            if target != "bare":
                sent_to_receiver += 500
            next_id += 500
        for round_number in range(args.rounds):
            for target, port, path in targets:
                requests = deliveries(port, path, args.deliveries, next_id)
                next_id += args.deliveries
                cpu_before = cpu_seconds(pids[target])
                database_before = postgres_cpu_seconds() if db == "postgresql" else 0.0
                result = run_load("127.0.0.1", port, requests, args.concurrency)
                # CPU time per request does not depend on what else the machine is doing, unlike the rate.
                result["server_cpu_ms_per_request"] = round(
                    (cpu_seconds(pids[target]) - cpu_before) * 1000 / args.deliveries, 3
                )
                if db == "postgresql":
                    # The database server shares the machine's two cores with the receiver and the load.
                    result["postgres_cpu_ms_per_request"] = round(
                        (postgres_cpu_seconds() - database_before) * 1000 / args.deliveries, 3
                    )
                if target != "bare":
                    sent_to_receiver += args.deliveries
                results[target].append(result)
                log(
                    f"[{db}] round {round_number + 1} {target}: {result['per_second']}/s "
                    f"p50 {result['p50_ms']} ms p99 {result['p99_ms']} ms "
                    f"cpu {result['server_cpu_ms_per_request']} ms/request {result['statuses']}"
                )
    stored = stored_count(db_url)
    receiver_rate = median([r["per_second"] for r in results["receiver"]])
    logging_rate = median([r["per_second"] for r in results["receiver_access_log"]])
    bare_rate = median([r["per_second"] for r in results["bare"]])
    ok = all(
        r["statuses"] == {"200": args.deliveries}
        for target in ("receiver", "receiver_access_log")
        for r in results[target]
    )
    receiver_cpu = median([r["server_cpu_ms_per_request"] for r in results["receiver"]])
    logging_cpu = median([r["server_cpu_ms_per_request"] for r in results["receiver_access_log"]])
    bare_cpu = median([r["server_cpu_ms_per_request"] for r in results["bare"]])
    database_cpu = (
        median([r["postgres_cpu_ms_per_request"] for r in results["receiver"]])
        if db == "postgresql"
        else None
    )
    return {
        "db": db,
        "receiver_per_second": receiver_rate,
        "bare_per_second": bare_rate,
        "ratio": round(receiver_rate / bare_rate, 3),
        "goal": GOAL,
        "meets_goal": receiver_rate / bare_rate >= GOAL,
        "receiver_cpu_ms_per_delivery": receiver_cpu,
        "bare_cpu_ms_per_request": bare_cpu,
        "cpu_ratio": round(bare_cpu / receiver_cpu, 3) if receiver_cpu else None,
        "postgres_cpu_ms_per_delivery": database_cpu,
        "with_access_log": {
            "per_second": logging_rate,
            "ratio": round(logging_rate / bare_rate, 3),
            "cpu_ms_per_delivery": logging_cpu,
            "p50_ms": median([r["p50_ms"] for r in results["receiver_access_log"]]),
            "p99_ms": median([r["p99_ms"] for r in results["receiver_access_log"]]),
        },
        "receiver_p50_ms": median([r["p50_ms"] for r in results["receiver"]]),
        "receiver_p99_ms": median([r["p99_ms"] for r in results["receiver"]]),
        "bare_p50_ms": median([r["p50_ms"] for r in results["bare"]]),
        "bare_p99_ms": median([r["p99_ms"] for r in results["bare"]]),
        "all_acknowledged_200": ok,
        "stored_events": stored,
        "deliveries_sent_to_receiver": sent_to_receiver,
        "rounds": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=5000, help="deliveries per round and server")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    pg_default = "both" if os.environ.get("NEOLEADS_TEST_PG_URL") else "sqlite"
    parser.add_argument("--db", choices=("sqlite", "postgresql", "both"), default=pg_default)
    args = parser.parse_args()
    figures: list[dict[str, Any]] = []
    with workdir("neoleads-bench-receiver-") as home:
        if args.db in ("sqlite", "both"):
            figures.append(measure("sqlite", f"sqlite:///{home / 'events.db'}", args, home))
        if args.db in ("postgresql", "both"):
            base = os.environ.get("NEOLEADS_TEST_PG_URL")
            if not base:
                raise SystemExit("--db postgresql needs NEOLEADS_TEST_PG_URL")
            url, schema = pg_schema_url(base)
            try:
                figures.append(measure("postgresql", url, args, home))
            finally:
                drop_pg_schema(base, schema)
    emit(
        "receiver_throughput",
        {
            "concurrency": args.concurrency,
            "deliveries_per_round": args.deliveries,
            "rounds": args.rounds,
            "results": [{k: v for k, v in f.items() if k != "rounds"} for f in figures],
            "rounds_detail": {f["db"]: f["rounds"] for f in figures},
        },
    )


if __name__ == "__main__":
    main()
