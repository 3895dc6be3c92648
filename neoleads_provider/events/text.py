"""Text that a metadata database or XCom cannot hold: find it at the door, neutralise it on the way out.

JSON can carry ``\\u0000`` and lone surrogates (``\\ud800``) as escapes. Python reads both into a ``str``, but
PostgreSQL refuses NUL in text and JSONB, and a lone surrogate cannot be encoded as UTF-8: an event holding
one could be acknowledged and stored, then fail every sensor that matched it, on every retry.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["find_unstorable_text", "neutralise_text"]

_UNSTORABLE_RE = re.compile("[\x00\ud800-\udfff]")
REPLACEMENT = "\ufffd"


def _describe(character: str) -> str:
    if character == "\x00":
        return "a NUL character (\\u0000)"
    return f"a lone surrogate (\\u{ord(character):04x})"


def find_unstorable_text(value: Any) -> str | None:
    """Say where ``value`` (parsed JSON) holds text a database cannot store, e.g. ``field 'content' holds ...``.

    :return: None when every key and string is storable.
    """
    # Iterative, so a deeply nested document cannot exhaust the stack.
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            found = _UNSTORABLE_RE.search(item)
            if found is not None:
                return f"field '{path or '(top level)'}' holds {_describe(found.group())}"
        elif isinstance(item, Mapping):
            for key, child in item.items():
                if isinstance(key, str):
                    found = _UNSTORABLE_RE.search(key)
                    if found is not None:
                        return f"a key under '{path or '(top level)'}' holds {_describe(found.group())}"
                stack.append((child, f"{path}.{key}" if path else str(key)))
        elif isinstance(item, list):
            stack.extend((child, f"{path}[{index}]") for index, child in enumerate(item))
    return None


def neutralise_text(value: Any) -> Any:
    """Return ``value`` with every NUL and lone surrogate replaced by U+FFFD (a copy where anything changed)."""
    if isinstance(value, str):
        return _UNSTORABLE_RE.sub(REPLACEMENT, value) if _UNSTORABLE_RE.search(value) else value
    if isinstance(value, Mapping):
        return {neutralise_text(key): neutralise_text(child) for key, child in value.items()}
    if isinstance(value, list):
        return [neutralise_text(child) for child in value]
    return value
