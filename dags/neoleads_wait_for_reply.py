"""Send a question, wait (deferred, holding no worker slot) for the customer's reply, then act on it.

The reply arrives as a ``message_created`` webhook: the provider's receiver verifies and stores it, and
the sensor matches it to this conversation. Only incoming, non-private messages newer than the one this
DAG sent can match, so the echo of our own message never ends the wait.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param, task

from neoleads_provider.operators import (
    NeoleadsCreateContactOperator,
    NeoleadsCreateConversationOperator,
    NeoleadsSendMessageOperator,
)
from neoleads_provider.sensors.webhook import NeoleadsWebhookSensor

with DAG(
    dag_id="neoleads_wait_for_reply",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["neoleads", "example"],
    doc_md=__doc__,
    params={
        "name": Param("Grace Hopper", type="string", minLength=1, title="Contact name"),
        "email": Param("grace@example.com", type="string", format="idn-email", title="Contact email"),
        "inbox_id": Param(1, type="integer", minimum=1, title="API inbox id"),
        "question": Param("Would you like a demo next week? Reply yes or no.", type="string", minLength=1),
    },
) as dag:
    contact = NeoleadsCreateContactOperator(
        task_id="create_contact",
        name="{{ params.name }}",
        contact_email="{{ params.email }}",
        inbox_id="{{ params.inbox_id }}",
    )
    conversation = NeoleadsCreateConversationOperator(
        task_id="create_conversation", source_id=contact.output["source_id"]
    )
    question = NeoleadsSendMessageOperator(
        task_id="ask",
        conversation_id=conversation.output["conversation_id"],
        content="{{ params.question }}",
    )
    reply = NeoleadsWebhookSensor(
        task_id="wait_for_reply",
        conversation_id=conversation.output["conversation_id"],
        after_message_id=question.output["message_id"],
        deferrable=True,
        poll_api=True,
        poke_interval=1,
        timeout=3600,
    )

    @task
    def decide(event: dict) -> str:
        content = (event["payload"].get("content") or "").strip()
        print(f"NEOLEADS REPLY conversation_id={event['conversation_id']} content={content!r}")
        if content.lower().startswith("yes"):
            return "Great, our team will send you an invitation today."
        return "Thanks for letting us know. We are here whenever you need us."

    answer = NeoleadsSendMessageOperator(
        task_id="answer",
        conversation_id=conversation.output["conversation_id"],
        content=decide(reply.output),
    )
