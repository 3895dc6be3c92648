"""Errors that name the field, its value and the connection, against the sandbox over TCP."""

from __future__ import annotations

import pickle

import pytest

from neoleads_provider.exceptions import NeoleadsAuthError, NeoleadsNotFoundError
from neoleads_provider.hooks.neoleads import NeoleadsHook
from tests._helpers import DEFAULT_CONN_ID, use_sandbox_connection


@pytest.fixture
def hook(neoleads_sandbox, monkeypatch):
    use_sandbox_connection(monkeypatch, neoleads_sandbox, max_retries=0)
    with NeoleadsHook(DEFAULT_CONN_ID) as hook:
        yield hook


def test_a_contact_in_a_missing_inbox_names_the_inbox_the_account_and_the_connection(hook) -> None:
    with pytest.raises(NeoleadsNotFoundError) as raised:
        hook.create_contact(name="Ada", email="ada@example.com", inbox_id=99)
    assert str(raised.value).endswith(
        f"inbox_id 99 was not found in account {hook.account_id} (connection 'neoleads_default')"
    )
    # The hint survives the trip through pickle (the task runner and triggerer pickle exceptions).
    again = pickle.loads(pickle.dumps(raised.value))
    assert str(again) == str(raised.value)
    assert again.hint == raised.value.hint


def test_a_message_to_a_missing_conversation_names_the_conversation(hook) -> None:
    with pytest.raises(NeoleadsNotFoundError, match=r"conversation_id 4242 was not found in account \d+"):
        hook.send_message(4242, "hello")


def test_a_conversation_for_a_missing_contact_names_the_contact(hook, neoleads_sandbox) -> None:
    with pytest.raises(NeoleadsNotFoundError, match="contact_id 777 was not found"):
        hook.create_conversation(inbox_id=neoleads_sandbox.api_inbox_id, contact_id=777)


def test_an_account_the_token_does_not_have_is_named(neoleads_sandbox, monkeypatch) -> None:
    use_sandbox_connection(monkeypatch, neoleads_sandbox, max_retries=0, account_id=9999)
    with NeoleadsHook(DEFAULT_CONN_ID) as hook, pytest.raises(NeoleadsNotFoundError) as raised:
        hook.create_contact(name="Ada", inbox_id=neoleads_sandbox.api_inbox_id)
    # The server answers 404 for an account it does not know, as for a missing inbox.
    assert str(raised.value).endswith(
        "account_id 9999 is not one of this token's accounts [1] (connection 'neoleads_default')"
    )


def test_a_refused_token_names_the_connection(neoleads_sandbox, monkeypatch) -> None:
    use_sandbox_connection(monkeypatch, neoleads_sandbox, token="not-a-valid-token-123", max_retries=0)
    with NeoleadsHook(DEFAULT_CONN_ID) as hook, pytest.raises(NeoleadsAuthError) as raised:
        hook.list_inboxes()
    message = str(raised.value)
    assert "The API access token in the password of connection 'neoleads_default' was refused" in message
    assert "not-a-valid-token-123" not in message
