"""Create a contact, open a conversation and send a message: the whole Neoleads send flow.

Trigger it from the UI's form (the params below) or run it against the built-in sandbox with
``make demo``. Each step hands its ids to the next through XCom.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param, task

from neoleads_provider.operators import (
    NeoleadsCreateContactOperator,
    NeoleadsCreateConversationOperator,
    NeoleadsSendMessageOperator,
)

with DAG(
    dag_id="neoleads_send_message",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["neoleads", "example"],
    doc_md=__doc__,
    params={
        "name": Param("Ada Lovelace", type="string", minLength=1, maxLength=255, title="Contact name"),
        "email": Param("ada@example.com", type="string", format="idn-email", title="Contact email"),
        "inbox_id": Param(1, type="integer", minimum=1, title="API inbox id"),
        "message": Param(
            "Hello from Airflow! Reply to this message to continue.",
            type="string",
            minLength=1,
            title="Message",
        ),
    },
) as dag:
    contact = NeoleadsCreateContactOperator(
        task_id="create_contact",
        name="{{ params.name }}",
        contact_email="{{ params.email }}",
        inbox_id="{{ params.inbox_id }}",
    )
    conversation = NeoleadsCreateConversationOperator(
        task_id="create_conversation",
        source_id=contact.output["source_id"],
    )
    message = NeoleadsSendMessageOperator(
        task_id="send_message",
        conversation_id=conversation.output["conversation_id"],
        content="{{ params.message }}",
    )

    @task
    def report(contact_id: int, source_id: str, conversation_id: int, message_id: int) -> None:
        print(
            f"NEOLEADS RESULT contact_id={contact_id} source_id={source_id} "
            f"conversation_id={conversation_id} message_id={message_id}"
        )

    report(
        contact.output["contact_id"],
        contact.output["source_id"],
        conversation.output["conversation_id"],
        message.output["message_id"],
    )
