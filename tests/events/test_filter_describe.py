"""EventFilter.describe(): what a wait is for, in the words the logs and errors use."""

from __future__ import annotations

import pytest

from neoleads_provider.events.filter import EventFilter


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, "message_created (incoming), on connection neoleads_default"),
        (
            {"conversation_id": 7, "account_id": 1, "after_message_id": 41},
            "message_created (incoming) in conversation 7 of account 1 after message 41, on connection "
            "neoleads_default",
        ),
        (
            {"message_types": None, "sender_types": ["contact"], "include_private": True, "conn_id": "sales"},
            "message_created (sent by contact, private notes included), on connection sales",
        ),
        (
            {"events": ["conversation_status_changed"], "message_types": None, "inbox_id": 3},
            "conversation_status_changed in inbox 3, on connection neoleads_default",
        ),
        (
            {"events": ["message_created", "message_updated"], "content_pattern": "(?i)yes"},
            "message_created or message_updated (incoming) with content matching content_pattern, on "
            "connection neoleads_default",
        ),
    ],
)
def test_describe(kwargs, expected) -> None:
    assert EventFilter(**kwargs).describe() == expected


def test_message_qualifiers_are_left_out_for_events_that_are_not_messages() -> None:
    described = EventFilter(events=["contact_created"], conversation_id=None).describe()
    assert described == "contact_created, on connection neoleads_default"
