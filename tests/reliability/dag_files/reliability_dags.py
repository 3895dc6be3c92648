"""DAGs the reliability tests run with ``airflow dags test`` (never collected by pytest: no ``test_`` prefix)."""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param, task

from neoleads_provider.operators import (
    NeoleadsCreateContactOperator,
    NeoleadsCreateConversationOperator,
    NeoleadsSendMessageOperator,
)
from neoleads_provider.sensors.webhook import NeoleadsWebhookSensor

START = pendulum.datetime(2026, 1, 1, tz="UTC")

# The event store goes down while this sensor waits: it must wait the outage out, not fail.
with DAG(
    dag_id="neoleads_rel_wait_through_outage",
    schedule=None,
    start_date=START,
    catchup=False,
    params={"conversation_id": Param(4242, type="integer")},
):
    waited = NeoleadsWebhookSensor(
        task_id="wait",
        conversation_id="{{ params.conversation_id }}",
        after_message_id=0,
        deferrable=True,
        trigger_poll_interval=0.5,
        timeout=240,
        retries=0,
    )

    @task
    def report(event: dict) -> None:
        print(f"NEOLEADS OUTAGE MATCH delivery_id={event['delivery_id']} message_id={event['message_id']}")

    report(waited.output)


# Contact -> conversation -> message under injected API faults, with Airflow task retries.
with DAG(
    dag_id="neoleads_rel_send_under_faults",
    schedule=None,
    start_date=START,
    catchup=False,
    params={
        "email": Param("faults@example.com", type="string"),
        "message": Param("sent exactly once", type="string"),
    },
    default_args={"retries": 4, "retry_delay": timedelta(seconds=0)},
):
    contact = NeoleadsCreateContactOperator(
        task_id="create_contact", name="Fault Tolerant", contact_email="{{ params.email }}", inbox_id=1
    )
    conversation = NeoleadsCreateConversationOperator(
        task_id="create_conversation", source_id=contact.output["source_id"]
    )
    sent = NeoleadsSendMessageOperator(
        task_id="send_message",
        conversation_id=conversation.output["conversation_id"],
        content="{{ params.message }}",
        # Long enough for the slow-commit scenario (4 s), short enough that a send that never arrived
        # does not hold the test up for the default minute.
        reconcile_timeout=8,
    )

    @task
    def report(contact_id: int, conversation_id: int, message_id: int) -> None:
        print(
            f"NEOLEADS FAULTS RESULT contact_id={contact_id} conversation_id={conversation_id} message_id={message_id}"
        )

    report(contact.output["contact_id"], conversation.output["conversation_id"], sent.output["message_id"])
