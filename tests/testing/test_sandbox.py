"""The Neoleads sandbox, exercised over real HTTP on 127.0.0.1.

Most tests use the pytest plugin's ``neoleads_sandbox`` fixture (one server per session, reset per test).
Webhook deliveries go to a small stdlib HTTP receiver and are checked with the provider's own verifier.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest
import requests

from neoleads_provider.testing import (
    DEFAULT_ACCOUNT_ID,
    DEFAULT_AGENT_TOKEN,
    DEFAULT_API_INBOX_SECRET,
    DEFAULT_TOKEN,
    NeoleadsSandbox,
)
from neoleads_provider.webhooks.verify import NoMatchingSignatureError, verify
from tests.testing._client import Api, Receiver, wait_for_sandbox_cli

NOT_FOUND = {"error": "Resource could not be found"}
NOT_AUTHORIZED = {"error": "You are not authorized to do this action"}
SERVER_ERROR = {"status": 500, "error": "Internal Server Error"}


# ---------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except (TypeError, ValueError):
        return False
    return True


# ---------------------------------------------------------------------------------------------------------------
# Auth, profile, inboxes
# ---------------------------------------------------------------------------------------------------------------


def test_profile_is_flat_and_echoes_the_token(api: Api) -> None:
    response = api.get("/api/v1/profile")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["id"] == 1
    assert body["role"] == "administrator"
    assert body["access_token"] == DEFAULT_TOKEN
    assert body["accounts"][0]["id"] == DEFAULT_ACCOUNT_ID
    assert body["accounts"][0]["name"] == "Sandbox Account"
    assert body["accounts"][0]["role"] == "administrator"


def test_auth_errors_have_the_real_bodies(neoleads_sandbox: NeoleadsSandbox) -> None:
    anonymous = Api(neoleads_sandbox, token=None)
    response = anonymous.get("/api/v1/profile")
    assert (response.status_code, response.json()) == (
        401,
        {"errors": ["You need to sign in or sign up before continuing."]},
    )
    response = Api(neoleads_sandbox, token="wrong").get("contacts")
    assert (response.status_code, response.json()) == (401, {"error": "Invalid Access Token"})

    admin = Api(neoleads_sandbox)
    response = admin.get("/api/v1/accounts/999/inboxes")
    assert (response.status_code, response.json()) == (404, NOT_FOUND)
    other = neoleads_sandbox.account_id + 1
    response = admin.get(f"/api/v1/accounts/{other}/inboxes")
    assert (response.status_code, response.json()) == (
        401,
        {"error": "You are not authorized to access this account"},
    )

    agent = Api(neoleads_sandbox, token=DEFAULT_AGENT_TOKEN)
    assert agent.get("/api/v1/profile").json()["role"] == "agent"


def test_inboxes_are_wrapped_and_hide_secrets_from_agents(neoleads_sandbox: NeoleadsSandbox) -> None:
    admin = Api(neoleads_sandbox)
    inboxes = admin.get("inboxes").json()["payload"]
    by_id = {inbox["id"]: inbox for inbox in inboxes}
    assert by_id[1]["name"] == "API"
    assert by_id[1]["channel_type"] == "Channel::Api"
    assert by_id[1]["secret"] == DEFAULT_API_INBOX_SECRET == neoleads_sandbox.api_inbox_secret
    assert by_id[1]["hmac_token"]
    assert by_id[1]["inbox_identifier"]
    assert by_id[1]["webhook_url"] is None
    assert by_id[2]["name"] == "Website"
    assert by_id[2]["channel_type"] == "Channel::WebWidget"

    agent_view = Api(neoleads_sandbox, token=DEFAULT_AGENT_TOKEN).get("inboxes/1").json()
    assert "secret" not in agent_view
    assert "hmac_token" not in agent_view
    assert agent_view["inbox_identifier"] == by_id[1]["inbox_identifier"]


def test_inbox_update_reset_secret_and_create(neoleads_sandbox: NeoleadsSandbox) -> None:
    admin = Api(neoleads_sandbox)
    updated = admin.patch(
        "inboxes/1", json={"channel": {"webhook_url": "https://hooks.example.com/in"}}
    ).json()
    assert updated["webhook_url"] == "https://hooks.example.com/in"
    assert admin.get("inboxes/1").json()["webhook_url"] == "https://hooks.example.com/in"

    rotated = admin.post("inboxes/1/reset_secret")
    assert rotated.status_code == 200
    assert rotated.json()["secret"] not in ("", DEFAULT_API_INBOX_SECRET)
    assert neoleads_sandbox.api_inbox_secret == rotated.json()["secret"]

    response = admin.post("inboxes/2/reset_secret")
    assert (response.status_code, response.content) == (404, b"")
    response = admin.get("inboxes/77")
    assert (response.status_code, response.json()) == (404, NOT_FOUND)

    created = admin.post("inboxes", json={"name": "Bot", "channel": {"type": "api", "webhook_url": ""}})
    assert created.status_code == 200
    assert created.json()["channel_type"] == "Channel::Api"
    assert created.json()["id"] == 3
    assert created.json()["secret"]
    agent = Api(neoleads_sandbox, token=DEFAULT_AGENT_TOKEN)
    response = agent.post("inboxes", json={"name": "X", "channel": {"type": "api"}})
    assert (response.status_code, response.json()) == (401, NOT_AUTHORIZED)
    # Agents only see the inboxes they belong to; the new inbox is not one of them.
    assert {inbox["id"] for inbox in agent.get("inboxes").json()["payload"]} == {1, 2}


# ---------------------------------------------------------------------------------------------------------------
# Contacts
# ---------------------------------------------------------------------------------------------------------------


def test_contact_create_is_wrapped_with_and_without_inbox(api: Api) -> None:
    bare = api.contact(name="No Inbox", email="bare@example.com")
    assert bare["contact"]["id"] == 301
    assert bare["contact_inbox"] == {"inbox": None, "source_id": None}
    assert bare["contact"]["contact_inboxes"] == []

    with_inbox = api.contact(
        name="Ann", email="Ann@Example.COM", inbox_id=1, custom_attributes={"tier": "gold"}
    )
    contact = with_inbox["contact"]
    assert contact["id"] == 302
    assert contact["email"] == "ann@example.com"
    assert contact["custom_attributes"] == {"tier": "gold"}
    source_id = with_inbox["contact_inbox"]["source_id"]
    assert _is_uuid(source_id)
    assert with_inbox["contact_inbox"]["inbox"]["id"] == 1
    assert with_inbox["contact_inbox"]["inbox"]["channel_type"] == "Channel::Api"
    assert contact["contact_inboxes"] == [
        {
            "source_id": source_id,
            "inbox": {
                "id": 1,
                "avatar_url": "",
                "channel_id": contact["contact_inboxes"][0]["inbox"]["channel_id"],
                "name": "API",
                "channel_type": "Channel::Api",
                "provider": None,
            },
        }
    ]
    shown = api.get(f"contacts/{contact['id']}").json()["payload"]
    assert shown["id"] == 302
    assert shown["contact_inboxes"][0]["source_id"] == source_id
    assert (
        "contact_inboxes"
        not in api.get("contacts/302", params={"include_contact_inboxes": "false"}).json()["payload"]
    )
    response = api.get("contacts/9999")
    assert (response.status_code, response.json()) == (404, NOT_FOUND)
    response = api.post("contacts", json={"name": "X", "inbox_id": 99})
    assert (response.status_code, response.json()) == (404, NOT_FOUND)


@pytest.mark.parametrize(
    ("existing", "new", "body"),
    [
        pytest.param(
            {"email": "dup@example.com", "phone_number": "+14155550100"},
            {"email": "DUP@example.com", "phone_number": "+14155550100"},
            {
                "message": "Email has already been taken, Phone number has already been taken",
                "attributes": ["email", "phone_number"],
            },
            id="email-case-insensitive-and-phone",
        ),
        pytest.param(
            {"identifier": "crm-1"},
            {"identifier": "crm-1"},
            {"message": "Identifier has already been taken", "attributes": ["identifier"]},
            id="identifier",
        ),
        pytest.param(
            None,
            {"phone_number": "4155550100"},
            {"message": "Phone number should be in e164 format", "attributes": ["phone_number"]},
            id="phone-format",
        ),
        pytest.param(
            None,
            {"email": "not-an-email"},
            {"message": "Email Invalid email", "attributes": ["email"]},
            id="email-format",
        ),
        pytest.param(
            None,
            {"name": "x" * 256, "email": "long@example.com"},
            {"message": "Name is too long (maximum is 255 characters)", "attributes": ["name"]},
            id="name-length",
        ),
    ],
)
def test_contact_validations_return_the_exact_422(
    api: Api, existing: dict | None, new: dict, body: dict
) -> None:
    if existing is not None:
        api.contact(name="First", **existing)
    response = api.post("contacts", json={"name": "Second", **new})
    assert response.status_code == 422
    assert response.json() == body
    assert len(api.get("contacts").json()["payload"]) == (1 if existing else 0)


def test_identifier_uniqueness_is_case_sensitive_and_name_255_is_fine(api: Api) -> None:
    api.contact(identifier="CRM-1")
    api.contact(identifier="crm-1", name="y" * 255)


def test_contact_update_merges_attributes_and_validates(api: Api) -> None:
    contact = api.contact(
        name="Ann",
        email="ann@example.com",
        custom_attributes={"tier": "gold", "plan": "a"},
        additional_attributes={"city": "Oslo"},
    )["contact"]
    api.contact(name="Bob", email="bob@example.com")
    response = api.patch(
        f"contacts/{contact['id']}",
        json={
            "name": "Ann B",
            "custom_attributes": {"plan": "b"},
            "additional_attributes": {"country": "NO"},
        },
    )
    assert response.status_code == 200
    updated = response.json()["payload"]
    assert updated["name"] == "Ann B"
    assert updated["custom_attributes"] == {"tier": "gold", "plan": "b"}
    assert updated["additional_attributes"] == {"city": "Oslo", "country": "NO"}
    response = api.session.put(
        api.url(f"contacts/{contact['id']}"), json={"email": "BOB@example.com"}, timeout=10
    )
    assert (response.status_code, response.json()) == (
        422,
        {"message": "Email has already been taken", "attributes": ["email"]},
    )


def test_filter_is_exact_and_chains_query_operators(api: Api) -> None:
    ann = api.contact(name="Ann", email="ann@example.com")["contact"]
    joanne = api.contact(name="Joanne", email="joanne@example.com", phone_number="+4790000001")["contact"]
    api.contact(name="Only A Name")  # not "resolved": no email, phone or identifier
    carl = api.contact(name="Carl", identifier="CRM-9")["contact"]

    def run(conditions: list[dict], **params) -> dict:
        response = api.post("contacts/filter", json={"payload": conditions}, params=params)
        assert response.status_code == 200, response.text
        return response.json()

    def cond(key: str, value: str, op: str | None = None) -> dict:
        return {"attribute_key": key, "filter_operator": "equal_to", "values": [value], "query_operator": op}

    exact = run([cond("email", "ANN@example.com")])
    assert [c["id"] for c in exact["payload"]] == [ann["id"]]
    assert exact["meta"] == {"count": 1, "current_page": 1}
    assert run([cond("email", "ann")])["payload"] == []
    either = run([cond("email", "ann@example.com", "OR"), cond("phone_number", "4790000001")])
    assert sorted(c["id"] for c in either["payload"]) == sorted([ann["id"], joanne["id"]])
    both = run([cond("email", "ann@example.com", "AND"), cond("phone_number", "+4790000001")])
    assert both["payload"] == []
    assert [c["id"] for c in run([cond("identifier", "crm-9")])["payload"]] == [carl["id"]]
    not_ann = run(
        [{"attribute_key": "email", "filter_operator": "not_equal_to", "values": ["ann@example.com"]}]
    )
    assert [c["id"] for c in not_ann["payload"]] == [joanne["id"]]

    response = api.post(
        "contacts/filter",
        json={"payload": [{"attribute_key": "identifier", "filter_operator": "contains", "values": ["x"]}]},
    )
    assert response.status_code == 422
    assert response.json()["error"].startswith("Invalid operator. The allowed operators for identifier are [")

    search = api.get("contacts/search", params={"q": "ann"}).json()
    assert sorted(c["id"] for c in search["payload"]) == sorted([ann["id"], joanne["id"]])
    assert search["meta"] == {"count": 2, "current_page": 1, "has_more": False}


def test_filter_and_search_paginate_by_15(api: Api) -> None:
    for index in range(17):
        api.contact(name=f"Page {index}", email=f"page{index}@example.com")
    filtered = api.post(
        "contacts/filter",
        json={"payload": [{"attribute_key": "email", "filter_operator": "contains", "values": ["page"]}]},
        params={"page": 2},
    ).json()
    assert filtered["meta"] == {"count": 17, "current_page": 2}
    assert len(filtered["payload"]) == 2
    first = api.get("contacts/search", params={"q": "page"}).json()
    assert (len(first["payload"]), first["meta"]["count"], first["meta"]["has_more"]) == (15, 15, True)
    second = api.get("contacts/search", params={"q": "page", "page": 2}).json()
    assert (len(second["payload"]), second["meta"]["count"], second["meta"]["has_more"]) == (2, 2, False)
    assert api.get("contacts/search", params={"q": ""}).json()["payload"] == []


def test_contact_inboxes_first_or_create_and_filter(api: Api) -> None:
    contact = api.contact(name="Ann", email="ann@example.com")["contact"]
    other = api.contact(name="Bob", email="bob@example.com")["contact"]
    created = api.post(
        f"contacts/{contact['id']}/contact_inboxes", json={"inbox_id": 1, "source_id": "src-1"}
    )
    assert created.status_code == 200
    assert created.json()["source_id"] == "src-1"
    assert created.json()["inbox"]["id"] == 1
    assert set(created.json()) == {"source_id", "inbox"}
    again = api.post(f"contacts/{contact['id']}/contact_inboxes", json={"inbox_id": 1, "source_id": "src-1"})
    assert again.json()["source_id"] == "src-1"
    minted = api.post(f"contacts/{contact['id']}/contact_inboxes", json={"inbox_id": 1}).json()["source_id"]
    assert _is_uuid(minted)
    assert len(api.get(f"contacts/{contact['id']}").json()["payload"]["contact_inboxes"]) == 2
    taken = api.post(f"contacts/{other['id']}/contact_inboxes", json={"inbox_id": 1, "source_id": "src-1"})
    assert (taken.status_code, taken.json()) == (500, SERVER_ERROR)

    hit = api.post("contact_inboxes/filter", json={"inbox_id": 1, "source_id": "src-1"})
    assert hit.status_code == 200
    assert hit.json()["id"] == contact["id"]
    assert "payload" not in hit.json()
    miss = api.post("contact_inboxes/filter", json={"inbox_id": 1, "source_id": "nope"})
    assert (miss.status_code, miss.content) == (404, b"")

    contactable = api.get(f"contacts/{other['id']}/contactable_inboxes").json()["payload"]
    assert [item["inbox"]["id"] for item in contactable] == [1]
    assert _is_uuid(contactable[0]["source_id"])


# ---------------------------------------------------------------------------------------------------------------
# Conversations and messages
# ---------------------------------------------------------------------------------------------------------------


def test_conversation_create_by_source_id_and_by_inbox_and_contact(api: Api) -> None:
    created = api.contact(name="Ann", email="ann@example.com", inbox_id=1)
    contact_id = created["contact"]["id"]
    source_id = created["contact_inbox"]["source_id"]

    legacy = api.conversation(source_id=source_id, message={"content": "Hello from the API"})
    assert legacy["id"] == 7001
    assert legacy["inbox_id"] == 1
    assert legacy["status"] == "open"
    assert legacy["meta"]["sender"]["id"] == contact_id
    assert legacy["meta"]["channel"] == "Channel::Api"
    assert legacy["messages"][0]["content"] == "Hello from the API"
    assert legacy["messages"][0]["message_type"] == 1
    assert legacy["messages"][0]["conversation_id"] == 7001
    assert legacy["messages"][0]["id"] == 90001

    direct = api.conversation(inbox_id=1, contact_id=contact_id, status="pending")
    assert (direct["id"], direct["status"], direct["messages"]) == (7002, "pending", [])
    web = api.conversation(inbox_id=2, contact_id=contact_id)
    assert (web["id"], web["inbox_id"], web["meta"]["channel"]) == (7003, 2, "Channel::WebWidget")

    missing = api.post("conversations", json={"source_id": "no-such-source"})
    assert (missing.status_code, missing.json()) == (404, NOT_FOUND)
    assert api.post("conversations", json={"inbox_id": 1, "contact_id": 9999}).status_code == 404

    shown = api.get("conversations/7001").json()
    assert (shown["id"], shown["meta"]["sender"]["id"]) == (7001, contact_id)
    # The internal id (1) is not a display id.
    assert api.get("conversations/1").status_code == 404
    listed = api.get("conversations", params={"status": "all"}).json()["data"]
    assert listed["meta"]["all_count"] == 3
    assert sorted(item["id"] for item in listed["payload"]) == [7001, 7002, 7003]
    assert [item["id"] for item in api.get("conversations").json()["data"]["payload"]] == [7003, 7001]
    history = api.get(f"contacts/{contact_id}/conversations").json()["payload"]
    assert sorted(item["id"] for item in history) == [7001, 7002, 7003]


def test_toggle_status_response_shape(api: Api) -> None:
    contact = api.contact(name="Ann", email="ann@example.com")["contact"]
    conversation = api.conversation(inbox_id=1, contact_id=contact["id"])
    toggled = api.post(f"conversations/{conversation['id']}/toggle_status").json()
    assert toggled == {
        "meta": {},
        "payload": {
            "success": True,
            "conversation_id": 7001,
            "current_status": "resolved",
            "snoozed_until": None,
        },
    }
    assert api.post("conversations/7001/toggle_status").json()["payload"]["current_status"] == "open"
    explicit = api.post("conversations/7001/toggle_status", json={"status": "pending"}).json()
    assert explicit["payload"]["current_status"] == "pending"
    assert api.get("conversations/7001").json()["status"] == "pending"


def test_messages_rest_shape_and_validations(api: Api) -> None:
    created = api.contact(name="Ann", email="ann@example.com", inbox_id=1)
    api_conv = api.conversation(inbox_id=1, contact_id=created["contact"]["id"])["id"]
    web_conv = api.conversation(inbox_id=2, contact_id=created["contact"]["id"])["id"]

    outgoing = api.message(api_conv, content="hi", echo_id="echo-1", source_id="ext-1")
    assert outgoing["message_type"] == 1
    assert outgoing["conversation_id"] == api_conv
    assert outgoing["echo_id"] == "echo-1"
    assert outgoing["source_id"] == "ext-1"
    assert outgoing["private"] is False
    assert outgoing["sender"]["type"] == "user"
    incoming = api.message(api_conv, content="from the contact", message_type="incoming")
    assert incoming["message_type"] == 0
    assert incoming["sender"]["type"] == "contact"
    note = api.message(api_conv, content="internal", private=True)
    assert (note["message_type"], note["private"]) == (1, True)
    rich = api.message(
        api_conv,
        content="pick",
        content_type="input_select",
        content_attributes=json.dumps({"items": [{"title": "A", "value": "a"}]}),
        template_params={"name": "welcome", "language": "en"},
    )
    assert rich["content_type"] == "input_select"
    assert rich["content_attributes"] == {"items": [{"title": "A", "value": "a"}]}
    assert api.get(f"conversations/{api_conv}/messages").json()["payload"][-1]["id"] == rich["id"]

    response = api.post(
        f"conversations/{web_conv}/messages", json={"content": "x", "message_type": "incoming"}
    )
    assert (response.status_code, response.json()) == (
        422,
        {"error": "Incoming messages are only allowed in Api inboxes"},
    )
    response = api.post(f"conversations/{api_conv}/messages", json={"content": "x" * 150_001})
    assert response.status_code == 422
    response = api.post("conversations/9999/messages", json={"content": "x"})
    assert (response.status_code, response.json()) == (404, NOT_FOUND)


def test_template_params_are_stored_in_additional_attributes(
    neoleads_sandbox: NeoleadsSandbox, api: Api
) -> None:
    contact = api.contact(name="Ann", email="ann@example.com")["contact"]
    conversation = api.conversation(inbox_id=1, contact_id=contact["id"])["id"]
    message = api.message(conversation, content="t", template_params={"name": "welcome"})
    stored = neoleads_sandbox.state.messages[message["id"]]
    assert stored.additional_attributes == {"template_params": {"name": "welcome"}}


def test_multipart_messages_with_attachments(api: Api) -> None:
    contact = api.contact(name="Ann", email="ann@example.com")["contact"]
    conversation = api.conversation(inbox_id=1, contact_id=contact["id"])["id"]
    response = api.post(
        f"conversations/{conversation}/messages",
        data={
            "content": "see attached",
            "message_type": "outgoing",
            "private": "false",
            "content_attributes": "{}",
        },
        files=[
            ("attachments[]", ("report.pdf", b"%PDF-1.4 fake", "application/pdf")),
            ("attachments[]", ("photo.png", b"\x89PNG fake", "image/png")),
        ],
    )
    assert response.status_code == 200, response.text
    message = response.json()
    assert message["content"] == "see attached"
    assert message["private"] is False
    assert [item["file_type"] for item in message["attachments"]] == ["file", "image"]
    assert message["attachments"][0]["extension"] == "pdf"
    assert message["attachments"][0]["file_size"] == len(b"%PDF-1.4 fake")
    assert requests.get(message["attachments"][0]["data_url"], timeout=10).content == b"%PDF-1.4 fake"

    too_many = [("attachments[]", (f"f{index}.txt", b"x", "text/plain")) for index in range(16)]
    response = api.post(f"conversations/{conversation}/messages", data={"content": "x"}, files=too_many)
    assert response.status_code == 422
    assert "Attachments" in response.json()["error"]


def test_message_list_before_and_after(api: Api) -> None:
    contact = api.contact(name="Ann", email="ann@example.com")["contact"]
    conversation = api.conversation(inbox_id=1, contact_id=contact["id"])["id"]
    ids = [api.message(conversation, content=f"m{index}")["id"] for index in range(25)]
    assert ids[0] == 90001

    latest = api.get(f"conversations/{conversation}/messages").json()
    assert [m["id"] for m in latest["payload"]] == ids[-20:]
    assert latest["meta"]["contact"]["id"] == contact["id"]
    before = api.get(f"conversations/{conversation}/messages", params={"before": ids[21]}).json()["payload"]
    assert [m["id"] for m in before] == ids[1:21]
    after = api.get(f"conversations/{conversation}/messages", params={"after": ids[19]}).json()["payload"]
    assert [m["id"] for m in after] == ids[20:]
    between = api.get(
        f"conversations/{conversation}/messages", params={"after": ids[3], "before": ids[6]}
    ).json()
    assert [m["id"] for m in between["payload"]] == ids[3:6]
    assert all(isinstance(m["message_type"], int) for m in between["payload"])


# ---------------------------------------------------------------------------------------------------------------
# Account webhooks CRUD
# ---------------------------------------------------------------------------------------------------------------


def test_webhooks_crud_is_wrapped_and_admin_only(neoleads_sandbox: NeoleadsSandbox, api: Api) -> None:
    created = api.post(
        "webhooks", json={"url": "https://hooks.example.com/a", "subscriptions": ["message_created"]}
    )
    assert created.status_code == 200
    webhook = created.json()["payload"]["webhook"]
    assert webhook["id"] == 11
    assert webhook["url"] == "https://hooks.example.com/a"
    assert webhook["subscriptions"] == ["message_created"]
    assert webhook["account_id"] == DEFAULT_ACCOUNT_ID
    assert len(webhook["secret"]) >= 16

    wrapped = api.post(
        "webhooks",
        json={"webhook": {"url": "https://hooks.example.com/b", "subscriptions": ["contact_created"]}},
    )
    assert wrapped.json()["payload"]["webhook"]["id"] == 12
    listed = api.get("webhooks").json()
    assert [item["id"] for item in listed["payload"]["webhooks"]] == [11, 12]

    duplicate = api.post(
        "webhooks", json={"url": "https://hooks.example.com/a", "subscriptions": ["message_created"]}
    )
    assert (duplicate.status_code, duplicate.json()) == (
        422,
        {"message": "Url has already been taken", "attributes": ["url"]},
    )
    bad_events = api.post(
        "webhooks", json={"url": "https://hooks.example.com/c", "subscriptions": ["message_sent"]}
    )
    assert (bad_events.status_code, bad_events.json()) == (
        422,
        {"message": "Subscriptions Invalid events", "attributes": ["subscriptions"]},
    )
    empty = api.post("webhooks", json={"url": "https://hooks.example.com/c", "subscriptions": []})
    assert empty.json() == {"message": "Subscriptions Invalid events", "attributes": ["subscriptions"]}
    missing = api.post("webhooks", json={})
    assert (missing.status_code, missing.json()) == (
        422,
        {"error": "param is missing or the value is empty: webhook"},
    )

    patched = api.patch("webhooks/11", json={"subscriptions": ["message_created", "conversation_created"]})
    assert patched.json()["payload"]["webhook"]["subscriptions"] == [
        "message_created",
        "conversation_created",
    ]
    assert patched.json()["payload"]["webhook"]["secret"] == webhook["secret"]

    agent = Api(neoleads_sandbox, token=DEFAULT_AGENT_TOKEN)
    for response in (
        agent.get("webhooks"),
        agent.post("webhooks", json={"url": "https://x.example.com", "subscriptions": ["message_created"]}),
        agent.patch("webhooks/11", json={"name": "x"}),
        agent.delete("webhooks/11"),
    ):
        assert (response.status_code, response.json()) == (401, NOT_AUTHORIZED)

    deleted = api.delete("webhooks/11")
    assert (deleted.status_code, deleted.content) == (200, b"")
    assert api.delete("webhooks/11").status_code == 404
    assert len(neoleads_sandbox.state.webhooks) == 1


# ---------------------------------------------------------------------------------------------------------------
# Webhook deliveries
# ---------------------------------------------------------------------------------------------------------------


def test_signed_deliveries_reach_account_and_inbox_targets(
    neoleads_sandbox: NeoleadsSandbox, api: Api, receiver: Receiver
) -> None:
    account_secret = api.post(
        "webhooks",
        json={
            "url": f"{receiver.url}/account",
            "subscriptions": ["contact_created", "conversation_created", "message_created"],
        },
    ).json()["payload"]["webhook"]["secret"]
    neoleads_sandbox.set_inbox_webhook(1, f"{receiver.url}/inbox")

    created = api.contact(name="Ann", email="ann@example.com", inbox_id=1)
    conversation = api.conversation(source_id=created["contact_inbox"]["source_id"])
    outgoing = api.message(conversation["id"], content="Hello <b>Ann</b> & co")
    note = api.message(conversation["id"], content="internal note", private=True)
    neoleads_sandbox.wait_for_deliveries(10)

    assert receiver.events("/account") == [
        "contact_created",
        "conversation_created",
        "message_created",
        "message_created",
    ]
    # The inbox URL gets inbox-scoped events only, with no subscription filter.
    assert receiver.events("/inbox") == ["conversation_created", "message_created", "message_created"]

    now = time.time()
    delivery_ids = set()
    for path, headers, body in receiver.received:
        secret = account_secret if path == "/account" else neoleads_sandbox.api_inbox_secret
        verify([secret], headers, body, now=now)
        with pytest.raises(NoMatchingSignatureError):
            verify(["wrong-secret"], headers, body, now=now)
        assert headers["Content-Type"] == "application/json"
        assert headers["Accept"] == "application/json"
        delivery_ids.add(headers["X-Chatwoot-Delivery"])
        assert _is_uuid(headers["X-Chatwoot-Delivery"])
    assert len(delivery_ids) == len(receiver.received) == 7

    # Rails' to_json escapes HTML characters; the signature covers exactly those bytes.
    raw_outgoing = [body for path, _, body in receiver.received if path == "/account"][2]
    assert b"\\u003cb\\u003eAnn\\u003c/b\\u003e \\u0026 co" in raw_outgoing

    messages = [body for body in receiver.bodies("/account") if body["event"] == "message_created"]
    echo, private = messages
    assert (echo["id"], echo["message_type"], echo["private"]) == (outgoing["id"], "outgoing", False)
    assert echo["content"] == "Hello <b>Ann</b> & co"
    assert echo["sender"]["type"] == "user"
    assert echo["conversation"]["id"] == conversation["id"] == 7001
    assert echo["inbox"] == {"id": 1, "name": "API"}
    assert echo["account"] == {"id": 1, "name": "Sandbox Account"}
    assert isinstance(echo["created_at"], str)
    assert (private["id"], private["private"]) == (note["id"], True)

    contact_event = receiver.bodies("/account")[0]
    assert contact_event["id"] == created["contact"]["id"]
    assert contact_event["account"] == {"id": 1, "name": "Sandbox Account"}
    conversation_event = receiver.bodies("/account")[1]
    assert conversation_event["id"] == 7001
    assert conversation_event["contact_inbox"]["source_id"] == created["contact_inbox"]["source_id"]
    assert conversation_event["meta"]["sender"]["type"] == "contact"

    log = neoleads_sandbox.deliveries
    assert len(log) == 7
    assert all(entry["status_code"] == 200 and entry["ok"] for entry in log)
    assert {entry["delivery_id"] for entry in log} == delivery_ids


def test_status_changes_and_contact_updates_fire_events(
    neoleads_sandbox: NeoleadsSandbox, api: Api, receiver: Receiver
) -> None:
    neoleads_sandbox.add_webhook(receiver.url, secret="chosen-secret")
    contact = api.contact(name="Ann", email="ann@example.com")["contact"]
    conversation = api.conversation(inbox_id=1, contact_id=contact["id"])
    api.patch(f"contacts/{contact['id']}", json={"name": "Ann B"})
    api.patch(f"contacts/{contact['id']}", json={"name": "Ann B"})  # no change: no event
    api.post(f"conversations/{conversation['id']}/toggle_status", json={"status": "resolved"})
    neoleads_sandbox.wait_for_deliveries(10)
    events = receiver.events()
    assert events == [
        "contact_created",
        "conversation_created",
        "contact_updated",
        "conversation_status_changed",
        "conversation_updated",
    ]
    updated = receiver.bodies()[2]
    assert {"name": {"previous_value": "Ann", "current_value": "Ann B"}} in updated["changed_attributes"]
    status_changed = receiver.bodies()[3]
    assert status_changed["status"] == "resolved"
    assert status_changed["changed_attributes"] == [
        {"status": {"previous_value": "open", "current_value": "resolved"}}
    ]
    for _, headers, body in receiver.received:
        verify(["chosen-secret"], headers, body, now=time.time())


def test_failed_deliveries_are_logged_and_never_retried(
    neoleads_sandbox: NeoleadsSandbox, api: Api, receiver: Receiver
) -> None:
    receiver.status = 500
    neoleads_sandbox.add_webhook(f"{receiver.url}/fails", subscriptions=["contact_created"])
    neoleads_sandbox.add_webhook(f"http://127.0.0.1:{free_port()}/closed", subscriptions=["contact_created"])
    neoleads_sandbox.set_inbox_webhook(1, f"{receiver.url}/inbox")
    contact = api.contact(name="Ann", email="ann@example.com")["contact"]
    conversation = api.conversation(inbox_id=1, contact_id=contact["id"])
    message = api.message(conversation["id"], content="hello")
    neoleads_sandbox.wait_for_deliveries(10)
    time.sleep(0.2)  # any retry would have shown up by now
    assert receiver.events("/fails") == ["contact_created"]
    log = {
        entry["url"].rsplit("/", 1)[-1] + ":" + entry["event"]: entry for entry in neoleads_sandbox.deliveries
    }
    assert log["fails:contact_created"]["status_code"] == 500
    assert log["fails:contact_created"]["ok"] is False
    assert "error" in log["closed:contact_created"]
    assert "secret" not in json.dumps(log["closed:contact_created"]).lower()
    # A failed API-inbox message_created marks the message failed, as the real server does.
    listed = api.get(f"conversations/{conversation['id']}/messages").json()["payload"]
    assert [m["status"] for m in listed if m["id"] == message["id"]] == ["failed"]


def test_unsigned_mode_and_white_label_prefix(receiver: Receiver) -> None:
    with (
        NeoleadsSandbox(sign_webhooks=False) as unsigned,
        NeoleadsSandbox(header_prefix="X-Neoleads-") as branded,
    ):
        unsigned.add_webhook(f"{receiver.url}/unsigned", subscriptions=["contact_created"])
        secret = branded.add_webhook(f"{receiver.url}/branded", subscriptions=["contact_created"])["secret"]
        Api(unsigned).contact(name="Ann", email="ann@example.com")
        Api(branded).contact(name="Bob", email="bob@example.com")
        unsigned.wait_for_deliveries(10)
        branded.wait_for_deliveries(10)
    headers = {path: headers for path, headers, _ in receiver.received}
    assert "X-Chatwoot-Signature" not in headers["/unsigned"]
    assert "X-Chatwoot-Timestamp" not in headers["/unsigned"]
    # Servers before v4.11.2 send no delivery id either.
    assert "X-Chatwoot-Delivery" not in headers["/unsigned"]
    assert _is_uuid(headers["/branded"]["X-Neoleads-Delivery"])
    assert "X-Chatwoot-Signature" not in headers["/branded"]
    body = next(body for path, _, body in receiver.received if path == "/branded")
    verify([secret], headers["/branded"], body, now=time.time(), prefix="X-Neoleads-")


# ---------------------------------------------------------------------------------------------------------------
# Faults and the request log
# ---------------------------------------------------------------------------------------------------------------


def test_429_is_plain_text_without_retry_after(neoleads_sandbox: NeoleadsSandbox, api: Api) -> None:
    neoleads_sandbox.inject(429, path="/contacts")
    response = api.post("contacts", json={"name": "Ann", "email": "ann@example.com"})
    assert response.status_code == 429
    assert response.headers["content-type"] == "text/plain"
    assert response.text == "Retry later\n"
    assert "retry-after" not in response.headers
    assert len(neoleads_sandbox.state.contacts) == 0  # never reached the server
    assert api.post("contacts", json={"name": "Ann", "email": "ann@example.com"}).status_code == 200

    neoleads_sandbox.inject(429, retry_after=7)
    assert api.get("/api/v1/profile").headers["retry-after"] == "7"


def test_500_fault_count_and_method_matching(neoleads_sandbox: NeoleadsSandbox, api: Api) -> None:
    neoleads_sandbox.inject(500, count=2, method="GET", path="/inboxes")
    assert api.post("inboxes", json={"name": "X", "channel": {"type": "api"}}).status_code == 200
    for _ in range(2):
        response = api.get("inboxes")
        assert (response.status_code, response.json()) == (500, SERVER_ERROR)
    assert api.get("inboxes").status_code == 200
    assert neoleads_sandbox.faults == []
    statuses = [status for method, path, status in neoleads_sandbox.requests if path.endswith("/inboxes")]
    assert statuses == [200, 500, 500, 200]


def test_delay_fault_slows_one_answer(neoleads_sandbox: NeoleadsSandbox, api: Api) -> None:
    neoleads_sandbox.inject(delay=0.6, path="/profile")
    started = time.monotonic()
    assert api.get("/api/v1/profile").status_code == 200
    assert time.monotonic() - started >= 0.55
    started = time.monotonic()
    api.get("/api/v1/profile")
    assert time.monotonic() - started < 0.5
    neoleads_sandbox.inject(delay=1.0)
    with pytest.raises(requests.exceptions.ReadTimeout):
        api.session.get(api.url("/api/v1/profile"), timeout=0.2)


def test_after_commit_applies_the_request_then_fails(neoleads_sandbox: NeoleadsSandbox, api: Api) -> None:
    neoleads_sandbox.inject(500, method="POST", path="/contacts", after_commit=True)
    response = api.post("contacts", json={"name": "Ann", "email": "ann@example.com"})
    assert (response.status_code, response.json()) == (500, SERVER_ERROR)
    assert [contact.email for contact in neoleads_sandbox.state.contacts.values()] == ["ann@example.com"]
    retry = api.post("contacts", json={"name": "Ann", "email": "ann@example.com"})
    assert retry.json() == {"message": "Email has already been taken", "attributes": ["email"]}


def test_drop_closes_the_connection_without_an_answer(neoleads_sandbox: NeoleadsSandbox, api: Api) -> None:
    neoleads_sandbox.inject(drop=True, after_commit=True, method="POST", path="/contacts")
    with pytest.raises(requests.exceptions.ConnectionError):
        api.post("contacts", json={"name": "Ann", "email": "ann@example.com"})
    assert len(neoleads_sandbox.state.contacts) == 1
    assert neoleads_sandbox.requests[-1] == ("POST", "/api/v1/accounts/1/contacts", None)
    neoleads_sandbox.inject(drop=True)
    with pytest.raises(requests.exceptions.ConnectionError):
        api.get("/api/v1/profile")
    assert api.get("/api/v1/profile").status_code == 200


def test_control_routes_drive_faults_state_and_logs(neoleads_sandbox: NeoleadsSandbox, api: Api) -> None:
    control = requests.Session()
    base = f"{neoleads_sandbox.url}/_sandbox"
    added = control.post(f"{base}/faults", json={"status": 503, "path": "/profile", "count": 1}, timeout=10)
    assert added.json()["faults"][0]["status"] == 503
    assert control.post(f"{base}/faults", json={"stauts": 503}, timeout=10).status_code == 422
    response = api.get("/api/v1/profile")
    assert (response.status_code, response.json()["status"]) == (503, 503)
    control.post(f"{base}/faults", json=[{"status": 500}, {"status": 429}], timeout=10)
    assert len(control.get(f"{base}/faults", timeout=10).json()["faults"]) == 2
    control.delete(f"{base}/faults", timeout=10)
    assert api.get("/api/v1/profile").status_code == 200

    api.contact(name="Ann", email="ann@example.com")
    state = control.get(f"{base}/state", timeout=10).json()
    assert (state["contacts"], state["inboxes"], state["conversations"]) == (1, 2, 0)
    recorded = control.get(f"{base}/requests", timeout=10).json()["requests"]
    assert recorded[0] == {"method": "GET", "path": "/api/v1/profile", "status": 503}
    assert recorded[-1]["method"] == "POST"
    assert not any(item["path"].startswith("/_sandbox") for item in recorded)

    assert control.post(f"{base}/reset", timeout=10).json()["state"]["contacts"] == 0
    assert neoleads_sandbox.requests == []
    assert api.contact(name="Ann", email="ann@example.com")["contact"]["id"] == 301


def test_preseeded_webhook_through_the_control_route(
    neoleads_sandbox: NeoleadsSandbox, api: Api, receiver: Receiver
) -> None:
    response = requests.post(
        f"{neoleads_sandbox.url}/_sandbox/webhooks",
        json={"url": receiver.url, "secret": "s3cret"},
        timeout=10,
    )
    webhook = response.json()["payload"]["webhook"]
    assert webhook["secret"] == "s3cret"
    assert "message_created" in webhook["subscriptions"]
    api.contact(name="Ann", email="ann@example.com")
    drained = requests.get(
        f"{neoleads_sandbox.url}/_sandbox/deliveries", params={"wait": 10}, timeout=15
    ).json()
    assert drained["drained"] is True
    assert [entry["event"] for entry in drained["deliveries"]] == ["contact_created"]
    _, headers, body = receiver.received[0]
    verify(["s3cret"], headers, body, now=time.time())


# ---------------------------------------------------------------------------------------------------------------
# Replies and auto-reply
# ---------------------------------------------------------------------------------------------------------------


def test_reply_writes_an_incoming_message_and_fires_the_webhook(
    neoleads_sandbox: NeoleadsSandbox, api: Api, receiver: Receiver
) -> None:
    neoleads_sandbox.add_webhook(
        receiver.url, subscriptions=["message_created", "conversation_status_changed"]
    )
    contact = api.contact(name="Ann", email="ann@example.com")["contact"]
    conversation = api.conversation(inbox_id=1, contact_id=contact["id"], status="resolved")
    reply = neoleads_sandbox.reply(conversation["id"], "Yes please")
    assert (reply["message_type"], reply["content"], reply["conversation_id"]) == (0, "Yes please", 7001)
    via_http = requests.post(
        f"{neoleads_sandbox.url}/_sandbox/conversations/7001/reply", json={"content": "And more"}, timeout=10
    )
    assert via_http.json()["content"] == "And more"
    assert (
        requests.post(
            f"{neoleads_sandbox.url}/_sandbox/conversations/1/reply", json={"content": "x"}, timeout=10
        ).status_code
        == 404
    )
    with pytest.raises(LookupError):
        neoleads_sandbox.reply(1, "wrong id kind")
    neoleads_sandbox.wait_for_deliveries(10)
    bodies = receiver.bodies()
    # The contact's message reopens the resolved conversation first (Message#reopen_conversation runs
    # before the message's own events).
    assert [body["event"] for body in bodies] == [
        "conversation_status_changed",
        "message_created",
        "message_created",
    ]
    assert bodies[1]["message_type"] == "incoming"
    assert bodies[1]["sender"]["id"] == contact["id"]
    assert api.get("conversations/7001").json()["status"] == "open"


def test_auto_reply_answers_outgoing_api_messages_only(
    neoleads_sandbox: NeoleadsSandbox, api: Api, receiver: Receiver
) -> None:
    neoleads_sandbox.set_auto_reply("Thanks, got it", delay=0.1)
    neoleads_sandbox.add_webhook(receiver.url, subscriptions=["message_created"])
    contact = api.contact(name="Ann", email="ann@example.com")["contact"]
    conversation = api.conversation(inbox_id=1, contact_id=contact["id"])
    api.message(conversation["id"], content="private", private=True)
    api.message(conversation["id"], content="from contact", message_type="incoming")
    sent = api.message(conversation["id"], content="Can we talk?")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        messages = api.get(
            f"conversations/{conversation['id']}/messages", params={"after": sent["id"]}
        ).json()
        if messages["payload"]:
            break
        time.sleep(0.05)
    assert [(m["content"], m["message_type"]) for m in messages["payload"]] == [("Thanks, got it", 0)]
    time.sleep(0.3)  # no reply to the reply, the note or the incoming message
    assert len(api.get(f"conversations/{conversation['id']}/messages").json()["payload"]) == 4
    neoleads_sandbox.wait_for_deliveries(10)
    assert [(b["content"], b["message_type"]) for b in receiver.bodies()][-1] == (
        "Thanks, got it",
        "incoming",
    )


def test_auto_reply_from_the_constructor_survives_reset() -> None:
    with NeoleadsSandbox(auto_reply="pong", auto_reply_delay=0) as sandbox:
        sandbox.reset()
        api = Api(sandbox)
        contact = api.contact(name="Ann", email="ann@example.com")["contact"]
        conversation = api.conversation(inbox_id=1, contact_id=contact["id"], message={"content": "ping"})
        deadline = time.monotonic() + 5
        while len(sandbox.state.messages) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        contents = [
            m["content"] for m in api.get(f"conversations/{conversation['id']}/messages").json()["payload"]
        ]
    assert contents == ["ping", "pong"]


# ---------------------------------------------------------------------------------------------------------------
# Connections, the pytest plugin, the CLI
# ---------------------------------------------------------------------------------------------------------------


def test_connection_helpers_point_at_the_sandbox(neoleads_sandbox: NeoleadsSandbox) -> None:
    from neoleads_provider.connection import NeoleadsConnectionSettings

    env = neoleads_sandbox.connection_env("my_conn", timeout=3)
    value = json.loads(env["AIRFLOW_CONN_MY_CONN"])
    assert value == {
        "conn_type": "neoleads",
        "host": neoleads_sandbox.url,
        "password": DEFAULT_TOKEN,
        "extra": {"account_id": 1, "timeout": 3},
    }
    settings = NeoleadsConnectionSettings.from_connection(neoleads_sandbox.connection())
    assert (settings.base_url, settings.account_id, settings.api_token) == (
        neoleads_sandbox.url,
        1,
        DEFAULT_TOKEN,
    )


def test_connection_fixture_sets_the_env_var(
    neoleads_connection: str, neoleads_sandbox: NeoleadsSandbox
) -> None:
    assert neoleads_connection == "neoleads_default"
    value = json.loads(os.environ["AIRFLOW_CONN_NEOLEADS_DEFAULT"])
    assert value["host"] == neoleads_sandbox.url
    from airflow.sdk import BaseHook

    connection = BaseHook.get_connection("neoleads_default")
    assert (connection.host, connection.password) == (neoleads_sandbox.url, DEFAULT_TOKEN)


def test_session_server_is_shared_and_reset(
    neoleads_sandbox_server: NeoleadsSandbox, neoleads_sandbox: NeoleadsSandbox
) -> None:
    assert neoleads_sandbox is neoleads_sandbox_server
    assert neoleads_sandbox.state.contacts == {}
    assert neoleads_sandbox.faults == []


def test_start_fails_clearly_on_a_taken_port(neoleads_sandbox: NeoleadsSandbox) -> None:
    port = int(neoleads_sandbox.url.rsplit(":", 1)[1])
    with pytest.raises(RuntimeError, match="could not start"):
        NeoleadsSandbox(port=port).start()


def test_cli_serves_until_sigterm() -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "neoleads_provider.cli", "sandbox", "--port", str(port), "--auto-reply", "hi"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        response = wait_for_sandbox_cli(process, port)
        assert response.status_code == 200
        assert response.json()["access_token"] == DEFAULT_TOKEN
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    assert f"http://127.0.0.1:{port}" in stdout
    assert DEFAULT_TOKEN in stdout
    assert "Account id:     1" in stdout
    assert "AIRFLOW_CONN_NEOLEADS_DEFAULT" in stdout


def test_unhandled_errors_answer_the_rails_json_500(
    neoleads_sandbox: NeoleadsSandbox, api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(user: object) -> dict:
        raise RuntimeError("bug in the sandbox")

    monkeypatch.setattr(neoleads_sandbox.state, "render_profile", broken)
    response = api.get("/api/v1/profile")
    assert (response.status_code, response.json()) == (500, SERVER_ERROR)
    assert neoleads_sandbox.requests[-1] == ("GET", "/api/v1/profile", 500)


def test_contact_create_with_a_taken_source_id_creates_nothing(api: Api) -> None:
    api.contact(name="Ann", email="ann@example.com", inbox_id=1, source_id="shared")
    response = api.post(
        "contacts", json={"name": "Bob", "email": "bob@example.com", "inbox_id": 1, "source_id": "shared"}
    )
    assert (response.status_code, response.json()) == (500, SERVER_ERROR)
    assert [c["email"] for c in api.get("contacts").json()["payload"]] == ["ann@example.com"]
    # The same source id through conversation create is rescued as a 422.
    bob = api.contact(name="Bob", email="bob@example.com")["contact"]
    response = api.post("conversations", json={"inbox_id": 1, "contact_id": bob["id"], "source_id": "shared"})
    assert (response.status_code, response.json()) == (422, {"error": "source_id should be unique"})


def test_deleting_a_contact_removes_its_conversations(api: Api) -> None:
    created = api.contact(name="Ann", email="ann@example.com", inbox_id=1)
    conversation = api.conversation(source_id=created["contact_inbox"]["source_id"])
    response = api.delete(f"contacts/{created['contact']['id']}")
    assert (response.status_code, response.content) == (200, b"")
    assert api.get(f"conversations/{conversation['id']}").status_code == 404
    missing = api.post("conversations", json={"source_id": created["contact_inbox"]["source_id"]})
    assert missing.status_code == 404
    # The email is free again.
    api.contact(name="Ann again", email="ann@example.com")


def test_deliveries_off_this_machine_are_refused_by_default(
    neoleads_sandbox: NeoleadsSandbox, api: Api
) -> None:
    from neoleads_provider.testing.delivery import is_loopback_url

    assert is_loopback_url("http://127.0.0.5:9/x")
    assert is_loopback_url("http://localhost:8080/hooks")
    assert is_loopback_url("http://[::1]:8080/")
    assert not is_loopback_url("https://hooks.example.com/x")
    assert not is_loopback_url("http://10.0.0.1/x")

    neoleads_sandbox.add_webhook("https://hooks.example.com/x", subscriptions=["contact_created"])
    api.contact(name="Ann", email="ann@example.com")
    neoleads_sandbox.wait_for_deliveries(10)
    (entry,) = neoleads_sandbox.deliveries
    assert entry["ok"] is False
    assert entry["error"].startswith("refused: 'hooks.example.com' is not this machine")
    assert "status_code" not in entry
