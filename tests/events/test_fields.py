"""Reading every Neoleads (Chatwoot) webhook payload shape into EventFields, an event's identity, and text a
database cannot store (neoleads_provider/events/fields.py and text.py)."""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neoleads_provider.events import EventFilter
from neoleads_provider.events.build import message_event_from_api, sample_event
from neoleads_provider.events.fields import (
    COLUMN_NAMES,
    EventFields,
    PayloadError,
    event_identity,
    message_type_name,
    read_event,
)
from neoleads_provider.events.names import MESSAGE_EVENTS, WEBHOOK_EVENTS
from neoleads_provider.events.text import REPLACEMENT, find_unstorable_text, neutralise_text

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
INCOMING = EventFields(
    event="message_created",
    account_id=7,
    inbox_id=3,
    conversation_id=42,
    message_id=1234,
    contact_id=501,
    message_type="incoming",
    private=False,
    sender_type="contact",
    content="Hello",
)


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
    assert read_event(message_payload()) == INCOMING


def test_content_is_read_but_is_not_a_column_and_not_in_the_repr() -> None:
    fields = read_event(message_payload(content="a secret reply"))
    assert fields.content == "a secret reply"
    assert "content" not in COLUMN_NAMES
    assert "a secret reply" not in repr(fields)
    assert read_event(message_payload(content=None)).content is None
    assert read_event(message_payload(content=5)).content is None


def test_outgoing_private_note_from_an_agent() -> None:
    agent = {"id": 2, "name": "Bob", "email": "bob@example.com", "type": "user"}
    fields = read_event(
        message_payload(event="message_updated", message_type="outgoing", private=True, sender=agent)
    )
    assert fields.event == "message_updated"
    assert (fields.message_type, fields.private, fields.sender_type) == ("outgoing", True, "user")
    # The conversation's contact, not the agent who wrote the note.
    assert fields.contact_id == 501


def test_message_from_an_agent_bot_and_template_messages() -> None:
    bot = {"id": 5, "name": "Bot", "type": "agent_bot"}
    fields = read_event(message_payload(message_type="template", sender=bot))
    assert (fields.message_type, fields.sender_type) == ("template", "agent_bot")


def test_message_without_sender() -> None:
    fields = read_event(message_payload(sender=None))
    assert fields.sender_type is None
    assert fields.contact_id == 501


def test_message_type_as_the_rest_api_integer_is_named() -> None:
    assert read_event(message_payload(message_type=1)).message_type == "outgoing"
    assert read_event(message_payload(message_type=0)).message_type == "incoming"
    assert read_event(message_payload(message_type=99)).message_type is None


def test_message_falls_back_to_conversation_ids() -> None:
    payload = message_payload()
    del payload["inbox"], payload["account"]
    fields = read_event(payload)
    assert (fields.inbox_id, fields.account_id) == (3, 7)


def test_message_contact_from_sender_when_conversation_has_none() -> None:
    payload = message_payload()
    payload["conversation"] = {"id": 42, "inbox_id": 3}
    assert read_event(payload).contact_id == 501


@pytest.mark.parametrize(
    "event", ["conversation_created", "conversation_updated", "conversation_status_changed"]
)
def test_conversation_events(event: str) -> None:
    payload = {**copy.deepcopy(CONVERSATION), "event": event}
    if event != "conversation_created":
        payload["changed_attributes"] = [{"status": {"previous_value": "open", "current_value": "resolved"}}]
    assert read_event(payload) == EventFields(
        event=event, account_id=7, inbox_id=3, conversation_id=42, contact_id=501
    )


def test_conversation_contact_from_meta_sender() -> None:
    payload = {**copy.deepcopy(CONVERSATION), "event": "conversation_created"}
    del payload["contact_inbox"]
    assert read_event(payload).contact_id == 501


@pytest.mark.parametrize("event", ["conversation_typing_on", "conversation_typing_off"])
def test_typing_events_by_an_agent(event: str) -> None:
    payload = {
        "event": event,
        "user": {"id": 2, "name": "Bob", "email": "bob@example.com", "type": "user"},
        "conversation": copy.deepcopy(CONVERSATION),
        "is_private": True,
    }
    assert read_event(payload) == EventFields(
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
    fields = read_event(payload)
    assert (fields.sender_type, fields.private) == ("contact", False)


@pytest.mark.parametrize("event", ["contact_created", "contact_updated"])
def test_contact_events(event: str) -> None:
    payload = {**copy.deepcopy(CONTACT), "event": event}
    assert read_event(payload) == EventFields(event=event, account_id=7, contact_id=501)


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
    assert read_event(payload) == EventFields(
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
    fields = read_event(payload)
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
    assert read_event(payload) == EventFields(event=event, account_id=7, inbox_id=3)


def test_unknown_event_keeps_what_is_unambiguous() -> None:
    payload = {"event": "conversation.recording", "id": 77, "conversation": CONVERSATION, "account": ACCOUNT}
    fields = read_event(payload)
    assert fields.event == "conversation.recording"
    assert (fields.account_id, fields.conversation_id, fields.message_id) == (7, 42, None)


# --------------------------------------------------------------------------- normalisation


def test_ids_given_as_digit_strings_read_as_integers() -> None:
    payload = message_payload(
        id="1234",
        account={"id": "7"},
        inbox={"id": " 3 "},
        conversation={**CONVERSATION, "id": "42", "contact_inbox": {"contact_id": "501"}},
    )
    assert read_event(payload) == INCOMING


@pytest.mark.parametrize("value", ["12a", "-5", "1.0", "", "١٢", "9" * 20])
def test_strings_that_are_not_plain_digits_are_not_ids(value: str) -> None:
    assert read_event(message_payload(id=value)).message_id is None


@pytest.mark.parametrize(
    ("value", "name"),
    [
        ("Incoming", "incoming"),
        (" OUTGOING ", "outgoing"),
        (0, "incoming"),
        (3, "template"),
        ("2", "activity"),
    ],
)
def test_message_types_are_normalised_to_their_lower_case_name(value: Any, name: str) -> None:
    assert message_type_name(value) == name
    assert read_event(message_payload(message_type=value)).message_type == name


def test_sender_types_are_lower_case_and_a_sender_without_one_is_a_contact() -> None:
    user = {"id": 2, "name": "Bob", "type": "User"}
    assert read_event(message_payload(sender=user)).sender_type == "user"
    assert read_event(message_payload(sender={"id": 5, "type": "AgentBot"})).sender_type == "agentbot"
    untyped = {key: value for key, value in CONTACT.items() if key != "type"}
    assert read_event(message_payload(sender=untyped)).sender_type == "contact"
    # An empty sender is nobody, not a contact.
    assert read_event(message_payload(sender={})).sender_type is None


def test_a_conversation_named_only_by_its_display_id() -> None:
    conversation = {key: value for key, value in CONVERSATION.items() if key != "id"}
    conversation["display_id"] = 42
    assert read_event(message_payload(conversation=conversation)) == INCOMING
    status_changed = {**copy.deepcopy(conversation), "event": "conversation_status_changed"}
    assert read_event(status_changed).conversation_id == 42
    typing = {"event": "conversation_typing_on", "user": CONTACT, "conversation": conversation}
    assert read_event(typing).conversation_id == 42


def test_a_rest_message_reshaped_by_the_sensor_reads_like_its_webhook() -> None:
    rest = {
        "id": 1234,
        "content": "Hello",
        "message_type": 0,
        "private": False,
        "created_at": 1_780_000_000,
        "conversation_id": 42,
        "inbox_id": 3,
        "sender": {"id": 501, "name": "Ann", "type": "contact"},
    }
    fields = read_event(message_event_from_api(rest, account_id=7))
    assert fields == INCOMING


def test_every_normalised_shape_matches_the_same_filter() -> None:
    """The store columns and EventFilter.matches read through read_event: the spellings cannot disagree."""
    flt = EventFilter(
        account_id=7, inbox_id=3, conversation_id=42, sender_types=("contact",), after_message_id=1
    )
    conversation = {key: value for key, value in CONVERSATION.items() if key != "id"}
    spellings = [
        message_payload(),
        message_payload(id="1234", account={"id": "7"}, inbox={"id": "3"}),
        message_payload(message_type="Incoming"),
        message_payload(message_type=0),
        message_payload(sender={"id": 501, "name": "Ann", "type": "Contact"}),
        message_payload(conversation={**conversation, "display_id": "42"}),
    ]
    for payload in spellings:
        assert read_event(payload) == INCOMING, payload
        assert flt.matches(payload), payload
    assert not flt.matches(message_payload(message_type="Outgoing"))
    assert not flt.matches({"no": "event"})


@pytest.mark.parametrize("event", WEBHOOK_EVENTS)
def test_every_sample_event_reads_cleanly(event: str) -> None:
    payload = sample_event(
        event, account_id=4, inbox_id=5, conversation_id=6, contact_id=8, message_id=99, now=1_780_000_000
    )
    fields = read_event(payload)
    assert fields.event == event
    assert fields.account_id == 4
    if event.startswith(("message_", "conversation_")) or event == "webwidget_triggered":
        assert fields.conversation_id == 6
        assert fields.inbox_id == 5
        assert fields.contact_id == 8
    if event in MESSAGE_EVENTS:
        assert (fields.message_id, fields.message_type, fields.sender_type) == (99, "incoming", "contact")
        assert fields.content == "Test message"
    else:
        assert fields.message_id is None
    if event.startswith("contact_"):
        assert fields.contact_id == 8
    if event.startswith("inbox_"):
        assert fields.inbox_id == 5
    if event.startswith("conversation_typing_"):
        assert fields.sender_type == "user"


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
        read_event(payload)
    assert "'event'" in str(info.value)


@pytest.mark.parametrize("payload", [[], "message_created", 5, None])
def test_non_object_payload(payload: Any) -> None:
    with pytest.raises(PayloadError, match="JSON object"):
        read_event(payload)


def test_wrong_types_become_none() -> None:
    payload = message_payload(
        id=[1234],
        content={"text": "Hello"},
        message_type=["incoming"],
        private="false",
        sender={"id": "501", "type": 3},
        account={"id": True},
        inbox="3",
        conversation={"id": 4.0, "inbox_id": None, "contact_inbox": [], "meta": "x"},
    )
    assert read_event(payload) == EventFields(event="message_created")


def test_out_of_range_and_oversized_values_become_none() -> None:
    payload = message_payload(
        id=2**63,
        message_type="incoming-but-far-too-long",
        sender={"id": 1, "type": "u" * 33},
        conversation={"id": -(2**63) - 1},
    )
    fields = read_event(payload)
    assert (fields.message_id, fields.message_type, fields.sender_type, fields.conversation_id) == (
        None,
        None,
        None,
        None,
    )


def test_strings_with_nul_or_spaces_are_not_indexed() -> None:
    fields = read_event(message_payload(message_type="in\x00", sender={"type": "agent bot"}))
    assert (fields.message_type, fields.sender_type) == (None, None)


def test_column_names_match_the_table() -> None:
    from neoleads_provider.store.schema import webhook_events

    assert set(COLUMN_NAMES) <= {column.name for column in webhook_events.columns}
    assert COLUMN_NAMES[0] == "event"


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
                "content",
            ]
        ),
        json_values,
    ),
)
def test_any_shape_yields_fields_or_none_never_an_exception(event: str, body: dict[str, Any]) -> None:
    fields = read_event({**body, "event": event})
    for name in ("account_id", "inbox_id", "conversation_id", "message_id", "contact_id"):
        value = getattr(fields, name)
        assert value is None or (type(value) is int and 0 <= value < 2**63)
    assert fields.private in (None, True, False)
    assert fields.message_type is None or len(fields.message_type) <= 16
    assert fields.sender_type is None or len(fields.sender_type) <= 32
    assert fields.content is None or isinstance(fields.content, str)
    # The identity always fits its column.
    assert len(event_identity(fields, json.dumps(body).encode())) <= 128


# --------------------------------------------------------------------------- event identity


def test_message_created_is_keyed_by_account_and_message_whatever_the_bytes() -> None:
    payload = message_payload()
    compact = json.dumps(payload, separators=(",", ":")).encode()
    pretty = json.dumps(payload, indent=2, sort_keys=True).encode()
    # The API inbox's copy may render other details differently; it is still the same message.
    other_copy = json.dumps({**payload, "content": "Hello (edited)", "source_id": "x"}).encode()
    keys = {event_identity(read_event(json.loads(body)), body) for body in (compact, pretty, other_copy)}
    assert keys == {"message_created:7:1234"}


def test_message_created_of_another_message_or_account_is_another_event() -> None:
    body = b"{}"
    base = event_identity(read_event(message_payload()), body)
    assert event_identity(read_event(message_payload(id=1235)), body) != base
    assert event_identity(read_event(message_payload(account={"id": 8})), body) != base


@pytest.mark.parametrize(
    ("payload", "key"),
    [
        ({**CONVERSATION, "event": "conversation_created"}, "conversation_created:7:42"),
        ({**CONTACT, "event": "contact_created"}, "contact_created:7:501"),
    ],
)
def test_other_creation_events_are_keyed_by_their_object(payload: dict[str, Any], key: str) -> None:
    body = json.dumps(payload).encode()
    assert event_identity(read_event(payload), body) == key
    assert event_identity(read_event(payload), body + b" ") == key


@pytest.mark.parametrize(
    "payload",
    [
        message_payload(event="message_updated"),
        {**CONVERSATION, "event": "conversation_status_changed"},
        {**CONTACT, "event": "contact_updated"},
        {"event": "conversation_typing_on", "user": CONTACT, "conversation": CONVERSATION},
        # A creation event without the object's id has nothing else to go by.
        message_payload(id=None),
    ],
)
def test_other_events_are_keyed_by_the_body_digest(payload: dict[str, Any]) -> None:
    fields = read_event(payload)
    body = json.dumps(payload).encode()
    key = event_identity(fields, body)
    assert key == "sha256:" + hashlib.sha256(body).hexdigest()
    # A replay repeats the bytes, so the same key; any other bytes are another event.
    assert event_identity(fields, bytes(body)) == key
    assert event_identity(fields, json.dumps(payload, indent=1).encode()) != key


# --------------------------------------------------------------------------- unstorable text


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({"content": "a\x00b"}, "field 'content' holds a NUL character (\\u0000)"),
        ({"content": "a\ud800b"}, "field 'content' holds a lone surrogate (\\ud800)"),
        ({"content": "\udfff"}, "field 'content' holds a lone surrogate (\\udfff)"),
        (
            {"conversation": {"messages": [{"content": "ok"}, {"content": "x\x00"}]}},
            "field 'conversation.messages[1].content' holds a NUL character (\\u0000)",
        ),
        ({"sender": {"x\x00": 1}}, "a key under 'sender' holds a NUL character (\\u0000)"),
        ("\x00", "field '(top level)' holds a NUL character (\\u0000)"),
        (["\ud800"], "field '[0]' holds a lone surrogate (\\ud800)"),
    ],
)
def test_unstorable_text_is_found_and_named(value: Any, problem: str) -> None:
    assert find_unstorable_text(value) == problem


@pytest.mark.parametrize(
    "value",
    [
        message_payload(),
        {"content": "emoji \U0001f600 and accents \u00e9 and the replacement \ufffd"},
        {"nested": [[[{"a": None, "b": 1.5, "c": True}]]]},
        "",
        None,
        42,
    ],
)
def test_storable_text_is_not_flagged(value: Any) -> None:
    assert find_unstorable_text(value) is None


def test_a_deeply_nested_document_is_walked_without_recursion() -> None:
    value: Any = "x\x00"
    for _ in range(sys.getrecursionlimit() * 2):
        value = [value]
    assert find_unstorable_text(value) is not None


def test_neutralise_replaces_nul_and_surrogates_everywhere() -> None:
    value = {
        "event": "message_created",
        "content": "a\x00b\ud800c",
        "key\x00": ["\udc00", {"deep": "\x00"}],
        "id": 5,
        "private": False,
        "none": None,
    }
    original = copy.deepcopy(value)
    clean = neutralise_text(value)
    assert clean == {
        "event": "message_created",
        "content": f"a{REPLACEMENT}b{REPLACEMENT}c",
        f"key{REPLACEMENT}": [REPLACEMENT, {"deep": REPLACEMENT}],
        "id": 5,
        "private": False,
        "none": None,
    }
    assert value == original
    assert find_unstorable_text(clean) is None
    json.dumps(clean, ensure_ascii=False).encode("utf-8")


def test_neutralise_leaves_clean_text_as_it_is() -> None:
    text = "nothing to replace \U0001f600"
    assert neutralise_text(text) is text
    assert neutralise_text(message_payload()) == message_payload()


# --------------------------------------------------------------------------- import cost


def test_importing_the_events_package_loads_neither_airflow_nor_sqlalchemy() -> None:
    """DAG files import the sensor, which imports the events package: it must stay stdlib only."""
    code = (
        "import json, sys\n"
        "before = set(sys.modules)\n"
        "import neoleads_provider.events\n"
        "import neoleads_provider.events.build, neoleads_provider.events.text\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    outside_stdlib = {name for name in loaded if name.split(".")[0] not in sys.stdlib_module_names}
    assert outside_stdlib <= {
        "neoleads_provider",
        "neoleads_provider.events",
        "neoleads_provider.events.build",
        "neoleads_provider.events.fields",
        "neoleads_provider.events.filter",
        "neoleads_provider.events.names",
        "neoleads_provider.events.text",
    }, loaded
    assert not any(name.split(".")[0] in ("airflow", "sqlalchemy", "pydantic") for name in loaded)
