"""The pure verifier against fixed vectors and generated tampering."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neoleads_provider.webhooks import DEFAULT_TOLERANCE_SECONDS
from neoleads_provider.webhooks.verify import (
    InvalidTimestampError,
    MissingHeadersError,
    NoMatchingSignatureError,
    TimestampOutOfRangeError,
    WebhookVerificationError,
    header_names,
    sign,
    signed_headers,
    verify,
)

SECRET = "chatwoot-secret-123"
TIMESTAMP = 1_700_000_000
BODY = b'{"event":"message_created","id":42}'
# HMAC-SHA256(key=SECRET, msg=b"1700000000." + BODY), computed once with Python's hmac module.
KNOWN_SIGNATURE = "sha256=554cf3ebb61f8a4887c254f9ad5bf53c722ec34b3297c83509d5bbdd6dfc2e92"


def _independent_signature(secret: str, timestamp: int | str, body: bytes) -> str:
    message = f"{timestamp}.".encode() + body
    return "sha256=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def _headers(signature: str, timestamp: int | str = TIMESTAMP, prefix: str = "X-Chatwoot-") -> dict[str, str]:
    return {f"{prefix}Signature": signature, f"{prefix}Timestamp": str(timestamp)}


def test_known_answer_vector() -> None:
    assert _independent_signature(SECRET, TIMESTAMP, BODY) == KNOWN_SIGNATURE
    assert sign(SECRET, TIMESTAMP, BODY) == KNOWN_SIGNATURE
    verify([SECRET], _headers(KNOWN_SIGNATURE), BODY, now=TIMESTAMP)


def test_signed_headers_match_the_server_shape() -> None:
    headers = signed_headers(SECRET, BODY, timestamp=TIMESTAMP, delivery_id="d-1")
    assert headers == {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "X-Chatwoot-Delivery": "d-1",
        "X-Chatwoot-Timestamp": str(TIMESTAMP),
        "X-Chatwoot-Signature": KNOWN_SIGNATURE,
    }
    verify([SECRET], headers, BODY, now=TIMESTAMP + 1)


def test_header_names() -> None:
    assert header_names() == ("x-chatwoot-signature", "x-chatwoot-timestamp", "x-chatwoot-delivery")
    assert header_names("X-Acme-") == ("x-acme-signature", "x-acme-timestamp", "x-acme-delivery")


def test_tampered_body_fails() -> None:
    with pytest.raises(NoMatchingSignatureError):
        verify([SECRET], _headers(KNOWN_SIGNATURE), BODY.replace(b"42", b"43"), now=TIMESTAMP)


def test_body_is_hashed_as_raw_bytes_not_reencoded_json() -> None:
    spaced = b'{"event": "message_created", "id": 42}'
    with pytest.raises(NoMatchingSignatureError):
        verify([SECRET], _headers(KNOWN_SIGNATURE), spaced, now=TIMESTAMP)


def test_signature_of_body_alone_is_rejected() -> None:
    # The mistake in chatwoot/chatwoot#13809: HMAC over the body without "{timestamp}.".
    body_only = "sha256=" + hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest()
    with pytest.raises(NoMatchingSignatureError):
        verify([SECRET], _headers(body_only), BODY, now=TIMESTAMP)


def test_wrong_secret_fails() -> None:
    with pytest.raises(NoMatchingSignatureError) as info:
        verify(["another-secret"], _headers(KNOWN_SIGNATURE), BODY, now=TIMESTAMP)
    assert SECRET not in str(info.value)
    assert "another-secret" not in str(info.value)
    assert KNOWN_SIGNATURE[7:] not in str(info.value)


@pytest.mark.parametrize(
    "secrets",
    [
        pytest.param([SECRET, "new-secret"], id="old-first"),
        pytest.param(["new-secret", SECRET], id="old-last"),
    ],
)
def test_rotation_accepts_old_and_new(secrets: list[str]) -> None:
    verify(secrets, _headers(KNOWN_SIGNATURE), BODY, now=TIMESTAMP)
    new_signature = _independent_signature("new-secret", TIMESTAMP, BODY)
    verify(secrets, _headers(new_signature), BODY, now=TIMESTAMP)


def test_secrets_may_be_any_iterable_and_empty_entries_are_skipped() -> None:
    verify(iter(["", SECRET]), _headers(KNOWN_SIGNATURE), BODY, now=TIMESTAMP)
    verify((s for s in [SECRET]), _headers(KNOWN_SIGNATURE), BODY, now=TIMESTAMP)


@pytest.mark.parametrize("secrets", [[], [""], ()])
def test_no_usable_secret_rejects(secrets: list[str]) -> None:
    with pytest.raises(NoMatchingSignatureError):
        verify(secrets, _headers(KNOWN_SIGNATURE), BODY, now=TIMESTAMP)


@pytest.mark.parametrize("offset", [0, 1, DEFAULT_TOLERANCE_SECONDS - 1, DEFAULT_TOLERANCE_SECONDS])
def test_timestamp_within_tolerance_either_way(offset: int) -> None:
    verify([SECRET], _headers(KNOWN_SIGNATURE), BODY, now=TIMESTAMP + offset)
    verify([SECRET], _headers(KNOWN_SIGNATURE), BODY, now=TIMESTAMP - offset)


@pytest.mark.parametrize("offset", [DEFAULT_TOLERANCE_SECONDS + 1, DEFAULT_TOLERANCE_SECONDS + 0.5, 86_400])
def test_stale_timestamp_rejected(offset: float) -> None:
    with pytest.raises(TimestampOutOfRangeError, match="old"):
        verify([SECRET], _headers(KNOWN_SIGNATURE), BODY, now=TIMESTAMP + offset)


@pytest.mark.parametrize("offset", [DEFAULT_TOLERANCE_SECONDS + 1, 86_400])
def test_future_timestamp_rejected(offset: int) -> None:
    with pytest.raises(TimestampOutOfRangeError, match="future"):
        verify([SECRET], _headers(KNOWN_SIGNATURE), BODY, now=TIMESTAMP - offset)


def test_custom_tolerance() -> None:
    verify([SECRET], _headers(KNOWN_SIGNATURE), BODY, now=TIMESTAMP + 10, tolerance=10)
    with pytest.raises(TimestampOutOfRangeError):
        verify([SECRET], _headers(KNOWN_SIGNATURE), BODY, now=TIMESTAMP + 11, tolerance=10)


def test_stale_timestamp_is_rejected_even_with_a_valid_signature_for_it() -> None:
    old = TIMESTAMP - 3600
    signature = _independent_signature(SECRET, old, BODY)
    with pytest.raises(TimestampOutOfRangeError):
        verify([SECRET], _headers(signature, old), BODY, now=TIMESTAMP)


@pytest.mark.parametrize(
    "timestamp",
    # The fullwidth digits are what str.isdigit() and int() accept but a header must not carry.
    ["abc", "1700000000.5", "-1700000000", "1e9", " ", "\uff11\uff17" + "\uff10" * 8, "0x65", "9" * 13],
)
def test_non_numeric_timestamp(timestamp: str) -> None:
    with pytest.raises(InvalidTimestampError):
        verify([SECRET], _headers(KNOWN_SIGNATURE, timestamp), BODY, now=TIMESTAMP)


def test_empty_timestamp_counts_as_missing() -> None:
    with pytest.raises(MissingHeadersError, match="x-chatwoot-timestamp"):
        verify([SECRET], _headers(KNOWN_SIGNATURE, ""), BODY, now=TIMESTAMP)


def test_timestamp_with_surrounding_whitespace_is_accepted() -> None:
    verify([SECRET], _headers(KNOWN_SIGNATURE, f" {TIMESTAMP} "), BODY, now=TIMESTAMP)


@pytest.mark.parametrize("missing", ["X-Chatwoot-Signature", "X-Chatwoot-Timestamp"])
def test_each_missing_header(missing: str) -> None:
    headers = _headers(KNOWN_SIGNATURE)
    del headers[missing]
    with pytest.raises(MissingHeadersError, match=missing.lower()):
        verify([SECRET], headers, BODY, now=TIMESTAMP)


def test_no_headers_at_all() -> None:
    with pytest.raises(MissingHeadersError) as info:
        verify([SECRET], {}, BODY, now=TIMESTAMP)
    assert "x-chatwoot-signature" in str(info.value)
    assert "x-chatwoot-timestamp" in str(info.value)


@pytest.mark.parametrize(
    "transform", [str.lower, str.upper, lambda name: name], ids=["lower", "upper", "as-sent"]
)
def test_header_names_are_case_insensitive(transform) -> None:
    headers = {transform(key): value for key, value in _headers(KNOWN_SIGNATURE).items()}
    verify([SECRET], headers, BODY, now=TIMESTAMP)


def test_custom_prefix() -> None:
    headers = _headers(KNOWN_SIGNATURE, prefix="X-Neoleads-")
    verify([SECRET], headers, BODY, now=TIMESTAMP, prefix="X-Neoleads-")
    # The default prefix does not see the renamed headers.
    with pytest.raises(MissingHeadersError):
        verify([SECRET], headers, BODY, now=TIMESTAMP)
    assert (
        signed_headers(SECRET, BODY, timestamp=TIMESTAMP, delivery_id="d", prefix="X-Neoleads-")[
            "X-Neoleads-Signature"
        ]
        == KNOWN_SIGNATURE
    )


def test_uppercase_hex_and_scheme_are_accepted() -> None:
    verify([SECRET], _headers("sha256=" + KNOWN_SIGNATURE[7:].upper()), BODY, now=TIMESTAMP)
    verify([SECRET], _headers("SHA256=" + KNOWN_SIGNATURE[7:]), BODY, now=TIMESTAMP)


@pytest.mark.parametrize(
    "signature",
    [
        KNOWN_SIGNATURE[7:],  # bare hex without "sha256="
        "sha1=" + KNOWN_SIGNATURE[7:],
        "sha256=",
        KNOWN_SIGNATURE[:-2],  # truncated
        KNOWN_SIGNATURE + "00",  # extended
        "sha256=" + "é" * 64,  # non-ASCII
        "sha256=" + "zz" * 32,  # not hex
    ],
)
def test_malformed_signatures_rejected(signature: str) -> None:
    with pytest.raises(NoMatchingSignatureError):
        verify([SECRET], _headers(signature), BODY, now=TIMESTAMP)


def test_every_error_is_a_verification_error() -> None:
    for error in (
        MissingHeadersError,
        InvalidTimestampError,
        TimestampOutOfRangeError,
        NoMatchingSignatureError,
    ):
        assert issubclass(error, WebhookVerificationError)


def test_sign_refuses_an_empty_secret() -> None:
    with pytest.raises(ValueError, match="empty"):
        sign("", TIMESTAMP, BODY)


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=256), data=st.data())
def test_any_change_to_the_body_fails(body: bytes, data: st.DataObject) -> None:
    signature = sign(SECRET, TIMESTAMP, body)
    verify([SECRET], _headers(signature), body, now=TIMESTAMP)
    other = data.draw(st.binary(max_size=256).filter(lambda candidate: candidate != body))
    with pytest.raises(NoMatchingSignatureError):
        verify([SECRET], _headers(signature), other, now=TIMESTAMP)


@settings(max_examples=200, deadline=None)
@given(
    delta=st.integers(min_value=-DEFAULT_TOLERANCE_SECONDS, max_value=DEFAULT_TOLERANCE_SECONDS).filter(bool)
)
def test_any_change_to_the_timestamp_fails(delta: int) -> None:
    # Within the tolerance, so only the signature can catch the change.
    with pytest.raises(NoMatchingSignatureError):
        verify([SECRET], _headers(KNOWN_SIGNATURE, TIMESTAMP + delta), BODY, now=TIMESTAMP)


@settings(max_examples=100, deadline=None)
@given(secret=st.text(min_size=1, max_size=64), body=st.binary(max_size=128))
def test_sign_and_verify_agree_with_an_independent_hmac(secret: str, body: bytes) -> None:
    assert sign(secret, TIMESTAMP, body) == _independent_signature(secret, TIMESTAMP, body)
    verify([secret], _headers(sign(secret, TIMESTAMP, body)), body, now=TIMESTAMP)
