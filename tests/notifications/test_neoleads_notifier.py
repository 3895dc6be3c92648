"""NeoleadsNotifier against the sandbox over TCP: rendered, posted once, in both of Airflow's call styles."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

from neoleads_provider.exceptions import NeoleadsConfigError, NeoleadsNotFoundError
from neoleads_provider.get_provider_info import get_provider_info
from neoleads_provider.notifications import NeoleadsNotifier, send_neoleads_notification

if TYPE_CHECKING:
    from neoleads_provider.testing import NeoleadsSandbox


@pytest.fixture
def conversation(neoleads_sandbox: NeoleadsSandbox, neoleads_connection: str) -> int:
    from neoleads_provider.hooks.neoleads import NeoleadsHook

    hook = NeoleadsHook(neoleads_connection)
    contact = hook.get_or_create_contact(name="Ops", identifier="ops", inbox_id=1)
    return int(hook.create_conversation(source_id=contact["source_id"])["id"])


def _messages(conversation_id: int) -> list[dict]:
    """The conversation's messages, read back through the API."""
    from neoleads_provider.hooks.neoleads import NeoleadsHook

    return NeoleadsHook("neoleads_default").list_messages(conversation_id)


def test_a_failure_callback_posts_the_rendered_private_note(
    neoleads_sandbox: NeoleadsSandbox, conversation: int, capsys: pytest.CaptureFixture[str]
) -> None:
    notifier = NeoleadsNotifier(
        conversation_id="{{ params.ops }}",
        content="{{ task_id }} failed: {{ exception }}",
        private=True,
    )
    context = {
        "params": {"ops": str(conversation)},
        "task_id": "load",
        "exception": RuntimeError("disk full"),
    }
    notifier(context)  # how Airflow calls a callback
    messages = _messages(conversation)
    assert [(m["content"], m["private"]) for m in messages][-1] == ("load failed: disk full", True)
    # The log names ids, never the content (it may quote customer data or an exception).
    logged = capsys.readouterr()
    assert f"into conversation {conversation}" in logged.out + logged.err
    assert "disk full" not in logged.out + logged.err


def test_awaited_in_the_triggerer_it_posts_a_message(
    neoleads_sandbox: NeoleadsSandbox, conversation: int
) -> None:
    notifier = send_neoleads_notification(
        conversation_id=conversation, content="Deadline missed for {{ run_id }}"
    )
    notifier.context = {"run_id": "scheduled__2026-12-06"}

    async def run() -> None:
        await notifier  # how a Deadline Alert calls it

    asyncio.run(run())
    last = _messages(conversation)[-1]
    assert (last["content"], last["private"]) == ("Deadline missed for scheduled__2026-12-06", False)


def test_bad_arguments_name_the_field(neoleads_connection: str) -> None:
    with pytest.raises(NeoleadsConfigError, match=r"conversation_id must be a whole number, got 'seven'"):
        NeoleadsNotifier(conversation_id="seven", content="x")({})
    with pytest.raises(NeoleadsConfigError, match="rendered to an empty text"):
        NeoleadsNotifier(conversation_id=1, content="  ")({})


def test_a_missing_conversation_is_named(neoleads_connection: str) -> None:
    with pytest.raises(NeoleadsNotFoundError, match="conversation_id 999999 was not found"):
        NeoleadsNotifier(conversation_id=999999, content="hello")({})


def test_declared_to_airflow() -> None:
    assert get_provider_info()["notifications"] == [
        "neoleads_provider.notifications.neoleads.NeoleadsNotifier"
    ]
    assert "conversation_id=7" in repr(NeoleadsNotifier(conversation_id=7, content="secret text"))
    assert "secret text" not in repr(NeoleadsNotifier(conversation_id=7, content="secret text"))
