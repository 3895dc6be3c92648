"""Field extraction from every Neoleads (Chatwoot) webhook payload shape."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neoleads_provider.cli.webhooks import WEBHOOK_EVENTS, sample_payload
from neoleads_provider.webhooks.payload import EventFields, PayloadError, extract_event_fields

ACCOUNT = {"id": 7, "name": "Acme"}
CONTACT = {
    "account": ACCOUNT,
    "additional_attributes": {},
    "avatar": "",
    "custom_attributes": {},
    "email": "ann@example.com",
    "id": 501,
    "identifier": None,
    "name": "Ann",
    "phone_number": None,
    "thumbnail": "",
    "blocked": False,
}
CONVERSATION = {
    "additional_attributes": {},
    "can_reply": True,
    "channel": "Channel::Api",
    "contact_inbox": {"id": 9, "contact_id": 501, "inbox_id": 3, "source_id": "s-1", "hmac_verified": False},
    "id": 42,
    "inbox_id": 3,
    "messages": [{"id": 900, "content": "hi", "message_type": 0}],
    "meta": {
        "sender": {"id": 501, "name": "Ann", "type": "contact"},
        "assignee": None,
        "hmac_verified": False,
    },
    "status": "open",
    "labels": [],
    "account": ACCOUNT,
}


def message_payload(**overrides: Any) -> dict[str, Any]:
    payload = {
        "event": "message_created",
        "id": 1234,
        "content": "Hello",
        "content_type": "text",
        "content_attributes": {},
        "additional_attributes": {},
        "message_type": "incoming",
        "private": False,
        "source_id": None,
        "created_at": "2026-05-01T10:00:00.000Z",
        "sender": CONTACT,
        "account": ACCOUNT,
        "inbox": {"id": 3, "name": "API"},
        "conversation": CONVERSATION,
    }
    payload.update(overrides)
    return copy.deepcopy(payload)


def test_incoming_message_from_a_contact() -> None:
    assert extract_event_fields(message_payload()) == EventFields(
        event="message_created",
        account_id=7,
        inbox_id=3,
        conversation_id=42,
        message_id=1234,
        contact_id=501,
        message_type="incoming",
        private=False,
        sender_type="contact",
    )


def test_outgoing_private_note_from_an_agent() -> None:
    agent = {"id": 2, "name": "Bob", "email": "bob@example.com", "type": "user"}
    fields = extract_event_fields(
        message_payload(event="message_updated", message_type="outgoing", private=True, sender=agent)
    )
    assert fields.event == "message_updated"
    assert (fields.message_type, fields.private, fields.sender_type) == ("outgoing", True, "user")
    # The conversation's contact, not the agent who wrote the note.
    assert fields.contact_id == 501


def test_message_from_an_agent_bot_and_template_messages() -> None:
    bot = {"id": 5, "name": "Bot", "type": "agent_bot"}
    fields = extract_event_fields(message_payload(message_type="template", sender=bot))
    assert (fields.message_type, fields.sender_type) == ("template", "agent_bot")


def test_message_without_sender() -> None:
    fields = extract_event_fields(message_payload(sender=None))
    assert fields.sender_type is None
    assert fields.contact_id == 501


def test_message_type_as_the_rest_api_integer_is_named() -> None:
    assert extract_event_fields(message_payload(message_type=1)).message_type == "outgoing"
    assert extract_event_fields(message_payload(message_type=0)).message_type == "incoming"
    assert extract_event_fields(message_payload(message_type=99)).message_type is None


def test_message_falls_back_to_conversation_ids() -> None:
    payload = message_payload()
    del payload["inbox"], payload["account"]
    fields = extract_event_fields(payload)
    assert (fields.inbox_id, fields.account_id) == (3, 7)


def test_message_contact_from_sender_when_conversation_has_none() -> None:
    payload = message_payload()
    payload["conversation"] = {"id": 42, "inbox_id": 3}
    assert extract_event_fields(payload).contact_id == 501


@pytest.mark.parametrize(
    "event", ["conversation_created", "conversation_updated", "conversation_status_changed"]
)
def test_conversation_events(event: str) -> None:
    payload = {**copy.deepcopy(CONVERSATION), "event": event}
    if event != "conversation_created":
        payload["changed_attributes"] = [{"status": {"previous_value": "open", "current_value": "resolved"}}]
    assert extract_event_fields(payload) == EventFields(
        event=event, account_id=7, inbox_id=3, conversation_id=42, contact_id=501
    )


def test_conversation_contact_from_meta_sender() -> None:
    payload = {**copy.deepcopy(CONVERSATION), "event": "conversation_created"}
    del payload["contact_inbox"]
    assert extract_event_fields(payload).contact_id == 501


@pytest.mark.parametrize("event", ["conversation_typing_on", "conversation_typing_off"])
def test_typing_events_by_an_agent(event: str) -> None:
    payload = {
        "event": event,
        "user": {"id": 2, "name": "Bob", "email": "bob@example.com", "type": "user"},
        "conversation": copy.deepcopy(CONVERSATION),
        "is_private": True,
    }
    assert extract_event_fields(payload) == EventFields(
        event=event,
        account_id=7,
        inbox_id=3,
        conversation_id=42,
        contact_id=501,
        private=True,
        sender_type="user",
    )


def test_typing_by_the_contact() -> None:
    payload = {
        "event": "conversation_typing_on",
        "user": CONTACT,
        "conversation": CONVERSATION,
        "is_private": False,
    }
    fields = extract_event_fields(payload)
    assert (fields.sender_type, fields.private) == ("contact", False)


@pytest.mark.parametrize("event", ["contact_created", "contact_updated"])
def test_contact_events(event: str) -> None:
    payload = {**copy.deepcopy(CONTACT), "event": event}
    assert extract_event_fields(payload) == EventFields(event=event, account_id=7, contact_id=501)


def test_webwidget_triggered() -> None:
    payload = {
        "event": "webwidget_triggered",
        "id": 9,
        "contact": CONTACT,
        "inbox": {"id": 3, "name": "Website"},
        "account": ACCOUNT,
        "current_conversation": CONVERSATION,
        "source_id": "s-1",
        "event_info": {"referer": "https://example.com"},
    }
    assert extract_event_fields(payload) == EventFields(
        event="webwidget_triggered", account_id=7, inbox_id=3, conversation_id=42, contact_id=501
    )


def test_webwidget_without_a_conversation() -> None:
    payload = {
        "event": "webwidget_triggered",
        "id": 9,
        "contact": CONTACT,
        "inbox": {"id": 3},
        "account": ACCOUNT,
        "current_conversation": None,
    }
    fields = extract_event_fields(payload)
    assert (fields.conversation_id, fields.inbox_id, fields.contact_id) == (None, 3, 501)


@pytest.mark.parametrize("event", ["inbox_created", "inbox_updated"])
def test_inbox_events(event: str) -> None:
    payload = {
        "event": event,
        "id": 3,
        "name": "API",
        "channel": {"id": 1, "account_id": 7},
        "greeting_enabled": False,
    }
    assert extract_event_fields(payload) == EventFields(event=event, account_id=7, inbox_id=3)


def test_unknown_event_keeps_what_is_unambiguous() -> None:
    payload = {"event": "conversation.recording", "id": 77, "conversation": CONVERSATION, "account": ACCOUNT}
    fields = extract_event_fields(payload)
    assert fields.event == "conversation.recording"
    assert (fields.account_id, fields.conversation_id, fields.message_id) == (7, 42, None)


@pytest.mark.parametrize("event", WEBHOOK_EVENTS)
def test_send_test_samples_extract_cleanly(event: str) -> None:
    fields = extract_event_fields(sample_payload(event, account_id=4, inbox_id=5, conversation_id=6))
    assert fields.event == event
    assert fields.account_id == 4
    if event.startswith(("message_", "conversation_")) or event == "webwidget_triggered":
        assert fields.conversation_id == 6
        assert fields.inbox_id == 5


# --------------------------------------------------------------------------- hostile input


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        ({}, "missing"),
        ({"id": 1}, "missing"),
        ({"event": None}, "must be a string"),
        ({"event": 5}, "must be a string"),
        ({"event": ["message_created"]}, "must be a string"),
        ({"event": ""}, "1 to 64"),
        ({"event": "x" * 65}, "1 to 64"),
        ({"event": "message created"}, "1 to 64"),
        ({"event": "message_created\x00"}, "1 to 64"),
        ({"event": "_leading"}, "1 to 64"),
    ],
)
def test_bad_event_is_a_clear_error(payload: dict[str, Any], match: str) -> None:
    with pytest.raises(PayloadError, match=match) as info:
        extract_event_fields(payload)
    assert "'event'" in str(info.value)


@pytest.mark.parametrize("payload", [[], "message_created", 5, None])
def test_non_object_payload(payload: Any) -> None:
    with pytest.raises(PayloadError, match="JSON object"):
        extract_event_fields(payload)


def test_wrong_types_become_none() -> None:
    payload = message_payload(
        id="1234",
        message_type=["incoming"],
        private="false",
        sender={"id": "501", "type": 3},
        account={"id": True},
        inbox="3",
        conversation={"id": 4.0, "inbox_id": None, "contact_inbox": [], "meta": "x"},
    )
    assert extract_event_fields(payload) == EventFields(event="message_created")


def test_out_of_range_and_oversized_values_become_none() -> None:
    payload = message_payload(
        id=2**63,
        message_type="incoming-but-far-too-long",
        sender={"id": 1, "type": "u" * 33},
        conversation={"id": -(2**63) - 1},
    )
    fields = extract_event_fields(payload)
    assert (fields.message_id, fields.message_type, fields.sender_type, fields.conversation_id) == (
        None,
        None,
        None,
        None,
    )


def test_strings_with_nul_or_spaces_are_not_indexed() -> None:
    fields = extract_event_fields(message_payload(message_type="in\x00", sender={"type": "agent bot"}))
    assert (fields.message_type, fields.sender_type) == (None, None)


def test_as_columns_matches_the_table() -> None:
    from neoleads_provider.store.schema import webhook_events

    columns = set(extract_event_fields(message_payload()).as_columns())
    assert columns <= {column.name for column in webhook_events.columns}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=15,
)


@settings(max_examples=120, deadline=None)
@given(
    event=st.sampled_from([*WEBHOOK_EVENTS, "other_event"]),
    body=st.dictionaries(
        st.sampled_from(
            [
                "id",
                "account",
                "account_id",
                "inbox",
                "inbox_id",
                "conversation",
                "sender",
                "user",
                "contact",
                "message_type",
                "private",
                "is_private",
                "meta",
                "contact_inbox",
                "current_conversation",
                "channel",
            ]
        ),
        json_values,
    ),
)
def test_any_shape_yields_fields_or_none_never_an_exception(event: str, body: dict[str, Any]) -> None:
    fields = extract_event_fields({**body, "event": event})
    for name in ("account_id", "inbox_id", "conversation_id", "message_id", "contact_id"):
        value = getattr(fields, name)
        assert value is None or (type(value) is int and -(2**63) <= value < 2**63)
    assert fields.private in (None, True, False)
    assert fields.message_type is None or len(fields.message_type) <= 16
    assert fields.sender_type is None or len(fields.sender_type) <= 32
