"""Secrets a Neoleads (Chatwoot) payload can carry in clear, and their removal before anything stores them.

``inbox_created`` and ``inbox_updated`` send the inbox with its channel record (``Inbox::EventDataPresenter``):
for an API inbox that includes the ``hmac_token`` and the webhook signing ``secret``, for an email inbox the
IMAP and SMTP passwords, for other channels their provider tokens. The event store keeps payloads for as long
as sensors and operators may read them, and task logs and XComs show them: such values never get in.
"""

from __future__ import annotations

from typing import Any

from neoleads_provider.events.names import INBOX_EVENTS

__all__ = ["REDACTED", "SECRET_FIELDS", "without_secrets"]

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
        "secret",
        "smtp_password",
        "user_access_token",
    }
)


def without_secrets(event: str, payload: dict[str, Any]) -> dict[str, Any] | None:
    """``payload`` with every :data:`SECRET_FIELDS` value replaced by :data:`REDACTED`, if it had one.

    Only inbox events carry channel records; for any other event, or an inbox event without secrets, the
    answer is None: the body is stored as it came.
    """
    if event not in INBOX_EVENTS:
        return None
    found = False

    def clean(value: Any) -> Any:
        nonlocal found
        if isinstance(value, dict):
            cleaned = {}
            for key, item in value.items():
                if key in SECRET_FIELDS and item not in (None, "", {}, []):
                    found = True
                    cleaned[key] = REDACTED
                else:
                    cleaned[key] = clean(item)
            return cleaned
        if isinstance(value, list):
            return [clean(item) for item in value]
        return value

    # The body parser has already bounded the depth (MAX_JSON_DEPTH), so this recursion is bounded too.
    cleaned = clean(payload)
    return cleaned if found else None
