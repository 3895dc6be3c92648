"""parse_event_body: msgspec's fast path gives exactly json.loads' answers, including its refusals."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neoleads_provider.webhooks.payload import (
    MAX_JSON_DEPTH,
    PayloadError,
    _parse_with_json,
    parse_event_body,
)


def outcome(parse, body: bytes) -> tuple[str, object]:
    try:
        return "ok", parse(body)
    except PayloadError as exc:
        return "refused", str(exc)


def assert_same(body: bytes) -> None:
    assert outcome(parse_event_body, body) == outcome(_parse_with_json, body)


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
