"""The middleware that mends the connections list's Test button: what it changes and all it leaves alone.

The real API server (every Airflow release the package admits) is in tests/test_plugin.py; Chromium clicking
the button is in tests/deployment.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from neoleads_provider.connection_test_button import (
    MAX_TEST_BODY_BYTES,
    ConnectionTestPortMiddleware,
    without_unset_port,
)

# What the list page of Airflow 3.3.2 posts for a stored Neoleads connection without a port.
ROW_BUTTON = {
    "conn_type": "neoleads",
    "connection_id": "neoleads_default",
    "description": "",
    "extra": json.dumps({"account_id": 1, "webhook_secrets": "***"}),
    "host": "https://app.neoleads.com",
    "login": "",
    "password": "***",
    "port": 0,
    "schema": "",
}


def test_the_port_zero_of_a_neoleads_test_request_is_removed() -> None:
    fixed = without_unset_port(json.dumps(ROW_BUTTON).encode())
    assert fixed is not None
    assert json.loads(fixed) == {key: value for key, value in ROW_BUTTON.items() if key != "port"}


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"port": None}, "no port: Airflow compares nothing"),
        ({"port": 443}, "a real port is the user's to test"),
        ({"port": False}, "JSON false is not the UI's 0"),
        ({"port": "0"}, "a string is not what the UI sends"),
        ({"conn_type": "http"}, "another connection type"),
        ({"conn_type": None}, "no connection type"),
    ],
)
def test_anything_else_is_left_alone(change: dict[str, Any], why: str) -> None:
    assert without_unset_port(json.dumps({**ROW_BUTTON, **change}).encode()) is None, why


@pytest.mark.parametrize("body", [b"", b"not json", b"[1, 2]", b'"neoleads"', b"\xff\xfe"])
def test_a_body_that_is_no_json_object_is_left_alone(body: bytes) -> None:
    assert without_unset_port(body) is None


class Recorder:
    """An ASGI app that reads the whole body and remembers what it got."""

    def __init__(self) -> None:
        self.scope: dict[str, Any] = {}
        self.body = b""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.scope = scope
        while True:
            message = await receive()
            self.body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


def call(path: str, chunks: list[bytes], *, method: str = "POST") -> Recorder:
    """Run the middleware on one request whose body arrives in ``chunks``; return what the app saw."""
    inner = Recorder()
    messages = [
        {"type": "http.request", "body": chunk, "more_body": number < len(chunks) - 1}
        for number, chunk in enumerate(chunks)
    ]
    length = str(sum(len(chunk) for chunk in chunks)).encode()
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "headers": [(b"content-type", b"application/json"), (b"content-length", length)],
    }

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: Any) -> None:
        pass

    asyncio.run(ConnectionTestPortMiddleware(inner)(scope, receive, send))
    return inner


def test_the_middleware_rewrites_the_body_and_its_length_even_when_it_comes_in_pieces() -> None:
    body = json.dumps(ROW_BUTTON).encode()
    inner = call("/api/v2/connections/test", [body[:10], body[10:40], body[40:]])
    assert "port" not in json.loads(inner.body)
    assert json.loads(inner.body)["password"] == "***"  # Airflow, not the middleware, fills in the secret
    assert dict(inner.scope["headers"])[b"content-length"] == str(len(inner.body)).encode()


def test_under_a_base_path_too() -> None:
    inner = call("/airflow/api/v2/connections/test", [json.dumps(ROW_BUTTON).encode()])
    assert "port" not in json.loads(inner.body)


@pytest.mark.parametrize(
    ("path", "method"),
    [
        ("/api/v2/connections", "POST"),  # creating a connection keeps what the form sent
        ("/api/v2/connections/test", "PATCH"),
        ("/api/v2/connections/neoleads_default", "PATCH"),
    ],
)
def test_other_requests_pass_byte_for_byte(path: str, method: str) -> None:
    body = json.dumps(ROW_BUTTON).encode()
    inner = call(path, [body[:7], body[7:]], method=method)
    assert inner.body == body


def test_a_large_body_is_passed_on_whole_and_unread() -> None:
    body = json.dumps({**ROW_BUTTON, "description": "x" * (2 * MAX_TEST_BODY_BYTES)}).encode()
    chunks = [body[i : i + 4096] for i in range(0, len(body), 4096)]
    inner = call("/api/v2/connections/test", chunks)
    assert inner.body == body
