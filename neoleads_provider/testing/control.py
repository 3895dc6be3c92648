"""The ``/_sandbox/`` control routes: faults, resets, the request and delivery logs, contact replies.

They drive the sandbox from another process (``neoleads sandbox``'s users, other test runners); the
request log leaves them out (see ``SandboxMiddleware``). ``NeoleadsSandbox`` offers the same in Python.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from starlette.responses import Response

from neoleads_provider.testing.errors import NOT_FOUND_BODY, SandboxError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from starlette.requests import Request

    from neoleads_provider.testing.routing import RouteContext, SandboxRouter

    Handler = Callable[..., Awaitable[Response]]


async def _json_body(request: Request) -> Any:
    """The request's JSON body (``{}`` when empty); 400 when it is not JSON."""
    body = await request.body()
    if not body.strip():
        return {}
    try:
        return json.loads(body)
    except ValueError:
        raise SandboxError(400, {"error": "the body must be JSON"}) from None


async def _json_object(request: Request) -> dict[str, Any]:
    """The request's JSON body, which must be an object (422 otherwise)."""
    body = await _json_body(request)
    if not isinstance(body, dict):
        raise SandboxError(422, {"error": "the body must be a JSON object"})
    return body


# (methods, path, handler name) of each control route, in the order _Handlers defines them.
_ROUTES: list[tuple[str, str, str]] = []


def _route(methods: str, path: str) -> Callable[[Handler], Handler]:
    """Mark a :class:`_Handlers` method as the handler of ``path`` (below ``/_sandbox``)."""

    def mark(function: Handler) -> Handler:
        _ROUTES.append((methods, path, function.__name__))
        return function

    return mark


class _Handlers:
    """The control routes' handlers, over one app's state, faults and logs."""

    def __init__(self, context: RouteContext) -> None:
        self.context = context
        self.state = context.state
        self.faults = context.faults
        self.requests = context.requests
        self.dispatcher = context.dispatcher

    @_route("GET", "/faults")
    async def list_faults(self, request: Request) -> Response:
        """The remaining fault rules."""
        return self.context.json({"faults": self.faults.rules})

    @_route("POST", "/faults")
    async def add_faults(self, request: Request) -> Response:
        """Add one rule (an object), several (a list), or ``{"rules": [...]}``."""
        body = await _json_body(request)
        items = body.get("rules") if isinstance(body, dict) and "rules" in body else body
        items = items if isinstance(items, list) else [items]
        try:
            self.faults.add_all(items)
        except (TypeError, ValueError) as exc:
            raise SandboxError(422, {"error": str(exc)}) from None
        return self.context.json({"faults": self.faults.rules})

    @_route("DELETE", "/faults")
    async def clear_faults(self, request: Request) -> Response:
        """Remove every fault rule."""
        self.faults.clear()
        return self.context.json({"faults": []})

    @_route("POST", "/reset")
    async def reset_all(self, request: Request) -> Response:
        """Restore the default data; clear faults, request and delivery logs, webhooks, auto-reply."""
        self.context.reset()
        return self.context.json({"reset": True, "state": self.state.counts()})

    @_route("GET", "/state")
    async def counts(self, request: Request) -> Response:
        """Record counts, pending deliveries and the auto-reply setting."""
        data: dict[str, Any] = {**self.state.counts(), "faults": len(self.faults.rules)}
        if self.dispatcher is not None:
            data["pending_deliveries"] = self.dispatcher.pending
        data["auto_reply"] = self.state.auto_reply
        data["auto_reply_delay"] = self.state.auto_reply_delay
        return self.context.json(data)

    @_route("GET", "/requests")
    async def list_requests(self, request: Request) -> Response:
        """Every API request so far as ``{"method", "path", "status"}``."""
        return self.context.json(
            {"requests": [{"method": m, "path": p, "status": s} for m, p, s in self.requests.entries]}
        )

    @_route("DELETE", "/requests")
    async def clear_requests(self, request: Request) -> Response:
        """Forget the recorded requests."""
        self.requests.clear()
        return self.context.json({"requests": []})

    @_route("GET", "/deliveries")
    async def list_deliveries(self, request: Request) -> Response:
        """The webhook delivery log; ``?wait=S`` first waits up to S seconds for the queue to drain."""
        dispatcher = self.dispatcher
        if dispatcher is None:
            return self.context.json({"deliveries": [], "drained": True})
        drained = True
        wait = request.query_params.get("wait")
        if wait:
            try:
                seconds = min(max(float(wait), 0.0), 60.0)
            except ValueError:
                raise SandboxError(422, {"error": "wait must be a number of seconds"}) from None
            drained = await asyncio.to_thread(dispatcher.wait, seconds)
        return self.context.json(
            {
                "deliveries": dispatcher.log,
                "drained": drained and dispatcher.pending == 0,
            }
        )

    @_route("POST", "/conversations/{conversation_id}/reply")
    async def contact_reply(self, request: Request, conversation_id: str) -> Response:
        """The contact writes ``content`` in the conversation (an incoming message)."""
        body = await _json_body(request)
        content = body.get("content") if isinstance(body, dict) else None
        if not isinstance(content, str):
            raise SandboxError(422, {"error": "content must be a string"})
        return self.context.json(self.state.reply(self.context.path_id(conversation_id), content))

    @_route("POST", "/webhooks")
    async def preseed_webhook(self, request: Request) -> Response:
        """Add an account webhook, optionally with a chosen ``secret`` (default: every event)."""
        body = await _json_object(request)
        return self.context.json(
            self.state.add_webhook(
                body.get("url"),
                secret=body.get("secret"),
                subscriptions=body.get("subscriptions"),
                name=body.get("name"),
                default_subscriptions=True,
            )
        )

    @_route("POST", "/auto_reply")
    async def auto_reply(self, request: Request) -> Response:
        """Set ``{"text": "..." | null, "delay": seconds}``."""
        body = await _json_object(request)
        try:
            self.state.set_auto_reply(body.get("text"), delay=body.get("delay", self.state.auto_reply_delay))
        except ValueError as exc:
            raise SandboxError(422, {"error": str(exc)}) from None
        return self.context.json(
            {
                "auto_reply": self.state.auto_reply,
                "auto_reply_delay": self.state.auto_reply_delay,
            }
        )

    @_route("GET", "/attachments/{attachment_id}/{filename}")
    async def attachment(self, request: Request, attachment_id: str, filename: str) -> Response:
        """Serve an uploaded attachment (the ``data_url`` of messages)."""
        stored = self.state.attachment(self.context.path_id(attachment_id))
        if stored is None:
            raise SandboxError(404, NOT_FOUND_BODY)
        return Response(content=stored.data, media_type=stored.content_type)


def router(context: RouteContext) -> SandboxRouter:
    """The control routes, below ``/_sandbox``."""
    handlers = _Handlers(context)
    control = context.router(context.CONTROL_PREFIX)
    for methods, path, name in _ROUTES:
        control.handler(methods, path)(getattr(handlers, name))
    return control
