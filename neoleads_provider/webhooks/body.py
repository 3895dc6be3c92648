"""Parse a delivery's raw body: strict JSON, an object with an ``event``, nothing a database cannot store.

What the payload *means* is read by :func:`neoleads_provider.events.read_event`; this module only decides
whether the bytes are a body the receiver can accept, and refuses the rest with a :class:`PayloadError`
naming the problem (answered 400).
"""

from __future__ import annotations

import json
import math
from typing import Any

import msgspec

from neoleads_provider.events.fields import EventFields, PayloadError, read_event
from neoleads_provider.events.redact import may_carry_secrets, without_secrets
from neoleads_provider.events.text import find_unstorable_text

__all__ = ["MAX_JSON_DEPTH", "parse_event_body"]

MAX_JSON_DEPTH = 64

_decode_json = msgspec.json.Decoder().decode


def parse_event_body(body: bytes) -> tuple[str, EventFields]:
    """Parse a delivery's raw body; return it as text to store, with what it is about.

    The text is the body as sent, with any credentials it carries redacted
    (:func:`neoleads_provider.events.redact.without_secrets`): store it, and identify the event by it.

    Strict JSON only: an object with a valid ``event``, no NaN or Infinity, no number beyond a float or
    Python's integer digit limit, at most :data:`MAX_JSON_DEPTH` levels deep, and no NUL character or lone
    surrogate anywhere (the metadata database could store neither in an XCom: acknowledging one would hand a
    sensor an event it can never return).

    :raises PayloadError: naming what is wrong with the body.
    """
    try:
        # msgspec (which Airflow already depends on) parses in a third of json.loads' time and accepts
        # strictly less: whatever it refuses goes through json.loads for the same answer and the same error.
        payload = _decode_json(body)
    except (msgspec.MsgspecError, UnicodeDecodeError, RecursionError, ValueError):
        text, payload = _parse_with_json(body)
    else:
        text = body.decode("utf-8")
    if not isinstance(payload, dict):
        raise PayloadError(f"the body must be a JSON object, got {type(payload).__name__}")
    _check_depth(payload, body)
    fields = read_event(payload)
    # NUL and surrogates can only arrive as \u escapes (raw ones are not valid JSON or UTF-8): most bodies
    # have no escape at all, and need no walk.
    if b"\\u" in body:
        problem = find_unstorable_text(payload)
        if problem is not None:
            raise PayloadError(f"the body cannot be stored: {problem}")
    cleaned = without_secrets(fields.event, payload) if may_carry_secrets(fields.event, body) else None
    if cleaned is not None:
        # Stored without the channel's credentials; what the event is about is read from the body as sent.
        text = json.dumps(cleaned, ensure_ascii=False, separators=(",", ":"))
    return text, fields


def _parse_with_json(body: bytes) -> tuple[str, Any]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise PayloadError("the body is not UTF-8 text") from None
    try:
        payload = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        raise PayloadError(f"the body is nested more than {MAX_JSON_DEPTH} levels deep") from None
    except json.JSONDecodeError as exc:
        raise PayloadError(
            f"the body is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except PayloadError:
        raise
    except ValueError:
        # Python refuses to parse integers of more than 4300 digits (int_max_str_digits): bad input, not a crash.
        raise PayloadError("the body contains a number with too many digits") from None
    return text, payload


def _reject_constant(name: str) -> Any:
    raise PayloadError(f"the body contains {name}, which is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise PayloadError(f"the body contains a number too large for a float: {text[:32]}")
    return value


def _check_depth(value: Any, body: bytes) -> None:
    if body.count(b"{") + body.count(b"[") <= MAX_JSON_DEPTH:
        # Nesting needs an opening bracket per level: with this few there is nothing to walk (the usual case).
        return
    # Iterative, so a hostile document cannot exhaust the stack here either.
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise PayloadError(f"the body is nested more than {MAX_JSON_DEPTH} levels deep")
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values() if isinstance(child, dict | list))
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item if isinstance(child, dict | list))
