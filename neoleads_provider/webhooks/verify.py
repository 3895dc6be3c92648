"""Verify Neoleads webhook signatures.

Neoleads (Chatwoot 4.11.2+) signs each delivery with
``X-Chatwoot-Signature: sha256=HMAC-SHA256(secret, "{X-Chatwoot-Timestamp}.{raw body}")``.
The sender itself does no replay protection, so the receiver enforces a timestamp window.

This module is pure: no I/O, no clock (``now`` is passed in), no framework imports.
"""

from __future__ import annotations

import functools
import hmac
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

from neoleads_provider.webhooks import DEFAULT_HEADER_PREFIX, DEFAULT_TOLERANCE_SECONDS

SIGNATURE_SCHEME = "sha256="

__all__ = [
    "InvalidTimestampError",
    "MissingHeadersError",
    "NoMatchingSignatureError",
    "TimestampOutOfRangeError",
    "WebhookVerificationError",
    "header_names",
    "sign",
    "signed_headers",
    "verify",
]


class WebhookVerificationError(Exception):
    """A delivery could not be verified; the message says why and never contains a secret."""


class MissingHeadersError(WebhookVerificationError):
    """The signature or timestamp header is absent."""


class InvalidTimestampError(WebhookVerificationError):
    """The timestamp header is not a whole number of seconds."""


class TimestampOutOfRangeError(WebhookVerificationError):
    """The timestamp is older or newer than the tolerance allows."""


class NoMatchingSignatureError(WebhookVerificationError):
    """No configured secret produces the received signature."""


@functools.lru_cache(maxsize=64)
def header_names(prefix: str = DEFAULT_HEADER_PREFIX) -> tuple[str, str, str]:
    """Return the (signature, timestamp, delivery) header names for a prefix, lowercased."""
    prefix = prefix.lower()
    return f"{prefix}signature", f"{prefix}timestamp", f"{prefix}delivery"


def _digest(secret: str, timestamp: str, body: bytes) -> bytes:
    message = timestamp.encode("ascii") + b"." + body
    # hmac.digest is OpenSSL's one-shot HMAC: no HMAC object per delivery.
    return hmac.digest(secret.encode("utf-8"), message, "sha256").hex().encode("ascii")


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """Return the signature header value Neoleads would send for ``body`` at ``timestamp``."""
    if not secret:
        raise ValueError("webhook secret may not be empty")
    return SIGNATURE_SCHEME + _digest(secret, str(int(timestamp)), body).decode("ascii")


def signed_headers(
    secret: str,
    body: bytes,
    *,
    timestamp: int,
    delivery_id: str,
    prefix: str = DEFAULT_HEADER_PREFIX,
) -> dict[str, str]:
    """Return the full header set of a signed JSON delivery, as the Neoleads server sends it."""
    return {
        "Content-Type": "application/json",
        "Accept": "application/json",
        f"{prefix}Delivery": delivery_id,
        f"{prefix}Timestamp": str(int(timestamp)),
        f"{prefix}Signature": sign(secret, timestamp, body),
    }


def verify(
    secrets: Iterable[str],
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    tolerance: int = DEFAULT_TOLERANCE_SECONDS,
    prefix: str = DEFAULT_HEADER_PREFIX,
) -> None:
    """Raise a :class:`WebhookVerificationError` unless ``body`` is signed by one of ``secrets``.

    :param secrets: every secret currently accepted; several allow overlapping rotation.
    :param headers: the request headers (any case).
    :param body: the raw request body, exactly as received.
    :param now: the current unix time in seconds.
    :param tolerance: how far, in seconds, the timestamp may be from ``now`` either way.
    :param prefix: the header prefix (white-labelled servers may rename ``X-Chatwoot-``).
    """
    lowered = {key.lower(): value for key, value in headers.items()}
    signature_header, timestamp_header, _ = header_names(prefix)
    received = lowered.get(signature_header)
    timestamp = lowered.get(timestamp_header)
    missing = [
        name for name, value in ((signature_header, received), (timestamp_header, timestamp)) if not value
    ]
    if missing:
        raise MissingHeadersError(f"missing required header(s): {', '.join(missing)}")
    assert received is not None
    assert timestamp is not None

    timestamp = timestamp.strip()
    # str.isdigit() accepts non-ASCII digits that int() would also take; insist on plain ASCII.
    if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > 12:
        raise InvalidTimestampError("timestamp header is not a unix time in whole seconds")
    # Checked before any HMAC work, so stale replays cost the receiver almost nothing.
    age = now - int(timestamp)
    if age > tolerance:
        raise TimestampOutOfRangeError(f"timestamp is {int(age)} s old; at most {tolerance} s is allowed")
    if age < -tolerance:
        raise TimestampOutOfRangeError(
            f"timestamp is {int(-age)} s in the future; at most {tolerance} s is allowed"
        )

    received = received.strip()
    if not received.lower().startswith(SIGNATURE_SCHEME) or not received.isascii():
        raise NoMatchingSignatureError("signature is not of the form sha256=<hex>")
    received_digest = received[len(SIGNATURE_SCHEME) :].lower().encode("ascii")

    matched = False
    for secret in secrets:
        if secret and hmac.compare_digest(_digest(secret, timestamp, body), received_digest):
            matched = True
    if not matched:
        raise NoMatchingSignatureError("no configured secret matches the signature")
