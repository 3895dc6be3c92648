"""NeoleadsHook against the sandbox over real HTTP: every method, every error class, retries."""

from __future__ import annotations

import json
import logging
import socket
import time

import pytest

from neoleads_provider.exceptions import (
    NeoleadsAuthError,
    NeoleadsConfigError,
    NeoleadsNotFoundError,
    NeoleadsRateLimitError,
    NeoleadsServerError,
    NeoleadsTransportError,
    NeoleadsValidationError,
)
from neoleads_provider.hooks.neoleads import NeoleadsHook

CONN_ID = "neoleads_default"


@pytest.fixture
def hook(neoleads_sandbox, neoleads_connection):
    with NeoleadsHook(neoleads_connection, backoff_base=0.01, backoff_max=0.05) as hook:
        yield hook


def use_connection(monkeypatch, sandbox, conn_id="neoleads_test", **extra):
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{conn_id.upper()}",
        sandbox.connection_env(conn_id, **extra)[f"AIRFLOW_CONN_{conn_id.upper()}"],
    )
    return conn_id


def count_requests(sandbox, method, path_fragment):
    return sum(1 for m, p, _ in sandbox.requests if m == method and path_fragment in p)


# ---------------------------------------------------------------- connection and profile


def test_profile_has_no_token_and_connection_test_reports_role(hook, neoleads_sandbox):
    profile = hook.get_profile()
    assert "access_token" not in profile
    assert neoleads_sandbox.token not in json.dumps(profile)
    assert any(account["id"] == neoleads_sandbox.account_id for account in profile["accounts"])

    ok, message = hook.test_connection()
    assert ok, message
    assert "administrator" in message
    assert str(neoleads_sandbox.account_id) in message


def test_connection_test_names_a_wrong_account(monkeypatch, neoleads_sandbox):
    conn_id = use_connection(monkeypatch, neoleads_sandbox, account_id=999)
    ok, message = NeoleadsHook(conn_id).test_connection()
    assert not ok
    assert "999" in message
    assert "account_id" in message


def test_connection_test_reports_a_bad_token_without_leaking_it(monkeypatch, neoleads_sandbox):
    env = json.loads(neoleads_sandbox.connection_env("neoleads_bad")["AIRFLOW_CONN_NEOLEADS_BAD"])
    env["password"] = "definitely-wrong-token-123"
    monkeypatch.setenv("AIRFLOW_CONN_NEOLEADS_BAD", json.dumps(env))
    hook = NeoleadsHook("neoleads_bad")
    ok, message = hook.test_connection()
    assert not ok
    assert "Invalid Access Token" in message
    assert "definitely-wrong-token-123" not in message
    with pytest.raises(NeoleadsAuthError) as excinfo:
        hook.list_inboxes()
    assert excinfo.value.status_code == 401
    assert "GET /api/v1/accounts/1/inboxes" in str(excinfo.value)
    assert "definitely-wrong-token-123" not in str(excinfo.value)
    assert "definitely-wrong-token-123" not in repr(hook)


def test_connection_test_explains_the_masked_token_without_asking_the_server(monkeypatch, neoleads_sandbox):
    # What Airflow 3.1.0-3.1.6 pass on when the connections list's Test button sends the masked token.
    env = json.loads(neoleads_sandbox.connection_env("neoleads_masked")["AIRFLOW_CONN_NEOLEADS_MASKED"])
    env["password"] = "***"
    monkeypatch.setenv("AIRFLOW_CONN_NEOLEADS_MASKED", json.dumps(env))
    before = len(neoleads_sandbox.requests)
    ok, message = NeoleadsHook("neoleads_masked").test_connection()
    assert not ok
    assert message.startswith("Airflow passed the masked token '***', not the stored one")
    assert "neoleads doctor --conn-id" in message
    assert len(neoleads_sandbox.requests) == before


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, "Field 'account_id' is required (an integer)"),
        ({"account_id": 1, "timeout": "soon"}, "Field 'timeout' must be a number"),
    ],
)
def test_connection_test_names_the_field_not_the_connection_id(monkeypatch, extra, expected):
    # The UI tests a copy of the connection under a random id, which would mean nothing to the user.
    monkeypatch.setenv(
        "AIRFLOW_CONN_XQZRANDOM",
        json.dumps({"conn_type": "neoleads", "host": "http://127.0.0.1:1", "password": "t", "extra": extra}),
    )
    ok, message = NeoleadsHook("xqzrandom").test_connection()
    assert not ok
    assert message.startswith(expected), message
    assert "xqzrandom" not in message


def test_agent_token_cannot_manage_webhooks(monkeypatch, neoleads_sandbox):
    env = json.loads(neoleads_sandbox.connection_env("neoleads_agent")["AIRFLOW_CONN_NEOLEADS_AGENT"])
    env["password"] = "sandbox-agent-token"
    monkeypatch.setenv("AIRFLOW_CONN_NEOLEADS_AGENT", json.dumps(env))
    hook = NeoleadsHook("neoleads_agent")
    ok, message = hook.test_connection()
    assert ok
    assert "needs an administrator" in message
    with pytest.raises(NeoleadsAuthError, match="not authorized"):
        hook.list_webhooks()


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"account_id": None}, "account_id"),
        ({"account_id": "abc"}, "account_id"),
        ({"account_id": 1, "timeout": "soon"}, "timeout"),
        ({"account_id": 1, "max_retries": -1}, "max_retries"),
    ],
)
def test_bad_connection_fields_are_named(monkeypatch, neoleads_sandbox, extra, field):
    env = json.loads(neoleads_sandbox.connection_env("neoleads_cfg")["AIRFLOW_CONN_NEOLEADS_CFG"])
    env["extra"] = {key: value for key, value in extra.items() if value is not None}
    monkeypatch.setenv("AIRFLOW_CONN_NEOLEADS_CFG", json.dumps(env))
    with pytest.raises(NeoleadsConfigError, match=field):
        NeoleadsHook("neoleads_cfg").get_profile()


def test_legacy_prefixed_extra_keys_are_read(monkeypatch, neoleads_sandbox):
    env = json.loads(neoleads_sandbox.connection_env("neoleads_legacy")["AIRFLOW_CONN_NEOLEADS_LEGACY"])
    env["extra"] = {"extra__neoleads__account_id": str(neoleads_sandbox.account_id)}
    monkeypatch.setenv("AIRFLOW_CONN_NEOLEADS_LEGACY", json.dumps(env))
    assert NeoleadsHook("neoleads_legacy").account_id == neoleads_sandbox.account_id


# ---------------------------------------------------------------- inboxes and contacts


def test_list_and_get_inboxes(hook, neoleads_sandbox):
    inboxes = {inbox["id"]: inbox for inbox in hook.list_inboxes()}
    assert inboxes[neoleads_sandbox.api_inbox_id]["channel_type"] == "Channel::Api"
    assert inboxes[neoleads_sandbox.web_inbox_id]["channel_type"] != "Channel::Api"
    assert hook.get_inbox(neoleads_sandbox.api_inbox_id)["id"] == neoleads_sandbox.api_inbox_id


def test_create_contact_unwraps_payload_and_yields_source_id(hook, neoleads_sandbox):
    created = hook.create_contact(name="Ann", email="Ann@Example.com", inbox_id=neoleads_sandbox.api_inbox_id)
    assert created["contact"]["email"] == "ann@example.com"
    assert created["contact_inbox"]["source_id"]
    assert hook.get_contact(created["contact"]["id"])["id"] == created["contact"]["id"]


def test_duplicate_contact_is_a_validation_error_with_attributes(hook):
    hook.create_contact(name="Bo", email="bo@example.com", phone_number="+14155550100")
    with pytest.raises(NeoleadsValidationError) as excinfo:
        hook.create_contact(name="Bo 2", email="bo@example.com", phone_number="+14155550100")
    error = excinfo.value
    assert error.status_code == 422
    assert set(error.attributes) == {"email", "phone_number"}
    assert "Email has already been taken" in str(error)
    assert "POST /api/v1/accounts/1/contacts" in str(error)


def test_invalid_phone_is_refused(hook):
    with pytest.raises(NeoleadsValidationError) as excinfo:
        hook.create_contact(name="Cy", phone_number="0123")
    assert excinfo.value.attributes == ["phone_number"]


def test_find_contact_is_exact(hook):
    hook.create_contact(name="Dee", email="dee@example.com", identifier="crm-42", phone_number="+14155550101")
    assert hook.find_contact(email="DEE@example.com")["name"] == "Dee"
    assert hook.find_contact(identifier="crm-42")["name"] == "Dee"
    assert hook.find_contact(phone_number="+14155550101")["name"] == "Dee"
    # A substring search would match these; the exact filter must not.
    assert hook.find_contact(email="ee@example.com") is None
    assert hook.find_contact(identifier="crm-4") is None
    with pytest.raises(NeoleadsConfigError):
        hook.find_contact()


def test_get_or_create_contact_reuses_and_adds_the_inbox(hook, neoleads_sandbox):
    first = hook.get_or_create_contact(name="Eve", email="eve@example.com")
    assert first["created"] is True
    assert first["source_id"] is None

    again = hook.get_or_create_contact(
        name="Eve", email="eve@example.com", inbox_id=neoleads_sandbox.api_inbox_id
    )
    assert again["created"] is False
    assert again["contact"]["id"] == first["contact"]["id"]
    assert again["source_id"]

    third = hook.get_or_create_contact(
        name="Eve", email="eve@example.com", inbox_id=neoleads_sandbox.api_inbox_id
    )
    assert third["source_id"] == again["source_id"]
    assert len(neoleads_sandbox.state.contacts) == 1


def test_timed_out_create_does_not_duplicate_the_contact(monkeypatch, neoleads_sandbox):
    conn_id = use_connection(monkeypatch, neoleads_sandbox, timeout=0.5)
    neoleads_sandbox.inject(delay=1.5, after_commit=True, method="POST", path="/contacts", count=1)
    hook = NeoleadsHook(conn_id, backoff_base=0.01)
    result = hook.get_or_create_contact(
        name="Fay", email="fay@example.com", inbox_id=neoleads_sandbox.api_inbox_id
    )
    assert result["contact"]["email"] == "fay@example.com"
    assert result["source_id"]
    assert len(neoleads_sandbox.state.contacts) == 1
    assert count_requests(neoleads_sandbox, "POST", "/contacts/filter") == 1
    time.sleep(1.2)  # let the delayed answer finish so it is not logged during the next test


def test_timed_out_plain_create_is_not_replayed(monkeypatch, neoleads_sandbox):
    conn_id = use_connection(monkeypatch, neoleads_sandbox, timeout=0.5)
    neoleads_sandbox.inject(delay=1.5, after_commit=True, method="POST", path="/contacts", count=1)
    with pytest.raises(NeoleadsTransportError) as excinfo:
        NeoleadsHook(conn_id).create_contact(name="Gus", email="gus@example.com")
    assert excinfo.value.maybe_delivered
    assert len(neoleads_sandbox.state.contacts) == 1
    time.sleep(1.2)  # the sandbox logs the request once its delayed answer is written
    assert count_requests(neoleads_sandbox, "POST", "/contacts") == 1


# ---------------------------------------------------------------- conversations and messages


@pytest.fixture
def conversation(hook, neoleads_sandbox):
    created = hook.get_or_create_contact(
        name="Hal", email="hal@example.com", inbox_id=neoleads_sandbox.api_inbox_id
    )
    return hook.create_conversation(source_id=created["source_id"])


def test_create_conversation_returns_the_display_id(hook, neoleads_sandbox, conversation):
    assert conversation["id"] >= 7001
    assert conversation["status"] == "open"
    assert hook.get_conversation(conversation["id"])["id"] == conversation["id"]


def test_create_conversation_from_inbox_and_contact(hook, neoleads_sandbox):
    contact = hook.create_contact(name="Ida", email="ida@example.com")["contact"]
    conversation = hook.create_conversation(
        inbox_id=neoleads_sandbox.api_inbox_id,
        contact_id=contact["id"],
        status="pending",
        message={"content": "first words"},
    )
    assert conversation["status"] == "pending"
    assert conversation["meta"]["sender"]["id"] == contact["id"]
    assert [m["content"] for m in hook.list_messages(conversation["id"])] == ["first words"]


def test_unknown_source_id_is_not_found(hook):
    with pytest.raises(NeoleadsNotFoundError, match="Resource could not be found"):
        hook.create_conversation(source_id="no-such-source")
    with pytest.raises(NeoleadsNotFoundError):
        hook.get_conversation(1)


def test_send_and_list_messages(hook, conversation):
    out = hook.send_message(conversation["id"], "hello", source_id="ext-1")
    note = hook.send_message(conversation["id"], "internal", private=True)
    incoming = hook.send_message(conversation["id"], "hi back", message_type="incoming")
    assert out["message_type"] == 1
    assert incoming["message_type"] == 0
    assert note["private"] is True
    assert out["conversation_id"] == conversation["id"]

    listed = hook.list_messages(conversation["id"])
    assert [m["id"] for m in listed] == [out["id"], note["id"], incoming["id"]]
    assert [m["id"] for m in hook.list_messages(conversation["id"], after=out["id"])] == [
        note["id"],
        incoming["id"],
    ]
    assert [m["id"] for m in hook.list_messages(conversation["id"], before=incoming["id"])] == [
        out["id"],
        note["id"],
    ]
    assert hook.find_message_by_source_id(conversation["id"], "ext-1")["id"] == out["id"]
    assert hook.find_message_by_source_id(conversation["id"], "ext-2") is None


def test_send_message_with_rich_content_and_attachment(hook, conversation, tmp_path):
    report = tmp_path / "report.csv"
    report.write_text("a,b\n1,2\n")
    message = hook.send_message(
        conversation["id"],
        "see attached",
        content_attributes={"in_reply_to": None, "items": [{"title": "x", "value": "y"}]},
        attachments=[report],
    )
    assert len(message["attachments"]) == 1
    assert message["content_attributes"]["items"] == [{"title": "x", "value": "y"}]
    with pytest.raises(NeoleadsConfigError, match="not a readable file"):
        hook.send_message(conversation["id"], "x", attachments=[tmp_path / "missing.pdf"])
    with pytest.raises(NeoleadsConfigError, match="message_type"):
        hook.send_message(conversation["id"], "x", message_type="template")


def test_incoming_message_outside_api_inbox_is_refused(hook, neoleads_sandbox):
    contact = hook.create_contact(name="Jo", email="jo@example.com")["contact"]
    conversation = hook.create_conversation(inbox_id=neoleads_sandbox.web_inbox_id, contact_id=contact["id"])
    with pytest.raises(NeoleadsValidationError, match="only allowed in Api inboxes"):
        hook.send_message(conversation["id"], "as the contact", message_type="incoming")


def test_toggle_status(hook, conversation):
    result = hook.toggle_status(conversation["id"], "resolved")
    assert result == {
        "success": True,
        "conversation_id": conversation["id"],
        "current_status": "resolved",
        "snoozed_until": None,
    }
    assert hook.toggle_status(conversation["id"])["current_status"] == "open"
    with pytest.raises(NeoleadsConfigError, match="status"):
        hook.toggle_status(conversation["id"], "closed")


def test_generic_request(hook, neoleads_sandbox):
    assert hook.request("GET", "inboxes")["payload"]
    assert hook.request("GET", "/api/v1/profile")["id"]


def test_account_webhooks(hook):
    created = hook.create_webhook("https://example.com/hook", ["message_created"], name="ours")
    assert created["secret"]
    assert [w["id"] for w in hook.list_webhooks()] == [created["id"]]
    updated = hook.update_webhook(
        created["id"], subscriptions=["message_created", "conversation_status_changed"]
    )
    assert set(updated["subscriptions"]) == {"message_created", "conversation_status_changed"}
    with pytest.raises(NeoleadsValidationError, match="Url has already been taken"):
        hook.create_webhook("https://example.com/hook", ["message_created"])
    with pytest.raises(NeoleadsConfigError, match="subscriptions"):
        hook.create_webhook("https://example.com/other", ["message_exploded"])
    hook.delete_webhook(created["id"])
    assert hook.list_webhooks() == []


# ---------------------------------------------------------------- retries and errors


def test_429_without_retry_after_is_retried(hook, neoleads_sandbox):
    neoleads_sandbox.inject(status=429, count=2, path="/inboxes")
    assert hook.list_inboxes()
    assert count_requests(neoleads_sandbox, "GET", "/inboxes") == 3


def test_429_on_a_create_is_retried_because_it_was_not_processed(hook, neoleads_sandbox):
    neoleads_sandbox.inject(status=429, count=1, method="POST", path="/contacts")
    hook.create_contact(name="Kim", email="kim@example.com")
    assert len(neoleads_sandbox.state.contacts) == 1


def test_429_honours_retry_after_and_gives_up_after_the_budget(monkeypatch, neoleads_sandbox):
    conn_id = use_connection(monkeypatch, neoleads_sandbox, rate_limit_max_wait=0.3)
    neoleads_sandbox.inject(status=429, count=1000, path="/inboxes", retry_after=0.1)
    with pytest.raises(NeoleadsRateLimitError) as excinfo:
        NeoleadsHook(conn_id, backoff_base=0.01).list_inboxes()
    assert excinfo.value.retry_after == pytest.approx(0.1)
    assert "Retry later" in str(excinfo.value)
    assert 3 <= count_requests(neoleads_sandbox, "GET", "/inboxes") <= 6


def test_5xx_on_reads_is_retried_but_not_on_creates(hook, neoleads_sandbox, conversation):
    neoleads_sandbox.inject(status=503, count=2, method="GET", path="/messages")
    assert hook.list_messages(conversation["id"]) == []
    assert count_requests(neoleads_sandbox, "GET", "/messages") == 3

    neoleads_sandbox.inject(status=500, count=1, method="POST", path="/messages")
    with pytest.raises(NeoleadsServerError) as excinfo:
        hook.send_message(conversation["id"], "once")
    assert excinfo.value.status_code == 500
    assert count_requests(neoleads_sandbox, "POST", "/messages") == 1


def test_retries_are_bounded(monkeypatch, neoleads_sandbox):
    conn_id = use_connection(monkeypatch, neoleads_sandbox, max_retries=2)
    neoleads_sandbox.inject(status=502, count=100, method="GET", path="/inboxes")
    with pytest.raises(NeoleadsServerError):
        NeoleadsHook(conn_id, backoff_base=0.01).list_inboxes()
    assert count_requests(neoleads_sandbox, "GET", "/inboxes") == 3


def test_connection_refused_is_a_transport_error_never_sent(monkeypatch):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv(
        "AIRFLOW_CONN_NEOLEADS_DOWN",
        json.dumps(
            {
                "conn_type": "neoleads",
                "host": f"http://127.0.0.1:{port}",
                "password": "tok-abcdef",
                "extra": {"account_id": 1, "max_retries": 1},
            }
        ),
    )
    with pytest.raises(NeoleadsTransportError) as excinfo:
        NeoleadsHook("neoleads_down", backoff_base=0.01).create_contact(name="Lu")
    assert excinfo.value.maybe_delivered is False
    assert "tok-abcdef" not in str(excinfo.value)


def test_token_never_reaches_logs_or_errors(hook, neoleads_sandbox, caplog):
    caplog.set_level(logging.DEBUG)
    neoleads_sandbox.inject(status=429, count=1, path="/inboxes")
    neoleads_sandbox.inject(status=500, count=1, method="POST", path="/conversations")
    hook.list_inboxes()
    errors = []
    for call in (
        lambda: hook.create_conversation(source_id="nope"),
        lambda: hook.get_conversation(424242),
        lambda: hook.create_contact(phone_number="bad"),
    ):
        try:
            call()
        except Exception as exc:
            errors.append(f"{exc!s} {exc!r}")
    assert len(errors) == 3
    text = caplog.text + "\n".join(errors) + repr(hook) + repr(hook.settings)
    assert neoleads_sandbox.token not in text
