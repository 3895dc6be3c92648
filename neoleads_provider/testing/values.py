"""Value helpers: how the real server (Ruby, Rails, ActiveModel) casts, blanks, copies and renders values.

Pure functions with no state; the resources and the renderers share them.
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime
from typing import Any

_TRUE_STRINGS = frozenset({"1", "t", "true", "on", "yes", "y"})
_FALSE_STRINGS = frozenset({"0", "f", "false", "off", "no", "n"})


def unix(timestamp: float | None) -> int | None:
    """Render ``.to_i`` of a nullable timestamp, keeping ``None``."""
    return None if timestamp is None else int(timestamp)


def unix0(timestamp: float | None) -> int:
    """Render ``.to_i`` where Ruby turns ``nil`` into 0 (the conversation presenters do)."""
    return 0 if timestamp is None else int(timestamp)


def cast_bool(value: Any) -> bool | None:
    """Cast a parameter the way ActiveModel's boolean type does (``"false"``, ``"0"`` are false)."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    text = str(value).strip().lower()
    if text in _FALSE_STRINGS:
        return False
    return True if text in _TRUE_STRINGS else bool(text)


def cast_id(value: Any) -> int | None:
    """Return ``value`` as a record id, or ``None`` when it cannot name a record."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit() and value.strip().isascii():
        return int(value.strip())
    return None


def present(value: Any) -> bool:
    """Ruby's ``present?``: not nil, not an empty or whitespace-only string, not an empty collection."""
    if value is None:
        return False
    if isinstance(value, str):
        return bool(value.strip())
    if isinstance(value, list | dict | tuple):
        return bool(value)
    return True


def scalar_string(value: Any) -> str | None:
    """Cast a permitted scalar parameter to the string a ``string`` column would store; blank → ``None``."""
    if value is None or isinstance(value, dict | list):
        return None
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return text if text.strip() else None


def new_token(length: int = 24) -> str:
    """Mimic ``has_secure_token``: a random base58-ish string."""
    alphabet = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
    return "".join(secrets.choice(alphabet) for _ in range(length))


def copy_json(value: Any) -> Any:
    """Deep-copy a JSON-like value, so a webhook payload snapshot never changes after the fact."""
    if isinstance(value, dict):
        return {key: copy_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [copy_json(item) for item in value]
    return value


def to_i(value: Any) -> int:
    """Ruby's ``String#to_i``: leading digits, else 0."""
    match = re.match(r"\s*([+-]?\d+)", str(value))
    return int(match.group(1)) if match else 0


def parse_time(value: Any) -> float | None:
    """Parse a unix time or an ISO 8601 string (``snoozed_until``)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    if text.replace(".", "", 1).isdigit():
        return float(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


# FileTypeHelper (app/helpers/file_type_helper.rb): the types the web app can preview; any other image or
# video (svg, tiff, heic, avi...) is a plain file.
PREVIEWABLE_IMAGES = frozenset({"image/jpeg", "image/png", "image/gif", "image/bmp", "image/webp"})
PREVIEWABLE_VIDEOS = frozenset({"video/ogg", "video/mp4", "video/webm", "video/quicktime"})


def file_type(content_type: str | None) -> str:
    """Map a MIME type to Chatwoot's attachment ``file_type``, as ``FileTypeHelper#file_type`` does."""
    content_type = content_type or ""
    if content_type in PREVIEWABLE_IMAGES:
        return "image"
    if content_type in PREVIEWABLE_VIDEOS:
        return "video"
    return "audio" if "audio/" in content_type else "file"
