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

import time
from typing import TYPE_CHECKING, Any, Literal

from fastapi import FastAPI
from pydantic import BaseModel

from neoleads_provider.events.names import EVENT_NAME_MAX_LENGTH, EVENT_NAME_PATTERN
from neoleads_provider.exceptions import NeoleadsConfigError
from neoleads_provider.store.writer import EventWriter
from neoleads_provider.webhooks.answers import LogThrottle
from neoleads_provider.webhooks.asgi import route_path, send_json
from neoleads_provider.webhooks.batching import BatchRunner
from neoleads_provider.webhooks.body import MAX_JSON_DEPTH
from neoleads_provider.webhooks.connections import (
    CONNECTION_CACHE_TTL_SECONDS,
    ConnectionCache,
    default_resolve_connection,
)
from neoleads_provider.webhooks.delivery import (
    MAX_BODY_BYTES,
    MAX_BODY_BYTES_LIMIT,
    MAX_UNVERIFIED_BYTES,
    REQUEST_DEADLINE_SECONDS,
    DeliveryHandler,
)
from neoleads_provider.webhooks.delivery_store import DeliveryStore

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from sqlalchemy import Engine  # noqa: TID251 - a type only

    from neoleads_provider.webhooks.asgi import Receive, Scope, Send

__all__ = [
    "CONNECTION_CACHE_TTL_SECONDS",
    "MAX_BODY_BYTES",
    "MAX_JSON_DEPTH",
    "ErrorBody",
    "WebhookAck",
    "WebhookReceiverApp",
    "create_app",
]

_WEBHOOK_PATH_PREFIX = "/webhooks/"


class WebhookAck(BaseModel):
    """The answer to an accepted delivery, sent only after it is committed."""

    status: Literal["stored", "duplicate"]
    delivery_id: str
    event_id: int


class ErrorBody(BaseModel):
    """The answer to a refused delivery."""

    detail: str


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


# --------------------------------------------------------------------------- the contract


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
    413: {"model": ErrorBody, "description": "Body larger than [neoleads] webhook_max_body_bytes (4 MiB)."},
    415: {"model": ErrorBody, "description": "Content-Type is not application/json."},
    422: {"model": ErrorBody, "description": "Signed, but about another account than the connection's."},
    503: {"model": ErrorBody, "description": "Connection misconfigured, or the event store is unavailable."},
}


def _delivery_path_item() -> dict[str, Any]:
    """``POST /webhooks/{conn_id}`` as an OpenAPI path item, from the one definition above."""
    responses: dict[str, Any] = {
        "200": {
            "description": "Verified and committed (or already stored).",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/WebhookAck"}}},
        }
    }
    for status, response in _RESPONSES.items():
        responses[str(status)] = {
            "description": response["description"],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
        }
    return {
        "post": {
            "tags": ["webhooks"],
            "summary": "Receive a Neoleads webhook delivery",
            "description": "Verify, store and acknowledge one Neoleads webhook delivery.",
            "operationId": "receive_webhook",
            "parameters": _PARAMETERS,
            "requestBody": _REQUEST_BODY_SCHEMA,
            "responses": responses,
        }
    }


def _add_delivery_contract(app: FastAPI) -> None:
    """Put the delivery route into the app's OpenAPI document.

    :class:`WebhookReceiverApp` serves the route before FastAPI sees the request, so FastAPI's router never
    holds it; the document gets it from :func:`_delivery_path_item` and the two answer models.
    """
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = generate()
            document.setdefault("paths", {})["/webhooks/{conn_id}"] = _delivery_path_item()
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            for model in (WebhookAck, ErrorBody):
                schemas[model.__name__] = model.model_json_schema()
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


# --------------------------------------------------------------------------- the app


class WebhookReceiverApp:
    """The receiver as an ASGI app: deliveries on a lean path of their own, the rest on FastAPI.

    ``POST /webhooks/{conn_id}`` (and its trailing-slash form) goes straight to the delivery handler;
    ``/_health``, ``/openapi.json`` and every other path go to :attr:`fastapi_app`, whose OpenAPI document
    describes the delivery route too.
    """

    def __init__(self, deliveries: DeliveryHandler, fastapi_app: FastAPI) -> None:
        #: The delivery path (connection cache, deadlines, budgets), callable as ``(scope, receive, send, conn_id)``.
        self.deliveries = deliveries
        self.fastapi_app = fastapi_app

    @property
    def state(self) -> Any:
        """The FastAPI app's state (``connection_cache`` among it)."""
        return self.fastapi_app.state

    def openapi(self) -> dict[str, Any]:
        """The receiver's OpenAPI document."""
        return self.fastapi_app.openapi()

    def warm_up(self, conn_ids: Iterable[str] = ()) -> None:
        """Do now what the first delivery would otherwise pay for, so that it is answered as fast as the rest.

        Resolves ``conn_ids`` into the connection cache (which also loads Airflow's connection machinery),
        opens (and migrates, if this app migrates) the event store and keeps a pooled connection, and runs
        the parser and the verifier once. Blocking; a failure is logged, and the first delivery then
        retries what failed.
        """
        self.deliveries.warm_up(conn_ids)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        conn_id = _webhook_conn_id(scope)
        if conn_id is None:
            await self.fastapi_app(scope, receive, send)
        elif scope["method"] != "POST":
            await send_json(send, 405, {"detail": "Method Not Allowed"}, {"Allow": "POST"})
        else:
            await self.deliveries(scope, receive, send, conn_id)


def configured_max_body_bytes() -> int:
    """``[neoleads] webhook_max_body_bytes``, or :data:`MAX_BODY_BYTES` when unset.

    :raises NeoleadsConfigError: the setting is not a whole number from 1024 to 64 MiB.
    """
    from airflow.configuration import conf

    raw = (conf.get("neoleads", "webhook_max_body_bytes", fallback="") or "").strip()
    if not raw:
        return MAX_BODY_BYTES
    if not raw.isdigit() or not 1024 <= int(raw) <= MAX_BODY_BYTES_LIMIT:
        raise NeoleadsConfigError(
            "[neoleads] webhook_max_body_bytes must be a whole number of bytes from 1024 to "
            f"{MAX_BODY_BYTES_LIMIT} (64 MiB), got {raw!r}"
        )
    return int(raw)


def create_app(
    *,
    resolve_connection: Callable[[str], Any] | None = None,
    engine_factory: Callable[[], Engine] | None = None,
    clock: Callable[[], float] = time.time,
    auto_migrate: bool = False,
    cache_ttl: float = CONNECTION_CACHE_TTL_SECONDS,
    max_body_bytes: int | None = None,
    request_deadline: float = REQUEST_DEADLINE_SECONDS,
    max_unverified_bytes: int | None = None,
    max_unverified_bytes_per_client: int | None = None,
) -> WebhookReceiverApp:
    """Build the receiver app (routes ``/webhooks/{conn_id}``, ``/_health`` and ``/openapi.json``).

    :param resolve_connection: ``conn_id -> Connection | None``; default
        :func:`~neoleads_provider.webhooks.connections.default_resolve_connection`.
    :param engine_factory: returns the event store engine; default ``store.engine.get_engine``.
    :param clock: unix time in seconds, for signature timestamps, ``received_at`` and the connection cache.
    :param auto_migrate: create or upgrade the store schema on the first write or :meth:`~WebhookReceiverApp.warm_up`
        (the Airflow plugin does).
    :param cache_ttl: how long a connection lookup is reused, and how often a failed verification may
        force a fresh one.
    :param max_body_bytes: the largest body accepted (413 beyond it); default ``[neoleads]
        webhook_max_body_bytes``, else :data:`MAX_BODY_BYTES` (4 MiB).
    :param request_deadline: seconds a request may take to arrive once its headers are in (408 after).
    :param max_unverified_bytes: bytes of bodies being read or verified at once (503 beyond it); default
        32 MiB, or eight bodies of ``max_body_bytes`` if that is more.
    :param max_unverified_bytes_per_client: the same for one client address (default a quarter of it).
    """
    if max_body_bytes is None:
        max_body_bytes = configured_max_body_bytes()
    if max_unverified_bytes is None:
        # Room for eight of the largest bodies at once, whatever the limit (a client may hold a quarter).
        max_unverified_bytes = max(MAX_UNVERIFIED_BYTES, 8 * max_body_bytes)
    if engine_factory is None:
        from neoleads_provider.store.engine import get_engine

        engine_factory = get_engine
    connections = ConnectionCache(
        resolve_connection or default_resolve_connection, ttl=cache_ttl, clock=clock
    )
    throttle = LogThrottle()
    store = DeliveryStore(EventWriter(engine_factory, auto_migrate=auto_migrate), throttle)
    writer = BatchRunner(store.save_batch, name="neoleads-webhook-writer", on_idle=store.writer.release)
    handler = DeliveryHandler(
        connections=connections,
        submit=writer.submit,
        writer=store.writer,
        clock=clock,
        max_body_bytes=max_body_bytes,
        request_deadline=request_deadline,
        max_unverified_bytes=max_unverified_bytes,
        max_unverified_bytes_per_client=max_unverified_bytes_per_client,
        throttle=throttle,
    )

    app = FastAPI(
        title="Neoleads webhook receiver",
        description="Receives signed Neoleads (Chatwoot) webhook deliveries and stores them for Airflow.",
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.connection_cache = connections
    _add_delivery_contract(app)

    @app.get("/_health", tags=["health"], summary="Liveness check")
    async def health() -> dict[str, str]:
        """Answer without touching the connection backends or the event store."""
        return {"status": "ok"}

    return WebhookReceiverApp(handler, app)
