"""DAGs for benchmarks/bulk_outreach.py: the same outreach as one bulk task, and as one mapped task per contact.

Both read ``BENCH_CONTACTS_CSV`` (name, email, content); ``BENCH_MAPPED_LIMIT`` caps the mapped DAG's
contacts. Not example DAGs: they exist to be timed under ``airflow dags test``.
"""

from __future__ import annotations

import csv
import json
import os

import pendulum
from airflow.sdk import DAG, task

from neoleads_provider.operators import NeoleadsBulkMessageOperator

START = pendulum.datetime(2026, 1, 1, tz="UTC")
CSV_PATH = os.environ.get("BENCH_CONTACTS_CSV", "/nonexistent.csv")

with DAG(dag_id="bench_bulk_outreach", schedule=None, start_date=START, catchup=False):
    bulk = NeoleadsBulkMessageOperator(
        task_id="send_to_all",
        rows=CSV_PATH,
        inbox_id=1,
        concurrency=int(os.environ.get("BENCH_CONCURRENCY", "16")),
        # The sandbox, like a Neoleads server seen from loopback, has no request limit.
        requests_per_minute=None,
        max_xcom_rows=0,
    )

    @task
    def report_bulk(result: dict) -> None:
        print("BENCH BULK " + json.dumps({k: v for k, v in result.items() if k != "rows"}))

    report_bulk(bulk.output)


with DAG(dag_id="bench_mapped_outreach", schedule=None, start_date=START, catchup=False):

    @task
    def contacts() -> list[dict]:
        limit = int(os.environ.get("BENCH_MAPPED_LIMIT", "10"))
        with open(CSV_PATH, newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))[:limit]

    @task
    def send_one(row: dict, **context) -> int:
        """What the bulk operator does for one row, as its own task instance."""
        from neoleads_provider.hooks.neoleads import NeoleadsHook
        from neoleads_provider.operators.messages import task_source_id

        hook = NeoleadsHook()
        found = hook.get_or_create_contact(name=row["name"], email=row["email"], inbox_id=1)
        conversation = hook.create_conversation(
            source_id=found["source_id"], inbox_id=1, contact_id=found["contact"]["id"]
        )
        message = hook.send_message(conversation["id"], row["content"], source_id=task_source_id(context))
        return int(message["id"])

    send_one.expand(row=contacts())
