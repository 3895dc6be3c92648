"""NeoleadsHook's API-inbox methods against the sandbox over real HTTP: create, re-point, rotate the secret,
the administrator role, and the deliveries that follow, signed with the inbox's own secret."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import pytest

from neoleads_provider.exceptions import (
    NeoleadsAuthError,
    NeoleadsNotFoundError,
    NeoleadsServerError,
)
from neoleads_provider.hooks.neoleads import NeoleadsHook
from neoleads_provider.webhooks.verify import WebhookVerificationError, verify

if TYPE_CHECKING:
    from collections.abc import Iterator

    from neoleads_provider.testing import NeoleadsSandbox

HOOK_URL = "http://127.0.0.1:9/neoleads/webhooks/neoleads_default"


@pytest.fixture
def hook(neoleads_sandbox: NeoleadsSandbox, neoleads_connection: str) -> Iterator[NeoleadsHook]:
    with NeoleadsHook(neoleads_connection, backoff_base=0.01, backoff_max=0.05) as hook:
        yield hook


@pytest.fixture
def agent_hook(neoleads_sandbox: NeoleadsSandbox, monkeypatch: pytest.MonkeyPatch) -> Iterator[NeoleadsHook]:
    value = json.loads(neoleads_sandbox.connection_env("nl_agent")["AIRFLOW_CONN_NL_AGENT"])
    value["password"] = neoleads_sandbox.agent_token
    monkeypatch.setenv("AIRFLOW_CONN_NL_AGENT", json.dumps(value))
    with NeoleadsHook("nl_agent", backoff_base=0.01, backoff_max=0.05) as hook:
        yield hook


class _Capture(BaseHTTPRequestHandler):
    received: list[tuple[dict[str, str], bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.received.append(({k.lower(): v for k, v in self.headers.items()}, body))  # type: ignore[attr-defined]
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def capture() -> Iterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    """A plain HTTP server on loopback that records every POST; yields its URL and the records."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Capture)
    server.received = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", server.received  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _count(sandbox: NeoleadsSandbox, method: str, path: str) -> int:
    return sum(1 for m, p, _ in sandbox.requests if m == method and p == path)


def test_create_api_inbox_returns_its_secret_and_webhook(hook: NeoleadsHook, neoleads_sandbox) -> None:
    inbox = hook.create_api_inbox("Airflow replies", HOOK_URL)
    assert inbox["channel_type"] == "Channel::Api"
    assert inbox["name"] == "Airflow replies"
    assert inbox["webhook_url"] == HOOK_URL
    assert inbox["inbox_identifier"]
    assert inbox["secret"]
    stored = neoleads_sandbox.state.inboxes[inbox["id"]]
    assert (stored.webhook_url, stored.secret) == (HOOK_URL, inbox["secret"])
    # Each inbox has its own secret.
    assert inbox["secret"] != neoleads_sandbox.api_inbox_secret
    assert hook.get_inbox(inbox["id"])["secret"] == inbox["secret"]


def test_create_api_inbox_without_a_webhook(hook: NeoleadsHook) -> None:
    inbox = hook.create_api_inbox("No webhook yet")
    assert inbox["webhook_url"] is None
    assert inbox["secret"]


def test_update_inbox_webhook_keeps_the_secret(hook: NeoleadsHook, neoleads_sandbox) -> None:
    before = hook.get_inbox(neoleads_sandbox.api_inbox_id)
    updated = hook.update_inbox_webhook(neoleads_sandbox.api_inbox_id, HOOK_URL)
    assert updated["webhook_url"] == HOOK_URL
    assert updated["secret"] == before["secret"] == neoleads_sandbox.api_inbox_secret
    assert neoleads_sandbox.state.inboxes[neoleads_sandbox.api_inbox_id].webhook_url == HOOK_URL
    assert hook.update_inbox_webhook(neoleads_sandbox.api_inbox_id, None)["webhook_url"] is None


def test_reset_inbox_secret_rotates_it(hook: NeoleadsHook, neoleads_sandbox) -> None:
    old = neoleads_sandbox.api_inbox_secret
    reset = hook.reset_inbox_secret(neoleads_sandbox.api_inbox_id)
    assert reset["secret"]
    assert reset["secret"] != old
    assert neoleads_sandbox.api_inbox_secret == reset["secret"]
    assert hook.get_inbox(neoleads_sandbox.api_inbox_id)["secret"] == reset["secret"]


def test_reset_secret_of_a_website_inbox_is_not_found(hook: NeoleadsHook, neoleads_sandbox) -> None:
    with pytest.raises(NeoleadsNotFoundError) as info:
        hook.reset_inbox_secret(neoleads_sandbox.web_inbox_id)
    assert info.value.status_code == 404
    with pytest.raises(NeoleadsNotFoundError):
        hook.update_inbox_webhook(424242, HOOK_URL)


@pytest.mark.parametrize(
    ("call", "action"),
    [
        (lambda h, s: h.create_api_inbox("Agent inbox", HOOK_URL), "create an API inbox"),
        (lambda h, s: h.update_inbox_webhook(s.api_inbox_id, HOOK_URL), "change an inbox's webhook_url"),
        (lambda h, s: h.reset_inbox_secret(s.api_inbox_id), "reset an inbox's signing secret"),
    ],
)
def test_a_non_administrator_is_told_which_role_it_has(
    agent_hook: NeoleadsHook, neoleads_sandbox, call, action
):
    with pytest.raises(NeoleadsAuthError) as info:
        call(agent_hook, neoleads_sandbox)
    message = str(info.value)
    assert info.value.status_code == 401
    assert f"To {action}, connection 'nl_agent' needs an administrator's API access token" in message
    assert "role in account 1 is 'agent'" in message
    assert "You are not authorized to do this action" in message  # what the server said
    assert neoleads_sandbox.agent_token not in message
    # Nothing changed on the server.
    assert len(neoleads_sandbox.state.inboxes) == 2
    assert neoleads_sandbox.state.inboxes[neoleads_sandbox.api_inbox_id].webhook_url is None


def test_agents_see_inboxes_without_their_secret(agent_hook: NeoleadsHook, neoleads_sandbox) -> None:
    inbox = agent_hook.get_inbox(neoleads_sandbox.api_inbox_id)
    assert "secret" not in inbox
    assert "webhook_url" in inbox
    assert all("secret" not in item for item in agent_hook.list_inboxes())


def test_a_bad_token_is_not_reported_as_a_role(monkeypatch, neoleads_sandbox) -> None:
    value = json.loads(neoleads_sandbox.connection_env("nl_bad")["AIRFLOW_CONN_NL_BAD"])
    value["password"] = "not-a-token"
    monkeypatch.setenv("AIRFLOW_CONN_NL_BAD", json.dumps(value))
    with NeoleadsHook("nl_bad") as hook, pytest.raises(NeoleadsAuthError) as info:
        hook.create_api_inbox("x")
    assert info.value.server_message == "Invalid Access Token"
    assert "administrator" not in str(info.value)


def test_a_create_whose_answer_was_lost_is_not_replayed(hook: NeoleadsHook, neoleads_sandbox) -> None:
    neoleads_sandbox.inject(status=502, after_commit=True, method="POST", path="/inboxes", count=1)
    with pytest.raises(NeoleadsServerError):
        hook.create_api_inbox("Maybe created", HOOK_URL)
    assert _count(neoleads_sandbox, "POST", "/api/v1/accounts/1/inboxes") == 1
    assert [inbox.name for inbox in neoleads_sandbox.state.inboxes.values()].count("Maybe created") == 1


def test_webhook_and_secret_changes_are_replayed_after_a_502(hook: NeoleadsHook, neoleads_sandbox) -> None:
    neoleads_sandbox.inject(status=502, method="PATCH", path="/inboxes/1", count=1)
    assert hook.update_inbox_webhook(1, HOOK_URL)["webhook_url"] == HOOK_URL
    neoleads_sandbox.inject(status=502, method="POST", path="/reset_secret", count=1)
    assert hook.reset_inbox_secret(1)["secret"] == neoleads_sandbox.api_inbox_secret


def _verified_events(received: list[tuple[dict[str, str], bytes]], secret: str) -> list[str]:
    events = []
    for headers, body in received:
        verify([secret], headers, body, now=time.time())
        events.append(json.loads(body)["event"])
    return events


def test_a_created_inbox_delivers_its_events_signed_with_its_own_secret(
    hook: NeoleadsHook, neoleads_sandbox, capture
) -> None:
    url, received = capture
    inbox = hook.create_api_inbox("Signed", url)
    contact = hook.create_contact(name="Ada", email="ada@example.com", inbox_id=inbox["id"])
    conversation = hook.create_conversation(source_id=contact["contact_inbox"]["source_id"])
    neoleads_sandbox.reply(conversation["id"], "Hello")
    neoleads_sandbox.wait_for_deliveries()

    assert _verified_events(received, inbox["secret"]) == ["conversation_created", "message_created"]
    assert [(d["target"], d["status_code"]) for d in neoleads_sandbox.deliveries] == [("api_inbox", 200)] * 2
    # Not signed with the other API inbox's secret.
    with pytest.raises(WebhookVerificationError):
        _verified_events(received, neoleads_sandbox.api_inbox_secret)
    # Events of the other inbox do not go to this inbox's URL.
    other = hook.create_contact(name="Bob", email="bob@example.com", inbox_id=neoleads_sandbox.api_inbox_id)
    hook.create_conversation(source_id=other["contact_inbox"]["source_id"])
    neoleads_sandbox.wait_for_deliveries()
    assert len(received) == 2

    # After a reset, the next delivery is signed with the new secret only.
    new_secret = hook.reset_inbox_secret(inbox["id"])["secret"]
    neoleads_sandbox.reply(conversation["id"], "Still there?")
    neoleads_sandbox.wait_for_deliveries()
    assert _verified_events(received[2:], new_secret) == ["message_created"]
    with pytest.raises(WebhookVerificationError):
        _verified_events(received[2:], inbox["secret"])
