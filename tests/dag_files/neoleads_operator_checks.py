"""DAGs the tests run with `airflow dags test` to exercise the operators in a real Airflow run."""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG

from neoleads_provider.operators import (
    NeoleadsCreateContactOperator,
    NeoleadsCreateConversationOperator,
    NeoleadsSendMessageOperator,
)

START = pendulum.datetime(2026, 1, 1, tz="UTC")

# A send whose first try times out after the server stored the message: the retry must not send it again.
with DAG(dag_id="neoleads_retry_send", schedule=None, start_date=START, catchup=False):
    contact = NeoleadsCreateContactOperator(
        task_id="create_contact", name="Retry Ray", contact_email="ray@example.com", inbox_id=1
    )
    conversation = NeoleadsCreateConversationOperator(
        task_id="create_conversation", source_id=contact.output["source_id"]
    )
    NeoleadsSendMessageOperator(
        task_id="send_message",
        conversation_id=conversation.output["conversation_id"],
        content="exactly once",
        # Exercise the retry path: the first try gives up at once instead of reconciling itself.
        reconcile_timeout=0,
        retries=2,
        retry_delay=timedelta(seconds=0),
    )

# Ids arrive as rendered template strings and from inbox_id + contact_id instead of a source_id.
with DAG(dag_id="neoleads_templated_ids", schedule=None, start_date=START, catchup=False):
    contact = NeoleadsCreateContactOperator(
        task_id="create_contact", name="Tem Plate", identifier="crm-7", inbox_id="{{ 1 }}", if_exists="fail"
    )
    conversation = NeoleadsCreateConversationOperator(
        task_id="create_conversation",
        inbox_id="{{ ti.xcom_pull(task_ids='create_contact', key='inbox_id') }}",
        contact_id="{{ ti.xcom_pull(task_ids='create_contact', key='contact_id') }}",
        status="pending",
        message="first message",
    )
    note = NeoleadsSendMessageOperator(
        task_id="private_note",
        conversation_id="{{ ti.xcom_pull(task_ids='create_conversation', key='conversation_id') }}",
        content="note for agents",
        private="{{ 'True' }}",
    )
    # Jinja xcom_pull adds no dependency by itself.
    contact >> conversation >> note

# The first hour's failures, as a user meets them: a contact in an inbox that does not exist, and a sensor
# whose reply never comes (its connection has no webhook secret, so it also warns that it cannot succeed).
with DAG(dag_id="neoleads_first_hour_failures", schedule=None, start_date=START, catchup=False):
    from neoleads_provider.sensors.webhook import NeoleadsWebhookSensor

    NeoleadsCreateContactOperator(task_id="contact_in_a_missing_inbox", name="Lost Lou", inbox_id=99)
    NeoleadsWebhookSensor(
        task_id="reply_that_never_comes",
        conversation_id=4242,
        after_message_id=1,
        mode="poke",
        poke_interval=0.5,
        timeout=2,
    )
