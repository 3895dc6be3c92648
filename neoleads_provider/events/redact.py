"""Secrets a Neoleads (Chatwoot) payload can carry in clear, and their removal before anything stores them.

``inbox_created`` and ``inbox_updated`` send the inbox with its channel record (``Inbox::EventDataPresenter``):
for an API inbox that includes the ``hmac_token`` and the webhook signing ``secret``, for an email inbox the
IMAP and SMTP passwords, for other channels their provider tokens, and a ``webhook_url`` that may carry a
``?token=`` (the unsigned mode's URL token). Conversation and message payloads carry the contact inbox's
``pubsub_token`` (the widget's websocket credential). The event store keeps payloads for as long as sensors
and operators may read them, and task logs and XComs show them: such values never get in.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from neoleads_provider.events.names import INBOX_EVENTS

__all__ = ["REDACTED", "SECRET_FIELDS", "may_carry_secrets", "without_secrets"]

#: What a secret's value becomes.
REDACTED = "[redacted]"
#: The keys of channel records that hold credentials, across Chatwoot's channel types.
SECRET_FIELDS = frozenset(
    {
        "access_token",
        "api_key",
        "api_key_sid",
        "auth_token",
        "bot_token",
        "hmac_token",
        "imap_password",
        "line_channel_secret",
        "line_channel_token",
        "page_access_token",
        "provider_config",
        "pubsub_token",
        "refresh_token",
        "secret",
        "smtp_password",
        "twitter_access_token",
        "twitter_access_token_secret",
        "user_access_token",
    }
)
#: Query parameters of a URL value that are credentials (the receiver's unsigned mode uses ``token``).
SECRET_QUERY_PARAMETERS = frozenset({"token", "access_token", "api_key", "secret"})
#: Outside inbox events, only this key carries a credential; a body without it is not walked.
_ANY_EVENT_MARKER = b'"pubsub_token"'


def may_carry_secrets(event: str, body: bytes) -> bool:
    """Whether :func:`without_secrets` could find anything: every inbox event, and bodies naming a pubsub_token."""
    return event in INBOX_EVENTS or _ANY_EVENT_MARKER in body


def _without_secret_query(url: str) -> str:
    parts = urlsplit(url)
    if not parts.query:
        return url
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    if not any(key.lower() in SECRET_QUERY_PARAMETERS for key, _ in pairs):
        return url
    query = urlencode(
        [(key, REDACTED if key.lower() in SECRET_QUERY_PARAMETERS else value) for key, value in pairs]
    )
    return urlunsplit(parts._replace(query=query))


def without_secrets(event: str, payload: dict[str, Any]) -> dict[str, Any] | None:
    """``payload`` with every credential replaced by :data:`REDACTED`, if it had one; else None.

    In inbox events: every :data:`SECRET_FIELDS` value, and credential query parameters of ``*_url`` values.
    In any event: ``pubsub_token``. An answer of None means the body is stored as it came.
    """
    inbox_event = event in INBOX_EVENTS
    found = False

    def clean(value: Any) -> Any:
        nonlocal found
        if isinstance(value, dict):
            cleaned = {}
            for key, item in value.items():
                secret = key in SECRET_FIELDS if inbox_event else key == "pubsub_token"
                if secret and item not in (None, "", {}, []):
                    found = True
                    cleaned[key] = REDACTED
                elif inbox_event and isinstance(key, str) and key.endswith("_url") and isinstance(item, str):
                    without = _without_secret_query(item)
                    found = found or without != item
                    cleaned[key] = without
                else:
                    cleaned[key] = clean(item)
            return cleaned
        if isinstance(value, list):
            return [clean(item) for item in value]
        return value

    # The body parser has already bounded the depth (MAX_JSON_DEPTH), so this recursion is bounded too.
    cleaned = clean(payload)
    return cleaned if found else None
