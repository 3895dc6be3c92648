"""Read a Neoleads (Chatwoot) webhook payload into one :class:`EventFields`: the only reader of payload shapes.

The store's indexed columns, every filter's check and the identity of an event all come from
:func:`read_event`, so a payload means the same thing wherever it is looked at.

Payload shapes, by event (``Message#webhook_data`` and friends, Chatwoot ``app/listeners/webhook_listener.rb``):

- ``message_created`` / ``message_updated``: top-level ``id`` is the message id; ``message_type`` is a name
  (an integer in REST); ``sender`` is a user (``type: "user"``), an agent bot (``type: "agent_bot"``) or a
  contact (no ``type``); ``account``, ``inbox`` and ``conversation`` are nested.
- ``conversation_created`` / ``_updated`` / ``_status_changed``: top-level ``id`` is the conversation's display
  id; ``inbox_id``, ``contact_inbox.contact_id``, ``meta.sender`` and ``account``.
- ``conversation_typing_on`` / ``_off``: ``{"user": ..., "conversation": ..., "is_private": bool}``.
- ``contact_created`` / ``contact_updated``: top-level ``id`` is the contact id.
- ``webwidget_triggered``: ``contact``, ``inbox``, ``account``, ``current_conversation``, ``source_id``.
- ``inbox_created`` / ``inbox_updated``: the inbox's data; ids are read where present.

Normalisation: an id is an integer or a string of digits (``"42"`` is 42); a message type is its name in
lower case (``"Incoming"`` and REST's ``0`` are ``"incoming"``); a sender type is lower case, and a sender
without one is a contact; a conversation is named by ``id`` or, failing that, ``display_id``. Values of the
wrong type become None rather than errors: the payload is stored whole anyway. Only a missing or malformed
``event`` is refused.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from neoleads_provider.events.names import EVENT_NAME_MAX_LENGTH, EVENT_NAME_RE, MESSAGE_EVENTS, MESSAGE_TYPES

__all__ = ["COLUMN_NAMES", "EventFields", "PayloadError", "event_identity", "read_event"]

# The sizes of the store's columns (store/schema.py): longer values are not ids or names, so they become None.
MESSAGE_TYPE_MAX_LENGTH = 16
SENDER_TYPE_MAX_LENGTH = 32
_INT64_MAX = 2**63 - 1
_WORD_RE = re.compile(r"[a-z0-9_.:\-]+")


class PayloadError(ValueError):
    """The payload is not a webhook event this provider can store (the message says what is wrong)."""


@dataclass(frozen=True)
class EventFields:
    """What one webhook event is about; every field but ``event`` may be None."""

    event: str
    account_id: int | None = None
    inbox_id: int | None = None
    #: The conversation's display id, as used in API paths and payloads.
    conversation_id: int | None = None
    message_id: int | None = None
    contact_id: int | None = None
    #: ``incoming``, ``outgoing``, ``activity`` or ``template``.
    message_type: str | None = None
    private: bool | None = None
    #: Who sent the message (or who is typing): ``contact``, ``user``, ``agent_bot``...
    sender_type: str | None = None
    #: The message's text; not a store column (a filter's content pattern reads it), and never in a repr.
    content: str | None = field(default=None, repr=False)

    @property
    def is_message(self) -> bool:
        return self.event in MESSAGE_EVENTS


#: The fields the store keeps as indexed columns, in this order.
COLUMN_NAMES: tuple[str, ...] = tuple(item.name for item in fields(EventFields) if item.name != "content")


def _obj(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _id(value: Any) -> int | None:
    # bool is an int subclass; True is not an id.
    if isinstance(value, int) and not isinstance(value, bool):
        return value if 0 <= value <= _INT64_MAX else None
    if isinstance(value, str):
        text = value.strip()
        if text.isascii() and text.isdigit() and len(text) <= 19:
            number = int(text)
            return number if number <= _INT64_MAX else None
    return None


def _first_id(*values: Any) -> int | None:
    for value in values:
        number = _id(value)
        if number is not None:
            return number
    return None


def _word(value: Any, max_length: int) -> str | None:
    if not isinstance(value, str):
        return None
    text = value.strip().lower()
    if len(text) <= max_length and _WORD_RE.fullmatch(text):
        return text
    return None


def _bool(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def message_type_name(value: Any) -> str | None:
    """A message type's name from a webhook name or a REST integer (``0`` and ``"Incoming"`` → ``"incoming"``)."""
    number = _id(value)
    if number is not None:
        return MESSAGE_TYPES[number] if number < len(MESSAGE_TYPES) else None
    return _word(value, MESSAGE_TYPE_MAX_LENGTH)


def _person_type(person: Mapping[str, Any]) -> str | None:
    if not person:
        return None
    if "type" in person:
        return _word(person.get("type"), SENDER_TYPE_MAX_LENGTH)
    # Users and agent bots carry a ``type``; Contact#webhook_data has none, so its absence means a contact.
    return "contact"


def _account_id(*objects: Mapping[str, Any]) -> int | None:
    candidates: list[Any] = []
    for obj in objects:
        candidates += [_obj(obj.get("account")).get("id"), obj.get("account_id")]
    return _first_id(*candidates)


def _conversation_id(conversation: Mapping[str, Any]) -> int | None:
    return _first_id(conversation.get("id"), conversation.get("display_id"))


def _conversation_contact_id(conversation: Mapping[str, Any]) -> int | None:
    sender = _obj(_obj(conversation.get("meta")).get("sender"))
    sender_id = sender.get("id") if _person_type(sender) == "contact" else None
    return _first_id(_obj(conversation.get("contact_inbox")).get("contact_id"), sender_id)


def _message(payload: Mapping[str, Any]) -> dict[str, Any]:
    conversation = _obj(payload.get("conversation"))
    sender = _obj(payload.get("sender"))
    sender_type = _person_type(sender)
    return {
        "account_id": _account_id(payload, conversation),
        "inbox_id": _first_id(
            _obj(payload.get("inbox")).get("id"), payload.get("inbox_id"), conversation.get("inbox_id")
        ),
        # REST messages (read back to fill a lost delivery) name the conversation flat.
        "conversation_id": _first_id(_conversation_id(conversation), payload.get("conversation_id")),
        "message_id": _id(payload.get("id")),
        "contact_id": _first_id(
            _conversation_contact_id(conversation), sender.get("id") if sender_type == "contact" else None
        ),
        "message_type": message_type_name(payload.get("message_type")),
        "private": _bool(payload.get("private")),
        "sender_type": sender_type,
        "content": _text(payload.get("content")),
    }


def _conversation(payload: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "account_id": _account_id(payload),
        "inbox_id": _id(payload.get("inbox_id")),
        "conversation_id": _conversation_id(payload),
        "contact_id": _conversation_contact_id(payload),
    }


def _typing(payload: Mapping[str, Any]) -> dict[str, Any]:
    conversation = _obj(payload.get("conversation"))
    user = _obj(payload.get("user"))
    return {
        "account_id": _account_id(payload, conversation, user),
        "inbox_id": _id(conversation.get("inbox_id")),
        "conversation_id": _conversation_id(conversation),
        "contact_id": _conversation_contact_id(conversation),
        "private": _bool(payload.get("is_private")),
        "sender_type": _person_type(user),
    }


def _contact(payload: Mapping[str, Any]) -> dict[str, Any]:
    return {"account_id": _account_id(payload), "contact_id": _id(payload.get("id"))}


def _webwidget(payload: Mapping[str, Any]) -> dict[str, Any]:
    contact = _obj(payload.get("contact"))
    inbox = _obj(payload.get("inbox"))
    conversation = _obj(payload.get("current_conversation"))
    return {
        "account_id": _account_id(payload, contact, conversation),
        "inbox_id": _first_id(inbox.get("id"), conversation.get("inbox_id")),
        "conversation_id": _conversation_id(conversation),
        "contact_id": _first_id(contact.get("id"), _conversation_contact_id(conversation)),
    }


def _inbox(payload: Mapping[str, Any]) -> dict[str, Any]:
    channel = _obj(payload.get("channel"))
    return {
        "account_id": _account_id(payload, channel),
        "inbox_id": _first_id(payload.get("id"), payload.get("inbox_id")),
    }


def _other(payload: Mapping[str, Any]) -> dict[str, Any]:
    # An event this provider does not know yet: take what unambiguous ids there are.
    conversation = _obj(payload.get("conversation"))
    return {
        "account_id": _account_id(payload, conversation),
        "inbox_id": _first_id(payload.get("inbox_id"), conversation.get("inbox_id")),
        "conversation_id": _conversation_id(conversation),
    }


def _event_name(payload: Mapping[str, Any]) -> str:
    if "event" not in payload:
        raise PayloadError("field 'event' is missing: expected the event name, e.g. \"message_created\"")
    event = payload["event"]
    if not isinstance(event, str):
        raise PayloadError(f"field 'event' must be a string, got {type(event).__name__}")
    if not event or len(event) > EVENT_NAME_MAX_LENGTH or not EVENT_NAME_RE.fullmatch(event):
        raise PayloadError(
            f"field 'event' must be 1 to {EVENT_NAME_MAX_LENGTH} letters, digits, '_', '.', ':' or '-', "
            'e.g. "message_created"'
        )
    return event


def read_event(payload: Any) -> EventFields:
    """Read what a webhook payload is about.

    :param payload: the parsed JSON body of one delivery (or a REST message reshaped as one).
    :raises PayloadError: the payload is not an object, or its ``event`` is missing or malformed.
    """
    if not isinstance(payload, Mapping):
        raise PayloadError(f"the body must be a JSON object, got {type(payload).__name__}")
    event = _event_name(payload)
    if event.startswith("message_"):
        values = _message(payload)
    elif event.startswith("conversation_typing_"):
        values = _typing(payload)
    elif event.startswith("conversation_"):
        values = _conversation(payload)
    elif event.startswith("contact_"):
        values = _contact(payload)
    elif event == "webwidget_triggered":
        values = _webwidget(payload)
    elif event.startswith("inbox_"):
        values = _inbox(payload)
    else:
        values = _other(payload)
    return EventFields(event=event, **values)


# Creation events happen once per object: the object's id is the event's identity.
_CREATED_OBJECT = {
    "message_created": "message_id",
    "conversation_created": "conversation_id",
    "contact_created": "contact_id",
}


#: Copies of an event that has no object id are recognised within windows of this length: a replay must
#: arrive within the signature tolerance (300 s), and both delivery paths send within seconds.
BODY_IDENTITY_WINDOW_SECONDS = 300


def event_identity(fields: EventFields, body: bytes, *, received_at: float | None = None) -> str:
    """The identity of the logical event a delivery carries, the same for every copy of it.

    Neoleads sends each inbox event to every account webhook *and* to the API inbox's ``webhook_url``, each
    copy with its own ``X-Chatwoot-Delivery``, and a captured body can be replayed under a new delivery id.
    A creation event happens once per object, so its identity is the object: ``message_created`` of message
    42 in account 1 is ``message_created:1:42`` however it arrived. Other events carry no stamp that is sure
    to change between two real events (``Message#webhook_data`` has no ``updated_at``), so their identity is
    the exact body within a window of :data:`BODY_IDENTITY_WINDOW_SECONDS`: both delivery paths serialise
    the same payload once built, and a replay repeats the bytes within the signature tolerance; a genuine
    event that repeats an earlier body later (a second ``conversation_typing_on``) is a new event.

    :param received_at: unix time the delivery arrived; None leaves the window out of the key.
    """
    object_field = _CREATED_OBJECT.get(fields.event)
    if object_field is not None:
        object_id = getattr(fields, object_field)
        if object_id is not None:
            return f"{fields.event}:{fields.account_id or 0}:{object_id}"
    key = "sha256:" + hashlib.sha256(body).hexdigest()
    if received_at is None:
        return key
    return f"{key}:{int(received_at // BODY_IDENTITY_WINDOW_SECONDS)}"
