"""The one list of webhook event names (neoleads_provider/events/names.py) and the names it is known by."""

from __future__ import annotations

from neoleads_provider import events
from neoleads_provider.cli import webhooks as cli_webhooks
from neoleads_provider.events import filter as event_filter
from neoleads_provider.events import names
from neoleads_provider.events.names import (
    INBOX_SCOPED_EVENTS,
    KNOWN_EVENTS,
    MESSAGE_EVENTS,
    MESSAGE_TYPES,
    WEBHOOK_EVENTS,
)
from neoleads_provider.hooks import webhooks as hook_module
from neoleads_provider.testing import models as sandbox_models


def test_every_module_checks_names_against_the_one_list() -> None:
    assert hook_module.WEBHOOK_EVENTS is WEBHOOK_EVENTS
    assert sandbox_models.ALLOWED_WEBHOOK_EVENTS is WEBHOOK_EVENTS
    assert event_filter.KNOWN_EVENTS is KNOWN_EVENTS
    assert set(KNOWN_EVENTS) == set(WEBHOOK_EVENTS)
    assert events.WEBHOOK_EVENTS is WEBHOOK_EVENTS


def test_the_cli_offers_the_one_list() -> None:
    assert cli_webhooks.WEBHOOK_EVENTS is WEBHOOK_EVENTS
    assert set(cli_webhooks.DEFAULT_EVENTS) <= set(WEBHOOK_EVENTS)


def test_the_names_are_distinct_and_spelt_as_in_the_payload() -> None:
    assert len(set(WEBHOOK_EVENTS)) == len(WEBHOOK_EVENTS) == 12
    assert all(name.islower() and "." not in name and " " not in name for name in WEBHOOK_EVENTS)
    assert {"message_created", "conversation_status_changed"} <= set(WEBHOOK_EVENTS)


def test_message_and_inbox_scoped_events_are_known_events() -> None:
    assert {"message_created", "message_updated"} == MESSAGE_EVENTS
    assert MESSAGE_EVENTS <= INBOX_SCOPED_EVENTS <= KNOWN_EVENTS
    # Account webhooks alone get contact and inbox events.
    assert not {name for name in INBOX_SCOPED_EVENTS if name.startswith(("contact_", "inbox_"))}
    # REST's integer message_type is the index into this tuple.
    assert MESSAGE_TYPES == ("incoming", "outgoing", "activity", "template")


def test_every_known_name_is_an_acceptable_event_name() -> None:
    assert all(names.EVENT_NAME_RE.fullmatch(name) for name in WEBHOOK_EVENTS)
    assert all(len(name) <= names.EVENT_NAME_MAX_LENGTH for name in WEBHOOK_EVENTS)
