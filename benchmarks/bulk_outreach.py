"""Benchmark 5: bulk outreach to 10,000 contacts against the sandbox, vs one mapped task per contact.

The sandbox (``neoleads sandbox``) runs in its own process. Every contact is new, so each costs three API
requests: create the contact (with its contact inbox), open a conversation, send the message.

1. **Bulk**: ``bench_bulk_outreach`` (benchmarks/dags/bench_outreach.py) under ``airflow dags test``: one
   NeoleadsBulkMessageOperator task for all ``--contacts``, ``--concurrency`` threads, no client-side rate
   limit (the sandbox, like a Neoleads server seen from loopback, has none; at the default 2400 requests/min
   the limit alone caps a send at 800 new contacts a minute, checked in step 4).
2. **Mapped** (baseline): ``bench_mapped_outreach`` under ``airflow dags test``: the same three calls in a
   ``@task`` mapped over the contacts, one task instance per contact. Mapping 10,000 items is refused at the
   default ``[core] max_map_length`` (1024), so two sizes (``--mapped``, default 20 and 100) are run, the
   cost of one more instance is their time difference divided by their size difference, and the
   10,000-contact time is extrapolated from it. This is an estimate and says so: ``dags test`` runs the
   instances one after another in one process, without a scheduler or executor; a deployment with N worker
   slots runs N at once, but adds scheduling and process start-up time to each instance.
3. **Resume**: the bulk send again (same contacts, a fresh sandbox), run directly as a task instance in a
   subprocess, with two messages stored while the client sees a 500, killed (SIGKILL) halfway and run again
   as the same task instance; the sandbox must end with exactly one message per contact.
4. **Rate limit**: ``--limited`` contacts at the default 2400 requests/min; reports the observed rate.

    python benchmarks/bulk_outreach.py [--contacts 10000] [--mapped 20,100] [--concurrency 16] [--skip-resume]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import textwrap
import time
import urllib.request
from typing import TYPE_CHECKING, Any

from _common import PYTHON, REPO, base_env, emit, free_port, log, server_process, workdir

if TYPE_CHECKING:
    from pathlib import Path


def control(base: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    method = "GET" if body is None and path == "state" else "POST"
    request = urllib.request.Request(
        f"{base}/_sandbox/{path}", data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"{}")


def counts(base: str) -> dict[str, int]:
    return control(base, "state")


def write_contacts(path: Path, count: int) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "email", "content"])
        for number in range(count):
            writer.writerow(
                [
                    f"Contact {number}",
                    f"contact{number}@example.com",
                    f"Hello Contact {number}, a quick note.",
                ]
            )


def dags_test(airflow: str, dag_id: str, env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(
        [airflow, "dags", "test", dag_id], env=env, capture_output=True, text=True, timeout=7200, check=False
    )
    elapsed = time.perf_counter() - started
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise RuntimeError(f"airflow dags test {dag_id} failed:\n{output[-4000:]}")
    return elapsed, output


RESUME_SCRIPT = textwrap.dedent(
    """
    import sys
    from neoleads_provider.operators import NeoleadsBulkMessageOperator

    class TI:
        dag_id, run_id, task_id, map_index, try_number = "bench_resume", sys.argv[4], "send", -1, 1
        def xcom_push(self, key, value):
            pass

    operator = NeoleadsBulkMessageOperator(
        task_id="send", rows=sys.argv[1], inbox_id=1, concurrency=int(sys.argv[2]),
        requests_per_minute=None if sys.argv[3] == "none" else float(sys.argv[3]),
        max_failures=1_000_000, max_xcom_rows=0,
    )
    result = operator.execute({"ti": TI()})
    print("RESULT " + __import__("json").dumps({k: v for k, v in result.items() if k != "rows"}), flush=True)
    """
)


def run_operator(
    env: dict[str, str], csv_path: Path, concurrency: int, rate: str, run_id: str
) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    result = subprocess.run(
        [PYTHON, "-c", RESUME_SCRIPT, str(csv_path), str(concurrency), rate, run_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=7200,
        check=False,
    )
    elapsed = time.perf_counter() - started
    line = next((line for line in result.stdout.splitlines() if line.startswith("RESULT ")), None)
    if result.returncode != 0 or line is None:
        raise RuntimeError(f"the bulk send failed:\n{(result.stdout + result.stderr)[-4000:]}")
    return elapsed, json.loads(line[len("RESULT ") :])


def resume(
    env: dict[str, str], base: str, csv_path: Path, contacts: int, concurrency: int, events_db: str
) -> dict[str, Any]:
    control(base, "reset", {})
    control(
        base,
        "faults",
        {"status": 500, "after_commit": True, "method": "POST", "path": "/messages", "count": 2},
    )
    process = subprocess.Popen(
        [PYTHON, "-c", RESUME_SCRIPT, str(csv_path), str(concurrency), "none", "manual__resume"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 3600
        while counts(base)["messages"] < contacts // 2:
            if process.poll() is not None:
                raise RuntimeError("the first run ended before it could be killed")
            if time.monotonic() > deadline:
                raise RuntimeError("the first run did not get halfway within an hour")
            time.sleep(0.05)
        process.kill()
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(60)
    at_kill = counts(base)["messages"]
    log(f"resume: killed the first run at {at_kill} messages")
    elapsed, result = run_operator(env, csv_path, concurrency, "none", "manual__resume")
    final = counts(base)
    from sqlalchemy import create_engine

    from neoleads_provider.store.sends import SendKey, count_by_state, load_records

    engine = create_engine(events_db)
    with engine.connect() as conn:
        key = SendKey("bench_resume", "manual__resume", "send", -1)
        states = count_by_state(conn, key)
        message_ids = {record.message_id for record in load_records(conn, key).values()}
    engine.dispose()
    ok = (
        final["messages"] == contacts
        and final["contacts"] == contacts
        and final["conversations"] == contacts
        and states == {"sent": contacts}
        and len(message_ids) == contacts
    )
    if not ok:
        raise RuntimeError(
            f"resume check failed: sandbox {final}, records {states}, distinct {len(message_ids)}"
        )
    return {
        "messages_when_killed": at_kill,
        "rerun_seconds": round(elapsed, 1),
        "rerun_result": result,
        "sandbox_messages": final["messages"],
        "sandbox_contacts": final["contacts"],
        "records": states,
        "nothing_sent_twice": ok,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=10_000)
    parser.add_argument("--mapped", default="20,100", help="two mapped-DAG sizes to time")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--limited", type=int, default=200, help="contacts for the rate-limit check (0: skip)"
    )
    parser.add_argument("--skip-resume", action="store_true")
    args = parser.parse_args()
    small, large = sorted(int(size) for size in args.mapped.split(","))
    airflow = str(os.path.join(os.path.dirname(PYTHON), "airflow"))
    figures: dict[str, Any] = {"contacts": args.contacts, "concurrency": args.concurrency}
    with workdir("neoleads-bench-bulk-") as home:
        env = base_env(home)
        events_db = f"sqlite:///{home / 'events.db'}"
        env["AIRFLOW__NEOLEADS__EVENTS_DB_URL"] = events_db
        env["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "benchmarks" / "dags")
        csv_path = home / "contacts.csv"
        write_contacts(csv_path, args.contacts)
        env["BENCH_CONTACTS_CSV"] = str(csv_path)
        env["BENCH_CONCURRENCY"] = str(args.concurrency)
        log("airflow db migrate")
        subprocess.run([airflow, "db", "migrate"], env=env, capture_output=True, check=True, timeout=600)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env["AIRFLOW_CONN_NEOLEADS_DEFAULT"] = json.dumps(
            {"conn_type": "neoleads", "host": base, "password": "sandbox-token", "extra": {"account_id": 1}}
        )
        sandbox = [PYTHON, "-m", "neoleads_provider.cli", "sandbox", "--port", str(port)]
        with server_process(sandbox, env, f"{base}/_sandbox/state", home / "sandbox.log"):
            # 1. Bulk.
            control(base, "reset", {})
            log(f"bulk: {args.contacts} contacts under airflow dags test")
            wall, output = dags_test(airflow, "bench_bulk_outreach", env)
            match = re.search(r"BENCH BULK (\{.*\})", output)
            if match is None:
                raise RuntimeError(output[-3000:])
            result = json.loads(match.group(1))
            state = counts(base)
            if state["messages"] != args.contacts or result["sent"] != args.contacts:
                raise RuntimeError(f"bulk run sent {result['sent']}, sandbox holds {state['messages']}")
            task_seconds = result["elapsed_seconds"]
            figures["bulk"] = {
                "dag_run_seconds": round(wall, 1),
                "task_send_seconds": task_seconds,
                "contacts_per_second_dag_run": round(args.contacts / wall, 1),
                "contacts_per_second_task": round(args.contacts / task_seconds, 1),
                "api_requests": 3 * args.contacts + 1,
            }
            log(f"bulk: {figures['bulk']}")
            # 2. Mapped, two sizes.
            timings = {}
            for size in (small, large):
                control(base, "reset", {})
                env["BENCH_MAPPED_LIMIT"] = str(size)
                log(f"mapped: {size} task instances under airflow dags test")
                timings[size], _ = dags_test(airflow, "bench_mapped_outreach", env)
                if counts(base)["messages"] != size:
                    raise RuntimeError(f"mapped run of {size} left {counts(base)['messages']} messages")
                log(f"mapped: {size} instances in {timings[size]:.1f} s")
            per_instance = (timings[large] - timings[small]) / (large - small)
            fixed = timings[small] - small * per_instance
            estimate = fixed + args.contacts * per_instance
            figures["mapped"] = {
                "measured": {str(size): round(seconds, 1) for size, seconds in timings.items()},
                "seconds_per_task_instance": round(per_instance, 3),
                "estimated_seconds_for_all": round(estimate, 1),
                "contacts_per_second": round(args.contacts / estimate, 2),
                "method": f"(T({large}) - T({small})) / {large - small} per instance, extrapolated; "
                "instances run one at a time under airflow dags test",
            }
            figures["ratio_bulk_vs_mapped"] = round(
                figures["bulk"]["contacts_per_second_dag_run"] / figures["mapped"]["contacts_per_second"], 1
            )
            log(f"mapped: {figures['mapped']}")
            # 3. Resume after a kill.
            if not args.skip_resume:
                figures["resume"] = resume(env, base, csv_path, args.contacts, args.concurrency, events_db)
                log(f"resume: {figures['resume']}")
            # 4. The default rate limit.
            if args.limited:
                control(base, "reset", {})
                limited_csv = home / "limited.csv"
                write_contacts(limited_csv, args.limited)
                env_limited = {**env, "BENCH_CONTACTS_CSV": str(limited_csv)}
                _, result = run_operator(
                    env_limited, limited_csv, args.concurrency, "2400", "manual__limited"
                )
                # The timed part starts after the inbox check: three requests per contact.
                requests_made = 3 * args.limited
                send_seconds = result["elapsed_seconds"]
                burst = 2400 // 60  # the bucket starts full: one second's worth
                figures["rate_limited"] = {
                    "contacts": args.limited,
                    "requests_per_minute_limit": 2400,
                    "observed_requests_per_minute": round(requests_made / send_seconds * 60, 1),
                    "observed_after_initial_burst": round((requests_made - burst) / send_seconds * 60, 1),
                    "contacts_per_second": round(args.limited / send_seconds, 2),
                }
                log(f"rate limit: {figures['rate_limited']}")
    emit("bulk_outreach", figures)


if __name__ == "__main__":
    main()
