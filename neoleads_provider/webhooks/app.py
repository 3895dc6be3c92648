"""The webhook receiver: verify a Neoleads delivery, store it durably, then acknowledge it.

``POST /webhooks/{conn_id}`` (mounted at ``/neoleads`` on the Airflow API server and by
``neoleads webhooks serve``). Checks run in this order, cheapest and least revealing first:

1. ``conn_id`` syntax, then the Airflow connection: unknown, or not a ``neoleads`` connection → 404 (the
   same answer, so a stranger cannot tell them apart); no ``account_id`` or invalid webhook settings → 503
   (the log names the field).
2. Body size, from ``Content-Length`` and while streaming → 413. ``Content-Type: application/json`` → 415.
3. The signature over the raw bytes (``X-Chatwoot-Signature`` / ``-Timestamp``, or the connection's
   prefix), or ``?token=`` for unsigned senders when the connection allows them → 401 with a generic body.
   A failed check re-reads the connection once per TTL, so a rotated secret works without a restart.
4. The JSON: an object with a string ``event``, no NaN/Infinity, at most 64 levels deep, no text a database
   cannot store (NUL, lone surrogates) → 400. A payload about another account than the connection's → 422.
5. One committed transaction → 200 ``stored``, or ``duplicate`` when this connection already stored the same
   delivery id or another copy of the same logical event (``events.event_identity``: the other delivery
   path, or a replay under a new delivery id). Any store error → 503 with ``Retry-After``; the sender is
   never told "OK" for something that was not committed.

Neoleads does not retry failed webhooks, so every refusal here is final for that delivery; the log line
is the operator's only trace of it. Secrets, signatures and tokens never reach the log.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import anyio.to_thread
from fastapi import FastAPI
from pydantic import BaseModel

from neoleads_provider.connection import CONN_TYPE, NeoleadsConnectionSettings
from neoleads_provider.events.fields import PayloadError, event_identity
from neoleads_provider.events.names import EVENT_NAME_MAX_LENGTH, EVENT_NAME_PATTERN
from neoleads_provider.store.errors import EventStoreError
from neoleads_provider.store.writer import EventWriter, RowRefusedError
from neoleads_provider.webhooks.asgi import (
    BodyTooLargeError,
    ClientGoneError,
    header_dict,
    query_param,
    read_body,
    route_path,
    send_json,
)
from neoleads_provider.webhooks.batching import BatchRunner
from neoleads_provider.webhooks.body import MAX_JSON_DEPTH, parse_event_body
from neoleads_provider.webhooks.verify import (
    NoMatchingSignatureError,
    WebhookVerificationError,
    header_names,
    verify,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from sqlalchemy import Engine  # noqa: TID251 - a type only

    from neoleads_provider.store.repository import NewEvent
    from neoleads_provider.webhooks.asgi import Receive, Scope, Send

__all__ = [
    "CONNECTION_CACHE_TTL_SECONDS",
    "MAX_BODY_BYTES",
    "MAX_JSON_DEPTH",
    "ErrorBody",
    "WebhookAck",
    "WebhookReceiverApp",
    "create_app",
    "default_resolve_connection",
]

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
MAX_DELIVERY_ID_LENGTH = 128
CONNECTION_CACHE_TTL_SECONDS = 30.0
STORE_RETRY_AFTER_SECONDS = 30
# Refusals and store errors are logged at most this often per kind, with a count of those suppressed.
LOG_INTERVAL_SECONDS = 60.0
_MAX_CACHED_CONNECTIONS = 1024
# Airflow allows more characters in connection ids; these are the ones that survive in a URL path unquoted.
_CONN_ID_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,249}")
_DELIVERY_ID_RE = re.compile(r"[\x21-\x7e]+")
_WEBHOOK_PATH_PREFIX = "/webhooks/"


class WebhookAck(BaseModel):
    """The answer to an accepted delivery, sent only after it is committed."""

    status: Literal["stored", "duplicate"]
    delivery_id: str
    event_id: int


class ErrorBody(BaseModel):
    """The answer to a refused delivery."""

    detail: str


# --------------------------------------------------------------------------- connections


def default_resolve_connection(conn_id: str) -> Any | None:
    """Look ``conn_id`` up the way Airflow does in this process; None when no backend defines it.

    ``Connection.get_connection_from_secrets`` walks the configured secrets backend, then
    ``AIRFLOW_CONN_*`` environment variables, then the metadata database. That works both inside the
    API server and in the standalone receiver (which the Task SDK's ``Connection.get`` does not: outside a
    server context it skips the metadata database).
    """
    from airflow.exceptions import AirflowNotFoundException
    from airflow.models.connection import Connection

    try:
        return Connection.get_connection_from_secrets(conn_id)
    except AirflowNotFoundException:
        return None


@dataclass
class _Endpoint:
    """What a connection id resolved to: usable settings, nothing, or a configuration problem."""

    status: Literal["ok", "unknown", "misconfigured"]
    settings: NeoleadsConnectionSettings | None = None
    fetched_at: float = 0.0


class _ConnectionLookupError(Exception):
    """The secrets backend or metadata database could not be asked (not the same as "not defined")."""


def _endpoint_from_connection(conn_id: str, conn: Any, now: float) -> _Endpoint:
    if conn is None:
        return _Endpoint("unknown", fetched_at=now)
    conn_type = getattr(conn, "conn_type", None)
    if conn_type != CONN_TYPE:
        # Answered exactly like an unknown id: the endpoint must not tell a stranger which other
        # connections exist. The operator learns it here.
        log.error(
            "Neoleads webhook endpoint %r refused deliveries: connection field 'conn_type' is %r, expected %r",
            conn_id,
            conn_type,
            CONN_TYPE,
        )
        return _Endpoint("unknown", fetched_at=now)
    try:
        settings = NeoleadsConnectionSettings.from_connection(conn, require_token=False)
    except Exception as exc:
        # NeoleadsConfigError messages name the field and never include secret values.
        log.error("Neoleads webhook endpoint %r refused deliveries: %s", conn_id, exc)
        return _Endpoint("misconfigured", fetched_at=now)
    if not settings.account_id:
        log.error(
            "Neoleads webhook endpoint %r refused deliveries: connection field 'account_id' is required, so "
            "that deliveries for other accounts can be refused",
            conn_id,
        )
        return _Endpoint("misconfigured", fetched_at=now)
    return _Endpoint("ok", settings=settings, fetched_at=now)


class _ConnectionCache:
    """Per-process connection lookups, kept ``ttl`` seconds, with a lock per id against stampedes."""

    def __init__(self, resolve: Callable[[str], Any], *, ttl: float, clock: Callable[[], float]) -> None:
        self._resolve = resolve
        self._ttl = ttl
        self._clock = clock
        self._entries: OrderedDict[str, _Endpoint] = OrderedDict()
        self._forced_at: dict[str, float] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._forced_at.clear()

    def _key_lock(self, conn_id: str) -> threading.Lock:
        with self._lock:
            return self._locks.setdefault(conn_id, threading.Lock())

    def _fresh(self, conn_id: str) -> _Endpoint | None:
        with self._lock:
            entry = self._entries.get(conn_id)
            if entry is not None and self._clock() - entry.fetched_at < self._ttl:
                self._entries.move_to_end(conn_id)
                return entry
        return None

    def _fetch(self, conn_id: str) -> _Endpoint:
        try:
            conn = self._resolve(conn_id)
        except Exception as exc:
            from airflow.exceptions import AirflowNotFoundException

            if not isinstance(exc, AirflowNotFoundException):
                raise _ConnectionLookupError(type(exc).__name__) from exc
            conn = None
        entry = _endpoint_from_connection(conn_id, conn, self._clock())
        with self._lock:
            self._entries[conn_id] = entry
            self._entries.move_to_end(conn_id)
            # Random ids from the internet must not grow the cache without bound.
            while len(self._entries) > _MAX_CACHED_CONNECTIONS:
                evicted, _ = self._entries.popitem(last=False)
                self._forced_at.pop(evicted, None)
                self._locks.pop(evicted, None)
        return entry

    def get(self, conn_id: str) -> _Endpoint:
        entry = self._fresh(conn_id)
        if entry is not None:
            return entry
        with self._key_lock(conn_id):
            # Another request may have fetched it while this one waited for the lock.
            entry = self._fresh(conn_id)
            return entry if entry is not None else self._fetch(conn_id)

    def reread(self, conn_id: str) -> _Endpoint | None:
        """Fetch again after a failed verification; None if this id was re-read less than ``ttl`` ago."""
        with self._key_lock(conn_id):
            now = self._clock()
            with self._lock:
                last = self._forced_at.get(conn_id)
                if last is not None and now - last < self._ttl:
                    return None
                self._forced_at[conn_id] = now
            return self._fetch(conn_id)


# --------------------------------------------------------------------------- helpers


class _LogThrottle:
    """Log a kind of problem at most once per interval, so an outage or a scan cannot flood the log."""

    def __init__(self, interval: float = LOG_INTERVAL_SECONDS) -> None:
        self._interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def check(self, key: str) -> int | None:
        """Return the number suppressed since the last line if this one should be logged, else None."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._interval:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return None
            if len(self._last) > _MAX_CACHED_CONNECTIONS:
                self._last.clear()
                self._suppressed.clear()
            self._last[key] = now
            return self._suppressed.pop(key, 0)


class _Refusal(Exception):
    def __init__(
        self, status_code: int, detail: str, *, headers: dict[str, str] | None = None, logged: bool = False
    ) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail
        self.headers = headers
        # Already logged where it happened (store errors), with more detail than the refusal line would have.
        self.logged = logged


@dataclass
class _AuthResult:
    ok: bool
    reason: str = ""
    # Worth re-reading the connection: a wrong signature or token may be a rotated secret.
    retry_with_fresh_settings: bool = False


def _authenticate(
    settings: NeoleadsConnectionSettings, headers: Any, body: bytes, token: str | None, now: float
) -> _AuthResult:
    signature_header, _, _ = header_names(settings.webhook_header_prefix)
    signed = bool(headers.get(signature_header))
    if settings.webhook_secrets and (signed or not settings.webhook_allow_unsigned):
        try:
            verify(
                settings.webhook_secrets,
                headers,
                body,
                now=now,
                tolerance=settings.webhook_tolerance_seconds,
                prefix=settings.webhook_header_prefix,
            )
        except NoMatchingSignatureError as exc:
            return _AuthResult(False, str(exc), retry_with_fresh_settings=True)
        except WebhookVerificationError as exc:
            return _AuthResult(False, str(exc))
        return _AuthResult(True)
    if settings.webhook_allow_unsigned:
        if not token:
            return _AuthResult(False, "unsigned delivery without ?token=", retry_with_fresh_settings=True)
        if not hmac.compare_digest(token.encode("utf-8"), settings.webhook_url_token.encode("utf-8")):
            return _AuthResult(
                False, "unsigned delivery with a wrong ?token=", retry_with_fresh_settings=True
            )
        return _AuthResult(True)
    return _AuthResult(
        False,
        "the connection has no 'webhook_secrets' and 'webhook_allow_unsigned' is off",
        retry_with_fresh_settings=True,
    )


def _delivery_id(headers: dict[str, str], delivery_header: str, body: bytes) -> str:
    raw = (headers.get(delivery_header.lower()) or "").strip()
    if not raw:
        # Servers older than the delivery header: the body digest still dedupes exact redeliveries.
        return "sha256:" + hashlib.sha256(body).hexdigest()
    if len(raw) > MAX_DELIVERY_ID_LENGTH or not _DELIVERY_ID_RE.fullmatch(raw):
        raise _Refusal(
            400,
            f"header {delivery_header} must be 1 to {MAX_DELIVERY_ID_LENGTH} printable ASCII characters",
        )
    return raw


async def _read_body(headers: dict[str, str], receive: Receive, limit: int) -> bytes:
    declared = headers.get("content-length")
    if declared is not None:
        declared = declared.strip()
        if not (declared.isascii() and declared.isdigit()):
            raise _Refusal(400, "Content-Length must be a whole number of bytes")
        if int(declared) > limit:
            raise _Refusal(413, f"the body is larger than {limit} bytes")
    try:
        return await read_body(receive, limit)
    except BodyTooLargeError:
        raise _Refusal(413, f"the body is larger than {limit} bytes") from None
    except ClientGoneError:
        # A sender that gave up mid-upload (its timeout) is routine: a refusal nobody reads, not a 500.
        raise _Refusal(400, "the sender disconnected before the whole body arrived") from None


def _check_content_type(headers: dict[str, str]) -> None:
    value = headers.get("content-type", "")
    media_type, _, params = value.partition(";")
    charset = ""
    for param in params.split(";"):
        name, _, param_value = param.partition("=")
        if name.strip().lower() == "charset":
            charset = param_value.strip().strip('"').lower()
    if media_type.strip().lower() != "application/json" or charset not in ("", "utf-8", "utf8"):
        raise _Refusal(415, "Content-Type must be application/json")


def _webhook_conn_id(scope: Scope) -> str | None:
    """The ``conn_id`` of a request to ``/webhooks/{conn_id}`` (or with a trailing slash), else None."""
    if scope["type"] != "http":
        return None
    path = route_path(scope)
    if not path.startswith(_WEBHOOK_PATH_PREFIX):
        return None
    conn_id = path[len(_WEBHOOK_PATH_PREFIX) :]
    # Senders do not follow redirects, so the trailing-slash form is served too, not redirected.
    if conn_id.endswith("/"):
        conn_id = conn_id[:-1]
    if not conn_id or "/" in conn_id:
        return None
    return conn_id


# --------------------------------------------------------------------------- the app


_REQUEST_BODY_SCHEMA = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["event"],
                "properties": {
                    # The rule read_event applies, so generated clients and fuzzers know what is accepted.
                    "event": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": EVENT_NAME_MAX_LENGTH,
                        "pattern": EVENT_NAME_PATTERN,
                        "example": "message_created",
                    }
                },
                "additionalProperties": True,
            }
        }
    },
}

_PARAMETERS = [
    {"name": "conn_id", "in": "path", "required": True, "schema": {"type": "string", "title": "Conn Id"}},
    {
        "name": "token",
        "in": "query",
        "required": False,
        "schema": {
            "anyOf": [{"type": "string"}, {"type": "null"}],
            "description": "The connection's webhook_url_token, for unsigned senders only.",
            "title": "Token",
        },
        "description": "The connection's webhook_url_token, for unsigned senders only.",
    },
]

_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Malformed body, event or delivery id, or unstorable text."},
    401: {"model": ErrorBody, "description": "Signature, timestamp or token missing or wrong."},
    404: {"model": ErrorBody, "description": "No such webhook endpoint (no such Neoleads connection)."},
    413: {"model": ErrorBody, "description": "Body larger than 1 MiB."},
    415: {"model": ErrorBody, "description": "Content-Type is not application/json."},
    422: {"model": ErrorBody, "description": "Signed, but about another account than the connection's."},
    503: {"model": ErrorBody, "description": "Connection misconfigured, or the event store is unavailable."},
}


_Answer = tuple[int, dict[str, Any], dict[str, str] | None]


class WebhookReceiverApp:
    """The receiver as an ASGI app: deliveries on a lean path of their own, the rest on FastAPI.

    ``POST /webhooks/{conn_id}`` (and its trailing-slash form) goes straight to the delivery handler;
    ``/_health``, ``/openapi.json`` and every other path go to :attr:`fastapi_app`, whose OpenAPI document
    describes the delivery route too.
    """

    def __init__(
        self, deliveries: Callable[[Scope, Receive, Send, str], Awaitable[None]], fastapi_app: FastAPI
    ) -> None:
        self._deliveries = deliveries
        self.fastapi_app = fastapi_app

    @property
    def state(self) -> Any:
        """The FastAPI app's state (``connection_cache`` among it)."""
        return self.fastapi_app.state

    def openapi(self) -> dict[str, Any]:
        """The receiver's OpenAPI document."""
        return self.fastapi_app.openapi()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        conn_id = _webhook_conn_id(scope)
        if conn_id is None:
            await self.fastapi_app(scope, receive, send)
        elif scope["method"] != "POST":
            await send_json(send, 405, {"detail": "Method Not Allowed"}, {"Allow": "POST"})
        else:
            await self._deliveries(scope, receive, send, conn_id)


def create_app(
    *,
    resolve_connection: Callable[[str], Any] | None = None,
    engine_factory: Callable[[], Engine] | None = None,
    clock: Callable[[], float] = time.time,
    auto_migrate: bool = False,
    cache_ttl: float = CONNECTION_CACHE_TTL_SECONDS,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> WebhookReceiverApp:
    """Build the receiver app (routes ``/webhooks/{conn_id}`` and ``/_health``).

    :param resolve_connection: ``conn_id -> Connection | None``; default :func:`default_resolve_connection`.
    :param engine_factory: returns the event store engine; default ``store.engine.get_engine``.
    :param clock: unix time in seconds, for signature timestamps, ``received_at`` and the connection cache.
    :param auto_migrate: create or upgrade the store schema on the first delivery (the Airflow plugin does).
    :param cache_ttl: how long a connection lookup is reused, and how often a failed verification may
        force a fresh one.
    :param max_body_bytes: the largest body accepted.
    """
    if engine_factory is None:
        from neoleads_provider.store.engine import get_engine

        engine_factory = get_engine
    connections = _ConnectionCache(
        resolve_connection or default_resolve_connection, ttl=cache_ttl, clock=clock
    )
    throttle = _LogThrottle()
    store = _DeliveryStore(EventWriter(engine_factory, auto_migrate=auto_migrate), throttle)
    writer = BatchRunner(store.save_batch, name="neoleads-webhook-writer", on_idle=store.writer.release)

    def refuse(conn_id: str, client: str, refusal: _Refusal, reason: str | None = None) -> _Answer:
        suppressed = None if refusal.logged else throttle.check(f"{conn_id}:{refusal.status_code}")
        if suppressed is not None:
            more = f" ({suppressed} similar refusals not logged)" if suppressed else ""
            log.warning(
                "Neoleads webhook %r from %s refused with %s: %s%s",
                conn_id,
                client,
                refusal.status_code,
                reason or refusal.detail,
                more,
            )
        return refusal.status_code, {"detail": refusal.detail}, refusal.headers

    async def lookup(conn_id: str, *, fresh: bool) -> _Endpoint | None:
        if not fresh:
            # A cached entry is a dict lookup: not worth a trip to a worker thread on every delivery.
            cached = connections._fresh(conn_id)
            if cached is not None:
                return cached
        method = connections.reread if fresh else connections.get
        return await anyio.to_thread.run_sync(method, conn_id)

    async def receive_webhook(scope: Scope, receive: Receive, conn_id: str, client: str) -> _Answer:
        if not _CONN_ID_RE.fullmatch(conn_id):
            return refuse(
                conn_id[:64], client, _Refusal(404, "unknown webhook endpoint"), "malformed conn_id"
            )
        try:
            endpoint = await lookup(conn_id, fresh=False)
            assert endpoint is not None
            refusal = _endpoint_refusal(endpoint)
            if refusal is not None:
                return refuse(conn_id, client, refusal)
            assert endpoint.settings is not None

            headers = header_dict(scope)
            body = await _read_body(headers, receive, max_body_bytes)
            _check_content_type(headers)

            now = clock()
            token = query_param(scope, "token")
            auth = _authenticate(endpoint.settings, headers, body, token, now)
            if not auth.ok and auth.retry_with_fresh_settings:
                refreshed = await lookup(conn_id, fresh=True)
                if refreshed is not None:
                    refusal = _endpoint_refusal(refreshed)
                    if refusal is not None:
                        return refuse(conn_id, client, refusal)
                    assert refreshed.settings is not None
                    endpoint = refreshed
                    auth = _authenticate(refreshed.settings, headers, body, token, now)
            if not auth.ok:
                return refuse(conn_id, client, _Refusal(401, "unauthorized"), auth.reason)
            settings = endpoint.settings
            assert settings is not None

            delivery_id = _delivery_id(headers, f"{settings.webhook_header_prefix}Delivery", body)
            received_at = datetime.fromtimestamp(now, UTC)
            # Parsed and committed on the writer thread, together with whatever else arrived meanwhile
            # (group commit); answered only once committed. A bad body comes back as a 400 refusal.
            status, event_id = await writer.submit(
                _Delivery(conn_id, settings.account_id, delivery_id, body, received_at)
            )
        except _Refusal as refusal:
            return refuse(conn_id, client, refusal)
        except _ConnectionLookupError as exc:
            suppressed = throttle.check(f"{conn_id}:lookup")
            if suppressed is not None:
                log.error(
                    "Neoleads webhook %r: could not look the connection up (%s)", conn_id, exc.__cause__
                )
            return 503, {"detail": "webhook endpoint temporarily unavailable"}, {"Retry-After": "30"}
        # DEBUG, not INFO: at hundreds of deliveries a second the line cost a fifth of the receiver's time,
        # and the store already records each delivery id with its event id (refusals are still logged).
        log.debug("Neoleads webhook %r: %s delivery %s as event %s", conn_id, status, delivery_id, event_id)
        return 200, {"status": status, "delivery_id": delivery_id, "event_id": event_id}, None

    async def deliveries(scope: Scope, receive: Receive, send: Send, conn_id: str) -> None:
        client_address = scope.get("client")
        client = client_address[0] if client_address else "?"
        try:
            status, content, headers = await receive_webhook(scope, receive, conn_id, client)
        except Exception:
            log.exception("Neoleads webhook %r from %s: unexpected error", conn_id[:64], client)
            status, content, headers = 500, {"detail": "internal error"}, None
        await send_json(send, status, content, headers)

    app = FastAPI(
        title="Neoleads webhook receiver",
        description="Receives signed Neoleads (Chatwoot) webhook deliveries and stores them for Airflow.",
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.connection_cache = connections
    _document_delivery_route(app)

    @app.get("/_health", tags=["health"], summary="Liveness check")
    async def health() -> dict[str, str]:
        """Answer without touching the connection backends or the event store."""
        return {"status": "ok"}

    return WebhookReceiverApp(deliveries, app)


def _document_delivery_route(app: FastAPI) -> None:
    """Describe ``POST /webhooks/{conn_id}`` in the app's OpenAPI document.

    :class:`WebhookReceiverApp` serves the route before FastAPI sees the request, so FastAPI's router never
    holds it; this route object exists only to put the contract into the document, the same way FastAPI
    would have written it.
    """
    from fastapi.openapi.utils import get_openapi
    from fastapi.routing import APIRoute

    async def receive_webhook() -> WebhookAck:
        """Verify, store and acknowledge one Neoleads webhook delivery."""
        raise NotImplementedError("served by WebhookReceiverApp; this route only documents it")

    documented = APIRoute(
        "/webhooks/{conn_id}",
        receive_webhook,
        methods=["POST"],
        name="receive_webhook",
        response_model=WebhookAck,
        responses=_RESPONSES,
        openapi_extra={"requestBody": _REQUEST_BODY_SCHEMA, "parameters": _PARAMETERS},
        summary="Receive a Neoleads webhook delivery",
        tags=["webhooks"],
    )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = get_openapi(
                title=app.title,
                version=app.version,
                openapi_version=app.openapi_version,
                description=app.description,
                routes=[documented, *app.routes],
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _endpoint_refusal(endpoint: _Endpoint) -> _Refusal | None:
    if endpoint.status == "unknown":
        return _Refusal(404, "unknown webhook endpoint")
    if endpoint.status == "misconfigured":
        return _Refusal(503, "webhook endpoint is misconfigured")
    return None


class _Delivery(NamedTuple):
    """A verified delivery on its way to the writer thread."""

    conn_id: str
    #: The connection's Neoleads account: a payload naming another one is refused.
    account_id: int
    delivery_id: str
    body: bytes
    received_at: datetime


def _parse_delivery(delivery: _Delivery) -> NewEvent:
    """Read a verified delivery into the row to store, or raise the refusal that answers it."""
    from neoleads_provider.store.repository import NewEvent

    try:
        text, fields = parse_event_body(delivery.body)
    except PayloadError as exc:
        raise _Refusal(400, str(exc)) from None
    except Exception:
        # A parser bug must cost this delivery alone, not the whole batch.
        log.exception(
            "Neoleads webhook %r: delivery %s could not be parsed", delivery.conn_id, delivery.delivery_id
        )
        raise _Refusal(400, "the body could not be read as a webhook event", logged=True) from None
    if fields.account_id is not None and fields.account_id != delivery.account_id:
        # Signed with this connection's secret but about another account: a misrouted webhook, or one
        # tenant's credential aimed at another's sensors. Never stored, so it can match nothing.
        log.warning(
            "Neoleads webhook %r refused delivery %s: its payload is for account %s, the connection's "
            "account_id is %s",
            delivery.conn_id,
            delivery.delivery_id,
            fields.account_id,
            delivery.account_id,
        )
        raise _Refusal(
            422, f"the payload's account {fields.account_id} is not this endpoint's account", logged=True
        )
    return NewEvent(
        conn_id=delivery.conn_id,
        delivery_id=delivery.delivery_id,
        event_key=event_identity(fields, delivery.body),
        fields=fields,
        body=text,
        received_at=delivery.received_at,
    )


class _DeliveryStore:
    """Parse and commit deliveries on the writer thread; one ``(status, event_id)`` or refusal each."""

    def __init__(self, writer: EventWriter, throttle: _LogThrottle) -> None:
        self.writer = writer
        self._throttle = throttle

    def _unavailable(self, conn_id: str, exc: BaseException) -> _Refusal:
        suppressed = self._throttle.check(f"store:{type(exc.__cause__ or exc).__name__}")
        if suppressed is not None:
            more = f" ({suppressed} similar errors not logged)" if suppressed else ""
            # The error text names the table or the failing statement, never the payload's secrets
            # (the body holds no credentials) and never the database password.
            log.error(
                "Neoleads event store unavailable; answering 503 to webhook %r: %s%s", conn_id, exc, more
            )
        return _Refusal(
            503,
            "event store unavailable",
            headers={"Retry-After": str(STORE_RETRY_AFTER_SECONDS)},
            logged=True,
        )

    def save_batch(self, deliveries: Sequence[_Delivery]) -> list[Any]:
        """Runs on the writer thread. A body that does not parse is refused alone (400), as is a row the
        database refuses; a store outage refuses the whole batch with 503."""
        outcomes: list[Any] = [None] * len(deliveries)
        parsed: list[tuple[int, NewEvent]] = []
        for index, delivery in enumerate(deliveries):
            try:
                parsed.append((index, _parse_delivery(delivery)))
            except _Refusal as refusal:
                outcomes[index] = refusal
        if not parsed:
            return outcomes
        try:
            results = self.writer.write([new for _, new in parsed])
        except EventStoreError as exc:
            refusal = self._unavailable(parsed[0][1].conn_id, exc)
            for index, _ in parsed:
                outcomes[index] = refusal
            return outcomes
        for (index, new), result in zip(parsed, results, strict=True):
            if isinstance(result, RowRefusedError):
                outcomes[index] = _Refusal(400, "the event store refused the delivery's values")
            elif isinstance(result, EventStoreError):
                outcomes[index] = self._unavailable(new.conn_id, result)
            else:
                event_id, inserted = result
                outcomes[index] = ("stored" if inserted else "duplicate", event_id)
        return outcomes
