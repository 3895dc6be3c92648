"""Describe which stored webhook event a sensor or trigger waits for, and find it.

An :class:`EventFilter` is checked in two places. The store query puts every criterion that has a column in
SQL, so waiting on a conversation is a range scan of the ``(account_id, conversation_id, event, id)`` index
(or ``(account_id, inbox_id, event, id)`` for a whole inbox); only the content pattern runs in Python, on
candidate rows read in batches. :meth:`EventFilter.matches` applies the same rules to a payload that never
went through the store, such as a message read back from the API to fill a lost delivery.

Message criteria (message types, private notes, sender types, the message-id watermark and the content
pattern) concern message events only: a filter that also waits for, say, ``conversation_status_changed``
lets those events through on the conversation criteria alone.

Kept free of SQLAlchemy and Airflow imports at module level: DAG files import the sensor, which imports this.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from neoleads_provider.webhook_events import WEBHOOK_EVENTS

if TYPE_CHECKING:
    from sqlalchemy import Connection, Select

    from neoleads_provider.store.records import StoredEvent

__all__ = [
    "KNOWN_EVENTS",
    "MESSAGE_EVENTS",
    "MESSAGE_TYPES",
    "EventFilter",
    "find_first_match",
    "find_matches",
    "message_type_name",
    "payload_ids",
    "sender_type_of",
    "webhook_payload_from_api_message",
]

# Every event name Neoleads (Chatwoot's ALLOWED_WEBHOOK_EVENTS) sends, underscored as in the payload.
# Names are checked against it because a misspelt one would make a sensor wait until it times out.
KNOWN_EVENTS = frozenset(WEBHOOK_EVENTS)
MESSAGE_EVENTS = frozenset({"message_created", "message_updated"})
# REST responses carry the integer; webhooks carry the name.
MESSAGE_TYPES = ("incoming", "outgoing", "activity", "template")

# How many candidate rows one query reads while a content pattern is being tried on them.
DEFAULT_BATCH_SIZE = 200


def message_type_name(value: Any) -> str | None:
    """Return a message type's name from a webhook string or a REST integer (``0`` → ``"incoming"``)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return MESSAGE_TYPES[value] if 0 <= value < len(MESSAGE_TYPES) else None
    if isinstance(value, str):
        text = value.strip().lower()
        if text.isdigit():
            return message_type_name(int(text))
        return text or None
    return None


def sender_type_of(payload: Mapping[str, Any]) -> str | None:
    """Return who sent a message payload: ``contact``, ``user``, ``agent_bot`` ... or None when unknown.

    Users and bots carry ``type`` in webhooks; a contact's webhook data has no ``type`` (its REST push data
    says ``"contact"``), so an untyped sender is a contact.
    """
    sender = payload.get("sender")
    if not isinstance(sender, Mapping) or not sender:
        return None
    kind = sender.get("type")
    if isinstance(kind, str) and kind.strip():
        return kind.strip().lower()
    return "contact"


def _id_of(value: Any) -> int | None:
    if isinstance(value, Mapping):
        value = value.get("id")
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def payload_ids(payload: Mapping[str, Any]) -> dict[str, int | None]:
    """Return the account, inbox, conversation (display id) and message ids that a webhook payload names.

    Message and typing events nest the conversation; conversation events are the conversation.
    """
    event = payload.get("event")
    is_message = event in MESSAGE_EVENTS
    conversation = payload.get("conversation")
    if isinstance(conversation, Mapping):
        conversation_id = _id_of(conversation)
    elif isinstance(event, str) and event.startswith("conversation_"):
        conversation_id = _id_of(payload.get("id"))
    else:
        conversation_id = None
    inbox_id = _id_of(payload.get("inbox"))
    if inbox_id is None:
        inbox_id = _id_of(payload.get("inbox_id"))
    if inbox_id is None and isinstance(conversation, Mapping):
        inbox_id = _id_of(conversation.get("inbox_id"))
    return {
        "account_id": _id_of(payload.get("account")),
        "inbox_id": inbox_id,
        "conversation_id": conversation_id,
        "message_id": _id_of(payload.get("id")) if is_message else None,
    }


def _str_tuple(name: str, value: Any, *, lower: bool = True) -> tuple[str, ...]:
    """Normalise a string, a comma-separated string or a sequence of strings to a tuple."""
    if isinstance(value, str):
        items: Sequence[Any] = value.split(",")
    elif isinstance(value, Sequence):
        items = value
    elif isinstance(value, set | frozenset):
        items = sorted(value)
    else:
        raise ValueError(f"EventFilter.{name} must be a string or a list of strings, got {value!r}")
    result: list[str] = []
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise ValueError(f"EventFilter.{name} must hold non-empty strings, got {value!r}")
        text = item.strip().lower() if lower else item.strip()
        if text not in result:
            result.append(text)
    if not result:
        raise ValueError(f"EventFilter.{name} must not be empty (use None for 'any')")
    return tuple(result)


def _optional_id(name: str, value: Any, *, minimum: int = 1) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"EventFilter.{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"EventFilter.{name} must be >= {minimum}, got {value}")
    return value


@dataclass(frozen=True)
class EventFilter:
    """What a sensor or trigger waits for. Every criterion that is set must hold.

    :param events: webhook event names, e.g. ``("message_created",)``.
    :param account_id: the Neoleads account; set it, or display ids of other accounts match too.
    :param inbox_id: only events of this inbox.
    :param conversation_id: only events of this conversation (its display id, as in API paths).
    :param message_types: message types that match (``incoming``, ``outgoing``, ``template``,
        ``activity``); None matches any. The default ignores the echo of messages the DAG sent itself.
    :param include_private: whether private notes match.
    :param sender_types: sender types that match (``contact``, ``user``, ``agent_bot``...); None is any.
    :param after_message_id: a watermark: only messages whose id is greater, e.g. the id of the message
        the DAG sent, so that earlier replies are not taken for the answer.
    :param content_pattern: a Python regular expression searched (``re.search``) in the message content.
    """

    events: tuple[str, ...] = ("message_created",)
    account_id: int | None = None
    inbox_id: int | None = None
    conversation_id: int | None = None
    message_types: tuple[str, ...] | None = ("incoming",)
    include_private: bool = False
    sender_types: tuple[str, ...] | None = None
    after_message_id: int | None = None
    content_pattern: str | None = None
    _pattern: re.Pattern[str] | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        # Frozen: normalised values are written through object.__setattr__, once, here.
        events = _str_tuple("events", self.events)
        unknown = [name for name in events if name not in KNOWN_EVENTS]
        if unknown:
            raise ValueError(
                f"EventFilter.events has unknown event names {unknown}; expected names from "
                f"{sorted(KNOWN_EVENTS)} (with underscores, as in the webhook payload)"
            )
        object.__setattr__(self, "events", events)
        for name in ("account_id", "inbox_id", "conversation_id"):
            object.__setattr__(self, name, _optional_id(name, getattr(self, name)))
        watermark = _optional_id("after_message_id", self.after_message_id, minimum=0)
        if watermark is not None and not set(events) <= MESSAGE_EVENTS:
            raise ValueError(
                "EventFilter.after_message_id is a message id, so it only applies to message events; "
                f"events {list(events)} include others. Drop after_message_id or wait for message events only"
            )
        object.__setattr__(self, "after_message_id", watermark)
        if self.message_types is not None:
            types = _str_tuple("message_types", self.message_types)
            bad = [name for name in types if name not in MESSAGE_TYPES]
            if bad:
                raise ValueError(
                    f"EventFilter.message_types has unknown types {bad}; expected some of {list(MESSAGE_TYPES)}"
                )
            object.__setattr__(self, "message_types", types)
        if self.sender_types is not None:
            object.__setattr__(self, "sender_types", _str_tuple("sender_types", self.sender_types))
        if not isinstance(self.include_private, bool):
            raise ValueError(
                f"EventFilter.include_private must be true or false, got {self.include_private!r}"
            )
        if self.content_pattern is not None:
            if not isinstance(self.content_pattern, str):
                raise ValueError(
                    f"EventFilter.content_pattern must be a regular expression string, got {self.content_pattern!r}"
                )
            try:
                compiled = re.compile(self.content_pattern)
            except re.error as exc:
                raise ValueError(
                    f"EventFilter.content_pattern is not a valid Python regular expression: {exc} "
                    f"(pattern {self.content_pattern!r})"
                ) from None
            object.__setattr__(self, "_pattern", compiled)

    # -- serialisation (trigger kwargs must be JSON) -----------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Return the filter as JSON-safe keyword arguments of :class:`EventFilter`."""
        result: dict[str, Any] = {}
        for item in fields(self):
            if not item.init:
                continue
            value = getattr(self, item.name)
            result[item.name] = list(value) if isinstance(value, tuple) else value
        return result

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EventFilter:
        """Rebuild a filter from :meth:`to_dict` output, refusing keys it does not know."""
        if not isinstance(data, Mapping):
            raise ValueError(f"An event filter must be a mapping, got {type(data).__name__}")
        known = {item.name for item in fields(cls) if item.init}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown event filter keys {unknown}; expected some of {sorted(known)}")
        return cls(**dict(data))

    # -- evaluation ---------------------------------------------------------------------------------------

    def content_matches(self, payload: Mapping[str, Any]) -> bool:
        """Apply the content pattern (the part the store query cannot) to a payload.

        A message without text content never matches a pattern.
        """
        if self._pattern is None or payload.get("event") not in MESSAGE_EVENTS:
            return True
        content = payload.get("content")
        return isinstance(content, str) and self._pattern.search(content) is not None

    def matches(self, payload: Mapping[str, Any]) -> bool:
        """Apply every criterion to a webhook-shaped payload (one that did not come through the store)."""
        event = payload.get("event")
        if event not in self.events:
            return False
        ids = payload_ids(payload)
        for name in ("account_id", "inbox_id", "conversation_id"):
            wanted = getattr(self, name)
            if wanted is not None and ids[name] != wanted:
                return False
        if event not in MESSAGE_EVENTS:
            return True
        if (
            self.message_types is not None
            and message_type_name(payload.get("message_type")) not in self.message_types
        ):
            return False
        if not self.include_private and payload.get("private") is True:
            return False
        if self.sender_types is not None and sender_type_of(payload) not in self.sender_types:
            return False
        if self.after_message_id is not None:
            message_id = ids["message_id"]
            if message_id is None or message_id <= self.after_message_id:
                return False
        return self.content_matches(payload)


# -- queries --------------------------------------------------------------------------------------------


def _candidates(flt: EventFilter, *, after_id: int, limit: int) -> Select[Any]:
    """Build the query for rows that pass every SQL-expressible criterion, oldest first."""
    from sqlalchemy import and_, or_, select

    from neoleads_provider.store.schema import webhook_events as table

    columns = table.c
    # Equality on the leading index columns, then a range on id, lets ORDER BY id LIMIT n stop early.
    clauses: list[Any] = []
    if flt.account_id is not None:
        clauses.append(columns.account_id == flt.account_id)
    if flt.conversation_id is not None:
        clauses.append(columns.conversation_id == flt.conversation_id)
    if flt.inbox_id is not None:
        clauses.append(columns.inbox_id == flt.inbox_id)
    if len(flt.events) == 1:
        clauses.append(columns.event == flt.events[0])
    else:
        clauses.append(columns.event.in_(flt.events))
    clauses.append(columns.id > after_id)

    message_clauses: list[Any] = []
    if flt.message_types is not None:
        message_clauses.append(columns.message_type.in_(flt.message_types))
    if not flt.include_private:
        # NULL (unknown) counts as not private, as a payload without the key does.
        message_clauses.append(columns.private.is_not(True))
    if flt.sender_types is not None:
        message_clauses.append(columns.sender_type.in_(flt.sender_types))
    if flt.after_message_id is not None:
        message_clauses.append(columns.message_id > flt.after_message_id)
    other_events = [name for name in flt.events if name not in MESSAGE_EVENTS]
    if message_clauses:
        if not other_events:
            clauses.extend(message_clauses)
        elif len(other_events) < len(flt.events):
            clauses.append(or_(columns.event.in_(other_events), and_(*message_clauses)))
    return select(table).where(*clauses).order_by(columns.id).limit(limit)


def _scan(
    conn: Connection, flt: EventFilter, *, after_id: int, want: int, batch_size: int
) -> list[StoredEvent]:
    from neoleads_provider.store.records import StoredEvent

    if isinstance(after_id, bool) or not isinstance(after_id, int) or after_id < 0:
        raise ValueError(f"after_id must be an integer >= 0, got {after_id!r}")
    found: list[StoredEvent] = []
    cursor = after_id
    # Without a pattern SQL decides alone, so ask for exactly what is wanted.
    size = batch_size if flt._pattern is not None else want
    while len(found) < want:
        rows = conn.execute(_candidates(flt, after_id=cursor, limit=size)).all()
        for row in rows:
            event = StoredEvent.from_row(row)
            if event.received_at.tzinfo is None:
                # SQLite keeps no zone; the receiver writes UTC, so say so on the way out.
                event = dataclasses.replace(event, received_at=event.received_at.replace(tzinfo=UTC))
            if flt._pattern is None or _content_matches_stored(flt, event):
                found.append(event)
                if len(found) == want:
                    break
        if len(rows) < size:
            break
        cursor = rows[-1].id
    return found


def _content_matches_stored(flt: EventFilter, event: StoredEvent) -> bool:
    try:
        payload = event.payload
    except ValueError:
        # A body that is not JSON has no content to match; the receiver should never store one.
        return False
    if not isinstance(payload, Mapping):
        return False
    # The row's event column is authoritative, in case a payload lacks the key.
    return flt.content_matches({**payload, "event": event.event})


def find_first_match(conn: Connection, flt: EventFilter, *, after_id: int = 0) -> StoredEvent | None:
    """Return the oldest stored event that matches ``flt`` among rows with ``id > after_id``, or None.

    Candidates are read in batches of :data:`DEFAULT_BATCH_SIZE`, so a content pattern that misses
    on many rows never loads them all at once.

    :param conn: a connection to the event store; nothing is written.
    :param after_id: a store row id to start after (0: from the beginning).
    """
    found = _scan(conn, flt, after_id=after_id, want=1, batch_size=DEFAULT_BATCH_SIZE)
    return found[0] if found else None


def find_matches(
    conn: Connection, flt: EventFilter, *, after_id: int = 0, limit: int = 100
) -> list[StoredEvent]:
    """Return up to ``limit`` matching stored events with ``id > after_id``, oldest first.

    To page forward, pass the last returned event's ``id`` as the next ``after_id``. Row ids are
    allocated when a delivery is inserted, not when it commits, so on PostgreSQL a row with a smaller id
    can become visible after a larger one: a consumer that must not miss any should re-read a short
    window behind its cursor and deduplicate on ``delivery_id``.

    :raises ValueError: ``limit`` is not a positive integer.
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a positive integer, got {limit!r}")
    return _scan(conn, flt, after_id=after_id, want=limit, batch_size=max(limit, DEFAULT_BATCH_SIZE))


# -- API messages in webhook shape ----------------------------------------------------------------------


def _iso_timestamp(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    return datetime.fromtimestamp(value, tz=UTC).isoformat().replace("+00:00", "Z")


def webhook_payload_from_api_message(
    message: Mapping[str, Any], *, account_id: int, event: str = "message_created"
) -> dict[str, Any]:
    """Reshape a REST message (``GET .../messages``) into the payload a ``message_created`` webhook carries.

    REST gives ``message_type`` as an integer, ``conversation_id``/``inbox_id`` as flat ids and
    ``created_at`` as unix seconds; the webhook has the type's name, nested ``{"id": ...}`` objects and an
    ISO 8601 time. Keys the REST message lacks (the account and inbox names) are left out.
    """
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
        "created_at": _iso_timestamp(message.get("created_at")),
        "sender": message.get("sender"),
        "account": {"id": account_id},
        "inbox": {"id": message.get("inbox_id")},
        "conversation": {"id": message.get("conversation_id")},
    }
    if "attachments" in message:
        payload["attachments"] = message["attachments"]
    return payload
