"""What the receiver redacts before storing a payload, and everything it leaves as it came."""

from __future__ import annotations

import json

import pytest

from neoleads_provider.events.fields import event_identity, read_event
from neoleads_provider.events.redact import REDACTED, SECRET_FIELDS, may_carry_secrets, without_secrets
from neoleads_provider.webhooks.body import parse_event_body

INBOX = {
    "event": "inbox_updated",
    "id": 5,
    "name": "Support",
    "account_id": 1,
    "channel_type": "Channel::Api",
    "channel": {
        "id": 9,
        "webhook_url": "https://airflow.example.com/neoleads/webhooks/nl?token=url-token-123&x=1",
        "hmac_token": "hmac-abc",
        "secret": "signing-secret",
        "provider_config": {"api_key": "k"},
        "imap_password": "",
        "identifier": "public-inbox-identifier",
    },
}


def test_an_inbox_event_loses_every_credential_and_keeps_the_rest() -> None:
    cleaned = without_secrets("inbox_updated", json.loads(json.dumps(INBOX)))
    assert cleaned is not None
    channel = cleaned["channel"]
    assert (channel["hmac_token"], channel["secret"], channel["provider_config"]) == (REDACTED,) * 3
    assert channel["webhook_url"] == (
        "https://airflow.example.com/neoleads/webhooks/nl?token=%5Bredacted%5D&x=1"
    )
    # Empty values stay empty; what is not a credential stays as it came.
    assert channel["imap_password"] == ""
    assert channel["identifier"] == "public-inbox-identifier"
    assert {key: cleaned[key] for key in ("id", "name", "account_id")} == {
        "id": 5,
        "name": "Support",
        "account_id": 1,
    }


@pytest.mark.parametrize("key", sorted(SECRET_FIELDS))
def test_each_secret_field_is_redacted_at_any_depth(key: str) -> None:
    payload = {"event": "inbox_created", "channel": {"nested": [{key: "s3cr3t-value"}]}}
    cleaned = without_secrets("inbox_created", payload)
    assert cleaned is not None
    assert cleaned["channel"]["nested"][0][key] == REDACTED


def test_other_events_lose_only_the_pubsub_token() -> None:
    payload = {
        "event": "conversation_created",
        "id": 7001,
        "secret": "a field that happens to be called secret",
        "contact_inbox": {"source_id": "abc", "pubsub_token": "ws-credential"},
    }
    body = json.dumps(payload).encode()
    assert may_carry_secrets("conversation_created", body)
    cleaned = without_secrets("conversation_created", payload)
    assert cleaned is not None
    assert cleaned["contact_inbox"] == {"source_id": "abc", "pubsub_token": REDACTED}
    assert cleaned["secret"] == payload["secret"]


def test_a_body_without_credentials_is_not_walked_nor_changed() -> None:
    body = json.dumps({"event": "message_created", "id": 1, "content": "hello"}).encode()
    assert not may_carry_secrets("message_created", body)
    text, _ = parse_event_body(body)
    assert text == body.decode()


def test_the_stored_text_and_its_identity_hold_no_credential() -> None:
    body = json.dumps(INBOX).encode()
    text, fields = parse_event_body(body)
    assert fields.inbox_id == 5
    for secret in ("hmac-abc", "signing-secret", "url-token-123"):
        assert secret not in text
    # Two deliveries of the same inbox_updated (both paths) still have one identity, taken from what is stored.
    assert event_identity(fields, text.encode()) == event_identity(
        read_event(json.loads(text)), text.encode()
    )
    assert event_identity(fields, text.encode()) != event_identity(fields, body)
