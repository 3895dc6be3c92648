"""Answer every incoming customer message, event-driven: no schedule, no sensor, no polling DAG runs.

The provider's webhook receiver stores each ``message_created`` delivery; the asset's watcher
(``NeoleadsEventTrigger``, running in the triggerer) turns every new incoming, non-private message received
for ``CONN_ID`` into an asset event, and each asset event queues a run of this DAG. The run reads the
messages from ``triggering_asset_events`` (Airflow 3.1-3.3 batch the events queued meanwhile into one run;
3.4 starts one run per event by default) and answers each in its conversation.

The answers are outgoing messages: their own ``message_created`` echo never matches the watcher's filter,
so the DAG never answers itself. Each answer carries a ``source_id`` derived from the message it answers,
and a message that already has its answer is skipped, so an event delivered twice (a triggerer killed just
after firing it: a few seconds' window on Airflow 3.1/3.2, a few milliseconds on 3.3+) is answered once.
One run at a time (``max_active_runs=1``) keeps that check race-free when both copies start runs.

The answer is chosen from fixed texts and never quotes the customer: operator arguments are Jinja
templates, and text a customer wrote must never be rendered as one (``{{ conn... }}`` would leak secrets).

Unpause the DAG to start watching; the watcher begins at the current end of the event store, so old
messages are never answered.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Asset, AssetWatcher, task

from neoleads_provider.operators import NeoleadsSendMessageOperator
from neoleads_provider.triggers.events import NeoleadsEventTrigger

CONN_ID = "neoleads_default"
# None answers every inbox of the account; set an inbox id to answer only that one.
INBOX_ID: int | None = None
REPLY_SOURCE_PREFIX = "neoleads-auto-reply-"
# (words that select an answer, the answer); the first match wins.
ANSWERS = (
    (
        ("price", "pricing", "cost", "quote"),
        "Thanks for asking! Our price list is on its way; an agent will follow up today.",
    ),
    (("hours", "open", "opening"), "Thanks for your message! We are open Monday to Friday, 9:00 to 18:00."),
)
DEFAULT_ANSWER = "Thanks for your message! A member of our team will get back to you shortly."

incoming_messages = Asset(
    "neoleads_incoming_messages",
    watchers=[
        AssetWatcher(
            name="neoleads_incoming_messages",
            # Incoming (from the contact), non-private message_created events only: the defaults.
            trigger=NeoleadsEventTrigger(
                neoleads_conn_id=CONN_ID, events=["message_created"], inbox_id=INBOX_ID, poll_interval=1.0
            ),
        )
    ],
)


def choose_answer(content: str | None) -> str:
    """Pick the fixed answer for a customer's message (never a text built from it)."""
    words = set((content or "").lower().replace("?", " ").replace(",", " ").replace(".", " ").split())
    for keywords, answer in ANSWERS:
        if words & set(keywords):
            return answer
    return DEFAULT_ANSWER


with DAG(
    dag_id="neoleads_auto_reply",
    schedule=incoming_messages,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    # A message delivered twice must not be answered by two overlapping runs (see the module docstring).
    max_active_runs=1,
    tags=["neoleads", "example", "event-driven"],
    doc_md=__doc__,
) as dag:

    @task
    def plan_replies(**context) -> list[dict]:
        """One answer per triggering message that is from the contact and not answered yet."""
        from neoleads_provider.hooks.neoleads import NeoleadsHook

        hook = NeoleadsHook(neoleads_conn_id=CONN_ID)
        replies: list[dict] = []
        planned: set[str] = set()
        for asset_event in context["triggering_asset_events"][incoming_messages]:
            event = (asset_event.extra or {}).get("payload")
            if not isinstance(event, dict):
                continue
            # The watcher only fires on incoming, public messages; checked again here because answering
            # our own (outgoing) answer would loop forever.
            if event.get("message_type") != "incoming" or event.get("private"):
                continue
            conversation_id, message_id = event.get("conversation_id"), event.get("message_id")
            if conversation_id is None or message_id is None:
                continue
            source_id = f"{REPLY_SOURCE_PREFIX}{message_id}"
            if source_id in planned or hook.find_message_by_source_id(conversation_id, source_id):
                print(f"NEOLEADS AUTO-REPLY skip message_id={message_id}: already answered")
                continue
            planned.add(source_id)
            print(f"NEOLEADS AUTO-REPLY conversation_id={conversation_id} message_id={message_id}")
            replies.append(
                {
                    "conversation_id": conversation_id,
                    "source_id": source_id,
                    "content": choose_answer((event.get("payload") or {}).get("content")),
                }
            )
        return replies

    NeoleadsSendMessageOperator.partial(task_id="answer", neoleads_conn_id=CONN_ID).expand_kwargs(
        plan_replies()
    )
