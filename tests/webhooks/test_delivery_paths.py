"""One message, both delivery paths: the sandbox posts it to the account webhook *and* to the API inbox's
``webhook_url`` (each with its own delivery id and secret), as the real server does; it is stored, matched and
fired once.

End to end over TCP: the sandbox server, the receiver app served by uvicorn, a SQLite event store.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest

from neoleads_provider.events.filter import EventFilter
from neoleads_provider.hooks.neoleads import NeoleadsHook
from neoleads_provider.store.engine import get_engine
from neoleads_provider.store.matching import find_matches
from neoleads_provider.triggers.events import NeoleadsEventTrigger
from neoleads_provider.waiting import look_in_store
from neoleads_provider.webhooks.app import create_app
from tests._helpers import serving, set_env

if TYPE_CHECKING:
    from collections.abc import Iterator

    from neoleads_provider.testing import NeoleadsSandbox

CONN_ID = "neoleads_default"
ACCOUNT_WEBHOOK_SECRET = "account-webhook-secret-5f1e"


@pytest.fixture
def both_paths(neoleads_sandbox: NeoleadsSandbox, monkeypatch, events_url: str) -> Iterator[str]:
    """The sandbox delivers to the receiver through an account webhook and the API inbox's webhook_url."""
    set_env(
        monkeypatch,
        neoleads_sandbox.connection_env(
            CONN_ID, webhook_secrets=[ACCOUNT_WEBHOOK_SECRET, neoleads_sandbox.api_inbox_secret]
        ),
    )
    with serving(create_app(engine_factory=lambda: get_engine(events_url))) as base:
        url = f"{base}/webhooks/{CONN_ID}"
        neoleads_sandbox.add_webhook(url, secret=ACCOUNT_WEBHOOK_SECRET, subscriptions=["message_created"])
        neoleads_sandbox.set_inbox_webhook(neoleads_sandbox.api_inbox_id, url)
        yield url


def _conversation(sandbox: NeoleadsSandbox) -> int:
    hook = NeoleadsHook(neoleads_conn_id=CONN_ID)
    try:
        created = hook.create_contact(name="Ada", email="ada@example.com", inbox_id=sandbox.api_inbox_id)
        conversation = hook.create_conversation(source_id=created["contact_inbox"]["source_id"])
    finally:
        hook.close()
    return int(conversation["id"])


async def _fired(trigger: NeoleadsEventTrigger, *, seconds: float) -> list[dict[str, Any]]:
    fired: list[dict[str, Any]] = []

    async def collect() -> None:
        async for event in trigger.run():
            fired.append(event.payload)

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(collect(), seconds)
    return fired


def test_a_message_through_both_paths_is_stored_matched_and_fired_once(
    neoleads_sandbox: NeoleadsSandbox, both_paths: str, events_url: str
) -> None:
    conversation_id = _conversation(neoleads_sandbox)
    neoleads_sandbox.wait_for_deliveries(timeout=10)
    reply = neoleads_sandbox.reply(conversation_id, "Yes, Tuesday works")
    neoleads_sandbox.wait_for_deliveries(timeout=10)

    copies = [
        delivery
        for delivery in neoleads_sandbox.deliveries
        if delivery["event"] == "message_created" and delivery["payload"].get("id") == reply["id"]
    ]
    # Two copies of the message, each with its own delivery id, both acknowledged (the server marks a
    # webhook failing otherwise).
    assert sorted(delivery["target"] for delivery in copies) == ["account_webhook", "api_inbox"], copies
    assert len({delivery["delivery_id"] for delivery in copies}) == 2
    assert {delivery["status_code"] for delivery in copies} == {200}

    flt = EventFilter(
        conn_id=CONN_ID, account_id=neoleads_sandbox.account_id, conversation_id=conversation_id
    )
    with get_engine(events_url).connect() as conn:
        stored = find_matches(conn, flt)
    assert [event.message_id for event in stored] == [reply["id"]]
    found = look_in_store(events_url, flt)
    assert found is not None
    assert (found["message_id"], found["event_id"]) == (reply["id"], stored[0].id)

    trigger = NeoleadsEventTrigger(
        neoleads_conn_id=CONN_ID, events_db_url=events_url, start_from="beginning", poll_interval=0.1
    )
    fired = asyncio.run(_fired(trigger, seconds=1.5))
    assert [payload["message_id"] for payload in fired] == [reply["id"]]
