"""Benchmark 1: signed webhook deliveries stored per second by the receiver, against a bare endpoint.

The servers run side by side as separate uvicorn processes started the same way: ``neoleads webhooks
serve`` as a user starts it (its defaults, access log included), the same with ``--no-access-log``, and
``_bare_server.py``, a FastAPI endpoint that only reads the body, served by ``uvicorn.run`` with the same
loop and HTTP implementation. Each delivery is a signed ``message_created`` (1.6 KB, in the server's shape,
with a new delivery id and message id); each one the receiver acknowledges has been verified, parsed and
committed to the event store, and the benchmark checks afterwards that the store holds every one.

Three phases, each over ``--concurrency`` keep-alive connections:

- cold: the first 2,000 deliveries each server gets after it started;
- warm: ``--rounds`` rounds of ``--deliveries``, alternating between the servers (a lean asyncio client);
- wrk: ``--wrk-seconds`` of sustained load from ``wrk -t1`` (Debian's ``wrk``; skipped when not installed),
  twice per server, in opposite orders.

For each it reports deliveries per second, p50 and p99 latency and the server's CPU time per request
(PostgreSQL's too), and compares the default receiver with the bare endpoint.

    python benchmarks/receiver_throughput.py [--deliveries 5000] [--rounds 3] [--concurrency 32] [--wrk-seconds 10] [--db sqlite|postgresql|both]

Goals, at the defaults: at least 0.75 of the bare endpoint's rate, p99 within 3x of its p99, CPU per
delivery within 1.3x of its CPU per request.
"""

from __future__ import annotations

import argparse
import contextlib
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
from _wrk import available as wrk_available
from _wrk import run_wrk

if TYPE_CHECKING:
    from pathlib import Path

SECRET = "benchmark-webhook-secret-0123456789"
CONN_ID = "neoleads_default"
GOAL = 0.75
P99_GOAL = 3.0
CPU_GOAL = 1.3
COLD_DELIVERIES = 2000
#: The default receiver, the same without its access log, and the baseline.
TARGETS = ("receiver", "receiver_no_access_log", "bare")


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


class Target:
    """One server under test: where it listens, its process, and the next delivery number to send it."""

    def __init__(self, name: str, port: int, path: str, pid: int) -> None:
        self.name, self.port, self.path, self.pid = name, port, path, pid

    def deliveries(self, count: int, counter: list[int]) -> list[bytes]:
        requests = deliveries(self.port, self.path, count, counter[0])
        counter[0] += count
        return requests


def _cpu_per_request(db: str, target: Target, requests: int, before: tuple[float, float]) -> dict[str, float]:
    figures = {"server_cpu_ms_per_request": round((cpu_seconds(target.pid) - before[0]) * 1000 / requests, 3)}
    if db == "postgresql":
        # The database server shares the machine's two cores with the receiver and the load.
        figures["postgres_cpu_ms_per_request"] = round(
            (postgres_cpu_seconds() - before[1]) * 1000 / requests, 3
        )
    return figures


def _cpu_now(db: str, target: Target) -> tuple[float, float]:
    return cpu_seconds(target.pid), postgres_cpu_seconds() if db == "postgresql" else 0.0


def _load(db: str, target: Target, requests: list[bytes], concurrency: int) -> dict[str, Any]:
    before = _cpu_now(db, target)
    result = run_load("127.0.0.1", target.port, requests, concurrency)
    return {**result, **_cpu_per_request(db, target, len(requests), before)}


def _wrk(db: str, target: Target, args: argparse.Namespace, counter: list[int], home: Path) -> dict[str, Any]:
    # Enough distinct deliveries for a fast server's whole run (none is sent twice).
    requests = target.deliveries(int(args.wrk_seconds * 8000), counter)
    before = _cpu_now(db, target)
    result = run_wrk(
        f"http://127.0.0.1:{target.port}/",
        requests,
        seconds=args.wrk_seconds,
        connections=args.concurrency,
        workdir=home,
        name=target.name,
    )
    return {**result, **_cpu_per_request(db, target, result["requests"], before)}


def _compare(phase: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The default receiver against the bare endpoint, in one phase."""
    receiver, bare = phase["receiver"], phase["bare"]
    rate = round(receiver["per_second"] / bare["per_second"], 3)
    p99 = round(receiver["p99_ms"] / bare["p99_ms"], 2)
    cpu = round(receiver["server_cpu_ms_per_request"] / bare["server_cpu_ms_per_request"], 2)
    return {
        "rate_ratio": rate,
        "p99_ratio": p99,
        "cpu_ratio": cpu,
        "meets_rate_goal": rate >= GOAL,
        "meets_p99_goal": p99 <= P99_GOAL,
        "meets_cpu_goal": cpu <= CPU_GOAL,
    }


def _median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [k for k, v in rounds[0].items() if isinstance(v, int | float) and not isinstance(v, bool)]
    return {key: round(median([r[key] for r in rounds]), 3) for key in keys}


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
    ports = {name: free_port() for name in TARGETS}
    serve = [PYTHON, "-m", "neoleads_provider.cli", "webhooks", "serve", "--db-url", db_url]
    commands = {
        "receiver": [*serve, "--port", str(ports["receiver"])],
        "receiver_no_access_log": [*serve, "--port", str(ports["receiver_no_access_log"]), "--no-access-log"],
        "bare": [PYTHON, str(REPO / "benchmarks" / "_bare_server.py"), str(ports["bare"])],
    }
    prefix = {"bare": "/bare"}
    counter = [1]
    sent = 0
    with contextlib.ExitStack() as stack:
        targets = []
        for name in TARGETS:
            root = prefix.get(name, "/neoleads")
            process = stack.enter_context(
                server_process(
                    commands[name],
                    env,
                    f"http://127.0.0.1:{ports[name]}{root}/_health",
                    home / f"{name}-{db}.log",
                )
            )
            targets.append(Target(name, ports[name], f"{root}/webhooks/{CONN_ID}", process.pid))
        figures: dict[str, Any] = {"cold": {}, "warm": {}, "wrk": {}}
        for target in targets:
            result = _load(db, target, target.deliveries(COLD_DELIVERIES, counter), args.concurrency)
            sent += COLD_DELIVERIES if target.name != "bare" else 0
            figures["cold"][target.name] = result
            log(f"[{db}] cold {target.name}: {_line(result)}")
        rounds: dict[str, list[dict[str, Any]]] = {target.name: [] for target in targets}
        for number in range(args.rounds):
            # Every other round in reverse: whoever goes first after a pause runs on a different machine.
            for target in targets if number % 2 == 0 else targets[::-1]:
                result = _load(db, target, target.deliveries(args.deliveries, counter), args.concurrency)
                sent += args.deliveries if target.name != "bare" else 0
                rounds[target.name].append(result)
                log(f"[{db}] warm round {number + 1} {target.name}: {_line(result)}")
        figures["warm"] = {name: _median_round(results) for name, results in rounds.items()}
        if args.wrk_seconds and wrk_available():
            runs: dict[str, list[dict[str, Any]]] = {target.name: [] for target in targets}
            for order in (targets, targets[::-1]):
                for target in order:
                    result = _wrk(db, target, args, counter, home)
                    sent += result["requests"] if target.name != "bare" else 0
                    runs[target.name].append(result)
                    log(f"[{db}] wrk {target.name}: {_line(result)}")
            figures["wrk"] = {name: _median_round(results) for name, results in runs.items()}
            rounds.update({f"wrk_{name}": results for name, results in runs.items()})
        else:
            log(f"[{db}] wrk is not installed (apt-get install wrk): the wrk phase is skipped")
            del figures["wrk"]

    def all_answered_200(result: dict[str, Any]) -> bool:
        if "statuses" in result:
            return set(result["statuses"]) == {"200"}
        return not result["non_2xx"] and not result["socket_errors"]

    acknowledged = all(
        all_answered_200(result)
        for name, results in [*rounds.items(), *((f"cold_{n}", [r]) for n, r in figures["cold"].items())]
        if not name.endswith("bare")
        for result in results
    )
    stored = stored_count(db_url)
    return {
        "db": db,
        **{phase: {"comparison": _compare(values), **values} for phase, values in figures.items()},
        "all_acknowledged_200": acknowledged,
        "stored_events": stored,
        # wrk counts the answers it read: deliveries still in flight when a run ends are stored unanswered.
        "acknowledged_deliveries": sent,
        "every_acknowledged_delivery_stored": stored >= sent,
        "rounds": rounds,
    }


def _line(result: dict[str, Any]) -> str:
    cpu = result["server_cpu_ms_per_request"]
    extra = (
        f" (+{result['postgres_cpu_ms_per_request']} ms in PostgreSQL)"
        if "postgres_cpu_ms_per_request" in result
        else ""
    )
    return f"{result['per_second']}/s p50 {result['p50_ms']} ms p99 {result['p99_ms']} ms cpu {cpu} ms/request{extra}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=5000, help="deliveries per warm round and server")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--wrk-seconds", type=float, default=10, help="length of each wrk run; 0 skips them")
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
            "wrk_seconds": args.wrk_seconds,
            "goals": {"rate_ratio": GOAL, "p99_ratio": P99_GOAL, "cpu_ratio": CPU_GOAL},
            "results": [{k: v for k, v in f.items() if k != "rounds"} for f in figures],
            "rounds_detail": {f["db"]: f["rounds"] for f in figures},
        },
    )


if __name__ == "__main__":
    main()
