"""Describe which webhook event a sensor or trigger waits for: :class:`EventFilter`.

A filter is checked in two places that must agree: the event store turns every criterion that has a column
into SQL (``store/matching.py``), and :meth:`EventFilter.matches` applies the same rules to the
:class:`~neoleads_provider.events.fields.EventFields` of a payload that never went through the store, such as
a message read back from the API to fill a lost delivery. Both read payloads through
:func:`~neoleads_provider.events.fields.read_event`, so they cannot disagree on what a payload says.

Every filter belongs to one Airflow connection (``conn_id``): only deliveries received for that connection
match it, so a credential of one connection can never answer another's sensors.

Message criteria (message types, private notes, sender types, the message-id watermark and the content
pattern) concern message events only: a filter that also waits for, say, ``conversation_status_changed``
lets those events through on the conversation criteria alone.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from neoleads_provider.events.fields import EventFields, read_event
from neoleads_provider.events.names import KNOWN_EVENTS, MESSAGE_EVENTS, MESSAGE_TYPES

__all__ = ["DEFAULT_CONN_ID", "EventFilter"]

DEFAULT_CONN_ID = "neoleads_default"


def _str_tuple(name: str, value: Any) -> tuple[str, ...]:
    """Normalise a string, a comma-separated string or a sequence of strings to a lower-case tuple."""
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
        text = item.strip().lower()
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

    :param conn_id: the Airflow connection the deliveries were received for; nothing else matches.
    :param events: webhook event names, e.g. ``("message_created",)``.
    :param account_id: the Neoleads account (the receiver already refuses deliveries of other accounts).
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

    conn_id: str = DEFAULT_CONN_ID
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

    if TYPE_CHECKING:
        # What callers may pass (names as a string, comma-separated, or a list); __post_init__ stores the
        # field types above. Type checkers only: the dataclass generates the real __init__.
        def __init__(
            self,
            conn_id: str = ...,
            events: str | Sequence[str] = ...,
            account_id: int | None = ...,
            inbox_id: int | None = ...,
            conversation_id: int | None = ...,
            message_types: str | Sequence[str] | None = ...,
            include_private: bool = ...,
            sender_types: str | Sequence[str] | None = ...,
            after_message_id: int | None = ...,
            content_pattern: str | None = ...,
        ) -> None: ...

    def __post_init__(self) -> None:
        # Frozen: normalised values are written through object.__setattr__, once, here.
        if not isinstance(self.conn_id, str) or not self.conn_id.strip():
            raise ValueError(f"EventFilter.conn_id must be an Airflow connection id, got {self.conn_id!r}")
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

    def describe(self) -> str:
        """What this filter waits for, in words, for logs and errors (no secrets or personal data in it).

        For example: ``message_created (incoming) in conversation 7 of account 1 after message 41, on
        connection neoleads_default``.
        """
        text = " or ".join(self.events)
        qualifiers = []
        if self.message_types is not None:
            qualifiers.append("/".join(self.message_types))
        if self.sender_types is not None:
            qualifiers.append("sent by " + "/".join(self.sender_types))
        if self.include_private:
            qualifiers.append("private notes included")
        if qualifiers and set(self.events) & MESSAGE_EVENTS:
            text += f" ({', '.join(qualifiers)})"
        if self.conversation_id is not None:
            text += f" in conversation {self.conversation_id}"
        if self.inbox_id is not None:
            text += f" in inbox {self.inbox_id}"
        if self.account_id is not None:
            text += f" of account {self.account_id}"
        if self.after_message_id is not None:
            text += f" after message {self.after_message_id}"
        if self.content_pattern is not None:
            # Not the pattern itself: it may be built from a customer's data (an order number, a phone).
            text += " with content matching content_pattern"
        return f"{text}, on connection {self.conn_id}"

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

    @property
    def has_content_pattern(self) -> bool:
        """Whether a criterion is left that SQL cannot check (the content pattern)."""
        return self._pattern is not None

    def content_matches(self, event: EventFields) -> bool:
        """Apply the content pattern (the part the store query cannot). A message without text never matches."""
        if self._pattern is None or not event.is_message:
            return True
        return event.content is not None and self._pattern.search(event.content) is not None

    def matches_fields(self, event: EventFields) -> bool:
        """Apply every criterion but ``conn_id`` (which is where the event was received) to an event's fields."""
        if event.event not in self.events:
            return False
        for name in ("account_id", "inbox_id", "conversation_id"):
            wanted = getattr(self, name)
            if wanted is not None and getattr(event, name) != wanted:
                return False
        if not event.is_message:
            return True
        if self.message_types is not None and event.message_type not in self.message_types:
            return False
        # Unknown (None) counts as not private, as in the store query.
        if not self.include_private and event.private is True:
            return False
        if self.sender_types is not None and event.sender_type not in self.sender_types:
            return False
        if self.after_message_id is not None and (
            event.message_id is None or event.message_id <= self.after_message_id
        ):
            return False
        return self.content_matches(event)

    def matches(self, payload: Mapping[str, Any]) -> bool:
        """Apply every criterion but ``conn_id`` to a webhook-shaped payload; a malformed one never matches."""
        try:
            event = read_event(payload)
        except ValueError:
            return False
        return self.matches_fields(event)
