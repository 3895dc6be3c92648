"""The names in a Neoleads (Chatwoot) webhook event: which events exist, which are about messages, and types.

Stdlib only and cheap to import: DAG files, the sandbox, the receiver and the store all check names here.
"""

from __future__ import annotations

import re

__all__ = [
    "EVENT_NAME_MAX_LENGTH",
    "EVENT_NAME_PATTERN",
    "INBOX_SCOPED_EVENTS",
    "KNOWN_EVENTS",
    "MESSAGE_EVENTS",
    "MESSAGE_TYPES",
    "WEBHOOK_EVENTS",
]

# Chatwoot's Webhook::ALLOWED_WEBHOOK_EVENTS (app/models/webhook.rb), in its order, underscored as in the
# payload's "event". Filters check names against it: a misspelt one would make a sensor wait until it times out.
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
KNOWN_EVENTS = frozenset(WEBHOOK_EVENTS)
MESSAGE_EVENTS = frozenset({"message_created", "message_updated"})
#: Events whose payload is an inbox with its channel record (credentials included, see events.redact).
INBOX_EVENTS = frozenset({"inbox_created", "inbox_updated"})

# What an API inbox's own webhook_url receives: every inbox-scoped event, with no subscription filter
# (account webhooks alone get contact_* and inbox_*).
INBOX_SCOPED_EVENTS = frozenset(
    {
        "conversation_created",
        "conversation_updated",
        "conversation_status_changed",
        "message_created",
        "message_updated",
        "conversation_typing_on",
        "conversation_typing_off",
        "webwidget_triggered",
    }
)

# A message's type by its REST integer (the index) and webhook name.
MESSAGE_TYPES: tuple[str, ...] = ("incoming", "outgoing", "activity", "template")

# What the receiver accepts as an event name: also names this provider does not know yet (a newer
# server's), as long as they are short and plain. The OpenAPI document states the same rule.
EVENT_NAME_MAX_LENGTH = 64
EVENT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:\-]*$"
EVENT_NAME_RE = re.compile(EVENT_NAME_PATTERN)
