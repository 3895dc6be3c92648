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

import hashlib
import hmac
import json
import logging
import math
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.requests import ClientDisconnect

from neoleads_provider.connection import CONN_TYPE, NeoleadsConnectionSettings
from neoleads_provider.webhooks.batching import BatchRunner
from neoleads_provider.webhooks.payload import EventFields, PayloadError, extract_event_fields
from neoleads_provider.webhooks.verify import (
    NoMatchingSignatureError,
    WebhookVerificationError,
    header_names,
    verify,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from sqlalchemy import Engine

__all__ = [
    "CONNECTION_CACHE_TTL_SECONDS",
    "MAX_BODY_BYTES",
    "MAX_JSON_DEPTH",
    "ErrorBody",
    "WebhookAck",
    "create_app",
    "default_resolve_connection",
]

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
MAX_JSON_DEPTH = 64
MAX_DELIVERY_ID_LENGTH = 128
CONNECTION_CACHE_TTL_SECONDS = 30.0
STORE_RETRY_AFTER_SECONDS = 30
# Refusals and store errors are logged at most this often per kind, with a count of those suppressed.
LOG_INTERVAL_SECONDS = 60.0
_MAX_CACHED_CONNECTIONS = 1024
# Airflow allows more characters in connection ids; these are the ones that survive in a URL path unquoted.
_CONN_ID_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,249}")
_DELIVERY_ID_RE = re.compile(r"[\x21-\x7e]+")


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


def _reject_constant(name: str) -> Any:
    raise PayloadError(f"the body contains {name}, which is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise PayloadError(f"the body contains a number too large for a float: {text[:32]}")
    return value


def _check_depth(value: Any, text: str | None = None) -> None:
    if text is not None and text.count("{") + text.count("[") <= MAX_JSON_DEPTH:
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


def _parse_body(body: bytes) -> tuple[str, EventFields]:
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
    if not isinstance(payload, dict):
        raise PayloadError(f"the body must be a JSON object, got {type(payload).__name__}")
    _check_depth(payload, text)
    # PostgreSQL text cannot hold NUL; JSON may carry it escaped, which is fine, but never raw.
    if "\x00" in text:
        raise PayloadError("the body contains a NUL character")
    return text, extract_event_fields(payload)


def _delivery_id(headers: Any, delivery_header: str, body: bytes) -> str:
    raw = (headers.get(delivery_header) or "").strip()
    if not raw:
        # Servers older than the delivery header: the body digest still dedupes exact redeliveries.
        return "sha256:" + hashlib.sha256(body).hexdigest()
    if len(raw) > MAX_DELIVERY_ID_LENGTH or not _DELIVERY_ID_RE.fullmatch(raw):
        raise _Refusal(
            400,
            f"header {delivery_header} must be 1 to {MAX_DELIVERY_ID_LENGTH} printable ASCII characters",
        )
    return raw


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        declared = declared.strip()
        if not declared.isdigit():
            raise _Refusal(400, "Content-Length must be a whole number of bytes")
        if int(declared) > limit:
            raise _Refusal(413, f"the body is larger than {limit} bytes")
    body = bytearray()
    # Counted while streaming too: a chunked upload declares no length.
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise _Refusal(413, f"the body is larger than {limit} bytes")
    except ClientDisconnect:
        # A sender that gave up mid-upload (its timeout) is routine: a refusal nobody reads, not a 500.
        raise _Refusal(400, "the sender disconnected before the whole body arrived") from None
    return bytes(body)


def _check_content_type(request: Request) -> None:
    value = request.headers.get("content-type", "")
    media_type, _, params = value.partition(";")
    charset = ""
    for param in params.split(";"):
        name, _, param_value = param.partition("=")
        if name.strip().lower() == "charset":
            charset = param_value.strip().strip('"').lower()
    if media_type.strip().lower() != "application/json" or charset not in ("", "utf-8", "utf8"):
        raise _Refusal(415, "Content-Type must be application/json")


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


def _json(status_code: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status_code, headers=headers)


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


def create_app(
    *,
    resolve_connection: Callable[[str], Any] | None = None,
    engine_factory: Callable[[], Engine] | None = None,
    clock: Callable[[], float] = time.time,
    auto_migrate: bool = False,
    cache_ttl: float = CONNECTION_CACHE_TTL_SECONDS,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> FastAPI:
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
    writer = BatchRunner(store.save_batch, name="neoleads-webhook-writer")

    app = FastAPI(
        title="Neoleads webhook receiver",
        description="Receives signed Neoleads (Chatwoot) webhook deliveries and stores them for Airflow.",
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.connection_cache = connections

    def refuse(conn_id: str, request: Request, refusal: _Refusal, reason: str | None = None) -> JSONResponse:
        suppressed = None if refusal.logged else throttle.check(f"{conn_id}:{refusal.status_code}")
        if suppressed is not None:
            client = request.client.host if request.client else "?"
            more = f" ({suppressed} similar refusals not logged)" if suppressed else ""
            log.warning(
                "Neoleads webhook %r from %s refused with %s: %s%s",
                conn_id,
                client,
                refusal.status_code,
                reason or refusal.detail,
                more,
            )
        return _json(refusal.status_code, refusal.detail, refusal.headers)

    async def lookup(conn_id: str, *, fresh: bool) -> _Endpoint | None:
        if not fresh:
            # A cached entry is a dict lookup: not worth a trip to a worker thread on every delivery.
            cached = connections._fresh(conn_id)
            if cached is not None:
                return cached
        method = connections.reread if fresh else connections.get
        return await anyio.to_thread.run_sync(method, conn_id)

    async def receive_webhook(request: Request) -> Any:
        """Verify, store and acknowledge one Neoleads webhook delivery."""
        # Read from the request rather than declared as FastAPI parameters: FastAPI's parameter machinery
        # cost a quarter of the receiver's time per delivery. _PARAMETERS documents them the same way.
        conn_id: str = request.path_params["conn_id"]
        token = request.query_params.get("token")
        if not _CONN_ID_RE.fullmatch(conn_id):
            return refuse(
                conn_id[:64], request, _Refusal(404, "unknown webhook endpoint"), "malformed conn_id"
            )
        try:
            endpoint = await lookup(conn_id, fresh=False)
            assert endpoint is not None
            refusal = _endpoint_refusal(endpoint)
            if refusal is not None:
                return refuse(conn_id, request, refusal)
            assert endpoint.settings is not None

            body = await _read_body(request, max_body_bytes)
            _check_content_type(request)

            now = clock()
            auth = _authenticate(endpoint.settings, request.headers, body, token, now)
            if not auth.ok and auth.retry_with_fresh_settings:
                refreshed = await lookup(conn_id, fresh=True)
                if refreshed is not None:
                    refusal = _endpoint_refusal(refreshed)
                    if refusal is not None:
                        return refuse(conn_id, request, refusal)
                    assert refreshed.settings is not None
                    endpoint = refreshed
                    auth = _authenticate(refreshed.settings, request.headers, body, token, now)
            if not auth.ok:
                return refuse(conn_id, request, _Refusal(401, "unauthorized"), auth.reason)
            settings = endpoint.settings
            assert settings is not None

            # Starlette's headers are case-insensitive; this spelling is for the error message.
            delivery_id = _delivery_id(request.headers, f"{settings.webhook_header_prefix}Delivery", body)
            received_at = datetime.fromtimestamp(now, UTC)
            # Parsed and committed on the writer thread, together with whatever else arrived meanwhile
            # (group commit); answered only once committed. A bad body comes back as a 400 refusal.
            status, event_id = await writer.submit(_Delivery(conn_id, delivery_id, body, received_at))
        except _Refusal as refusal:
            return refuse(conn_id, request, refusal)
        except _ConnectionLookupError as exc:
            suppressed = throttle.check(f"{conn_id}:lookup")
            if suppressed is not None:
                log.error(
                    "Neoleads webhook %r: could not look the connection up (%s)", conn_id, exc.__cause__
                )
            return _json(503, "webhook endpoint temporarily unavailable", {"Retry-After": "30"})
        # DEBUG, not INFO: at hundreds of deliveries a second the line cost a fifth of the receiver's time,
        # and the store already records each delivery id with its event id (refusals are still logged).
        log.debug("Neoleads webhook %r: %s delivery %s as event %s", conn_id, status, delivery_id, event_id)
        # The WebhookAck shape, written directly: FastAPI would validate and serialise the model again.
        return JSONResponse({"status": status, "delivery_id": delivery_id, "event_id": event_id})

    route_options: dict[str, Any] = {
        "methods": ["POST"],
        "response_model": WebhookAck,
        "responses": _RESPONSES,
        "openapi_extra": {"requestBody": _REQUEST_BODY_SCHEMA, "parameters": _PARAMETERS},
        "summary": "Receive a Neoleads webhook delivery",
        "tags": ["webhooks"],
    }
    app.add_api_route("/webhooks/{conn_id}", receive_webhook, name="receive_webhook", **route_options)
    # Senders do not follow redirects, so the trailing-slash form is served too, not redirected.
    app.add_api_route(
        "/webhooks/{conn_id}/",
        receive_webhook,
        name="receive_webhook_slash",
        include_in_schema=False,
        **route_options,
    )

    @app.get("/_health", tags=["health"], summary="Liveness check")
    async def health() -> dict[str, str]:
        """Answer without touching the connection backends or the event store."""
        return {"status": "ok"}

    return app


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
    """The one write the receiver makes; every failure becomes a 503 with Retry-After."""

    def __init__(
        self,
        engine_factory: Callable[[], Engine],
        migrations: _MigrationGuard | None,
        throttle: _LogThrottle,
    ) -> None:
        self._engine_factory = engine_factory
        self._migrations = migrations
        self._throttle = throttle

    def save(
        self, conn_id: str, delivery_id: str, fields: EventFields, text: str, received_at: datetime
    ) -> tuple[Literal["stored", "duplicate"], int]:
        from neoleads_provider.store.engine import write_lock
        from neoleads_provider.store.repository import get_event, insert_event_id

        try:
            engine = self._engine_factory()
            if self._migrations is not None:
                self._migrations.ensure(engine)
            with write_lock(engine), engine.begin() as conn:
                event_id = insert_event_id(
                    conn,
                    delivery_id=delivery_id,
                    conn_id=conn_id,
                    fields=fields,
                    body=text,
                    received_at=received_at,
                )
                status: Literal["stored", "duplicate"] = "stored"
                if event_id is None:
                    status = "duplicate"
                    existing = get_event(conn, delivery_id=delivery_id)
                    if existing is None:
                        raise RuntimeError("a duplicate delivery's stored event could not be read back")
                    event_id = existing.id
        except Exception as exc:
            raise self._unavailable(conn_id, exc) from None
        # Reached only after the transaction above committed.
        return status, event_id

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

        from neoleads_provider.store.engine import write_lock
        from neoleads_provider.store.repository import NewEvent, insert_events

        outcomes: list[Any] = [None] * len(deliveries)
        parsed: list[tuple[int, NewEvent]] = []
        for index, delivery in enumerate(deliveries):
            try:
                text, fields = _parse_body(delivery.body)
            except PayloadError as exc:
                outcomes[index] = _Refusal(400, str(exc))
                continue
            new = NewEvent(delivery.delivery_id, delivery.conn_id, fields, text, delivery.received_at)
            parsed.append((index, new))
        if len(parsed) > 1:
            try:
                engine = self._engine_factory()
                if self._migrations is not None:
                    self._migrations.ensure(engine)
                with write_lock(engine), engine.begin() as conn:
                    results = insert_events(conn, [new for _, new in parsed])
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
