"""The sandbox's HTTP layer: the Neoleads API routes, the ``/_sandbox/`` control routes, fault injection.

:func:`create_sandbox_app` returns an ASGI app: a FastAPI app wrapped in :class:`SandboxMiddleware`, which
records every API request and applies injected faults (429, 5xx, slow answers, dropped connections, and
"after commit" variants where the request takes effect but the client never sees the answer).
Handlers parse bodies themselves instead of using Pydantic models, because the error bodies must be the
real server's, not FastAPI's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from dataclasses import asdict, dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, FastAPI, Request
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from neoleads_provider.testing.state import (
    NOT_FOUND_BODY,
    SERVER_ERROR_BODY,
    SandboxError,
    SandboxState,
    Upload,
    cast_bool,
    cast_id,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, MutableMapping

    from neoleads_provider.testing.delivery import WebhookDispatcher

    Scope = MutableMapping[str, Any]
    Message = MutableMapping[str, Any]
    Receive = Callable[[], Awaitable[Message]]
    Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger(__name__)

CONTROL_PREFIX = "/_sandbox"
API_PREFIX = "/api/v1"
ACCOUNT_PREFIX = "/api/v1/accounts/{account_id}"
REQUEST_LOG_LIMIT = 100_000
JSON_MEDIA_TYPE = "application/json; charset=utf-8"


class RailsJSONResponse(JSONResponse):
    """Compact JSON with Rails' content type."""

    media_type = JSON_MEDIA_TYPE

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _json(content: Any, status: int = 200) -> Response:
    return RailsJSONResponse(content, status_code=status)


def _empty(status: int = 200) -> Response:
    return Response(content=b"", status_code=status)


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
                return
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
        finally:
            record(None)


# --------------------------------------------------------------------------------------------------------------
# Request helpers
# --------------------------------------------------------------------------------------------------------------


def _bad_request() -> SandboxError:
    return SandboxError(400, {"status": 400, "error": "Bad Request"})


def _nest(target: dict[str, Any], key: str, value: Any) -> None:
    """Place a Rack-style form key (``a``, ``a[]``, ``a[b]``, ``a[b][]``) into nested params."""
    if "[" not in key or not key.endswith("]"):
        target[key] = value
        return
    head, _, rest = key.partition("[")
    parts = [head, *rest[:-1].split("][")]
    node: Any = target
    for index, part in enumerate(parts[:-1]):
        following = parts[index + 1]
        container = node.get(part)
        if following == "":
            if not isinstance(container, list):
                container = []
                node[part] = container
            container.append(value)
            return
        if not isinstance(container, dict):
            container = {}
            node[part] = container
        node = container
    node[parts[-1]] = value


async def _read_params(request: Request) -> tuple[dict[str, Any], list[Upload]]:
    """Merge query parameters with a JSON or multipart body, as Rails' ``params`` does."""
    params: dict[str, Any] = dict(request.query_params)
    uploads: list[Upload] = []
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("multipart/form-data") or content_type.startswith(
        "application/x-www-form-urlencoded"
    ):
        form = await request.form(max_files=1000, max_fields=10_000)
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                data = await value.read()
                upload = Upload(
                    value.filename or "file", value.content_type or "application/octet-stream", data
                )
                if key in ("attachments[]", "attachments"):
                    uploads.append(upload)
                continue
            _nest(params, key, value)
        return params, uploads
    body = await request.body()
    if body.strip():
        try:
            parsed = json.loads(body)
        except ValueError:
            raise _bad_request() from None
        if isinstance(parsed, dict):
            params.update(parsed)
    return params, uploads


def _path_id(text: str) -> int:
    """A record id from the path; text that cannot name a record is a 404, as an unknown id is."""
    record_id = cast_id(text)
    if record_id is None:
        raise SandboxError(404, NOT_FOUND_BODY)
    return record_id


def _token(request: Request) -> str | None:
    # Rack maps both "api_access_token" and "api-access-token" to HTTP_API_ACCESS_TOKEN.
    return request.headers.get("api_access_token") or request.headers.get("api-access-token")


# --------------------------------------------------------------------------------------------------------------
# The app
# --------------------------------------------------------------------------------------------------------------


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

    reset = on_reset or default_reset

    api = FastAPI(
        title="Neoleads sandbox",
        description="A local, in-memory Neoleads (Chatwoot Application API) server for offline tests.",
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )

    @api.exception_handler(SandboxError)
    async def sandbox_error(_: Request, exc: SandboxError) -> Response:
        return _empty(exc.status) if exc.body is None else _json(exc.body, exc.status)

    @api.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        # Rails has no 405: an unknown route or verb is a routing 404.
        if exc.status_code in (404, 405):
            return _json(NOT_FOUND_BODY, 404)
        return _json({"error": str(exc.detail)}, exc.status_code)

    @api.exception_handler(Exception)
    async def unhandled(_: Request, exc: Exception) -> Response:
        return _json(SERVER_ERROR_BODY, 500)

    def caller(request: Request, account_id: str) -> Any:
        user = state.authenticate(_token(request))
        return state.caller(user, account_id)

    async def caller_and_params(
        request: Request, account_id: str, *, admin: bool = False
    ) -> tuple[Any, dict[str, Any]]:
        """The caller, then the request's params, in that order: a refused token is answered before a bad body."""
        who = caller(request, account_id)
        if admin:
            state.require_admin(who)
        params, _ = await _read_params(request)
        return who, params

    # ---- profile ---------------------------------------------------------------------------------------------

    @api.get(f"{API_PREFIX}/profile")
    async def profile(request: Request) -> Response:
        """The token's user, flat, with its accounts."""
        return _json(state.render_profile(state.authenticate(_token(request))))

    account = APIRouter(prefix=ACCOUNT_PREFIX)

    # ---- inboxes ---------------------------------------------------------------------------------------------

    @account.get("/inboxes")
    async def list_inboxes(request: Request, account_id: str) -> Response:
        return _json(state.list_inboxes(caller(request, account_id)))

    @account.post("/inboxes")
    async def create_inbox(request: Request, account_id: str) -> Response:
        who, params = await caller_and_params(request, account_id)
        return _json(state.create_inbox(who, params))

    @account.get("/inboxes/{inbox_id}")
    async def show_inbox(request: Request, account_id: str, inbox_id: str) -> Response:
        return _json(state.show_inbox(caller(request, account_id), inbox_id))

    @account.api_route("/inboxes/{inbox_id}", methods=["PATCH", "PUT"])
    async def update_inbox(request: Request, account_id: str, inbox_id: str) -> Response:
        who, params = await caller_and_params(request, account_id)
        return _json(state.update_inbox(who, inbox_id, params))

    @account.post("/inboxes/{inbox_id}/reset_secret")
    async def reset_secret(request: Request, account_id: str, inbox_id: str) -> Response:
        return _json(state.reset_inbox_secret(caller(request, account_id), inbox_id))

    # ---- contacts --------------------------------------------------------------------------------------------

    @account.get("/contacts")
    async def list_contacts(request: Request, account_id: str) -> Response:
        return _json(state.list_contacts(caller(request, account_id), dict(request.query_params)))

    @account.post("/contacts")
    async def create_contact(request: Request, account_id: str) -> Response:
        who, params = await caller_and_params(request, account_id)
        return _json(state.create_contact(who, params))

    @account.get("/contacts/search")
    async def search_contacts(request: Request, account_id: str) -> Response:
        return _json(state.search_contacts(caller(request, account_id), dict(request.query_params)))

    @account.post("/contacts/filter")
    async def filter_contacts(request: Request, account_id: str) -> Response:
        who, params = await caller_and_params(request, account_id)
        return _json(state.filter_contacts(who, params))

    @account.get("/contacts/{contact_id}")
    async def show_contact(request: Request, account_id: str, contact_id: str) -> Response:
        include = cast_bool(request.query_params.get("include_contact_inboxes"))
        return _json(
            state.show_contact(
                caller(request, account_id), contact_id, with_contact_inboxes=include is not False
            )
        )

    @account.api_route("/contacts/{contact_id}", methods=["PATCH", "PUT"])
    async def update_contact(request: Request, account_id: str, contact_id: str) -> Response:
        who, params = await caller_and_params(request, account_id)
        return _json(state.update_contact(who, contact_id, params))

    @account.delete("/contacts/{contact_id}")
    async def delete_contact(request: Request, account_id: str, contact_id: str) -> Response:
        state.delete_contact(caller(request, account_id), contact_id)
        return _empty()

    @account.post("/contacts/{contact_id}/contact_inboxes")
    async def create_contact_inbox(request: Request, account_id: str, contact_id: str) -> Response:
        who, params = await caller_and_params(request, account_id)
        return _json(state.create_contact_inbox(who, contact_id, params))

    @account.get("/contacts/{contact_id}/contactable_inboxes")
    async def contactable_inboxes(request: Request, account_id: str, contact_id: str) -> Response:
        return _json(state.contactable_inboxes(caller(request, account_id), contact_id))

    @account.get("/contacts/{contact_id}/conversations")
    async def contact_conversations(request: Request, account_id: str, contact_id: str) -> Response:
        return _json(state.contact_conversations(caller(request, account_id), contact_id))

    @account.post("/contact_inboxes/filter")
    async def filter_contact_inboxes(request: Request, account_id: str) -> Response:
        who, params = await caller_and_params(request, account_id)
        return _json(state.filter_contact_inboxes(who, params))

    # ---- conversations and messages --------------------------------------------------------------------------

    @account.get("/conversations")
    async def list_conversations(request: Request, account_id: str) -> Response:
        return _json(state.list_conversations(caller(request, account_id), dict(request.query_params)))

    @account.post("/conversations")
    async def create_conversation(request: Request, account_id: str) -> Response:
        who, params = await caller_and_params(request, account_id)
        return _json(state.create_conversation(who, params))

    @account.get("/conversations/{conversation_id}")
    async def show_conversation(request: Request, account_id: str, conversation_id: str) -> Response:
        return _json(state.show_conversation(caller(request, account_id), conversation_id))

    @account.post("/conversations/{conversation_id}/toggle_status")
    async def toggle_status(request: Request, account_id: str, conversation_id: str) -> Response:
        who, params = await caller_and_params(request, account_id)
        return _json(state.toggle_status(who, conversation_id, params))

    @account.get("/conversations/{conversation_id}/messages")
    async def list_messages(request: Request, account_id: str, conversation_id: str) -> Response:
        return _json(
            state.list_messages(caller(request, account_id), conversation_id, dict(request.query_params))
        )

    @account.post("/conversations/{conversation_id}/messages")
    async def create_message(request: Request, account_id: str, conversation_id: str) -> Response:
        who = caller(request, account_id)
        params, uploads = await _read_params(request)
        # Signed blob ids sent as strings stand for uploads the sandbox never received: nothing to attach.
        return _json(state.create_message(who, conversation_id, params, uploads=uploads))

    # ---- account webhooks ------------------------------------------------------------------------------------

    @account.get("/webhooks")
    async def list_webhooks(request: Request, account_id: str) -> Response:
        return _json(state.list_webhooks(caller(request, account_id)))

    @account.post("/webhooks")
    async def create_webhook(request: Request, account_id: str) -> Response:
        who, params = await caller_and_params(request, account_id, admin=True)
        return _json(state.create_webhook(who, params))

    @account.api_route("/webhooks/{webhook_id}", methods=["PATCH", "PUT"])
    async def update_webhook(request: Request, account_id: str, webhook_id: str) -> Response:
        who, params = await caller_and_params(request, account_id, admin=True)
        return _json(state.update_webhook(who, webhook_id, params))

    @account.delete("/webhooks/{webhook_id}")
    async def delete_webhook(request: Request, account_id: str, webhook_id: str) -> Response:
        state.delete_webhook(caller(request, account_id), webhook_id)
        return _empty()

    api.include_router(account)

    # ---- control routes --------------------------------------------------------------------------------------

    control = APIRouter(prefix=CONTROL_PREFIX)

    async def control_body(request: Request) -> Any:
        body = await request.body()
        if not body.strip():
            return {}
        try:
            return json.loads(body)
        except ValueError:
            raise SandboxError(400, {"error": "the body must be JSON"}) from None

    async def control_object(request: Request) -> dict[str, Any]:
        body = await control_body(request)
        if not isinstance(body, dict):
            raise SandboxError(422, {"error": "the body must be a JSON object"})
        return body

    @control.get("/faults")
    async def list_faults() -> Response:
        """The remaining fault rules."""
        return _json({"faults": faults.rules})

    @control.post("/faults")
    async def add_faults(request: Request) -> Response:
        """Add one rule (an object), several (a list), or ``{"rules": [...]}``."""
        body = await control_body(request)
        items = body.get("rules") if isinstance(body, dict) and "rules" in body else body
        items = items if isinstance(items, list) else [items]
        try:
            rules = [FaultRule.from_dict(item) for item in items]
        except (TypeError, ValueError) as exc:
            raise SandboxError(422, {"error": str(exc)}) from None
        for rule in rules:
            faults.add(rule)
        return _json({"faults": faults.rules})

    @control.delete("/faults")
    async def clear_faults() -> Response:
        """Remove every fault rule."""
        faults.clear()
        return _json({"faults": []})

    @control.post("/reset")
    async def reset_all() -> Response:
        """Restore the default data; clear faults, request and delivery logs, webhooks, auto-reply."""
        reset()
        return _json({"reset": True, "state": state.counts()})

    @control.get("/state")
    async def counts() -> Response:
        """Record counts, pending deliveries and the auto-reply setting."""
        data: dict[str, Any] = {**state.counts(), "faults": len(faults.rules)}
        if dispatcher is not None:
            data["pending_deliveries"] = dispatcher.pending
        data["auto_reply"] = state.auto_reply
        data["auto_reply_delay"] = state.auto_reply_delay
        return _json(data)

    @control.get("/requests")
    async def list_requests() -> Response:
        """Every API request so far as ``{"method", "path", "status"}``."""
        return _json({"requests": [{"method": m, "path": p, "status": s} for m, p, s in requests.entries]})

    @control.delete("/requests")
    async def clear_requests() -> Response:
        """Forget the recorded requests."""
        requests.clear()
        return _json({"requests": []})

    @control.get("/deliveries")
    async def list_deliveries(request: Request) -> Response:
        """The webhook delivery log; ``?wait=S`` first waits up to S seconds for the queue to drain."""
        if dispatcher is None:
            return _json({"deliveries": [], "drained": True})
        drained = True
        wait = request.query_params.get("wait")
        if wait:
            try:
                seconds = min(max(float(wait), 0.0), 60.0)
            except ValueError:
                raise SandboxError(422, {"error": "wait must be a number of seconds"}) from None
            drained = await asyncio.to_thread(dispatcher.wait, seconds)
        return _json({"deliveries": dispatcher.log, "drained": drained and dispatcher.pending == 0})

    @control.post("/conversations/{conversation_id}/reply")
    async def contact_reply(request: Request, conversation_id: str) -> Response:
        """The contact writes ``content`` in the conversation (an incoming message)."""
        body = await control_body(request)
        content = body.get("content") if isinstance(body, dict) else None
        if not isinstance(content, str):
            raise SandboxError(422, {"error": "content must be a string"})
        return _json(state.reply(_path_id(conversation_id), content))

    @control.post("/webhooks")
    async def preseed_webhook(request: Request) -> Response:
        """Add an account webhook, optionally with a chosen ``secret`` (default: every event)."""
        body = await control_object(request)
        return _json(
            state.add_webhook(
                body.get("url"),
                secret=body.get("secret"),
                subscriptions=body.get("subscriptions"),
                name=body.get("name"),
                default_subscriptions=True,
            )
        )

    @control.post("/auto_reply")
    async def auto_reply(request: Request) -> Response:
        """Set ``{"text": "..." | null, "delay": seconds}``."""
        body = await control_object(request)
        try:
            state.set_auto_reply(body.get("text"), delay=body.get("delay", state.auto_reply_delay))
        except ValueError as exc:
            raise SandboxError(422, {"error": str(exc)}) from None
        return _json({"auto_reply": state.auto_reply, "auto_reply_delay": state.auto_reply_delay})

    @control.get("/attachments/{attachment_id}/{filename}")
    async def attachment(attachment_id: str, filename: str) -> Response:
        """Serve an uploaded attachment (the ``data_url`` of messages)."""
        stored = state.attachment(_path_id(attachment_id))
        if stored is None:
            raise SandboxError(404, NOT_FOUND_BODY)
        return Response(content=stored.data, media_type=stored.content_type)

    api.include_router(control)

    return SandboxMiddleware(api, faults=faults, requests=requests)
