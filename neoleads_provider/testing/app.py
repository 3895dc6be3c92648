"""The sandbox's HTTP layer: fault injection, the request log, error answers and the app's assembly.

:func:`create_sandbox_app` returns an ASGI app: a FastAPI app wrapped in :class:`SandboxMiddleware`, which
records every API request and applies injected faults (429, 5xx, slow answers, dropped connections, and
"after commit" variants where the request takes effect but the client never sees the answer).
The routes live with their resource (``resources/*.py``, one router each) and in ``control.py`` (the
``/_sandbox/`` routes); ``routing.py`` turns requests into state calls and answers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from dataclasses import asdict, dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException as StarletteHTTPException

from neoleads_provider.testing import control
from neoleads_provider.testing.errors import NOT_FOUND_BODY, SERVER_ERROR_BODY, SandboxError
from neoleads_provider.testing.resources import contacts, conversations, inboxes, messages, profile, webhooks
from neoleads_provider.testing.routing import (
    CONTROL_PREFIX,
    JSON_MEDIA_TYPE,
    RouteContext,
    empty_response,
    json_response,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, MutableMapping

    from starlette.responses import Response

    from neoleads_provider.testing.delivery import WebhookDispatcher
    from neoleads_provider.testing.routing import SandboxRouter
    from neoleads_provider.testing.state import SandboxState

    Scope = MutableMapping[str, Any]
    Message = MutableMapping[str, Any]
    Receive = Callable[[], Awaitable[Message]]
    Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger(__name__)

REQUEST_LOG_LIMIT = 100_000


# --------------------------------------------------------------------------------------------------------------
# Faults and the request log
# --------------------------------------------------------------------------------------------------------------


@dataclass
class FaultRule:
    """One injected fault.

    :param status: answer with this status instead (429: text/plain ``Retry later``; 5xx: the JSON 500 body).
    :param delay: seconds to wait before answering.
    :param count: how many matching requests it applies to.
    :param method: only requests with this HTTP method (any when ``None``).
    :param path: only requests whose path contains this text (any when ``None``).
    :param after_commit: let the request take effect first, then delay, fail or drop.
    :param retry_after: a ``Retry-After`` header value for the fault answer.
    :param drop: close the connection without any answer.
    """

    status: int | None = None
    delay: float | None = None
    count: int = 1
    method: str | None = None
    path: str | None = None
    after_commit: bool = False
    retry_after: int | str | None = None
    drop: bool = False

    def __post_init__(self) -> None:
        if self.status is not None and (
            isinstance(self.status, bool) or not isinstance(self.status, int) or not 100 <= self.status <= 599
        ):
            raise ValueError(f"fault 'status' must be an HTTP status code (100-599), got {self.status!r}")
        if self.delay is not None and (
            isinstance(self.delay, bool) or not isinstance(self.delay, int | float) or self.delay < 0
        ):
            raise ValueError(f"fault 'delay' must be a number of seconds >= 0, got {self.delay!r}")
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1:
            raise ValueError(f"fault 'count' must be a whole number >= 1, got {self.count!r}")
        if self.method is not None and not isinstance(self.method, str):
            raise ValueError(f"fault 'method' must be an HTTP method name, got {self.method!r}")
        if self.path is not None and not isinstance(self.path, str):
            raise ValueError(f"fault 'path' must be a string, got {self.path!r}")
        if self.status is None and self.delay is None and not self.drop:
            raise ValueError("a fault needs at least one of 'status', 'delay' or 'drop'")
        if self.drop and self.status is not None:
            raise ValueError("a fault cannot both 'drop' the connection and answer with a 'status'")
        self.after_commit = bool(self.after_commit)
        self.drop = bool(self.drop)
        if self.method is not None:
            self.method = self.method.upper()

    @classmethod
    def from_dict(cls, data: Any) -> FaultRule:
        """Build a rule from a JSON object, naming any unknown field."""
        if not isinstance(data, dict):
            raise ValueError("a fault must be a JSON object")
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown fault field(s): {', '.join(unknown)}")
        return cls(**data)

    def matches(self, method: str, path: str) -> bool:
        """Return whether this rule applies to a request."""
        return (self.method is None or self.method == method.upper()) and (
            self.path is None or self.path in path
        )


class FaultInjector:
    """A thread-safe list of fault rules; each matching request consumes one use of the first match."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []

    def add(self, rule: FaultRule) -> None:
        """Append a rule (earlier rules win)."""
        with self._lock:
            self._rules.append(rule)

    def add_all(self, items: list[Any]) -> None:
        """Append a rule per JSON object, or none when one is invalid.

        :raises ValueError: naming what is wrong with the first invalid item (``TypeError`` for a wrong type).
        """
        rules = [FaultRule.from_dict(item) for item in items]
        for rule in rules:
            self.add(rule)

    def clear(self) -> None:
        """Remove every rule."""
        with self._lock:
            self._rules.clear()

    def take(self, method: str, path: str) -> FaultRule | None:
        """Return the first rule matching the request, using up one of its ``count``."""
        with self._lock:
            for index, rule in enumerate(self._rules):
                if rule.matches(method, path):
                    rule.count -= 1
                    if rule.count <= 0:
                        del self._rules[index]
                    return rule
        return None

    @property
    def rules(self) -> list[dict[str, Any]]:
        """Return the remaining rules as dicts."""
        with self._lock:
            return [asdict(rule) for rule in self._rules]


class RequestLog:
    """Every API request as ``(method, path, status)``; ``status`` is ``None`` for a dropped connection."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[tuple[str, str, int | None]] = []

    def append(self, method: str, path: str, status: int | None) -> None:
        """Record one request."""
        with self._lock:
            self._entries.append((method, path, status))
            if len(self._entries) > REQUEST_LOG_LIMIT:
                del self._entries[: len(self._entries) - REQUEST_LOG_LIMIT]

    def clear(self) -> None:
        """Forget every request."""
        with self._lock:
            self._entries.clear()

    @property
    def entries(self) -> list[tuple[str, str, int | None]]:
        """Return a copy of the log, oldest first."""
        with self._lock:
            return list(self._entries)


async def _send_fault(rule: FaultRule, send: Send) -> None:
    status = rule.status or 500
    if status == 429:
        # Rack::Attack's default throttled response: plain text, and no Retry-After header.
        body = b"Retry later\n"
        content_type = b"text/plain"
    elif status >= 500:
        payload = (
            SERVER_ERROR_BODY if status == 500 else {"status": status, "error": HTTPStatus(status).phrase}
        )
        body = json.dumps(payload, separators=(",", ":")).encode()
        content_type = JSON_MEDIA_TYPE.encode()
    else:
        phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
        body = json.dumps({"error": phrase}, separators=(",", ":")).encode()
        content_type = JSON_MEDIA_TYPE.encode()
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if rule.retry_after is not None:
        headers.append((b"retry-after", str(rule.retry_after).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _drop_connection(receive: Receive) -> bool:
    """Close the client's connection without answering; return ``False`` where that is impossible.

    ASGI has no "close without a response" message, so this reaches through uvicorn's ``receive`` (a bound
    method of its request cycle) to the transport. Once the connection is lost, uvicorn sends nothing.
    """
    cycle = getattr(receive, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if cycle is None or transport is None or not hasattr(cycle, "disconnected"):
        return False
    transport.close()
    # connection_lost runs on a later loop iteration; returning earlier would make uvicorn send a 500.
    for _ in range(200):
        if cycle.disconnected:
            return True
        await asyncio.sleep(0.005)
    return True


async def _buffer_request(receive: Receive) -> Receive:
    """Read the request body now; return a ``receive`` that replays it, then waits as the original would."""
    messages: list[Message] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request" or not message.get("more_body", False):
            break

    async def replay() -> Message:
        return messages.pop(0) if messages else await receive()

    return replay


class SandboxMiddleware:
    """Outermost ASGI layer: request log, fault injection, and the JSON 500 for unhandled errors."""

    def __init__(self, app: Any, *, faults: FaultInjector, requests: RequestLog) -> None:
        self.app = app
        self.faults = faults
        self.requests = requests

    async def _call(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            # Starlette has already answered with the exception handler's JSON 500 when it could.
            log.exception(
                "Unhandled error in the Neoleads sandbox while serving %s %s", scope["method"], scope["path"]
            )
            if not started:
                await _send_fault(FaultRule(status=500), tracking_send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if path.startswith(CONTROL_PREFIX + "/") or path == CONTROL_PREFIX:
            await self._call(scope, receive, send)
            return
        method: str = scope["method"]
        logged = False

        def record(status: int | None) -> None:
            # Logged before the answer leaves, so a client that checks the log right after its call sees it.
            nonlocal logged
            if not logged:
                logged = True
                self.requests.append(method, path, status)

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                record(message["status"])
            await send(message)

        rule = self.faults.take(method, path)
        try:
            if rule is None:
                await self._call(scope, receive, recording_send)
            else:
                await self._call_faulted(rule, scope, receive, send, record, recording_send)
        finally:
            record(None)

    async def _call_faulted(
        self,
        rule: FaultRule,
        scope: Scope,
        receive: Receive,
        send: Send,
        record: Callable[[int | None], None],
        recording_send: Send,
    ) -> None:
        """Serve a request that ``rule`` matched; ``send`` bypasses the log, ``recording_send`` logs the status."""
        buffered: list[Message] = []
        if rule.after_commit:

            async def capture(message: Message) -> None:
                buffered.append(message)

            await self._call(scope, receive, capture)
        if rule.delay:
            if not (rule.after_commit or rule.drop or rule.status is not None):
                # A real server has the whole request before it is slow, and applies it even if the client
                # gives up meanwhile; without this, the app would read a disconnect instead of the body.
                receive = await _buffer_request(receive)
            await asyncio.sleep(rule.delay)
        if rule.drop:
            record(None)
            if await _drop_connection(receive):
                return
            log.warning("The sandbox cannot drop connections under this server; answering 500 instead")
            await _send_fault(FaultRule(status=500), send)
        elif rule.status is not None:
            await _send_fault(rule, recording_send)
        elif rule.after_commit:
            for message in buffered:
                await recording_send(message)
        else:
            await self._call(scope, receive, recording_send)


# --------------------------------------------------------------------------------------------------------------
# The app
# --------------------------------------------------------------------------------------------------------------


# The order routes are matched in (``/contacts/search`` is registered before ``/contacts/{contact_id}``).
ROUTERS: tuple[Callable[[RouteContext], SandboxRouter], ...] = (
    profile.router,
    inboxes.router,
    contacts.router,
    conversations.router,
    messages.router,
    webhooks.router,
    control.router,
)


async def _sandbox_error(_: Request, exc: SandboxError) -> Response:
    return empty_response(exc.status) if exc.body is None else json_response(exc.body, exc.status)


async def _http_error(_: Request, exc: StarletteHTTPException) -> Response:
    # Rails has no 405: an unknown route or verb is a routing 404.
    if exc.status_code in (404, 405):
        return json_response(NOT_FOUND_BODY, 404)
    return json_response({"error": str(exc.detail)}, exc.status_code)


async def _unhandled(_: Request, exc: Exception) -> Response:
    return json_response(SERVER_ERROR_BODY, 500)


def create_sandbox_app(
    state: SandboxState,
    *,
    dispatcher: WebhookDispatcher | None = None,
    faults: FaultInjector | None = None,
    requests: RequestLog | None = None,
    on_reset: Callable[[], None] | None = None,
) -> SandboxMiddleware:
    """Build the sandbox's ASGI app around ``state``.

    :param state: the in-memory server.
    :param dispatcher: the webhook worker, for the ``/_sandbox/deliveries`` routes (optional).
    :param faults: the fault list (a new one when omitted); also at ``app.faults``.
    :param requests: the request log (a new one when omitted); also at ``app.requests``.
    :param on_reset: what ``POST /_sandbox/reset`` does; by default resets state, faults, log and deliveries.
    :return: the ASGI app (a :class:`SandboxMiddleware`; the FastAPI app is its ``.app``).
    """
    faults = faults if faults is not None else FaultInjector()
    requests = requests if requests is not None else RequestLog()

    def default_reset() -> None:
        state.reset()
        faults.clear()
        requests.clear()
        if dispatcher is not None:
            dispatcher.clear()

    api = FastAPI(
        title="Neoleads sandbox",
        description="A local, in-memory Neoleads (Chatwoot Application API) server for offline tests.",
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    api.exception_handler(SandboxError)(_sandbox_error)
    api.exception_handler(StarletteHTTPException)(_http_error)
    api.exception_handler(Exception)(_unhandled)
    context = RouteContext(
        state, faults=faults, requests=requests, dispatcher=dispatcher, reset=on_reset or default_reset
    )
    for router in ROUTERS:
        api.include_router(router(context))
    return SandboxMiddleware(api, faults=faults, requests=requests)
