"""Read a whole number from a rendered template, an XCom value or a connection field, in one way.

Templates render to text, XCom and JSON give ints, and a float such as ``2.0`` may come from either: each is
accepted when it names a whole number. Booleans and fractions are not, though ``int()`` would take them.
"""

from __future__ import annotations

from typing import Any

from neoleads_provider.exceptions import NeoleadsConfigError

__all__ = ["parse_whole_number"]


def parse_whole_number(value: Any, name: str, *, minimum: int | None = None) -> int:
    """Return ``value`` as an ``int``.

    :param name: what the value is, as the error should name it: an argument (``"inbox_id"``) or a
        connection field (``"Connection 'x': field 'timeout'"``).
    :param minimum: the smallest value allowed, if any.
    :raises NeoleadsConfigError: naming ``name``, what was expected and what it got.
    """
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        # int() ignores the spaces around a number in text.
        number = int(value)
    except (TypeError, ValueError):
        raise NeoleadsConfigError(f"{name} must be a whole number, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise NeoleadsConfigError(f"{name} must be >= {minimum}, got {number}")
    return number
