"""The webhook receiver: verify a Neoleads delivery, store it durably, then acknowledge it.

``POST /webhooks/{conn_id}`` (mounted at ``/neoleads`` on the Airflow API server and by
``neoleads webhooks serve``). Checks run in this order, cheapest and least revealing first:

1. ``conn_id`` syntax, then the Airflow connection: unknown → 404; not a ``neoleads`` connection or
   invalid webhook settings → 503 (the log names the field).
2. Body size, from ``Content-Length`` and while streaming → 413. ``Content-Type: application/json`` → 415.
3. The signature over the raw bytes (``X-Chatwoot-Signature`` / ``-Timestamp``, or the connection's
   prefix), or ``?token=`` for unsigned senders when the connection allows them → 401 with a generic body.
   A failed check re-reads the connection once per TTL, so a rotated secret works without a restart.
4. The JSON: an object with a string ``event``, no NaN/Infinity, at most 64 levels deep → 400.
5. One committed transaction → 200 ``stored`` or ``duplicate`` (same delivery id). Any store error → 503
   with ``Retry-After``; the sender is never told "OK" for something that was not committed.

Neoleads does not retry failed webhooks, so every refusal here is final for that delivery; the log line
is the operator's only trace of it. Secrets, signatures and tokens never reach the log.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypeVar

import anyio.to_thread
from fastapi import FastAPI
from pydantic import BaseModel

from neoleads_provider.connection import CONN_TYPE, NeoleadsConnectionSettings
from neoleads_provider.store.engine import WalCheckpointer
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
from neoleads_provider.webhooks.payload import MAX_JSON_DEPTH, EventFields, PayloadError, parse_event_body
from neoleads_provider.webhooks.verify import (
    NoMatchingSignatureError,
    WebhookVerificationError,
    header_names,
    verify,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from sqlalchemy import Connection, Engine

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
        log.error(
            "Neoleads webhook endpoint %r refused deliveries: connection field 'conn_type' is %r, expected %r",
            conn_id,
            conn_type,
            CONN_TYPE,
        )
        return _Endpoint("misconfigured", fetched_at=now)
    try:
        settings = NeoleadsConnectionSettings.from_connection(conn, require_token=False)
    except Exception as exc:
        # NeoleadsConfigError messages name the field and never include secret values.
        log.error("Neoleads webhook endpoint %r refused deliveries: %s", conn_id, exc)
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


@dataclass
class _MigrationGuard:
    """Run ``migrate`` once per database per app, on the first delivery; retry a failure only every 30 s."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    done: set[str] = field(default_factory=set)
    failed_at: dict[str, float] = field(default_factory=dict)

    def ensure(self, engine: Engine) -> None:
        key = str(engine.url)
        if key in self.done:
            return
        with self.lock:
            if key in self.done:
                return
            failed = self.failed_at.get(key)
            if failed is not None and time.monotonic() - failed < STORE_RETRY_AFTER_SECONDS:
                raise RuntimeError("the event store migration failed recently; not retrying yet")
            from neoleads_provider.store.migrate import migrate

            try:
                migrate(engine)
            except Exception:
                self.failed_at[key] = time.monotonic()
                raise
            self.done.add(key)


# --------------------------------------------------------------------------- the app


_REQUEST_BODY_SCHEMA = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["event"],
                "properties": {
                    # The same rule as payload.py's, so generated clients and fuzzers know what is accepted.
                    "event": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": 64,
                        "pattern": "^[A-Za-z0-9][A-Za-z0-9_.:\\-]*$",
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
    400: {"model": ErrorBody, "description": "Malformed body, event or delivery id."},
    401: {"model": ErrorBody, "description": "Signature, timestamp or token missing or wrong."},
    404: {"model": ErrorBody, "description": "No such webhook endpoint (connection)."},
    413: {"model": ErrorBody, "description": "Body larger than 1 MiB."},
    415: {"model": ErrorBody, "description": "Content-Type is not application/json."},
    503: {"model": ErrorBody, "description": "Connection misconfigured, or the event store is unavailable."},
}


_Answer = tuple[int, dict[str, Any], dict[str, str] | None]
_R = TypeVar("_R")


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
    migrations = _MigrationGuard()
    store = _Store(engine_factory, migrations if auto_migrate else None, throttle)
    writer = BatchRunner(store.save_batch, name="neoleads-webhook-writer", on_idle=store.release)

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
            status, event_id = await writer.submit(_Delivery(conn_id, delivery_id, body, received_at))
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
    delivery_id: str
    body: bytes
    received_at: datetime


class _Store:
    """The one write the receiver makes; every failure becomes a 503 with Retry-After.

    Used from the writer thread only. Each writer thread keeps one connection across its transactions:
    checking one out of the pool per batch cost more than the insert itself (a ping round trip to
    PostgreSQL before, a rollback after). :meth:`release` closes it when the thread goes idle.
    """

    def __init__(
        self,
        engine_factory: Callable[[], Engine],
        migrations: _MigrationGuard | None,
        throttle: _LogThrottle,
    ) -> None:
        self._engine_factory = engine_factory
        self._migrations = migrations
        self._throttle = throttle
        self._held = threading.local()
        self._checkpointers: dict[Engine, WalCheckpointer] = {}

    def _connection(self, engine: Engine) -> Connection:
        conn: Connection | None = getattr(self._held, "conn", None)
        if conn is not None and conn.engine is engine and not conn.closed and not conn.invalidated:
            return conn
        self._drop_connection()
        conn = engine.connect()
        try:
            if engine.dialect.name == "sqlite":
                WalCheckpointer.writer_connected(conn.connection.driver_connection)
            elif engine.dialect.name == "postgresql":
                # A batch is one INSERT statement, which PostgreSQL commits atomically on its own; in a
                # transaction block psycopg would spend two more round trips on it (BEGIN, then COMMIT), a
                # third of the writer's time. The statement returns only once its commit is durable.
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        except BaseException:
            conn.close()
            raise
        self._held.conn = conn
        return conn

    def _checkpointer(self, engine: Engine) -> WalCheckpointer | None:
        if engine.dialect.name != "sqlite":
            return None
        checkpointer = self._checkpointers.get(engine)
        if checkpointer is None:
            checkpointer = self._checkpointers[engine] = WalCheckpointer(engine)
        return checkpointer

    def _drop_connection(self) -> Engine | None:
        """Close this thread's kept connection, if any; return its engine."""
        conn: Connection | None = getattr(self._held, "conn", None)
        self._held.conn = None
        if conn is None:
            return None
        if conn.engine in self._checkpointers:
            with contextlib.suppress(Exception):  # it may be the broken one being dropped
                WalCheckpointer.writer_released(conn.connection.driver_connection)
        with contextlib.suppress(Exception):
            conn.close()
        return conn.engine

    def release(self) -> None:
        """The writer thread goes idle: close its kept connection and finish checkpointing for it."""
        engine = self._drop_connection()
        checkpointer = self._checkpointers.get(engine) if engine is not None else None
        if checkpointer is not None:
            checkpointer.stop()

    def _write(self, work: Callable[[Connection], _R]) -> _R:
        """Run ``work`` in one committed transaction; its result is returned only after the commit."""
        from sqlalchemy.exc import DBAPIError

        from neoleads_provider.store.engine import write_lock

        for attempt in (1, 2):
            engine = self._engine_factory()
            if self._migrations is not None:
                self._migrations.ensure(engine)
            with write_lock(engine):
                conn = self._connection(engine)
                try:
                    with conn.begin():
                        result = work(conn)
                except DBAPIError as exc:
                    self._drop_connection()
                    # The database dropped the kept connection (a restart, an idle timeout). The insert is
                    # idempotent (ON CONFLICT DO NOTHING), so it runs once more on a new, pinged connection;
                    # a delivery whose first insert did commit is then answered "duplicate".
                    if attempt == 2 or not exc.connection_invalidated:
                        raise
                    continue
                except BaseException:
                    self._drop_connection()
                    raise
            # Committed: nothing after this point may turn the answer into a refusal.
            checkpointer = self._checkpointer(engine)
            if checkpointer is not None:
                with contextlib.suppress(Exception):
                    checkpointer.committed()
            return result
        raise AssertionError("unreachable")

    def save(
        self, conn_id: str, delivery_id: str, fields: EventFields, text: str, received_at: datetime
    ) -> tuple[Literal["stored", "duplicate"], int]:
        from neoleads_provider.store.repository import get_event, insert_event_id

        def insert(conn: Connection) -> tuple[Literal["stored", "duplicate"], int]:
            event_id = insert_event_id(
                conn,
                delivery_id=delivery_id,
                conn_id=conn_id,
                fields=fields,
                body=text,
                received_at=received_at,
            )
            if event_id is not None:
                return "stored", event_id
            existing = get_event(conn, delivery_id=delivery_id)
            if existing is None:
                raise RuntimeError("a duplicate delivery's stored event could not be read back")
            return "duplicate", existing.id

        try:
            return self._write(insert)
        except Exception as exc:
            raise self._unavailable(conn_id, exc) from None

    def _unavailable(self, conn_id: str, exc: BaseException) -> _Refusal:
        suppressed = self._throttle.check(f"store:{type(exc).__name__}")
        if suppressed is not None:
            more = f" ({suppressed} similar errors not logged)" if suppressed else ""
            # The exception text names the table or the failing statement, never the payload's secrets
            # (the body holds no credentials) and never the database password.
            log.error(
                "Neoleads event store unavailable; answering 503 to webhook %r: %s: %s%s",
                conn_id,
                type(exc).__name__,
                _short(exc),
                more,
            )
        return _Refusal(
            503,
            "event store unavailable",
            headers={"Retry-After": str(STORE_RETRY_AFTER_SECONDS)},
            logged=True,
        )

    def save_batch(self, deliveries: Sequence[_Delivery]) -> list[Any]:
        """Parse and commit deliveries in one transaction; one ``(status, event_id)`` or refusal each.

        Runs on the writer thread. A body that does not parse is refused alone (400). If the transaction
        fails on a row's values, each delivery is committed on its own so that only that one is refused;
        any other failure (the store is down) refuses the whole batch with 503.
        """
        from sqlalchemy.exc import DataError, IntegrityError

        from neoleads_provider.store.repository import NewEvent, insert_events

        outcomes: list[Any] = [None] * len(deliveries)
        parsed: list[tuple[int, NewEvent]] = []
        for index, delivery in enumerate(deliveries):
            try:
                text, fields = parse_event_body(delivery.body)
            except PayloadError as exc:
                outcomes[index] = _Refusal(400, str(exc))
                continue
            except Exception:
                # A parser bug must cost this delivery alone, not the whole batch.
                log.exception(
                    "Neoleads webhook %r: delivery %s could not be parsed",
                    delivery.conn_id,
                    delivery.delivery_id,
                )
                outcomes[index] = _Refusal(400, "the body could not be read as a webhook event", logged=True)
                continue
            new = NewEvent(delivery.delivery_id, delivery.conn_id, fields, text, delivery.received_at)
            parsed.append((index, new))
        if len(parsed) > 1:
            events = [new for _, new in parsed]
            try:
                results = self._write(lambda conn: insert_events(conn, events))
            except (IntegrityError, DataError):
                pass  # one delivery's values; find it below
            except Exception as exc:
                refusal = self._unavailable(parsed[0][1].conn_id, exc)
                for index, _ in parsed:
                    outcomes[index] = _Refusal(503, refusal.detail, headers=refusal.headers, logged=True)
                return outcomes
            else:
                for (index, _), (event_id, inserted) in zip(parsed, results, strict=True):
                    outcomes[index] = ("stored" if inserted else "duplicate", event_id)
                return outcomes
        for index, new in parsed:
            try:
                outcomes[index] = self.save(
                    new.conn_id, new.delivery_id, new.fields, new.body, new.received_at
                )
            except _Refusal as refusal:
                outcomes[index] = refusal
        return outcomes


def _short(exc: BaseException) -> str:
    # SQLAlchemy appends the statement and its parameters (the whole payload) to the message.
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc)
    return text.splitlines()[0][:300] if text else ""
