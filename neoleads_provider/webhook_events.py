"""The webhook event names Neoleads sends: Chatwoot's ``ALLOWED_WEBHOOK_EVENTS`` (app/models/webhook.rb).

The one list the hook, the event store's filters and the sandbox check names against. It imports nothing, so
DAG files, the sandbox and the store's matching module can use it without loading Airflow.
"""

from __future__ import annotations

__all__ = ["WEBHOOK_EVENTS"]

# In Chatwoot's order, underscored as in the payload's "event".
WEBHOOK_EVENTS: tuple[str, ...] = (
    "conversation_status_changed",
    "conversation_updated",
    "conversation_created",
    "contact_created",
    "contact_updated",
    "message_created",
    "message_updated",
    "webwidget_triggered",
    "inbox_created",
    "inbox_updated",
    "conversation_typing_on",
    "conversation_typing_off",
)
