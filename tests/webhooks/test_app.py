"""The webhook receiver, end to end: Airflow connections from the environment, a real SQLite file,
TestClient for breadth and a real uvicorn server on 127.0.0.1 for the production path."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import event, func, select

from neoleads_provider.events.filter import EventFilter
from neoleads_provider.sensors.webhook import NeoleadsWebhookSensor
from neoleads_provider.store.engine import dispose_engines, get_engine
from neoleads_provider.store.matching import find_matches
from neoleads_provider.store.migrate import migrate
from neoleads_provider.store.repository import get_event
from neoleads_provider.store.schema import webhook_events
from neoleads_provider.triggers.webhook import NeoleadsWebhookTrigger
from neoleads_provider.waiting import look_in_store
from neoleads_provider.webhooks.access_log import AccessLog, AccessLogMiddleware
from neoleads_provider.webhooks.app import MAX_BODY_BYTES, create_app
from neoleads_provider.webhooks.connections import CONNECTION_CACHE_TTL_SECONDS, default_resolve_connection
from neoleads_provider.webhooks.server import create_server_app
from neoleads_provider.webhooks.verify import sign
from tests._helpers import message_payload, post_webhook, serving, signed_now, store_payloads

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from sqlalchemy import Engine

CONN_ID = "neoleads_hooks"
OLD_SECRET = "old-secret-4f1d2a9c"
NEW_SECRET = "new-secret-8b7e3c1d"
URL_TOKEN = "url-token-2c9e77aa51f0"
SECRET_A = "conn-a-secret-61c0d9e2"
SECRET_A_INBOX = "conn-a-inbox-secret-0b4f8e73"
SECRET_B = "conn-b-secret-d27a5c48"
SECRETS_IN_PLAY = (
    OLD_SECRET,
    NEW_SECRET,
    URL_TOKEN,
    "api-token-never-logged",
    SECRET_A,
    SECRET_A_INBOX,
    SECRET_B,
)
NOW = 1_780_000_000.0

MESSAGE = {
    "event": "message_created",
    "id": 9001,
    "content": "Hi there",
    "message_type": "incoming",
    "private": False,
    "sender": {"id": 55, "name": "Ada"},
    "account": {"id": 1, "name": "Acme"},
    "inbox": {"id": 2, "name": "API"},
    "conversation": {"id": 77, "inbox_id": 2, "contact_inbox": {"contact_id": 55}},
}


class Clock:
    """A settable clock, so timestamps and the connection cache TTL are under the test's control."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def set_connection(
    monkeypatch: pytest.MonkeyPatch, conn_id: str = CONN_ID, *, conn_type: str = "neoleads", **extra: Any
) -> None:
    extra.setdefault("account_id", 1)
    if extra["account_id"] is None:
        del extra["account_id"]
    value = {
        "conn_type": conn_type,
        "host": "http://127.0.0.1:1",
        "password": "api-token-never-logged",
        "extra": extra,
    }
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(value))


class CountingResolver:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, conn_id: str) -> Any:
        with self._lock:
            self.calls.append(conn_id)
        return default_resolve_connection(conn_id)


@pytest.fixture(autouse=True)
def _no_secrets_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.DEBUG, logger="neoleads_provider")
    yield
    for secret in SECRETS_IN_PLAY:
        assert secret not in caplog.text


@pytest.fixture
def engine(tmp_path) -> Iterator[Engine]:
    engine = get_engine(f"sqlite:///{tmp_path / 'events.db'}")
    migrate(engine)
    yield engine
    dispose_engines()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def resolver() -> CountingResolver:
    return CountingResolver()


@pytest.fixture
def client(monkeypatch, engine: Engine, clock: Clock, resolver: CountingResolver) -> Iterator[TestClient]:
    set_connection(monkeypatch, webhook_secrets=[OLD_SECRET, NEW_SECRET])
    app = create_app(engine_factory=lambda: engine, clock=clock, resolve_connection=resolver)
    with TestClient(app) as test_client:
        yield test_client


def body_of(payload: dict[str, Any] | None = None) -> bytes:
    return json.dumps(payload if payload is not None else MESSAGE, separators=(",", ":")).encode()


def signed(
    body: bytes,
    *,
    secret: str = OLD_SECRET,
    timestamp: float = NOW,
    delivery_id: str | None = "default",
    prefix: str = "X-Chatwoot-",
) -> dict[str, str]:
    headers = {
        "Content-Type": "application/json",
        f"{prefix}Timestamp": str(int(timestamp)),
        f"{prefix}Signature": sign(secret, int(timestamp), body),
    }
    if delivery_id is not None:
        headers[f"{prefix}Delivery"] = str(uuid.uuid4()) if delivery_id == "default" else delivery_id
    return headers


def post(client: TestClient, body: bytes, headers: dict[str, str], conn_id: str = CONN_ID, **kwargs: Any):
    return client.post(f"/webhooks/{conn_id}", content=body, headers=headers, **kwargs)


def row_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(webhook_events)).scalar_one()


# --------------------------------------------------------------------------- accepted


def test_stored_then_duplicate(client: TestClient, engine: Engine) -> None:
    body = body_of()
    headers = signed(body, delivery_id="delivery-1")
    first = post(client, body, headers)
    assert first.status_code == 200
    assert first.json() == {
        "status": "stored",
        "delivery_id": "delivery-1",
        "event_id": first.json()["event_id"],
    }

    with engine.connect() as conn:
        stored = get_event(conn, conn_id=CONN_ID, delivery_id="delivery-1")
    assert stored is not None
    assert stored.id == first.json()["event_id"]
    assert stored.body == body.decode()
    assert stored.conn_id == CONN_ID
    assert (stored.event, stored.account_id, stored.inbox_id, stored.conversation_id) == (
        "message_created",
        1,
        2,
        77,
    )
    assert (
        stored.message_id,
        stored.contact_id,
        stored.message_type,
        stored.private,
        stored.sender_type,
    ) == (
        9001,
        55,
        "incoming",
        False,
        "contact",
    )
    assert stored.received_at.timestamp() == NOW

    again = post(client, body, headers)
    assert again.status_code == 200
    assert again.json() == {"status": "duplicate", "delivery_id": "delivery-1", "event_id": stored.id}
    assert row_count(engine) == 1


def test_another_copy_of_the_same_message_is_a_duplicate_of_the_first(
    client: TestClient, engine: Engine
) -> None:
    """The account webhook and the API inbox's webhook_url each deliver a message, under their own ids."""
    body = body_of()
    first = post(client, body, signed(body, delivery_id="account-webhook-1"))
    assert first.json()["status"] == "stored"
    # Another path may serialise the same message differently: it is still the same message.
    other_body = json.dumps(MESSAGE, indent=1).encode()
    second = post(client, other_body, signed(other_body, secret=NEW_SECRET, delivery_id="inbox-webhook-1"))
    assert second.status_code == 200
    assert second.json() == {
        "status": "duplicate",
        "delivery_id": "inbox-webhook-1",
        "event_id": first.json()["event_id"],
    }
    assert row_count(engine) == 1
    with engine.connect() as conn:
        assert get_event(conn, conn_id=CONN_ID, delivery_id="inbox-webhook-1") is None


def test_trailing_slash_is_served_not_redirected(client: TestClient) -> None:
    body = body_of()
    response = client.post(
        f"/webhooks/{CONN_ID}/", content=body, headers=signed(body), follow_redirects=False
    )
    assert response.status_code == 200
    assert response.json()["status"] == "stored"


def test_missing_delivery_header_dedupes_on_the_body_digest(client: TestClient, engine: Engine) -> None:
    import hashlib

    body = body_of()
    first = post(client, body, signed(body, delivery_id=None))
    assert first.json()["delivery_id"] == "sha256:" + hashlib.sha256(body).hexdigest()
    assert first.json()["status"] == "stored"
    # A blank header counts as absent.
    second = post(client, body, {**signed(body, delivery_id=None), "X-Chatwoot-Delivery": "  "})
    assert second.json()["status"] == "duplicate"
    assert row_count(engine) == 1


def test_delivery_id_length_limit(client: TestClient, engine: Engine) -> None:
    body = body_of()
    assert post(client, body, signed(body, delivery_id="d" * 128)).status_code == 200
    too_long = post(client, body, signed(body, delivery_id="d" * 129))
    assert too_long.status_code == 400
    assert "X-Chatwoot-Delivery" in too_long.json()["detail"]
    assert post(client, body, signed(body, delivery_id="has space")).status_code == 400
    assert row_count(engine) == 1


def test_json_content_type_with_utf8_charset(client: TestClient) -> None:
    body = body_of({**MESSAGE, "content": "héllo ✓"})
    headers = {**signed(body), "Content-Type": "application/json; charset=UTF-8"}
    assert post(client, body, headers).status_code == 200


def test_largest_allowed_body(client: TestClient) -> None:
    base = body_of({"event": "message_created", "pad": ""})
    body = body_of({"event": "message_created", "pad": "x" * (MAX_BODY_BYTES - len(base))})
    assert len(body) == MAX_BODY_BYTES
    assert post(client, body, signed(body)).status_code == 200


@pytest.mark.parametrize(
    "payload",
    [
        {"event": "contact_created", "id": 5, "name": "Ada", "account": {"id": 1}},
        {"event": "conversation_typing_on", "user": {"id": 1, "type": "user"}, "conversation": {"id": 3}},
        {"event": "some_future_event"},
        {"event": "message_created", "id": "not-an-int", "conversation": [], "account": "x"},
    ],
)
def test_other_shapes_are_stored(client: TestClient, engine: Engine, payload: dict[str, Any]) -> None:
    body = body_of(payload)
    response = post(client, body, signed(body))
    assert response.status_code == 200, response.text
    with engine.connect() as conn:
        assert get_event(conn, response.json()["event_id"]).payload == payload


def test_ack_only_after_commit(client: TestClient, engine: Engine) -> None:
    def refuse_commit(conn: Any) -> None:
        raise RuntimeError("disk full")

    event.listen(engine, "commit", refuse_commit)
    try:
        body = body_of()
        response = post(client, body, signed(body))
    finally:
        event.remove(engine, "commit", refuse_commit)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "30"
    assert row_count(engine) == 0


# --------------------------------------------------------------------------- 401


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda h, b: {**h, "X-Chatwoot-Signature": "sha256=" + "0" * 64}, "no configured secret matches"),
        (
            lambda h, b: {**h, "X-Chatwoot-Signature": sign("wrong-secret", int(NOW), b)},
            "no configured secret",
        ),
        (lambda h, b: {k: v for k, v in h.items() if k != "X-Chatwoot-Signature"}, "missing required header"),
        (lambda h, b: {k: v for k, v in h.items() if k != "X-Chatwoot-Timestamp"}, "missing required header"),
        (lambda h, b: {**h, "X-Chatwoot-Timestamp": "yesterday"}, "not a unix time"),
        (
            lambda h, b: {**h, "X-Chatwoot-Signature": sign(OLD_SECRET, int(NOW) + 1, b)},
            "no configured secret",
        ),
    ],
    ids=[
        "zero-signature",
        "wrong-secret",
        "no-signature",
        "no-timestamp",
        "bad-timestamp",
        "other-timestamp",
    ],
)
def test_unauthorized(client: TestClient, engine: Engine, caplog, mutate: Callable, reason: str) -> None:
    body = body_of()
    response = post(client, body, mutate(signed(body), body))
    assert response.status_code == 401
    assert response.json() == {"detail": "unauthorized"}
    assert reason in caplog.text
    assert CONN_ID in caplog.text
    assert row_count(engine) == 0


@pytest.mark.parametrize("offset", [301, -301, 86_400])
def test_stale_or_future_timestamp(client: TestClient, engine: Engine, caplog, offset: int) -> None:
    body = body_of()
    response = post(client, body, signed(body, timestamp=NOW - offset))
    assert response.status_code == 401
    assert "timestamp is" in caplog.text
    assert row_count(engine) == 0


@pytest.mark.parametrize("offset", [300, -300])
def test_timestamp_at_the_tolerance_is_accepted(client: TestClient, offset: int) -> None:
    body = body_of()
    assert post(client, body, signed(body, timestamp=NOW - offset)).status_code == 200


def test_tampered_body(client: TestClient, engine: Engine) -> None:
    body = body_of()
    headers = signed(body)
    assert post(client, body.replace(b"Hi there", b"Hi thera"), headers).status_code == 401
    assert row_count(engine) == 0


def test_signature_not_logged(client: TestClient, caplog) -> None:
    body = body_of()
    headers = signed(body, secret="wrong-secret")
    assert post(client, body, headers).status_code == 401
    assert headers["X-Chatwoot-Signature"][7:] not in caplog.text
    assert "wrong-secret" not in caplog.text


def test_custom_tolerance(monkeypatch, engine: Engine, clock: Clock) -> None:
    set_connection(monkeypatch, webhook_secrets=OLD_SECRET, webhook_tolerance_seconds=10)
    with TestClient(create_app(engine_factory=lambda: engine, clock=clock)) as client:
        body = body_of()
        assert post(client, body, signed(body, timestamp=NOW - 10)).status_code == 200
        assert post(client, body, signed(body, timestamp=NOW - 11)).status_code == 401


def test_connection_without_secrets_rejects(monkeypatch, engine: Engine, clock: Clock, caplog) -> None:
    set_connection(monkeypatch)
    with TestClient(create_app(engine_factory=lambda: engine, clock=clock)) as client:
        body = body_of()
        assert post(client, body, signed(body)).status_code == 401
        assert post(client, body, {"Content-Type": "application/json"}).status_code == 401
    assert "'webhook_secrets'" in caplog.text
    assert row_count(engine) == 0


# --------------------------------------------------------------------------- rotation and the cache


def test_rotation_takes_effect_without_restart(monkeypatch, engine: Engine, clock: Clock) -> None:
    resolver = CountingResolver()
    set_connection(monkeypatch, webhook_secrets=[OLD_SECRET])
    with TestClient(
        create_app(engine_factory=lambda: engine, clock=clock, resolve_connection=resolver)
    ) as client:
        body = body_of()
        assert post(client, body, signed(body, secret=OLD_SECRET)).status_code == 200
        assert len(resolver.calls) == 1

        # The operator rotates: the connection now lists only the new secret. The cached settings
        # still say "old", so the first new-signed delivery forces one re-read and succeeds.
        set_connection(monkeypatch, webhook_secrets=[NEW_SECRET])
        assert post(client, body, signed(body, secret=NEW_SECRET)).status_code == 200
        assert len(resolver.calls) == 2

        # The old secret is now refused, without another lookup: re-reads are limited to one per TTL.
        assert post(client, body, signed(body, secret=OLD_SECRET)).status_code == 401
        assert post(client, body, signed(body, secret="junk-secret")).status_code == 401
        assert len(resolver.calls) == 2

        # Once the TTL has passed, the expired entry is read again (3) and a failure may force one more
        # re-read (4); after that the fresh entry serves from the cache.
        set_connection(monkeypatch, webhook_secrets=[OLD_SECRET, NEW_SECRET])
        clock.now += CONNECTION_CACHE_TTL_SECONDS + 1
        assert post(client, body, signed(body, secret="junk-secret", timestamp=clock.now)).status_code == 401
        assert len(resolver.calls) == 4
        assert post(client, body, signed(body, secret=OLD_SECRET, timestamp=clock.now)).status_code == 200
        assert post(client, body, signed(body, secret=NEW_SECRET, timestamp=clock.now)).status_code == 200
        assert len(resolver.calls) == 4


def test_lookups_are_cached_for_the_ttl(monkeypatch, engine: Engine, clock: Clock) -> None:
    resolver = CountingResolver()
    with TestClient(
        create_app(engine_factory=lambda: engine, clock=clock, resolve_connection=resolver)
    ) as client:
        body = body_of()
        assert post(client, body, signed(body), conn_id="late_conn").status_code == 404
        set_connection(monkeypatch, "late_conn", webhook_secrets=[OLD_SECRET])
        # "Unknown" is cached too, so a scan of random names cannot hammer the secrets backend.
        assert post(client, body, signed(body), conn_id="late_conn").status_code == 404
        assert resolver.calls == ["late_conn"]
        clock.now += CONNECTION_CACHE_TTL_SECONDS
        response = post(client, body, signed(body, timestamp=clock.now), conn_id="late_conn")
        assert response.status_code == 200
        assert resolver.calls == ["late_conn", "late_conn"]
        for _ in range(3):
            assert (
                post(client, body, signed(body, timestamp=clock.now), conn_id="late_conn").status_code == 200
            )
        assert len(resolver.calls) == 2


def test_connection_cache_can_be_cleared(client: TestClient, resolver: CountingResolver) -> None:
    body = body_of()
    assert post(client, body, signed(body)).status_code == 200
    client.app.state.connection_cache.clear()
    assert post(client, body, signed(body)).status_code == 200
    assert len(resolver.calls) == 2


def test_lookup_failure_is_503_and_not_cached(engine: Engine, clock: Clock, monkeypatch) -> None:
    calls = []

    def broken(conn_id: str) -> Any:
        calls.append(conn_id)
        raise ConnectionError("vault unreachable")

    with TestClient(
        create_app(engine_factory=lambda: engine, clock=clock, resolve_connection=broken)
    ) as client:
        body = body_of()
        for _ in range(2):
            response = post(client, body, signed(body))
            assert response.status_code == 503
            assert response.headers["Retry-After"] == "30"
    assert len(calls) == 2
    assert row_count(engine) == 0


# --------------------------------------------------------------------------- unsigned + token


@pytest.fixture
def unsigned_client(monkeypatch, engine: Engine, clock: Clock) -> Iterator[TestClient]:
    set_connection(monkeypatch, webhook_allow_unsigned=True, webhook_url_token=URL_TOKEN)
    with TestClient(create_app(engine_factory=lambda: engine, clock=clock)) as client:
        yield client


def test_unsigned_mode_needs_the_token(unsigned_client: TestClient, engine: Engine) -> None:
    body = body_of()
    plain = {"Content-Type": "application/json", "X-Chatwoot-Delivery": "u-1"}
    assert post(unsigned_client, body, plain).status_code == 401
    assert post(unsigned_client, body, plain, params={"token": "wrong"}).status_code == 401
    assert post(unsigned_client, body, plain, params={"token": URL_TOKEN[:-1]}).status_code == 401
    assert post(unsigned_client, body, plain, params={"token": ""}).status_code == 401
    assert row_count(engine) == 0
    response = post(unsigned_client, body, plain, params={"token": URL_TOKEN})
    assert response.status_code == 200
    assert response.json()["delivery_id"] == "u-1"
    # With no secrets configured, a signature proves nothing: the token is still required.
    assert post(unsigned_client, body, signed(body)).status_code == 401


def test_signed_and_unsigned_side_by_side(monkeypatch, engine: Engine, clock: Clock) -> None:
    set_connection(
        monkeypatch, webhook_secrets=[OLD_SECRET], webhook_allow_unsigned="true", webhook_url_token=URL_TOKEN
    )
    with TestClient(create_app(engine_factory=lambda: engine, clock=clock)) as client:
        body = body_of()
        assert post(client, body, signed(body)).status_code == 200
        # A signed delivery is verified normally; the token does not rescue a bad signature.
        bad = signed(body, secret="wrong-secret")
        assert post(client, body, bad, params={"token": URL_TOKEN}).status_code == 401
        plain = {"Content-Type": "application/json"}
        assert post(client, body, plain).status_code == 401
        assert post(client, body, plain, params={"token": URL_TOKEN}).status_code == 200


def test_allow_unsigned_without_a_token_is_a_configuration_error(
    monkeypatch, engine: Engine, clock: Clock, caplog
) -> None:
    set_connection(monkeypatch, webhook_allow_unsigned=True)
    with TestClient(create_app(engine_factory=lambda: engine, clock=clock)) as client:
        body = body_of()
        response = post(client, body, {"Content-Type": "application/json"}, params={"token": "anything"})
    assert response.status_code == 503
    assert "webhook_url_token" in caplog.text


# --------------------------------------------------------------------------- custom prefix


def test_custom_header_prefix(monkeypatch, engine: Engine, clock: Clock) -> None:
    set_connection(monkeypatch, webhook_secrets=[OLD_SECRET], webhook_header_prefix="X-Acme")
    with TestClient(create_app(engine_factory=lambda: engine, clock=clock)) as client:
        body = body_of()
        response = post(client, body, signed(body, prefix="X-Acme-", delivery_id="acme-1"))
        assert response.status_code == 200
        assert response.json()["delivery_id"] == "acme-1"
        assert post(client, body, signed(body)).status_code == 401


# --------------------------------------------------------------------------- 404 / 503 configuration


@pytest.mark.parametrize("conn_id", ["unknown_conn", "bad id", "a" * 251, "-leading", "semi;colon"])
def test_unknown_or_malformed_connection(client: TestClient, engine: Engine, resolver, conn_id: str) -> None:
    body = body_of()
    response = post(client, body, signed(body), conn_id=conn_id)
    assert response.status_code == 404
    assert response.json() == {"detail": "unknown webhook endpoint"}
    if conn_id != "unknown_conn":
        assert resolver.calls == []  # never reaches the secrets backend
    assert row_count(engine) == 0


def test_connection_of_another_type_is_answered_like_an_unknown_one(
    monkeypatch, engine: Engine, clock: Clock, caplog
) -> None:
    set_connection(monkeypatch, conn_type="http", webhook_secrets=[OLD_SECRET])
    with TestClient(create_app(engine_factory=lambda: engine, clock=clock)) as client:
        body = body_of()
        response = post(client, body, signed(body))
        unknown = post(client, body, signed(body), conn_id="no_such_conn")
    # A stranger must not learn that the id names some other connection.
    assert (response.status_code, response.json()) == (404, {"detail": "unknown webhook endpoint"})
    assert (response.status_code, response.json()) == (unknown.status_code, unknown.json())
    # The operator learns it from the log.
    assert "conn_type" in caplog.text
    assert "'http'" in caplog.text
    assert row_count(engine) == 0


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"webhook_tolerance_seconds": "five minutes"}, "webhook_tolerance_seconds"),
        ({"webhook_allow_unsigned": "maybe"}, "webhook_allow_unsigned"),
        ({"webhook_secrets": [1, 2]}, "webhook_secrets"),
        ({"account_id": "acme"}, "account_id"),
        ({"account_id": None}, "account_id"),
    ],
    ids=["tolerance", "allow-unsigned", "secrets", "bad-account", "no-account"],
)
def test_invalid_webhook_settings(monkeypatch, engine: Engine, clock: Clock, caplog, extra, field) -> None:
    set_connection(monkeypatch, **{"webhook_secrets": [OLD_SECRET], **extra})
    with TestClient(create_app(engine_factory=lambda: engine, clock=clock)) as client:
        body = body_of()
        response = post(client, body, signed(body))
    assert response.status_code == 503
    assert response.json() == {"detail": "webhook endpoint is misconfigured"}
    assert field in caplog.text


# --------------------------------------------------------------------------- 413 / 415 / 400


def test_declared_length_over_the_limit(client: TestClient, engine: Engine) -> None:
    body = b'{"event":"message_created","pad":"' + b"x" * MAX_BODY_BYTES + b'"}'
    response = post(client, body, signed(body))
    assert response.status_code == 413
    assert row_count(engine) == 0


def test_streamed_body_over_the_limit(client: TestClient, engine: Engine) -> None:
    chunk = b"x" * 65536

    def chunks() -> Iterator[bytes]:
        yield b'{"event":"message_created","pad":"'
        for _ in range(MAX_BODY_BYTES // len(chunk) + 1):
            yield chunk
        yield b'"}'

    headers = signed(b"irrelevant")
    response = client.post(f"/webhooks/{CONN_ID}", content=chunks(), headers=headers)
    assert "content-length" not in {k.lower() for k in response.request.headers}
    assert response.status_code == 413
    assert row_count(engine) == 0


def test_bad_content_length(client: TestClient) -> None:
    body = body_of()
    response = post(client, body, {**signed(body), "Content-Length": "12abc"})
    assert response.status_code in (400, 413)


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "application/json; charset=latin-1", "json"],
)
def test_unsupported_content_type(client: TestClient, engine: Engine, content_type: str | None) -> None:
    body = body_of()
    headers = signed(body)
    del headers["Content-Type"]
    if content_type is not None:
        headers["Content-Type"] = content_type
    response = post(client, body, headers)
    assert response.status_code == 415
    assert row_count(engine) == 0


def _deep(levels: int) -> bytes:
    return b'{"event":"message_created","x":' + b"[" * (levels - 1) + b"]" * (levels - 1) + b"}"


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (b'["message_created"]', "JSON object"),
        (b'"message_created"', "JSON object"),
        (b'{"event":"message_created","x":NaN}', "NaN"),
        (b'{"event":"message_created","x":Infinity}', "Infinity"),
        (b'{"event":"message_created","x":-Infinity}', "Infinity"),
        (b'{"event":"message_created","x":1e999}', "too large"),
        (b'{"id":1}', "'event' is missing"),
        (b'{"event":42}', "'event' must be a string"),
        (b'{"event":null}', "'event' must be a string"),
        (b'{"event":""}', "'event' must be"),
        (b'{"event":"message_created","x":"\xff"}', "UTF-8"),
        (b'\xef\xbb\xbf{"event":"message_created"}', "not valid JSON"),
        (_deep(65), "nested more than 64"),
        (b"[" * 200_000 + b"]" * 200_000, "nested more than 64"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_malformed_payloads(client: TestClient, engine: Engine, body: bytes, detail: str) -> None:
    response = post(client, body, signed(body))
    assert response.status_code == 400, response.text
    assert detail in response.json()["detail"]
    assert row_count(engine) == 0


def test_nesting_at_the_limit_is_accepted(client: TestClient) -> None:
    body = _deep(64)
    assert post(client, body, signed(body)).status_code == 200


@pytest.mark.parametrize(
    ("escape", "what"), [("\\u0000", "a NUL character (\\u0000)"), ("\\ud800", "a lone surrogate (\\ud800)")]
)
def test_escaped_nul_or_lone_surrogate_is_refused_naming_the_field(
    client: TestClient, engine: Engine, escape: str, what: str
) -> None:
    body = b'{"event":"message_created","id":5,"content":"a' + escape.encode() + b'b"}'
    response = post(client, body, signed(body))
    assert response.status_code == 400
    assert response.json() == {"detail": f"the body cannot be stored: field 'content' holds {what}"}
    assert row_count(engine) == 0


def test_a_payload_for_another_account_is_refused(client: TestClient, engine: Engine, caplog) -> None:
    body = body_of({**MESSAGE, "account": {"id": 2, "name": "Other"}})
    response = post(client, body, signed(body))
    assert response.status_code == 422
    assert response.json() == {"detail": "the payload's account 2 is not this endpoint's account"}
    assert "account_id is 1" in caplog.text
    assert row_count(engine) == 0
    # A payload that names no account at all is not refused for it.
    body = body_of({"event": "some_future_event"})
    assert post(client, body, signed(body)).status_code == 200


# --------------------------------------------------------------------------- 503 store errors


def _client_for(monkeypatch, engine_factory: Callable[[], Engine], **kwargs: Any) -> TestClient:
    set_connection(monkeypatch, webhook_secrets=[OLD_SECRET])
    return TestClient(create_app(engine_factory=engine_factory, clock=Clock(), **kwargs))


def test_missing_table_is_503_and_logged_once(monkeypatch, tmp_path, caplog) -> None:
    bare = get_engine(f"sqlite:///{tmp_path / 'never-migrated.db'}")
    with _client_for(monkeypatch, lambda: bare) as client:
        for _ in range(5):
            body = body_of()
            response = post(client, body, signed(body))
            assert response.status_code == 503
            assert response.headers["Retry-After"] == "30"
            assert response.json() == {"detail": "event store unavailable"}
    store_errors = [
        r for r in caplog.records if r.name.startswith("neoleads_provider") and r.levelno >= logging.WARNING
    ]
    assert len(store_errors) == 1
    assert "no such table" in store_errors[0].getMessage()
    # The payload (SQLAlchemy appends statement parameters to its messages) is not logged.
    assert "Hi there" not in caplog.text


def test_unreadable_database_file_is_503(monkeypatch, tmp_path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a SQLite database at all" * 100)
    broken = get_engine(f"sqlite:///{garbage}")
    with _client_for(monkeypatch, lambda: broken) as client:
        body = body_of()
        assert post(client, body, signed(body)).status_code == 503
    unopenable = get_engine(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'events.db'}")
    with _client_for(monkeypatch, lambda: unopenable) as client:
        body = body_of()
        assert post(client, body, signed(body)).status_code == 503


def test_engine_factory_failure_is_503(monkeypatch) -> None:
    def no_engine() -> Engine:
        raise ModuleNotFoundError("No module named 'psycopg2'")

    with _client_for(monkeypatch, no_engine) as client:
        body = body_of()
        assert post(client, body, signed(body)).status_code == 503


def test_auto_migrate_runs_once_on_the_first_delivery(monkeypatch, tmp_path) -> None:
    from neoleads_provider.store import migrate as migrate_module

    runs = []
    real_migrate = migrate_module.migrate
    monkeypatch.setattr(migrate_module, "migrate", lambda engine: runs.append(1) or real_migrate(engine))
    fresh = get_engine(f"sqlite:///{tmp_path / 'fresh.db'}")
    with _client_for(monkeypatch, lambda: fresh, auto_migrate=True) as client:
        assert runs == []  # building the app touches nothing
        for number in range(3):
            body = body_of({**MESSAGE, "id": 9100 + number})
            assert post(client, body, signed(body)).status_code == 200
    assert runs == [1]
    assert row_count(fresh) == 3


def test_failed_auto_migration_is_503_and_not_retried_per_request(monkeypatch, tmp_path) -> None:
    from neoleads_provider.store import migrate as migrate_module

    runs = []

    def failing(engine: Engine) -> int:
        runs.append(1)
        raise RuntimeError("read-only file system")

    monkeypatch.setattr(migrate_module, "migrate", failing)
    fresh = get_engine(f"sqlite:///{tmp_path / 'fresh.db'}")
    with _client_for(monkeypatch, lambda: fresh, auto_migrate=True) as client:
        for _ in range(3):
            body = body_of()
            assert post(client, body, signed(body)).status_code == 503
    assert runs == [1]


# --------------------------------------------------------------------------- other routes


def test_health_touches_neither_connections_nor_store() -> None:
    def no_engine() -> Engine:
        raise AssertionError("health must not open the store")

    def no_lookup(conn_id: str) -> Any:
        raise AssertionError("health must not look connections up")

    with TestClient(create_app(engine_factory=no_engine, resolve_connection=no_lookup)) as client:
        response = client.get("/_health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_openapi_on_docs_off(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    operation = schema["paths"]["/webhooks/{conn_id}"]["post"]
    assert operation["requestBody"]["content"]["application/json"]["schema"]["required"] == ["event"]
    assert {"200", "400", "401", "404", "413", "415", "503"} <= set(operation["responses"])
    assert operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "WebhookAck"
    )
    assert "/_health" in schema["paths"]
    assert client.get("/docs").status_code == 404
    assert client.get("/redoc").status_code == 404


def test_other_methods_are_refused(client: TestClient) -> None:
    assert client.get(f"/webhooks/{CONN_ID}").status_code == 405


# --------------------------------------------------------------------------- a real server


@pytest.fixture
def access_lines() -> io.StringIO:
    """What the live server's access log wrote."""
    return io.StringIO()


@pytest.fixture
def live_url(monkeypatch, engine: Engine, access_lines: io.StringIO) -> Iterator[str]:
    set_connection(monkeypatch, webhook_secrets=[OLD_SECRET, NEW_SECRET])
    set_connection(monkeypatch, "token_conn", webhook_allow_unsigned=True, webhook_url_token=URL_TOKEN)
    with serving(
        create_server_app(engine_factory=lambda: engine, access_log=AccessLog(access_lines, interval=0.01))
    ) as url:
        yield url


def test_real_server_row_is_readable_when_the_ack_arrives(live_url: str, engine: Engine) -> None:
    body = body_of()
    with httpx.Client(base_url=live_url, timeout=10) as http:
        assert http.get("/neoleads/_health").json() == {"status": "ok"}
        now = time.time()
        response = http.post(
            f"/neoleads/webhooks/{CONN_ID}",
            content=body,
            headers=signed(body, timestamp=now, secret=NEW_SECRET),
        )
        assert response.status_code == 200
        # Read through a separate connection, straight away: the commit happened before the answer.
        with engine.connect() as conn:
            stored = get_event(conn, response.json()["event_id"])
        assert stored is not None
        assert stored.body == body.decode()
        assert (
            http.post(
                f"/neoleads/webhooks/{CONN_ID}",
                content=body,
                headers={**signed(body, timestamp=now), "X-Chatwoot-Delivery": stored.delivery_id},
            ).json()["status"]
            == "duplicate"
        )


def test_real_server_refusals(live_url: str, engine: Engine) -> None:
    body = body_of()
    now = time.time()
    with httpx.Client(base_url=live_url, timeout=10) as http:
        url = f"/neoleads/webhooks/{CONN_ID}"
        assert (
            http.post(
                url, content=body, headers=signed(body, timestamp=now, secret="nope-secret")
            ).status_code
            == 401
        )
        assert (
            http.post(
                "/neoleads/webhooks/nobody", content=body, headers=signed(body, timestamp=now)
            ).status_code
            == 404
        )
        assert (
            http.post(
                url, content=body, headers={**signed(body, timestamp=now), "Content-Type": "text/plain"}
            ).status_code
            == 415
        )
        assert http.post(url, content=b"[1]", headers=signed(b"[1]", timestamp=now)).status_code == 400
        big = b"x" * (MAX_BODY_BYTES + 1)
        assert http.post(url, content=big, headers=signed(big, timestamp=now)).status_code == 413
    assert row_count(engine) == 0


def test_real_server_concurrent_deliveries(live_url: str, engine: Engine) -> None:
    now = time.time()

    def deliver(index: int, delivery_id: str | None = None) -> httpx.Response:
        body = body_of({**MESSAGE, "id": index})
        headers = signed(body, timestamp=now, delivery_id=delivery_id or f"parallel-{index}")
        return httpx.post(
            f"{live_url}/neoleads/webhooks/{CONN_ID}", content=body, headers=headers, timeout=20
        )

    with ThreadPoolExecutor(max_workers=10) as pool:
        responses = list(pool.map(deliver, range(20)))
    assert [r.status_code for r in responses] == [200] * 20
    assert {r.json()["status"] for r in responses} == {"stored"}
    assert row_count(engine) == 20

    # The same delivery racing itself: exactly one row, everyone told the same event id.
    with ThreadPoolExecutor(max_workers=8) as pool:
        racing = list(pool.map(lambda _: deliver(999, "same-delivery"), range(8)))
    assert [r.status_code for r in racing] == [200] * 8
    assert sorted(r.json()["status"] for r in racing) == ["duplicate"] * 7 + ["stored"]
    assert len({r.json()["event_id"] for r in racing}) == 1
    assert row_count(engine) == 21


def test_real_server_token_is_not_in_the_access_log(live_url: str, access_lines: io.StringIO) -> None:
    body = body_of()
    headers = {"Content-Type": "application/json"}
    response = httpx.post(
        f"{live_url}/neoleads/webhooks/token_conn?token={URL_TOKEN}", content=body, headers=headers
    )
    assert response.status_code == 200
    # The access line is written once the response has been sent, so it may trail the answer a little.
    deadline = time.monotonic() + 5
    while "/neoleads/webhooks/token_conn" not in access_lines.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)
    access = access_lines.getvalue().splitlines()
    assert any("/neoleads/webhooks/token_conn" in line and " 200 " in line for line in access)
    assert URL_TOKEN not in access_lines.getvalue()
    # The autouse fixture checks that URL_TOKEN appears nowhere in the captured log.


def test_real_server_answers_only_under_its_prefix(live_url: str) -> None:
    assert httpx.get(f"{live_url}/neoleads/_health").json() == {"status": "ok"}
    for path in ("/", "/webhooks/neoleads_default", "/neoleadsx/webhooks/neoleads_default"):
        response = httpx.post(
            f"{live_url}{path}", content=body_of(), headers={"Content-Type": "application/json"}
        )
        assert (response.status_code, response.json()) == (404, {"detail": "Not Found"}), path
    response = httpx.get(f"{live_url}/neoleads/webhooks/{CONN_ID}")
    assert (response.status_code, response.headers["allow"]) == (405, "POST")


def test_real_server_body_in_many_pieces_is_read_whole(live_url: str, engine: Engine) -> None:
    body = body_of({**MESSAGE, "id": 4242})
    headers = signed(body, timestamp=time.time(), delivery_id="pieces-1")

    def pieces() -> Iterator[bytes]:
        for start in range(0, len(body), 7):
            yield body[start : start + 7]

    response = httpx.post(f"{live_url}/neoleads/webhooks/{CONN_ID}", content=pieces(), headers=headers)
    assert response.status_code == 200, response.text
    with engine.connect() as conn:
        stored = get_event(conn, conn_id=CONN_ID, delivery_id="pieces-1")
    assert stored is not None
    assert stored.body.encode() == body


def test_no_access_log_writes_no_request_lines_but_still_logs_refusals(
    monkeypatch, engine: Engine, caplog, capsys
) -> None:
    set_connection(monkeypatch, webhook_secrets=[OLD_SECRET])
    caplog.set_level(logging.INFO)
    app = create_server_app(engine_factory=lambda: engine, access_log=False)
    assert not isinstance(app, AccessLogMiddleware)
    with serving(app) as url:
        body = body_of()
        ok = httpx.post(
            f"{url}/neoleads/webhooks/{CONN_ID}", content=body, headers=signed(body, timestamp=time.time())
        )
        wrong = signed(body, secret="wrong-secret-value", timestamp=time.time())
        refused = httpx.post(f"{url}/neoleads/webhooks/{CONN_ID}", content=body, headers=wrong)
        time.sleep(0.2)
    assert (ok.status_code, refused.status_code) == (200, 401)
    assert "neoleads_provider.webhooks.access" not in capsys.readouterr().err
    assert any("refused with 401" in r.getMessage() for r in caplog.records)


@pytest.fixture
def pg_engine(pg_schema_url: str) -> Engine:
    return get_engine(pg_schema_url)


@pytest.mark.postgres
def test_real_server_on_postgresql(monkeypatch, pg_engine: Engine) -> None:
    set_connection(monkeypatch, webhook_secrets=[OLD_SECRET])
    # Mounted as the plugin mounts it, with the plugin's lazy migration: the first delivery creates the schema.
    app = FastAPI()
    app.mount("/neoleads", create_app(engine_factory=lambda: pg_engine, auto_migrate=True))
    now = time.time()
    with serving(app) as url:

        def deliver(index: int, delivery_id: str) -> httpx.Response:
            body = body_of({**MESSAGE, "id": index})
            headers = signed(body, timestamp=now, delivery_id=delivery_id)
            return httpx.post(f"{url}/neoleads/webhooks/{CONN_ID}", content=body, headers=headers, timeout=20)

        first = deliver(0, "pg-first")
        assert first.status_code == 200, first.text
        with ThreadPoolExecutor(max_workers=8) as pool:
            distinct = list(pool.map(lambda i: deliver(i, f"pg-{i}"), range(1, 9)))
            racing = list(pool.map(lambda _: deliver(99, "pg-same"), range(8)))
    assert [r.json()["status"] for r in distinct] == ["stored"] * 8
    assert sorted(r.json()["status"] for r in racing) == ["duplicate"] * 7 + ["stored"]
    assert len({r.json()["event_id"] for r in racing}) == 1
    assert row_count(pg_engine) == 10
    with pg_engine.connect() as conn:
        stored = get_event(conn, conn_id=CONN_ID, delivery_id="pg-first")
    assert stored is not None
    assert stored.received_at.tzinfo is not None
    assert stored.conversation_id == 77


def test_postgresql_store_down_is_503(monkeypatch) -> None:
    unreachable = get_engine("postgresql+psycopg://user:pw-unused-9@127.0.0.1:1/events?connect_timeout=2")
    try:
        with _client_for(monkeypatch, lambda: unreachable) as client:
            body = body_of()
            response = post(client, body, signed(body))
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "30"
    finally:
        dispose_engines()


# --------------------------------------------------------------------------- the receiver and the waiters
#
# Deliveries posted over real TCP to a served receiver, then looked for the way sensors and triggers look:
# look_in_store, NeoleadsWebhookSensor.poke and NeoleadsWebhookTrigger.run. Connections A and B share an
# account and have their own secrets; A lists two (its account webhook's and its API inbox's).

CONN_A = "neoleads_a"
CONN_B = "neoleads_b"
PG_CONN = "warehouse_pg"
REPLY = 101  # after the watermark (100, "the message the DAG sent"), in conversation 7 of account 1


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request, tmp_path) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'waiters.db'}"
    else:
        url = request.getfixturevalue("pg_schema_url")
    migrate(get_engine(url))
    yield url
    dispose_engines()


@pytest.fixture
def receiver(monkeypatch, store_url: str) -> Iterator[str]:
    """The served receiver's base URL, for connections A and B and a PostgreSQL connection."""
    set_connection(monkeypatch, CONN_A, webhook_secrets=[SECRET_A, SECRET_A_INBOX])
    set_connection(monkeypatch, CONN_B, webhook_secrets=[SECRET_B])
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{PG_CONN.upper()}",
        json.dumps({"conn_type": "postgres", "host": "db.example", "login": "u", "password": "p-unused"}),
    )
    with serving(create_app(engine_factory=lambda: get_engine(store_url))) as url:
        yield url


def deliver(base_url: str, conn_id: str, body: bytes, secret: str, delivery_id: str) -> tuple[int, dict]:
    return post_webhook(f"{base_url}/webhooks/{conn_id}", body, signed_now(secret, body, delivery_id))


def reply_body(content: str = "Yes, Tuesday", **overrides: Any) -> bytes:
    return json.dumps(message_payload(REPLY, content=content, **overrides)).encode()


def reply_filter(conn_id: str) -> EventFilter:
    return EventFilter(conn_id=conn_id, account_id=1, conversation_id=7, after_message_id=100)


def waiting_sensor(conn_id: str, store_url: str) -> NeoleadsWebhookSensor:
    return NeoleadsWebhookSensor(
        task_id=f"wait_{uuid.uuid4().hex[:6]}",
        conversation_id=7,
        after_message_id=100,
        neoleads_conn_id=conn_id,
        events_db_url=store_url,
        poke_interval=0.05,
        timeout=10,
    )


def resumed(conn_id: str, store_url: str, fired: dict[str, Any]) -> dict[str, Any]:
    """What the deferred sensor returns when it resumes on the trigger's event (it reads the match back)."""
    return waiting_sensor(conn_id, store_url).execute_complete({}, event=fired)


def trigger_outcome(conn_id: str, store_url: str, *, wait: float = 0.5) -> dict[str, Any]:
    """Run the trigger of ``conn_id`` until its first event: a match, or a timeout after ``wait`` seconds."""
    trig = NeoleadsWebhookTrigger(
        event_filter=reply_filter(conn_id).to_dict(),
        neoleads_conn_id=conn_id,
        events_db_url=store_url,
        poll_interval=0.05,
        end_time=time.time() + wait,
    )

    async def first() -> dict[str, Any]:
        events = trig.run()
        try:
            return (await asyncio.wait_for(anext(events), timeout=10)).payload
        finally:
            await events.aclose()
            await trig.cleanup()

    return asyncio.run(first())


def matches_of(store_url: str, flt: EventFilter) -> list[int]:
    with get_engine(store_url).connect() as conn:
        return [found.id for found in find_matches(conn, flt)]


def stored_rows(store_url: str) -> int:
    return row_count(get_engine(store_url))


def test_a_delivery_to_connection_b_never_satisfies_connection_a(receiver: str, store_url: str) -> None:
    body = reply_body("for B's sensors only")
    status, answer = deliver(receiver, CONN_B, body, SECRET_B, "b-1")
    assert (status, answer["status"]) == (200, "stored")
    # B's secret does not open A's endpoint either.
    assert deliver(receiver, CONN_A, body, SECRET_B, "b-1-at-a") == (401, {"detail": "unauthorized"})

    assert look_in_store(store_url, reply_filter(CONN_A)) is None
    assert waiting_sensor(CONN_A, store_url).poke({}).is_done is False
    assert trigger_outcome(CONN_A, store_url)["status"] == "timeout"

    found = look_in_store(store_url, reply_filter(CONN_B))
    assert found is not None
    assert (found["event_id"], found["conn_id"], found["delivery_id"]) == (answer["event_id"], CONN_B, "b-1")
    poked = waiting_sensor(CONN_B, store_url).poke({})
    assert poked.is_done is True
    assert (poked.xcom_value["event_id"], poked.xcom_value["conn_id"]) == (answer["event_id"], CONN_B)
    fired = trigger_outcome(CONN_B, store_url)
    assert fired["status"] == "success"
    assert fired["event_id"] == answer["event_id"]
    returned = resumed(CONN_B, store_url, fired)
    assert (returned["event_id"], returned["conn_id"]) == (answer["event_id"], CONN_B)


def test_a_delivery_naming_another_account_is_refused_and_not_stored(receiver: str, store_url: str) -> None:
    body = reply_body("misrouted", account_id=2)
    status, answer = deliver(receiver, CONN_A, body, SECRET_A, "other-account-1")
    assert (status, answer) == (422, {"detail": "the payload's account 2 is not this endpoint's account"})
    assert stored_rows(store_url) == 0
    other_account = EventFilter(conn_id=CONN_A, account_id=2, conversation_id=7, after_message_id=100)
    assert look_in_store(store_url, other_account) is None
    assert look_in_store(store_url, EventFilter(conn_id=CONN_A, conversation_id=7)) is None


def test_both_delivery_paths_and_a_replay_of_one_message_are_one_event(receiver: str, store_url: str) -> None:
    payload = message_payload(REPLY, content="Tuesday works")
    account_body = json.dumps(payload).encode()
    account_headers = signed_now(SECRET_A, account_body, "account-webhook-1")
    status, first = post_webhook(f"{receiver}/webhooks/{CONN_A}", account_body, account_headers)
    assert (status, first["status"]) == (200, "stored")

    # The API inbox's webhook_url delivers the same message under its own id and secret, and may
    # render it differently.
    inbox_body = json.dumps(payload, indent=2, sort_keys=True).encode()
    status, second = deliver(receiver, CONN_A, inbox_body, SECRET_A_INBOX, "inbox-webhook-1")
    assert (status, second) == (
        200,
        {"status": "duplicate", "delivery_id": "inbox-webhook-1", "event_id": first["event_id"]},
    )

    # Someone replays the captured body and signature under a delivery id of their own.
    replay_headers = {**account_headers, "X-Chatwoot-Delivery": "replayed-1"}
    status, replayed = post_webhook(f"{receiver}/webhooks/{CONN_A}", account_body, replay_headers)
    assert (status, replayed) == (
        200,
        {"status": "duplicate", "delivery_id": "replayed-1", "event_id": first["event_id"]},
    )
    # ...and a plain retry of the first delivery.
    status, retried = post_webhook(f"{receiver}/webhooks/{CONN_A}", account_body, account_headers)
    assert (status, retried["status"], retried["event_id"]) == (200, "duplicate", first["event_id"])

    assert stored_rows(store_url) == 1
    assert matches_of(store_url, reply_filter(CONN_A)) == [first["event_id"]]
    poked = waiting_sensor(CONN_A, store_url).poke({})
    assert (poked.is_done, poked.xcom_value["event_id"]) == (True, first["event_id"])
    assert poked.xcom_value["delivery_id"] == "account-webhook-1"
    fired = trigger_outcome(CONN_A, store_url)
    assert (fired["status"], fired["event_id"]) == ("success", first["event_id"])


@pytest.mark.parametrize(
    ("escape", "what"),
    [("\\u0000", "a NUL character (\\u0000)"), ("\\ud800", "a lone surrogate (\\ud800)")],
    ids=["nul", "lone-surrogate"],
)
def test_text_a_database_cannot_store_is_refused_naming_the_field(
    receiver: str, store_url: str, escape: str, what: str
) -> None:
    body = reply_body("EDGE").replace(b"EDGE", b"before" + escape.encode() + b"after")
    assert escape.encode() in body
    status, answer = deliver(receiver, CONN_A, body, SECRET_A, "unstorable-1")
    assert (status, answer) == (400, {"detail": f"the body cannot be stored: field 'content' holds {what}"})
    assert stored_rows(store_url) == 0
    assert waiting_sensor(CONN_A, store_url).poke({}).is_done is False


def test_a_stored_row_holding_such_text_is_handed_over_neutralised(store_url: str, monkeypatch) -> None:
    """An older receiver stored these bodies: looking at one must neither raise nor pass the text on."""
    set_connection(monkeypatch, CONN_A, webhook_secrets=[SECRET_A])
    content = "nul \x00, lone \ud800 and \udfff"
    [event_id] = store_payloads(store_url, message_payload(REPLY, content=content), conn_id=CONN_A)
    expected = "nul \ufffd, lone \ufffd and \ufffd"

    found = look_in_store(store_url, reply_filter(CONN_A))
    poked = waiting_sensor(CONN_A, store_url).poke({})
    assert poked.is_done is True
    fired = trigger_outcome(CONN_A, store_url)
    assert fired["status"] == "success"
    for result in (found, poked.xcom_value, resumed(CONN_A, store_url, fired)):
        assert result["event_id"] == event_id
        assert result["payload"]["content"] == expected
        text = json.dumps(result, ensure_ascii=False)
        text.encode("utf-8")  # a lone surrogate would raise here
        assert "\x00" not in text
        assert json.loads(text) == result


def test_an_unknown_and_a_postgresql_connection_are_answered_alike(receiver: str, store_url: str) -> None:
    body = reply_body()
    answers = [
        deliver(receiver, conn_id, body, secret, f"probe-{conn_id}")
        for conn_id, secret in [("nobody_here", SECRET_A), (PG_CONN, SECRET_A), (PG_CONN, "p-unused")]
    ]
    assert answers == [(404, {"detail": "unknown webhook endpoint"})] * 3
    # Raw bytes and headers too: nothing tells the two apart.
    responses = [
        httpx.post(f"{receiver}/webhooks/{conn_id}", content=body, headers=signed_now(SECRET_A, body, "x"))
        for conn_id in ("nobody_here", PG_CONN)
    ]
    assert responses[0].content == responses[1].content
    assert responses[0].status_code == responses[1].status_code
    assert {k: v for k, v in responses[0].headers.items() if k != "date"} == {
        k: v for k, v in responses[1].headers.items() if k != "date"
    }
    assert stored_rows(store_url) == 0
