"""Build webhook payloads shaped like the Neoleads (Chatwoot) server's: the one writer of payload shapes.

The sandbox renders its deliveries with these, ``neoleads webhooks send-test`` and the benchmarks build their
samples with :func:`sample_event`, and the sensor reshapes a REST message read back from the API with
:func:`message_event_from_api`. Key order and value types follow the server's ``webhook_data`` methods
(``app/models/message.rb``, ``app/presenters/conversations/event_data_presenter.rb``).
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from neoleads_provider.events.fields import message_type_name
from neoleads_provider.events.names import MESSAGE_EVENTS

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = [
    "account_data",
    "contact_inbox_data",
    "contact_push_data",
    "contact_webhook_data",
    "conversation_meta",
    "conversation_webhook_data",
    "inbox_event_data",
    "iso8601",
    "message_event_from_api",
    "message_webhook_data",
    "sample_event",
    "user_webhook_data",
]


def iso8601(value: float | None) -> str | None:
    """A unix time as the server renders it in webhooks: ISO 8601 in UTC with milliseconds."""
    if value is None:
        return None
    return datetime.fromtimestamp(value, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def account_data(account_id: int, name: str) -> dict[str, Any]:
    """``{"id", "name"}``: how every payload names its account."""
    return {"id": account_id, "name": name}


def contact_webhook_data(
    *,
    account: Mapping[str, Any],
    id: int,
    name: str | None,
    email: str | None = None,
    phone_number: str | None = None,
    identifier: str | None = None,
    avatar: str = "",
    additional_attributes: Mapping[str, Any] | None = None,
    custom_attributes: Mapping[str, Any] | None = None,
    blocked: bool = False,
) -> dict[str, Any]:
    """``Contact#webhook_data``: a message's contact sender, and the body of ``contact_*`` events (no ``type``)."""
    return {
        "account": dict(account),
        "additional_attributes": dict(additional_attributes or {}),
        "avatar": avatar,
        "custom_attributes": dict(custom_attributes or {}),
        "email": email,
        "id": id,
        "identifier": identifier,
        "name": name,
        "phone_number": phone_number,
        "thumbnail": avatar,
        "blocked": blocked,
    }


def contact_push_data(
    *,
    id: int,
    name: str | None,
    email: str | None = None,
    phone_number: str | None = None,
    identifier: str | None = None,
    thumbnail: str = "",
    additional_attributes: Mapping[str, Any] | None = None,
    custom_attributes: Mapping[str, Any] | None = None,
    blocked: bool = False,
) -> dict[str, Any]:
    """``Contact#push_event_data``: a conversation's ``meta.sender`` (with ``type: "contact"``)."""
    return {
        "additional_attributes": dict(additional_attributes or {}),
        "custom_attributes": dict(custom_attributes or {}),
        "email": email,
        "id": id,
        "identifier": identifier,
        "name": name,
        "phone_number": phone_number,
        "thumbnail": thumbnail,
        "blocked": blocked,
        "type": "contact",
    }


def user_webhook_data(*, id: int, name: str, email: str) -> dict[str, Any]:
    """``User#webhook_data``: an agent sender, or who is typing."""
    return {"id": id, "name": name, "email": email, "type": "user"}


def contact_inbox_data(
    *,
    id: int,
    contact_id: int,
    inbox_id: int,
    source_id: str,
    created_at: str | None,
    updated_at: str | None,
    hmac_verified: bool = False,
    pubsub_token: str = "",
) -> dict[str, Any]:
    """A conversation's ``contact_inbox``: where the contact's ``source_id`` is."""
    return {
        "id": id,
        "contact_id": contact_id,
        "inbox_id": inbox_id,
        "source_id": source_id,
        "created_at": created_at,
        "updated_at": updated_at,
        "hmac_verified": hmac_verified,
        "pubsub_token": pubsub_token,
    }


def conversation_meta(
    *,
    sender: Mapping[str, Any],
    assignee: Mapping[str, Any] | None = None,
    team: Mapping[str, Any] | None = None,
    hmac_verified: bool = False,
) -> dict[str, Any]:
    """A conversation's ``meta``: its contact (push data), assignee and team."""
    return {
        "sender": dict(sender),
        "assignee": dict(assignee) if assignee is not None else None,
        "assignee_type": "User" if assignee is not None else None,
        "team": dict(team) if team is not None else None,
        "hmac_verified": hmac_verified,
    }


def conversation_webhook_data(
    *,
    account: Mapping[str, Any],
    id: int,
    inbox_id: int,
    channel: str,
    contact_inbox: Mapping[str, Any] | None,
    meta: Mapping[str, Any],
    status: str = "open",
    messages: Sequence[Mapping[str, Any]] = (),
    labels: Sequence[str] = (),
    additional_attributes: Mapping[str, Any] | None = None,
    custom_attributes: Mapping[str, Any] | None = None,
    snoozed_until: str | None = None,
    unread_count: int = 0,
    first_reply_created_at: str | None = None,
    priority: str | None = None,
    waiting_since: int = 0,
    agent_last_seen_at: int = 0,
    contact_last_seen_at: int = 0,
    last_activity_at: int,
    created_at: int,
    updated_at: float,
) -> dict[str, Any]:
    """``Conversation#webhook_data``: the body of ``conversation_*`` events and a message's ``conversation``.

    ``id`` is the display id. ``messages`` holds the last chat message's push data (not private, not activity).
    """
    return {
        "additional_attributes": dict(additional_attributes or {}),
        "can_reply": True,
        "channel": channel,
        "contact_inbox": dict(contact_inbox) if contact_inbox is not None else None,
        "id": id,
        "inbox_id": inbox_id,
        "messages": [dict(message) for message in messages],
        "labels": list(labels),
        "meta": dict(meta),
        "status": status,
        "custom_attributes": dict(custom_attributes or {}),
        "snoozed_until": snoozed_until,
        "unread_count": unread_count,
        "first_reply_created_at": first_reply_created_at,
        "priority": priority,
        "waiting_since": waiting_since,
        "agent_last_seen_at": agent_last_seen_at,
        "contact_last_seen_at": contact_last_seen_at,
        "last_activity_at": last_activity_at,
        "timestamp": last_activity_at,
        "created_at": created_at,
        "updated_at": updated_at,
        "account": dict(account),
    }


def message_webhook_data(
    *,
    account: Mapping[str, Any],
    id: int,
    content: str | None,
    message_type: str,
    created_at: str | None,
    inbox: Mapping[str, Any],
    conversation: Mapping[str, Any],
    sender: Mapping[str, Any] | None,
    private: bool = False,
    source_id: str | None = None,
    content_type: str = "text",
    content_attributes: Mapping[str, Any] | None = None,
    additional_attributes: Mapping[str, Any] | None = None,
    attachments: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """``Message#webhook_data``: the body of ``message_*`` events (``message_type`` is the name, not the integer)."""
    data: dict[str, Any] = {
        "account": dict(account),
        "additional_attributes": dict(additional_attributes or {}),
        "content_attributes": dict(content_attributes or {}),
        "content_type": content_type,
        "content": content,
        "conversation": dict(conversation),
        "created_at": created_at,
        "id": id,
        "inbox": dict(inbox),
        "message_type": message_type,
        "private": private,
        "sender": dict(sender) if sender is not None else None,
        "source_id": source_id,
    }
    if attachments:
        data["attachments"] = [dict(item) for item in attachments]
    return data


def inbox_event_data(
    *,
    id: int,
    account_id: int,
    name: str,
    channel_type: str,
    channel: Mapping[str, Any],
    created_at: float,
    updated_at: float,
    greeting_enabled: bool = False,
) -> dict[str, Any]:
    """``Inbox::EventDataPresenter#push_data``: the inbox, and its channel record as the database has it.

    The channel record carries the channel's credentials (an API inbox's ``hmac_token`` and ``secret``) in
    clear, as the server sends them; the receiver redacts them before storing (``events.redact``).
    """
    return {
        "id": id,
        "name": name,
        "account_id": account_id,
        "channel_type": channel_type,
        "greeting_enabled": greeting_enabled,
        "created_at": iso8601(created_at),
        "updated_at": iso8601(updated_at),
        "channel": dict(channel),
    }


def message_event_from_api(
    message: Mapping[str, Any], *, account_id: int, event: str = "message_created"
) -> dict[str, Any]:
    """Reshape a REST message (``GET .../messages``) into the payload a ``message_created`` webhook carries.

    REST gives ``message_type`` as an integer, ``conversation_id``/``inbox_id`` as flat ids and
    ``created_at`` as unix seconds; the webhook has the type's name, nested ``{"id": ...}`` objects and an
    ISO 8601 time. Keys the REST message lacks (the account and inbox names) are left out.
    """
    if event not in MESSAGE_EVENTS:
        raise ValueError(f"a REST message can only become a message event, not {event!r}")
    created_at = message.get("created_at")
    if isinstance(created_at, int | float) and not isinstance(created_at, bool):
        created_at = iso8601(created_at)
    payload: dict[str, Any] = {
        "event": event,
        "id": message.get("id"),
        "content": message.get("content"),
        "content_type": message.get("content_type"),
        "content_attributes": message.get("content_attributes") or {},
        "additional_attributes": message.get("additional_attributes") or {},
        "message_type": message_type_name(message.get("message_type")),
        "private": bool(message.get("private")),
        "source_id": message.get("source_id"),
        "created_at": created_at,
        "sender": message.get("sender"),
        "account": {"id": account_id},
        "inbox": {"id": message.get("inbox_id")},
        "conversation": {"id": message.get("conversation_id")},
    }
    if "attachments" in message:
        payload["attachments"] = message["attachments"]
    return payload


# --------------------------------------------------------------------------- samples


def _sample_conversation(
    *, account: Mapping[str, Any], inbox_id: int, conversation_id: int, contact: Mapping[str, Any], now: float
) -> dict[str, Any]:
    stamp = iso8601(now)
    contact_id = int(contact["id"])
    return conversation_webhook_data(
        account=account,
        id=conversation_id,
        inbox_id=inbox_id,
        channel="Channel::Api",
        contact_inbox=contact_inbox_data(
            id=contact_id,
            contact_id=contact_id,
            inbox_id=inbox_id,
            source_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"neoleads-sample/{contact_id}")),
            created_at=stamp,
            updated_at=stamp,
            pubsub_token="sample-pubsub-token",
        ),
        meta=conversation_meta(
            sender=contact_push_data(
                id=contact_id,
                name=contact["name"],
                email=contact["email"],
                custom_attributes=contact["custom_attributes"],
            )
        ),
        unread_count=1,
        waiting_since=int(now),
        last_activity_at=int(now),
        created_at=int(now),
        updated_at=float(int(now)),
    )


def sample_event(
    event: str,
    *,
    account_id: int = 1,
    inbox_id: int = 1,
    conversation_id: int = 1,
    contact_id: int = 1,
    message_id: int | None = None,
    content: str = "Test message",
    message_type: str = "incoming",
    now: float | None = None,
) -> dict[str, Any]:
    """A delivery body shaped like the server's for ``event``, with sample names and values.

    :param message_id: the message's id (message events); default derived from the clock.
    :param now: the unix time its stamps show; default the current time.
    """
    now = time.time() if now is None else now
    account = account_data(account_id, "Neoleads")
    inbox = {"id": inbox_id, "name": "API inbox"}
    contact = contact_webhook_data(
        account=account,
        id=contact_id,
        name=f"Contact {contact_id}",
        email=f"contact{contact_id}@example.com",
        custom_attributes={"plan": "gold"},
    )
    agent = user_webhook_data(id=1, name="Test Agent", email="agent@example.com")
    conversation = _sample_conversation(
        account=account, inbox_id=inbox_id, conversation_id=conversation_id, contact=contact, now=now
    )
    payload: dict[str, Any]
    if event.startswith("message_"):
        payload = message_webhook_data(
            account=account,
            id=message_id if message_id is not None else int(now * 1000) % 2_000_000_000,
            content=content,
            message_type=message_type,
            created_at=iso8601(now),
            inbox=inbox,
            conversation=conversation,
            sender=contact if message_type == "incoming" else agent,
        )
    elif event.startswith("conversation_typing_"):
        payload = {"user": agent, "conversation": conversation, "is_private": False}
    elif event.startswith("conversation_"):
        payload = dict(conversation)
        if event != "conversation_created":
            payload["changed_attributes"] = [
                {"status": {"previous_value": "pending", "current_value": "open"}}
            ]
    elif event.startswith("contact_"):
        payload = dict(contact)
        if event == "contact_updated":
            payload["changed_attributes"] = [
                {"name": {"previous_value": "Contact", "current_value": contact["name"]}}
            ]
    elif event == "webwidget_triggered":
        payload = {
            "id": contact_id,
            "contact": contact,
            "inbox": inbox,
            "account": account,
            "current_conversation": conversation,
            "source_id": conversation["contact_inbox"]["source_id"],
            "event_info": {"initiated_at": {"timestamp": iso8601(now)}, "referer": "https://example.com/"},
        }
    else:
        # inbox_created / inbox_updated: the inbox's data, with the channel's credentials as the server sends them.
        payload = inbox_event_data(
            id=inbox_id,
            account_id=account_id,
            name=str(inbox["name"]),
            channel_type="Channel::Api",
            channel={
                "id": inbox_id,
                "account_id": account_id,
                "webhook_url": "",
                "hmac_token": "sample-hmac-token",
                "secret": "sample-inbox-secret",
            },
            created_at=now,
            updated_at=now,
        )
    payload["event"] = event
    return payload
