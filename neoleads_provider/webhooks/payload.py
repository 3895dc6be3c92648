"""Pull the store's indexed columns out of a Neoleads (Chatwoot) webhook payload.

Payload shapes, by event (``neoleads-api-facts`` section 4; Chatwoot ``app/listeners/webhook_listener.rb``):

- ``message_created`` / ``message_updated``: ``Message#webhook_data``. Top-level ``id`` is the message id;
  ``message_type`` is a string; ``sender`` is a user (``type: "user"``), an agent bot (``type: "agent_bot"``)
  or a contact (no ``type`` in recent versions); ``account``, ``inbox`` and ``conversation`` are nested.
- ``conversation_created`` / ``_updated`` / ``_status_changed``: ``Conversation#webhook_data``. Top-level ``id``
  is the conversation's display id; ``inbox_id``, ``contact_inbox.contact_id``, ``meta.sender`` and ``account``.
- ``conversation_typing_on`` / ``_off``: ``{"user": ..., "conversation": ..., "is_private": bool}``.
- ``contact_created`` / ``contact_updated``: ``Contact#webhook_data``; top-level ``id`` is the contact id.
- ``webwidget_triggered``: ``ContactInbox#webhook_data``: ``contact``, ``inbox``, ``account``,
  ``current_conversation``, ``source_id``, ``event_info``.
- ``inbox_created`` / ``inbox_updated``: the inbox's push data; ids are read where present.

Values of the wrong type become None rather than errors: the payload is stored whole anyway, and these
columns only make it findable. Only a missing or malformed ``event`` is refused, and a body that is not
strict JSON (:func:`parse_event_body`).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from typing import Any

import msgspec

__all__ = ["MAX_JSON_DEPTH", "EventFields", "PayloadError", "extract_event_fields", "parse_event_body"]

MAX_JSON_DEPTH = 64

# Column sizes in store/schema.py.
_EVENT_MAX = 64
_MESSAGE_TYPE_MAX = 16
_SENDER_TYPE_MAX = 32
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_EVENT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:\-]*")
_WORD_RE = re.compile(r"[A-Za-z0-9_.:\-]+")
# The REST API renders message_type as an integer; webhooks send the name. Accept both, store the name.
_MESSAGE_TYPE_NAMES = {0: "incoming", 1: "outgoing", 2: "activity", 3: "template"}


class PayloadError(ValueError):
    """The payload is not a webhook event this receiver can store (the message says what is wrong)."""


@dataclass(frozen=True)
class EventFields:
    """The indexed columns of one stored event; every field but ``event`` may be None."""

    event: str
    account_id: int | None = None
    inbox_id: int | None = None
    #: The conversation's display id, as used in API paths and payloads.
    conversation_id: int | None = None
    message_id: int | None = None
    contact_id: int | None = None
    #: ``incoming``, ``outgoing`` or ``template``, as the webhook sends it.
    message_type: str | None = None
    private: bool | None = None
    #: Who sent the message (or who is typing): ``contact``, ``user``, ``agent_bot``...
    sender_type: str | None = None

    def as_columns(self) -> dict[str, Any]:
        """The fields as a dict keyed by column name."""
        return asdict(self)


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int | None:
    # bool is an int subclass; True is not an id.
    if isinstance(value, int) and not isinstance(value, bool) and _INT64_MIN <= value <= _INT64_MAX:
        return value
    return None


def _word(value: Any, max_length: int) -> str | None:
    if isinstance(value, str) and len(value) <= max_length and _WORD_RE.fullmatch(value):
        return value
    return None


def _bool(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _first_int(*values: Any) -> int | None:
    for value in values:
        number = _int(value)
        if number is not None:
            return number
    return None


def _account_id(*objects: dict[str, Any]) -> int | None:
    candidates: list[Any] = []
    for obj in objects:
        candidates += [_obj(obj.get("account")).get("id"), obj.get("account_id")]
    return _first_int(*candidates)


def _conversation_contact_id(conversation: dict[str, Any]) -> int | None:
    sender = _obj(_obj(conversation.get("meta")).get("sender"))
    sender_id = sender.get("id") if sender.get("type") in (None, "contact") else None
    return _first_int(_obj(conversation.get("contact_inbox")).get("contact_id"), sender_id)


def _person_type(person: dict[str, Any]) -> str | None:
    if not person:
        return None
    if "type" in person:
        return _word(person.get("type"), _SENDER_TYPE_MAX)
    # Users and agent bots carry a ``type``; Contact#webhook_data dropped it, so its absence means a contact.
    return "contact"


def _message_type(value: Any) -> str | None:
    number = _int(value)
    if number is not None:
        return _MESSAGE_TYPE_NAMES.get(number)
    return _word(value, _MESSAGE_TYPE_MAX)


def _message_fields(payload: dict[str, Any]) -> dict[str, Any]:
    conversation = _obj(payload.get("conversation"))
    sender = _obj(payload.get("sender"))
    sender_type = _person_type(sender)
    return {
        "account_id": _account_id(payload, conversation),
        "inbox_id": _first_int(
            _obj(payload.get("inbox")).get("id"), payload.get("inbox_id"), conversation.get("inbox_id")
        ),
        "conversation_id": _first_int(conversation.get("id"), conversation.get("display_id")),
        "message_id": _int(payload.get("id")),
        "contact_id": _first_int(
            _conversation_contact_id(conversation), sender.get("id") if sender_type == "contact" else None
        ),
        "message_type": _message_type(payload.get("message_type")),
        "private": _bool(payload.get("private")),
        "sender_type": sender_type,
    }


def _conversation_fields(payload: dict[str, Any]) -> dict[str, Any]:
    return {
        "account_id": _account_id(payload),
        "inbox_id": _int(payload.get("inbox_id")),
        "conversation_id": _first_int(payload.get("id"), payload.get("display_id")),
        "contact_id": _conversation_contact_id(payload),
    }


def _typing_fields(payload: dict[str, Any]) -> dict[str, Any]:
    conversation = _obj(payload.get("conversation"))
    user = _obj(payload.get("user"))
    return {
        "account_id": _account_id(payload, conversation, user),
        "inbox_id": _int(conversation.get("inbox_id")),
        "conversation_id": _first_int(conversation.get("id"), conversation.get("display_id")),
        "contact_id": _conversation_contact_id(conversation),
        "private": _bool(payload.get("is_private")),
        "sender_type": _person_type(user),
    }


def _contact_fields(payload: dict[str, Any]) -> dict[str, Any]:
    return {"account_id": _account_id(payload), "contact_id": _int(payload.get("id"))}


def _webwidget_fields(payload: dict[str, Any]) -> dict[str, Any]:
    contact = _obj(payload.get("contact"))
    inbox = _obj(payload.get("inbox"))
    conversation = _obj(payload.get("current_conversation"))
    return {
        "account_id": _account_id(payload, contact, conversation),
        "inbox_id": _first_int(inbox.get("id"), conversation.get("inbox_id")),
        "conversation_id": _first_int(conversation.get("id"), conversation.get("display_id")),
        "contact_id": _first_int(contact.get("id"), _conversation_contact_id(conversation)),
    }


def _inbox_fields(payload: dict[str, Any]) -> dict[str, Any]:
    channel = _obj(payload.get("channel"))
    return {
        "account_id": _account_id(payload, channel),
        "inbox_id": _first_int(payload.get("id"), payload.get("inbox_id")),
    }


def _other_fields(payload: dict[str, Any]) -> dict[str, Any]:
    # An event this provider does not know yet: take what unambiguous ids there are.
    conversation = _obj(payload.get("conversation"))
    return {
        "account_id": _account_id(payload, conversation),
        "inbox_id": _first_int(payload.get("inbox_id"), conversation.get("inbox_id")),
        "conversation_id": _first_int(conversation.get("id"), conversation.get("display_id")),
    }


def _event_name(payload: dict[str, Any]) -> str:
    if "event" not in payload:
        raise PayloadError("field 'event' is missing: expected the event name, e.g. \"message_created\"")
    event = payload["event"]
    if not isinstance(event, str):
        raise PayloadError(f"field 'event' must be a string, got {type(event).__name__}")
    if not event or len(event) > _EVENT_MAX or not _EVENT_RE.fullmatch(event):
        raise PayloadError(
            f"field 'event' must be 1 to {_EVENT_MAX} letters, digits, '_', '.', ':' or '-', "
            'e.g. "message_created"'
        )
    return event


def extract_event_fields(payload: dict[str, Any]) -> EventFields:
    """Return the indexed columns of a webhook payload.

    :param payload: the parsed JSON body of one delivery.
    :raises PayloadError: the payload is not an object, or its ``event`` is missing or malformed.
    """
    if not isinstance(payload, dict):
        raise PayloadError(f"the body must be a JSON object, got {type(payload).__name__}")
    event = _event_name(payload)
    if event.startswith("message_"):
        fields = _message_fields(payload)
    elif event.startswith("conversation_typing_"):
        fields = _typing_fields(payload)
    elif event.startswith("conversation_"):
        fields = _conversation_fields(payload)
    elif event.startswith("contact_"):
        fields = _contact_fields(payload)
    elif event == "webwidget_triggered":
        fields = _webwidget_fields(payload)
    elif event.startswith("inbox_"):
        fields = _inbox_fields(payload)
    else:
        fields = _other_fields(payload)
    return EventFields(event=event, **fields)


# --------------------------------------------------------------------------- the raw body

_decode_json = msgspec.json.Decoder().decode


def parse_event_body(body: bytes) -> tuple[str, EventFields]:
    """Parse a delivery's raw body; return it as text, with its indexed columns.

    Strict JSON only: an object with a valid ``event``, no NaN or Infinity, no number beyond a float or
    Python's integer digit limit, at most :data:`MAX_JSON_DEPTH` levels deep.

    :raises PayloadError: naming what is wrong with the body.
    """
    try:
        # msgspec (which Airflow already depends on) parses in a third of json.loads' time and accepts
        # strictly less: whatever it refuses goes through json.loads for the same answer and the same error.
        payload = _decode_json(body)
    except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError, ValueError):
        return _parse_with_json(body)
    if not isinstance(payload, dict):
        raise PayloadError(f"the body must be a JSON object, got {type(payload).__name__}")
    _check_depth(payload, body)
    return body.decode("utf-8"), extract_event_fields(payload)


def _parse_with_json(body: bytes) -> tuple[str, EventFields]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise PayloadError("the body is not UTF-8 text") from None
    try:
        payload = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        raise PayloadError(f"the body is nested more than {MAX_JSON_DEPTH} levels deep") from None
    except json.JSONDecodeError as exc:
        raise PayloadError(
            f"the body is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except PayloadError:
        raise
    except ValueError:
        # Python refuses to parse integers of more than 4300 digits (int_max_str_digits): bad input, not a crash.
        raise PayloadError("the body contains a number with too many digits") from None
    if not isinstance(payload, dict):
        raise PayloadError(f"the body must be a JSON object, got {type(payload).__name__}")
    _check_depth(payload, body)
    # PostgreSQL text cannot hold NUL; JSON may carry it escaped, which is fine, but never raw.
    if "\x00" in text:
        raise PayloadError("the body contains a NUL character")
    return text, extract_event_fields(payload)


def _reject_constant(name: str) -> Any:
    raise PayloadError(f"the body contains {name}, which is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise PayloadError(f"the body contains a number too large for a float: {text[:32]}")
    return value


def _check_depth(value: Any, body: bytes) -> None:
    if body.count(b"{") + body.count(b"[") <= MAX_JSON_DEPTH:
        # Nesting needs an opening bracket per level: with this few there is nothing to walk (the usual case).
        return
    # Iterative, so a hostile document cannot exhaust the stack here either.
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise PayloadError(f"the body is nested more than {MAX_JSON_DEPTH} levels deep")
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values() if isinstance(child, dict | list))
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item if isinstance(child, dict | list))
