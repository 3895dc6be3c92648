"""Makes the Test button of the Airflow UI's connections list work for Neoleads connections.

Airflow 3.3's list page tests a stored connection by posting it back to ``POST /api/v2/connections/test``
with ``"port": Number(connection.port)``: a connection with no port (the Neoleads form hides the field)
arrives with port ``0``. From 3.3.1 on the API server compares that port with the stored one (``null``)
and, finding they differ, will not restore the stored secrets: 3.3.2 answers 400 "The host or port to test
differs from the stored connection", 3.3.1 tests the masked token ``***``.

:class:`ConnectionTestPortMiddleware` (one of the plugin's ``fastapi_root_middlewares``) removes that ``0``
from a test request for a ``neoleads`` connection, so Airflow compares nothing about the port and tests the
stored connection as stored (its port included), its secrets restored. Port 0 is no destination and a client
may always leave the port out, so nothing else changes: the host is still compared, and Airflow still decides
who may test what.
Every other request passes untouched; the check costs a string comparison.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, MutableMapping

    Scope = MutableMapping[str, Any]
    Message = MutableMapping[str, Any]
    Receive = Callable[[], Awaitable[Message]]
    Send = Callable[[Message], Awaitable[None]]

#: The route both Test buttons post to (after the API server's base path, if it has one).
TEST_ROUTE = "/api/v2/connections/test"
#: A test request is a small JSON object; a bigger body is passed on unread.
MAX_TEST_BODY_BYTES = 64 * 1024
CONN_TYPE = "neoleads"


def without_unset_port(body: bytes) -> bytes | None:
    """``body`` without its ``"port": 0``, if it is a test request for a Neoleads connection; else None."""
    try:
        request = json.loads(body)
    except ValueError:
        return None
    if not isinstance(request, dict) or request.get("conn_type") != CONN_TYPE:
        return None
    port = request.get("port")
    # bool is an int in Python: `false` is not the UI's 0.
    if port != 0 or isinstance(port, bool):
        return None
    del request["port"]
    return json.dumps(request).encode()


class ConnectionTestPortMiddleware:
    """Around the whole API server: drop the list page's ``"port": 0`` from Neoleads connection tests."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope.get("method") != "POST"
            or not str(scope.get("path", "")).endswith(TEST_ROUTE)
        ):
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message.get("type") != "http.request":
                break  # the client went away: pass on what there is
            size += len(message.get("body", b""))
            if not message.get("more_body", False) or size > MAX_TEST_BODY_BYTES:
                break
        complete = messages[-1].get("type") == "http.request" and not messages[-1].get("more_body", False)
        fixed = without_unset_port(b"".join(m.get("body", b"") for m in messages)) if complete else None
        if fixed is not None:
            messages = [{"type": "http.request", "body": fixed, "more_body": False}]
            scope = dict(scope)
            scope["headers"] = [
                (name, str(len(fixed)).encode() if name.lower() == b"content-length" else value)
                for name, value in scope.get("headers", [])
            ]

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)
