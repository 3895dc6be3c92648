"""Where the sandbox once differed from the real server, over TCP: each answer as Chatwoot's code gives it.

The references are Chatwoot's own files: db/schema.rb (the webhooks.subscriptions default),
toggle_status.json.jbuilder, _inbox.json.jbuilder, and Inbox::EventDataPresenter for inbox events.
"""

from __future__ import annotations

import json
import os
import time
from typing import TYPE_CHECKING, Any

import pytest
import requests
from sqlalchemy import create_engine, text

from neoleads_provider.events.names import INBOX_SCOPED_EVENTS
from neoleads_provider.events.redact import REDACTED
from neoleads_provider.exceptions import NeoleadsConfigError
from neoleads_provider.testing import NeoleadsSandbox
from neoleads_provider.testing.models import DEFAULT_WEBHOOK_SUBSCRIPTIONS
from tests._helpers import connection_env, free_port, post_webhook, standalone_receiver
from tests.testing._client import Api, Receiver, wait_for_sandbox_cli

if TYPE_CHECKING:
    from pathlib import Path


# -- webhooks ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [{"url": "https://hooks.example.com/d"}, {"url": "https://hooks.example.com/d", "subscriptions": None}],
)
def test_a_webhook_without_subscriptions_gets_the_column_default(api: Api, body: dict[str, Any]) -> None:
    created = api.post("webhooks", json=body)
    assert created.status_code == 200, created.text
    assert created.json()["payload"]["webhook"]["subscriptions"] == list(DEFAULT_WEBHOOK_SUBSCRIPTIONS)


def test_an_invalid_url_without_subscriptions_names_the_url_alone(api: Api) -> None:
    refused = api.post("webhooks", json={"url": "not a url"})
    assert (refused.status_code, refused.json()) == (
        422,
        {"message": "Url is invalid", "attributes": ["url"]},
    )


def test_a_null_subscriptions_in_an_update_keeps_them(api: Api) -> None:
    created = api.post(
        "webhooks", json={"url": "https://hooks.example.com/e", "subscriptions": ["message_created"]}
    )
    webhook_id = created.json()["payload"]["webhook"]["id"]
    patched = api.patch(f"webhooks/{webhook_id}", json={"name": "renamed", "subscriptions": None})
    assert patched.json()["payload"]["webhook"]["subscriptions"] == ["message_created"]


# -- conversations ----------------------------------------------------------------------------------------------


def test_toggle_status_renders_snoozed_until_as_the_conversation_does(api: Api) -> None:
    contact = api.contact(name="Sam", email="sam@example.com", inbox_id=1)
    conversation = api.conversation(source_id=contact["contact_inbox"]["source_id"])["id"]
    until = int(time.time()) + 3600
    toggled = api.post(
        f"conversations/{conversation}/toggle_status", json={"status": "snoozed", "snoozed_until": until}
    ).json()["payload"]
    shown = api.get(f"conversations/{conversation}").json()
    assert toggled["current_status"] == "snoozed"
    assert isinstance(toggled["snoozed_until"], str)
    assert toggled["snoozed_until"] == shown["snoozed_until"]

    reopened = api.post(f"conversations/{conversation}/toggle_status", json={"status": "open"}).json()[
        "payload"
    ]
    assert reopened["snoozed_until"] is None


# -- inboxes ----------------------------------------------------------------------------------------------------

# The keys _inbox.json.jbuilder renders for every inbox, whatever its channel (null where it lacks them).
EVERY_INBOX_KEYS = (
    "widget_color",
    "website_url",
    "hmac_mandatory",
    "welcome_title",
    "welcome_tagline",
    "web_widget_script",
    "website_token",
    "selected_feature_flags",
    "reply_time",
    "messaging_service_sid",
    "phone_number",
    "provider",
)


def test_an_api_inbox_has_every_key_the_view_renders_null_where_unset(
    neoleads_sandbox: NeoleadsSandbox, api: Api
) -> None:
    inbox = api.get("inboxes/1").json()
    assert {key: inbox[key] for key in EVERY_INBOX_KEYS if key != "hmac_mandatory"} == dict.fromkeys(
        (key for key in EVERY_INBOX_KEYS if key != "hmac_mandatory"), None
    )
    assert inbox["hmac_mandatory"] is False
    assert {"webhook_url", "inbox_identifier", "additional_attributes", "hmac_token", "secret"} <= set(inbox)
    # The view's order: the widget's keys, then Twilio's, then the API channel's, provider last.
    keys = list(inbox)
    assert (
        keys.index("reply_time")
        < keys.index("phone_number")
        < keys.index("webhook_url")
        < keys.index("provider")
    )
    assert keys[-1] == "provider"

    as_agent = Api(neoleads_sandbox, token="sandbox-agent-token").get("inboxes").json()["payload"]
    assert all("secret" not in item and "hmac_token" not in item for item in as_agent)


def test_a_website_inbox_fills_the_widget_keys(api: Api) -> None:
    inbox = api.get("inboxes/2").json()
    assert inbox["website_token"]
    assert inbox["website_token"] in inbox["web_widget_script"]
    assert inbox["reply_time"] == "in_a_few_minutes"
    assert inbox["phone_number"] is None
    assert "webhook_url" not in inbox


# -- inbox events: credentials in clear from the server, never in the store -------------------------------------


def test_inbox_created_fires_only_as_with_the_server_s_enable_inbox_events(
    neoleads_sandbox: NeoleadsSandbox, api: Api, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    neoleads_sandbox.add_webhook(f"{receiver.url}/account", subscriptions=["inbox_created"])
    api.post("inboxes", json={"name": "Quiet", "channel": {"type": "api"}})
    neoleads_sandbox.wait_for_deliveries(10)
    assert receiver.received == []
    monkeypatch.setattr(neoleads_sandbox.state, "inbox_events", True)
    api.post("inboxes", json={"name": "Announced", "channel": {"type": "api"}})
    neoleads_sandbox.wait_for_deliveries(10)
    assert receiver.events() == ["inbox_created"]


def test_inbox_created_is_stored_without_the_channel_s_secrets(
    neoleads_sandbox: NeoleadsSandbox,
    api: Api,
    receiver: Receiver,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(neoleads_sandbox.state, "inbox_events", True)
    neoleads_sandbox.add_webhook(f"{receiver.url}/account", subscriptions=["inbox_created"])
    created = api.post("inboxes", json={"name": "Outreach", "channel": {"type": "api"}}).json()
    neoleads_sandbox.wait_for_deliveries(10)
    [(_, headers, body)] = receiver.received
    sent = json.loads(body)
    # As the server sends it: the inbox's own id on top, the channel row with its credentials.
    assert (sent["event"], sent["id"]) == ("inbox_created", created["id"])
    assert sent["channel"]["secret"] == created["secret"]
    assert sent["channel"]["hmac_token"] == created["hmac_token"]

    # The same delivery, replayed into the real receiver: stored under the inbox's id, secrets redacted.
    db_path = tmp_path / "events.db"
    port = free_port()
    secret = neoleads_sandbox.state.webhooks[max(neoleads_sandbox.state.webhooks)].secret
    with standalone_receiver(
        port=port,
        db_url=f"sqlite:///{db_path}",
        env={
            **os.environ,
            **connection_env("nl_inbox_events", webhook_secrets=[secret]),
            "AIRFLOW_HOME": str(tmp_path),
        },
        log_path=tmp_path / "receiver.log",
    ):
        status, answer = post_webhook(
            f"http://127.0.0.1:{port}/neoleads/webhooks/nl_inbox_events", body, headers
        )
    assert (status, answer.get("status")) == (200, "stored"), answer
    with create_engine(f"sqlite:///{db_path}").connect() as conn:
        row = conn.execute(text("SELECT inbox_id, body FROM neoleads_webhook_event")).one()
    stored = json.loads(row.body)
    assert row.inbox_id == created["id"]
    assert stored["channel"]["secret"] == REDACTED
    assert stored["channel"]["hmac_token"] == REDACTED
    assert stored["channel"]["webhook_url"] == sent["channel"]["webhook_url"]
    assert created["secret"] not in row.body


# -- a server before v4.11.2: no signature, no delivery id ------------------------------------------------------


def test_unsigned_deliveries_are_told_apart_by_their_body(receiver: Receiver, tmp_path: Path) -> None:
    token = "fidelity-url-token-5b1d"
    db_path = tmp_path / "events.db"
    port = free_port()
    url = f"http://127.0.0.1:{port}/neoleads/webhooks/nl_unsigned?token={token}"
    env = {
        **os.environ,
        **connection_env("nl_unsigned", webhook_allow_unsigned=True, webhook_url_token=token),
        "AIRFLOW_HOME": str(tmp_path),
    }
    with (
        standalone_receiver(port=port, db_url=f"sqlite:///{db_path}", env=env, log_path=tmp_path / "r.log"),
        NeoleadsSandbox(sign_webhooks=False) as old_server,
    ):
        # An incoming message goes to the account webhook and to the API inbox's URL: the same body twice.
        old_server.add_webhook(url, subscriptions=["message_created"])
        old_server.state.set_inbox_webhook(1, url)
        old_api = Api(old_server)
        contact = old_api.contact(name="Lee", email="lee@example.com", inbox_id=1)
        conversation = old_api.conversation(source_id=contact["contact_inbox"]["source_id"])["id"]
        old_server.reply(conversation, "Hello from an old server")
        old_server.wait_for_deliveries(10)
        log = old_server.deliveries
    replies = [entry for entry in log if entry["event"] == "message_created"]
    assert len(replies) == 2
    assert {entry["status_code"] for entry in replies} == {200}
    with create_engine(f"sqlite:///{db_path}").connect() as conn:
        rows = conn.execute(
            text("SELECT delivery_id FROM neoleads_webhook_event WHERE event = 'message_created'")
        ).all()
    # One stored event (the two copies are one message_created), and its delivery id is the body's digest:
    # the old server sent none.
    assert len(rows) == 1
    assert rows[0].delivery_id.startswith("sha256:")


# -- the body limit -----------------------------------------------------------------------------------------------


def test_the_body_limit_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from neoleads_provider.webhooks.app import MAX_BODY_BYTES, configured_max_body_bytes

    monkeypatch.delenv("AIRFLOW__NEOLEADS__WEBHOOK_MAX_BODY_BYTES", raising=False)
    assert configured_max_body_bytes() == MAX_BODY_BYTES == 4 * 1024 * 1024
    monkeypatch.setenv("AIRFLOW__NEOLEADS__WEBHOOK_MAX_BODY_BYTES", "16777216")
    assert configured_max_body_bytes() == 16 * 1024 * 1024
    monkeypatch.setenv("AIRFLOW__NEOLEADS__WEBHOOK_MAX_BODY_BYTES", "big")
    with pytest.raises(
        NeoleadsConfigError, match=r"webhook_max_body_bytes must be a whole number .* got 'big'"
    ):
        configured_max_body_bytes()


def test_the_standalone_receiver_answers_413_beyond_the_setting(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        **connection_env("nl_limit", webhook_secrets=["s"]),
        "AIRFLOW_HOME": str(tmp_path),
        "AIRFLOW__NEOLEADS__WEBHOOK_MAX_BODY_BYTES": "2048",
    }
    body = json.dumps({"event": "message_created", "content": "x" * 4096}).encode()
    with standalone_receiver(
        port=port, db_url=f"sqlite:///{tmp_path / 'e.db'}", env=env, log_path=tmp_path / "r.log"
    ):
        status, answer = post_webhook(f"http://127.0.0.1:{port}/neoleads/webhooks/nl_limit", body, {})
    assert status == 413
    assert "2048" in json.dumps(answer)


# -- both delivery paths from the command line -------------------------------------------------------------------


def test_the_cli_delivers_through_the_api_inbox_s_own_webhook_signed_with_its_secret(
    receiver: Receiver,
) -> None:
    import signal
    import subprocess
    import sys

    from neoleads_provider.testing import DEFAULT_API_INBOX_SECRET, DEFAULT_TOKEN
    from neoleads_provider.webhooks.verify import verify

    port = free_port()
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "neoleads_provider.cli", "sandbox", "--port", str(port)),
            *("--webhook-url", f"{receiver.url}/account", "--inbox-webhook-url", f"{receiver.url}/inbox"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}/api/v1/accounts/1"
        headers = {"api_access_token": DEFAULT_TOKEN}
        wait_for_sandbox_cli(process, port)
        contact = requests.post(
            f"{base}/contacts", json={"name": "Kim", "inbox_id": 1}, headers=headers, timeout=5
        ).json()["payload"]
        source_id = contact["contact_inbox"]["source_id"]
        conversation = requests.post(
            f"{base}/conversations", json={"source_id": source_id}, headers=headers, timeout=5
        ).json()["id"]
        requests.post(
            f"{base}/conversations/{conversation}/messages",
            json={"content": "hi"},
            headers=headers,
            timeout=5,
        )
        deadline = time.monotonic() + 10
        while not any(path == "/inbox" for path, _, _ in receiver.received) and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        stdout, _ = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert f"Inbox webhook:  {receiver.url}/inbox" in stdout
    inbox_copies = [(headers, body) for path, headers, body in receiver.received if path == "/inbox"]
    assert inbox_copies, receiver.received
    for copy_headers, body in inbox_copies:
        # Signed with the inbox's own secret, as a real API inbox signs its webhook_url deliveries.
        verify([DEFAULT_API_INBOX_SECRET], copy_headers, body, now=time.time())
    assert {json.loads(body)["event"] for _, body in inbox_copies} <= INBOX_SCOPED_EVENTS


# -- contacts and attachments -----------------------------------------------------------------------------------


def test_a_contact_s_avatar_url_is_not_saved_as_its_thumbnail(api: Api) -> None:
    # The server drops avatar_url from what it saves and fetches the image in a background job.
    contact = api.contact(name="Pat", email="pat@example.com", avatar_url="https://example.com/pat.png")[
        "contact"
    ]
    assert contact["thumbnail"] == ""
    assert api.get(f"contacts/{contact['id']}").json()["payload"]["thumbnail"] == ""


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("image/png", "image"),
        ("image/svg+xml", "file"),
        ("image/heic", "file"),
        ("video/mp4", "video"),
        ("video/x-msvideo", "file"),
        ("audio/mpeg", "audio"),
        ("application/pdf", "file"),
    ],
)
def test_an_attachment_s_file_type_is_the_server_s(api: Api, content_type: str, expected: str) -> None:
    contact = api.contact(name="Lou", email="lou@example.com", inbox_id=1)
    conversation = api.conversation(source_id=contact["contact_inbox"]["source_id"])["id"]
    response = api.post(
        f"conversations/{conversation}/messages",
        data={"content": "see attached"},
        files={"attachments[]": ("file", b"0123456789", content_type)},
    )
    assert response.status_code == 200, response.text
    assert [item["file_type"] for item in response.json()["attachments"]] == [expected]


# -- conversations: the assignee, and a first message into a locked single conversation -------------------------


def test_the_rest_conversation_s_assignee_is_the_agent_partial(api: Api) -> None:
    contact = api.contact(name="Ray", email="ray@example.com", inbox_id=1)
    created = api.conversation(source_id=contact["contact_inbox"]["source_id"], assignee_id=1)
    assignee = api.get(f"conversations/{created['id']}").json()["meta"]["assignee"]
    assert list(assignee) == [
        "id",
        "account_id",
        "availability_status",
        "auto_offline",
        "confirmed",
        "email",
        "provider",
        "available_name",
        "name",
        "role",
        "thumbnail",
    ]
    assert (assignee["id"], assignee["role"]) == (1, "administrator")
    assert "@" in assignee["email"]


def test_a_locked_inbox_adds_the_first_message_to_the_contact_s_last_conversation(api: Api) -> None:
    assert api.patch("inboxes/1", json={"lock_to_single_conversation": True}).status_code == 200
    contact = api.contact(name="Eve", email="eve@example.com", inbox_id=1)
    source_id = contact["contact_inbox"]["source_id"]
    first = api.conversation(source_id=source_id, message={"content": "first"})
    again = api.conversation(source_id=source_id, message={"content": "second"})
    assert again["id"] == first["id"]
    contents = [m["content"] for m in api.get(f"conversations/{first['id']}/messages").json()["payload"]]
    assert contents[-2:] == ["first", "second"]


def test_a_first_message_that_fails_validation_is_the_record_invalid_422(
    neoleads_sandbox: NeoleadsSandbox, api: Api
) -> None:
    contact = api.contact(name="Val", email="val@example.com", inbox_id=1)
    before = len(neoleads_sandbox.state.conversations)
    refused = api.post(
        "conversations",
        json={"source_id": contact["contact_inbox"]["source_id"], "message": {"content": "x" * 150_001}},
    )
    assert (refused.status_code, refused.json()) == (
        422,
        {"message": "Content is too long (maximum is 150000 characters)", "attributes": ["content"]},
    )
    # One transaction: no conversation either.
    assert len(neoleads_sandbox.state.conversations) == before


def test_content_attributes_that_are_not_json_are_read_as_none(api: Api) -> None:
    contact = api.contact(name="Jay", email="jay@example.com", inbox_id=1)
    conversation = api.conversation(source_id=contact["contact_inbox"]["source_id"])["id"]
    message = api.message(conversation, content="hi", content_attributes="{not json")
    assert message["content_attributes"] == {}
