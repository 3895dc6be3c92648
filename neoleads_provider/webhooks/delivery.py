"""The delivery path of the receiver, ``POST /webhooks/{conn_id}``: from the request to its answer.

:class:`DeliveryHandler` runs the checks in order, cheapest and least revealing first (the module
docstring of :mod:`neoleads_provider.webhooks.app` lists them with their answers), and hands a verified
delivery to the writer thread, answering only once it is committed. It can be built and tested on its own
around any ``submit`` coroutine; :func:`~neoleads_provider.webhooks.app.create_app` wires it to the store.

Defences against slow and hostile senders, all per process:

- a whole-request deadline (:data:`REQUEST_DEADLINE_SECONDS` from the moment the headers are in): a body
  still incomplete then is answered 408 and its connection closed;
- a budget of unverified body bytes (:data:`MAX_UNVERIFIED_BYTES`), charged as the bytes arrive: bodies
  being read or verified may hold at most that much memory together, and one client address a quarter of
  it; past it, a delivery is answered 503 with ``Retry-After``, so unauthenticated uploads cannot starve
  genuine ones of memory, and declaring a large body without sending it holds nothing;
- running out of file descriptors or memory is answered 503, never 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio.to_thread

from neoleads_provider.store.errors import EventStoreError
from neoleads_provider.webhooks import URL_TOKEN_SCOPE_KEY
from neoleads_provider.webhooks.answers import Answer, LogThrottle, Refusal
from neoleads_provider.webhooks.asgi import (
    BodyTooLargeError,
    ClientGoneError,
    header_dict,
    query_param,
    read_body,
    send_json,
)
from neoleads_provider.webhooks.body import parse_event_body
from neoleads_provider.webhooks.connections import ConnectionLookupError
from neoleads_provider.webhooks.delivery_store import Delivery
from neoleads_provider.webhooks.verify import (
    NoMatchingSignatureError,
    WebhookVerificationError,
    header_names,
    verify,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable

    from neoleads_provider.connection import NeoleadsConnectionSettings
    from neoleads_provider.store.writer import EventWriter
    from neoleads_provider.webhooks.asgi import Receive, Scope, Send
    from neoleads_provider.webhooks.connections import ConnectionCache, Endpoint

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_UNVERIFIED_BYTES",
    "REQUEST_DEADLINE_SECONDS",
    "DeliveryHandler",
]

log = logging.getLogger("neoleads_provider.webhooks.app")

# The default of [neoleads] webhook_max_body_bytes. Most deliveries are a few kilobytes; an email inbox's
# message_created carries the mail's HTML in content_attributes, JSON-escaped (<, > and & take 6 bytes
# each), which passes 1 MiB for a large newsletter.
MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_DELIVERY_ID_LENGTH = 128
# Neoleads waits 5 s for an answer: a request that has not fully arrived after 10 s is not a genuine one.
REQUEST_DEADLINE_SECONDS = 10.0
# Bodies being read or verified at once, per process: eight of the largest size, thousands of real ones.
# A higher body limit raises it to eight of its bodies (create_app).
MAX_UNVERIFIED_BYTES = 32 * 1024 * 1024
#: The most [neoleads] webhook_max_body_bytes may be: the memory budget is eight times the limit.
MAX_BODY_BYTES_LIMIT = 64 * 1024 * 1024
BUSY_RETRY_AFTER_SECONDS = 5
# Connection lookups (secrets backend, metadata database) running at once.
LOOKUP_THREADS = 8
# Airflow allows more characters in connection ids; these are the ones that survive in a URL path unquoted.
CONN_ID_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,249}")
_DELIVERY_ID_RE = re.compile(r"[\x21-\x7e]+")


def _json_bytes(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


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
        raise Refusal(
            400,
            f"header {delivery_header} must be 1 to {MAX_DELIVERY_ID_LENGTH} printable ASCII characters",
        )
    return raw


async def _read_body(
    headers: dict[str, str], receive: Receive, limit: int, on_chunk: Callable[[int], None]
) -> bytes:
    declared = headers.get("content-length")
    if declared is not None:
        declared = declared.strip()
        if not (declared.isascii() and declared.isdigit()):
            raise Refusal(400, "Content-Length must be a whole number of bytes")
        if int(declared) > limit:
            raise Refusal(413, f"the body is larger than {limit} bytes")
    try:
        return await read_body(receive, limit, on_chunk)
    except BodyTooLargeError:
        raise Refusal(413, f"the body is larger than {limit} bytes") from None
    except ClientGoneError:
        # A sender that gave up mid-upload (its timeout) is routine: a refusal nobody reads, not a 500.
        raise Refusal(400, "the sender disconnected before the whole body arrived") from None


def _check_content_type(headers: dict[str, str]) -> None:
    value = headers.get("content-type", "")
    media_type, _, params = value.partition(";")
    charset = ""
    for param in params.split(";"):
        name, _, param_value = param.partition("=")
        if name.strip().lower() == "charset":
            charset = param_value.strip().strip('"').lower()
    if media_type.strip().lower() != "application/json" or charset not in ("", "utf-8", "utf8"):
        raise Refusal(415, "Content-Type must be application/json")


def _endpoint_refusal(endpoint: Endpoint) -> Refusal | None:
    if endpoint.status == "unknown":
        return Refusal(404, "unknown webhook endpoint")
    if endpoint.status == "misconfigured":
        return Refusal(503, "webhook endpoint is misconfigured")
    return None


class DeliveryHandler:
    """``POST /webhooks/{conn_id}`` from request to answer: look the connection up, read, verify, submit.

    :param connections: resolves and caches the connection a URL names.
    :param submit: commits a :class:`Delivery` and returns ``(status, event_id)``, or raises the
        :class:`Refusal` that answers it (the batch writer's ``submit``).
    :param clock: unix time in seconds, for signature timestamps and ``received_at``.
    :param max_body_bytes: the largest body accepted (413 beyond it).
    :param request_deadline: seconds from the headers to the end of the body (408 beyond it).
    :param max_unverified_bytes: bytes of bodies being read or verified at once (503 beyond it).
    :param max_unverified_bytes_per_client: the same, for one client address; default a quarter of the whole.
    :param writer: the store writer behind ``submit``, for :meth:`warm_up` to open.
    """

    def __init__(
        self,
        *,
        connections: ConnectionCache,
        submit: Callable[[Delivery], Awaitable[tuple[str, int]]],
        clock: Callable[[], float] = time.time,
        max_body_bytes: int = MAX_BODY_BYTES,
        request_deadline: float = REQUEST_DEADLINE_SECONDS,
        max_unverified_bytes: int = MAX_UNVERIFIED_BYTES,
        max_unverified_bytes_per_client: int | None = None,
        throttle: LogThrottle | None = None,
        writer: EventWriter | None = None,
    ) -> None:
        self.connections = connections
        self._submit = submit
        self._writer = writer
        self._clock = clock
        self.max_body_bytes = max_body_bytes
        self.request_deadline = request_deadline
        self.max_unverified_bytes = max(max_unverified_bytes, max_body_bytes)
        self.max_unverified_bytes_per_client = (
            max_unverified_bytes_per_client
            if max_unverified_bytes_per_client is not None
            else max(self.max_unverified_bytes // 4, max_body_bytes)
        )
        self.throttle = throttle or LogThrottle()
        #: Bytes of bodies being read or verified, in all and by client (touched on the event loop only).
        self.unverified_bytes = 0
        self._by_client: dict[str, int] = {}
        self._lookup_limiter: anyio.CapacityLimiter | None = None

    def warm_up(self, conn_ids: Iterable[str] = ()) -> None:
        """Resolve ``conn_ids``, open the store and run the parser and verifier once (blocking)."""
        from neoleads_provider.events.build import sample_event
        from neoleads_provider.webhooks.verify import signed_headers

        started = time.monotonic()
        for conn_id in (*conn_ids, "__neoleads_warm_up__"):
            # An id that does not exist still loads the connection machinery and walks the backends once.
            try:
                self.connections.warm(conn_id)
            except ConnectionLookupError as exc:
                log.warning("Neoleads webhook receiver warm-up: cannot look %r up yet (%s)", conn_id, exc)
        if self._writer is not None:
            try:
                self._writer.open()
            except EventStoreError as exc:
                log.warning("Neoleads webhook receiver warm-up: the event store is not ready yet: %s", exc)
        body = _json_bytes(sample_event("message_created", now=0))
        headers = {
            name.lower(): value
            for name, value in signed_headers("warm-up", body, timestamp=0, delivery_id="warm-up").items()
        }
        with contextlib.suppress(WebhookVerificationError):
            verify(["warm-up"], headers, body, now=0)
        parse_event_body(body)
        log.info("Neoleads webhook receiver warmed up in %.0f ms", (time.monotonic() - started) * 1000)

    def refuse(self, conn_id: str, client: str, refusal: Refusal, reason: str | None = None) -> Answer:
        """Log the refusal (at most once a minute per connection and status) and return its answer."""
        suppressed = None if refusal.logged else self.throttle.check(f"{conn_id}:{refusal.status_code}")
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

    async def lookup(self, conn_id: str, *, fresh: bool) -> Endpoint | None:
        """The connection's endpoint: from the cache on the event loop, else looked up on a worker thread."""
        if not fresh:
            cached = self.connections.cached(conn_id)
            if cached is not None:
                return cached
        method = self.connections.reread if fresh else self.connections.get
        if self._lookup_limiter is None:
            self._lookup_limiter = anyio.CapacityLimiter(LOOKUP_THREADS)
        # A limiter of its own: a flood of random connection ids must not take the worker threads the
        # API server's own endpoints (and this receiver's cached lookups) need.
        return await anyio.to_thread.run_sync(method, conn_id, limiter=self._lookup_limiter)

    def _charge(self, client: str, held: list[int], size: int) -> None:
        """Count ``size`` more bytes of an unverified body against the budgets, or refuse it (503).

        Charged as the bytes arrive, not as declared: a sender that declares a megabyte and sends nothing
        holds nothing. One client may hold at most a quarter of the budget.
        """
        by_client = self._by_client.get(client, 0)
        if (
            self.unverified_bytes + size > self.max_unverified_bytes
            or by_client + size > self.max_unverified_bytes_per_client
        ):
            raise Refusal(
                503,
                "receiver busy: too many deliveries are arriving at once",
                headers={"Retry-After": str(BUSY_RETRY_AFTER_SECONDS), "Connection": "close"},
            )
        self.unverified_bytes += size
        self._by_client[client] = by_client + size
        held[0] += size

    def _release(self, client: str, held: int) -> None:
        self.unverified_bytes -= held
        remaining = self._by_client.get(client, 0) - held
        if remaining > 0:
            self._by_client[client] = remaining
        else:
            self._by_client.pop(client, None)

    async def _read_body(
        self, headers: dict[str, str], receive: Receive, started: float, client: str, held: list[int]
    ) -> bytes:
        remaining = self.request_deadline - (asyncio.get_running_loop().time() - started)
        try:
            async with asyncio.timeout(max(0.0, remaining)):
                return await _read_body(
                    headers, receive, self.max_body_bytes, lambda size: self._charge(client, held, size)
                )
        except TimeoutError:
            raise Refusal(
                408,
                f"the request did not arrive within {self.request_deadline:g} s",
                headers={"Connection": "close"},
            ) from None

    async def answer(self, scope: Scope, receive: Receive, conn_id: str, client: str) -> Answer:
        """Handle one delivery; return the status, the JSON body and extra headers of its answer."""
        started = asyncio.get_running_loop().time()
        if not CONN_ID_RE.fullmatch(conn_id):
            return self.refuse(
                conn_id[:64], client, Refusal(404, "unknown webhook endpoint"), "malformed conn_id"
            )
        try:
            endpoint = await self.lookup(conn_id, fresh=False)
            assert endpoint is not None
            refusal = _endpoint_refusal(endpoint)
            if refusal is not None:
                return self.refuse(conn_id, client, refusal)
            assert endpoint.settings is not None

            headers = header_dict(scope)
            held = [0]  # bytes of this body charged against the budgets
            try:
                body = await self._read_body(headers, receive, started, client, held)
                _check_content_type(headers)
                now = self._clock()
                # Taken out of the query string by the plugin's root middleware on the API server.
                token = scope.get(URL_TOKEN_SCOPE_KEY) or query_param(scope, "token")
                auth = _authenticate(endpoint.settings, headers, body, token, now)
                if not auth.ok and auth.retry_with_fresh_settings:
                    refreshed = await self.lookup(conn_id, fresh=True)
                    if refreshed is not None:
                        refusal = _endpoint_refusal(refreshed)
                        if refusal is not None:
                            return self.refuse(conn_id, client, refusal)
                        assert refreshed.settings is not None
                        endpoint = refreshed
                        auth = _authenticate(refreshed.settings, headers, body, token, now)
            finally:
                self._release(client, held[0])
            if not auth.ok:
                return self.refuse(conn_id, client, Refusal(401, "unauthorized"), auth.reason)
            settings = endpoint.settings
            assert settings is not None

            delivery_id = _delivery_id(headers, f"{settings.webhook_header_prefix}Delivery", body)
            received_at = datetime.fromtimestamp(now, UTC)
            # Parsed and committed on the writer thread, together with whatever else arrived meanwhile
            # (group commit); answered only once committed. A bad body comes back as a 400 refusal.
            status, event_id = await self._submit(
                Delivery(conn_id, settings.account_id, delivery_id, body, received_at)
            )
        except Refusal as refusal:
            return self.refuse(conn_id, client, refusal)
        except ConnectionLookupError as exc:
            suppressed = self.throttle.check(f"{conn_id}:lookup")
            if suppressed is not None:
                log.error(
                    "Neoleads webhook %r: could not look the connection up (%s)", conn_id, exc.__cause__
                )
            return 503, {"detail": "webhook endpoint temporarily unavailable"}, {"Retry-After": "30"}
        # DEBUG, not INFO: at hundreds of deliveries a second the line cost a fifth of the receiver's time,
        # and the store already records each delivery id with its event id (refusals are still logged).
        log.debug("Neoleads webhook %r: %s delivery %s as event %s", conn_id, status, delivery_id, event_id)
        return 200, {"status": status, "delivery_id": delivery_id, "event_id": event_id}, None

    async def __call__(self, scope: Scope, receive: Receive, send: Send, conn_id: str) -> None:
        client_address = scope.get("client")
        client = client_address[0] if client_address else "?"
        try:
            status, content, headers = await self.answer(scope, receive, conn_id, client)
        except (OSError, MemoryError) as exc:
            # Out of file descriptors or memory (a flood of connections): a busy answer the sender may
            # retry, not an internal error.
            suppressed = self.throttle.check(f"resources:{type(exc).__name__}")
            if suppressed is not None:
                log.error("Neoleads webhook receiver out of resources (%s); answering 503", exc)
            status, content, headers = (
                503,
                {"detail": "receiver temporarily out of resources"},
                {"Retry-After": str(BUSY_RETRY_AFTER_SECONDS)},
            )
        except Exception:
            log.exception("Neoleads webhook %r from %s: unexpected error", conn_id[:64], client)
            status, content, headers = 500, {"detail": "internal error"}, None
        await send_json(send, status, content, headers)
