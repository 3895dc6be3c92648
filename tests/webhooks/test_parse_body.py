"""parse_event_body: msgspec's fast path gives exactly json.loads' answers, including its refusals, and
bodies holding text a database cannot store are refused naming the field."""

from __future__ import annotations

import json
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neoleads_provider.events.fields import PayloadError
from neoleads_provider.webhooks import body as body_module
from neoleads_provider.webhooks.body import MAX_JSON_DEPTH, parse_event_body


def outcome(body: bytes) -> tuple[str, object]:
    try:
        return "ok", parse_event_body(body)
    except PayloadError as exc:
        return "refused", str(exc)


def _no_fast_path(body: bytes) -> object:
    raise ValueError("fast path disabled")


def json_loads_outcome(body: bytes) -> tuple[str, object]:
    """The answer parse_event_body gives when msgspec refuses everything, so json.loads parses it."""
    with mock.patch.object(body_module, "_decode_json", _no_fast_path):
        return outcome(body)


def assert_same(body: bytes) -> None:
    assert outcome(body) == json_loads_outcome(body)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=25,
)
# Payload-shaped objects, with values of every type where the extractor expects ids, names and objects.
payloads = st.fixed_dictionaries(
    {"event": st.sampled_from(["message_created", "conversation_updated", "contact_created", "x", "", 7])},
    optional={
        "id": json_values,
        "message_type": st.sampled_from(["incoming", "outgoing", 0, 1, 3, None, "in coming"]),
        "private": json_values,
        "account": st.fixed_dictionaries({}, optional={"id": json_values}),
        "inbox": json_values,
        "conversation": st.fixed_dictionaries(
            {},
            optional={
                "id": json_values,
                "display_id": json_values,
                "inbox_id": json_values,
                "meta": json_values,
            },
        ),
        "sender": st.fixed_dictionaries({}, optional={"id": json_values, "type": json_values}),
        "extra": json_values,
    },
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(payloads)
def test_payload_shaped_bodies_parse_the_same_both_ways(payload: dict[str, object]) -> None:
    assert_same(json.dumps(payload).encode())


@settings(max_examples=300)
@given(json_values)
def test_any_json_document_parses_the_same_both_ways(value: object) -> None:
    assert_same(json.dumps(value).encode())


@settings(max_examples=300)
@given(st.binary(max_size=64), st.integers(min_value=0, max_value=40))
def test_damaged_bodies_get_the_same_refusal_both_ways(noise: bytes, cut: int) -> None:
    body = b'{"event": "message_created", "id": 5, "content": "hello"}'
    assert_same(body[:cut] + noise + body[cut:])


@pytest.mark.parametrize(
    "body",
    [
        b'{"event": "message_created", "n": NaN}',
        b'{"event": "message_created", "n": -Infinity}',
        b'{"event": "message_created", "n": 1e400}',
        b'{"event": "message_created", "n": ' + b"9" * 5000 + b"}",
        b'{"event": "message_created", "s": "\\ud800"}',
        b'{"event": "message_created", "s": "\\u0000"}',
        b'{"event": "message_created", "s": "a\x00b"}',
        b'\xef\xbb\xbf{"event": "message_created"}',
        b'{"event": "message_created", "s": "\xff"}',
        b'{"event": "message_created", "event": "contact_created"}',
        b'{"event": "message_created"} trailing',
        b"[1, 2]",
        b'"message_created"',
        b"",
        b'{"event": "message_created", "deep": ' + b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH + b"}",
        b'{"event": "message_created", "deep": '
        + b"[" * (MAX_JSON_DEPTH - 1)
        + b"]" * (MAX_JSON_DEPTH - 1)
        + b"}",
        b'{"event": "message_created", "deep": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    ],
)
def test_edge_cases_get_the_same_answer_both_ways(body: bytes) -> None:
    assert_same(body)


def test_the_stored_text_is_the_body_exactly() -> None:
    body = '{"event":"message_created","content":"caf\u00e9 \\u00e9 \U0001f600","id":1}'.encode()
    text, fields = parse_event_body(body)
    assert text.encode() == body
    assert fields.event == "message_created"
    assert fields.message_id == 1


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (
            b'{"event": "message_created", "content": "a\\u0000b"}',
            "field 'content' holds a NUL character (\\u0000)",
        ),
        (
            b'{"event": "message_created", "content": "a\\ud800b"}',
            "field 'content' holds a lone surrogate (\\ud800)",
        ),
        (
            b'{"event": "message_created", "content": "\\udc00"}',
            "field 'content' holds a lone surrogate (\\udc00)",
        ),
        (
            b'{"event": "message_created", "sender": {"name": "x\\u0000"}}',
            "field 'sender.name' holds a NUL character (\\u0000)",
        ),
        (
            b'{"event": "message_created", "attachments": [{"k\\u0000": 1}]}',
            "a key under 'attachments[0]' holds a NUL character (\\u0000)",
        ),
    ],
)
def test_unstorable_text_is_refused_naming_the_field(body: bytes, problem: str) -> None:
    for result in (outcome(body), json_loads_outcome(body)):
        assert result == ("refused", f"the body cannot be stored: {problem}")


def test_escapes_of_storable_text_are_accepted() -> None:
    # A surrogate pair is one character (an emoji), not a lone surrogate.
    body = b'{"event": "message_created", "id": 3, "content": "caf\\u00e9 \\ud83d\\ude00 \\ufffd"}'
    text, fields = parse_event_body(body)
    assert text.encode() == body
    assert fields.content == "caf\u00e9 \U0001f600 \ufffd"
    assert fields.message_id == 3


def test_the_fields_are_read_with_the_shared_normalisation() -> None:
    body = json.dumps(
        {
            "event": "message_created",
            "id": "12",
            "message_type": "Incoming",
            "sender": {"id": 4, "type": "User"},
            "account": {"id": "1"},
            "conversation": {"display_id": 9},
        }
    ).encode()
    _, fields = parse_event_body(body)
    assert (fields.message_id, fields.message_type, fields.sender_type) == (12, "incoming", "user")
    assert (fields.account_id, fields.conversation_id) == (1, 9)
