"""Send a message to every contact in a CSV file: the bulk outreach flow.

``dags/data/contacts.csv`` has one contact per line (``name``, ``email``, ``phone_number``, ``identifier``,
``custom_attributes.<key>`` columns and an optional per-row ``content``). Rows without ``content`` get
``message_template``, filled from the row's columns with ``$name``-style placeholders.

Each contact gets at most one message per DAG run, even across task retries or a cleared task: the
operator records every send in the event store and skips what an earlier try already sent. Run it against
the built-in sandbox (``neoleads sandbox``) or trigger it with another ``csv_path``.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param, task

from neoleads_provider.operators import NeoleadsBulkMessageOperator

with DAG(
    dag_id="neoleads_bulk_outreach",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["neoleads", "example"],
    doc_md=__doc__,
    params={
        # Relative paths are read from this DAG file's folder.
        "csv_path": Param("data/contacts.csv", type="string", minLength=1, title="Contacts CSV"),
        "inbox_id": Param(1, type="integer", minimum=1, title="API inbox id"),
    },
) as dag:
    send = NeoleadsBulkMessageOperator(
        task_id="send_to_all",
        rows="{{ params.csv_path }}",
        inbox_id="{{ params.inbox_id }}",
        # $name and $plan come from each row ($$ would be a literal dollar sign); Jinja is rendered first.
        message_template="Hello $name! Your $plan plan has new features this month. Reply to this message "
        "to book a walkthrough.",
        concurrency=4,
        # A retry resumes: rows already sent are skipped, so it is cheap to retry soon.
        retries=2,
        retry_delay=timedelta(seconds=10),
    )

    @task
    def report(result: dict) -> None:
        print(
            f"NEOLEADS BULK total={result['total']} sent={result['sent']} "
            f"skipped={result['skipped']} failed={result['failed']}"
        )

    report(send.output)
