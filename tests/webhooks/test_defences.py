"""The receiver under slow and hostile senders, over real sockets: deadlines, the unverified-bytes budget,
resource exhaustion, and readiness before the first delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest

from neoleads_provider.store.engine import dispose_engines, get_engine
from neoleads_provider.webhooks import URL_TOKEN_SCOPE_KEY
from neoleads_provider.webhooks.answers import Refusal
from neoleads_provider.webhooks.app import create_app
from neoleads_provider.webhooks.connections import ConnectionCache
from neoleads_provider.webhooks.delivery import DeliveryHandler
from neoleads_provider.webhooks.server import _head_deadline_protocol, create_server_app
from tests._helpers import (
    connection_env,
    free_port,
    message_payload,
    post_webhook,
    serving,
    set_env,
    signed_now,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

CONN_ID = "neoleads_defended"
SECRET = "defences-secret-7a91c3"


@pytest.fixture(autouse=True)
def _connection(monkeypatch) -> None:
    set_env(monkeypatch, connection_env(CONN_ID, webhook_secrets=[SECRET]))


def _body(message_id: int = 1) -> bytes:
    return json.dumps(message_payload(message_id)).encode()


def _stalled(
    port: int, *, declared: int = 1000, sent: bytes = b'{"event":', prefix: str = ""
) -> socket.socket:
    """A POST that declares ``declared`` body bytes and sends only ``sent``, then waits."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    head = (
        f"POST {prefix}/webhooks/{CONN_ID} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    ).encode()
    sock.sendall(head + sent)
    return sock


def _response(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection (or ``timeout`` passes)."""
    sock.settimeout(timeout)
    data = b""
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while chunk := sock.recv(4096):
            data += chunk
    return data


def _status_line(sock: socket.socket, timeout: float) -> bytes:
    return _response(sock, timeout).split(b"\r\n", 1)[0]


def _port(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


def test_a_stalled_body_is_cut_off_at_the_deadline_with_408(events_url: str) -> None:
    app = create_app(engine_factory=lambda: get_engine(events_url), request_deadline=1.0)
    with serving(app) as base:
        sock = _stalled(_port(base))
        started = time.monotonic()
        try:
            # Read until the server closes: it answers, then does not keep the connection for more.
            response = _response(sock, timeout=5)
            elapsed = time.monotonic() - started
            assert response.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), response
            assert b"did not arrive within 1 s" in response
            assert 0.8 <= elapsed < 3, elapsed
        finally:
            sock.close()
        # A genuine delivery is still taken.
        body = _body()
        assert post_webhook(f"{base}/webhooks/{CONN_ID}", body, signed_now(SECRET, body, "d-1"))[0] == 200


def test_unverified_bodies_beyond_the_budget_are_answered_503_and_genuine_ones_get_through(
    events_url: str,
) -> None:
    app = create_app(
        engine_factory=lambda: get_engine(events_url),
        max_body_bytes=4000,
        max_unverified_bytes=8000,
        max_unverified_bytes_per_client=8000,
        request_deadline=1.5,
    )
    with serving(app) as base:
        port = _port(base)
        # Two uploads that sent all but their last byte hold the whole budget.
        stalled = [_stalled(port, declared=4000, sent=b"{" + b" " * 3998) for _ in range(2)]
        try:
            time.sleep(0.3)
            assert app.deliveries.unverified_bytes == 7998
            third = _stalled(port, declared=4000, sent=b"{" + b" " * 100)
            try:
                assert _status_line(third, timeout=3) == b"HTTP/1.1 503 Service Unavailable"
            finally:
                third.close()
            # Declaring a large body without sending it holds nothing.
            assert app.deliveries.unverified_bytes == 7998
            # Once the stalled ones hit their deadline the budget is free again.
            for sock in stalled:
                assert _status_line(sock, timeout=5) == b"HTTP/1.1 408 Request Timeout"
        finally:
            for sock in stalled:
                sock.close()
        body = _body()
        status, answer = post_webhook(f"{base}/webhooks/{CONN_ID}", body, signed_now(SECRET, body, "d-2"))
        assert (status, answer["status"]) == (200, "stored")
        assert app.deliveries.unverified_bytes == 0


def test_one_client_holds_at_most_its_share_of_the_budget(events_url: str) -> None:
    app = create_app(
        engine_factory=lambda: get_engine(events_url),
        max_body_bytes=4000,
        max_unverified_bytes=16000,
        request_deadline=1.5,
    )
    assert app.deliveries.max_unverified_bytes_per_client == 4000
    with serving(app) as base:
        port = _port(base)
        first = _stalled(port, declared=4000, sent=b"{" + b" " * 3000)
        try:
            time.sleep(0.3)
            second = _stalled(port, declared=4000, sent=b"{" + b" " * 1500)
            try:
                assert _status_line(second, timeout=3) == b"HTTP/1.1 503 Service Unavailable"
            finally:
                second.close()
        finally:
            first.close()


STALLED_SENDERS = 4000


@pytest.fixture
def many_descriptors() -> Iterator[None]:
    """Room for the stalled senders' sockets at both ends (this process serves and sends)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = 2 * STALLED_SENDERS + 500
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"needs {needed} open files, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, needed), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.usefixtures("many_descriptors")
def test_many_stalled_senders_do_not_stop_a_genuine_delivery(events_url: str) -> None:
    app = create_server_app(
        engine_factory=lambda: get_engine(events_url), access_log=False, warm_up=[CONN_ID]
    )
    with serving(app) as base:
        port = _port(base)
        stalled: list[socket.socket] = []
        try:
            # Small bodies: the budget is not what is tested here, the number of waiting sockets is.
            for _ in range(STALLED_SENDERS):
                stalled.append(_stalled(port, declared=200, sent=b"{", prefix="/neoleads"))
            time.sleep(1.0)  # all of them are waiting for their bodies now
            assert _status_line(stalled[0], timeout=0.05) == b""  # not answered: still waiting
            body = _body()
            started = time.monotonic()
            status, answer = post_webhook(
                f"{base}/neoleads/webhooks/{CONN_ID}", body, signed_now(SECRET, body, "d-3")
            )
            elapsed = time.monotonic() - started
            assert (status, answer["status"]) == (200, "stored")
            assert elapsed < 1.0, elapsed
        finally:
            for sock in stalled:
                sock.close()


def test_a_request_head_that_never_completes_is_dropped() -> None:
    import uvicorn

    protocol = _head_deadline_protocol(0.5)
    assert protocol is not None

    async def app(scope: Any, receive: Any, send: Any) -> None:  # never reached
        raise AssertionError("the request head never completed")

    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, http=protocol, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        try:
            sock.sendall(b"POST /neoleads/webhooks/x HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # no blank line
            started = time.monotonic()
            sock.settimeout(5)
            assert sock.recv(4096) == b""  # closed by the server
            assert time.monotonic() - started < 3
        finally:
            sock.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _handler(submit: Any) -> DeliveryHandler:
    """A handler on its own (no app, no store): the connection comes from the environment."""
    return DeliveryHandler(connections=ConnectionCache(_resolve, ttl=30, clock=time.time), submit=submit)


def _resolve(conn_id: str) -> Any:
    from neoleads_provider.webhooks.connections import default_resolve_connection

    return default_resolve_connection(conn_id)


async def _call(handler: DeliveryHandler, body: bytes, headers: dict[str, str], **scope_extra: Any) -> Any:
    """Run one delivery through the handler alone; return the status, headers and JSON answer."""
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": f"/webhooks/{CONN_ID}",
        "query_string": b"",
        "headers": [(name.lower().encode(), value.encode()) for name, value in headers.items()],
        "client": ("127.0.0.1", 1),
        **scope_extra,
    }
    await handler(scope, receive, send, CONN_ID)
    start = next(message for message in sent if message["type"] == "http.response.start")
    body_out = b"".join(
        message.get("body", b"") for message in sent if message["type"] == "http.response.body"
    )
    return start["status"], dict(start["headers"]), json.loads(body_out)


@pytest.mark.parametrize(
    "failure", [OSError(errno.EMFILE, "Too many open files"), MemoryError()], ids=["emfile", "memory"]
)
def test_running_out_of_descriptors_or_memory_is_answered_503_not_500(failure: BaseException) -> None:
    async def submit(delivery: Any) -> Any:
        raise failure

    body = _body()
    status, headers, answer = asyncio.run(_call(_handler(submit), body, signed_now(SECRET, body, "d-4")))
    assert status == 503
    assert headers[b"retry-after"] == b"5"
    assert answer == {"detail": "receiver temporarily out of resources"}


def test_the_handler_runs_without_the_app_and_answers_what_submit_says() -> None:
    submitted: list[Any] = []

    async def submit(delivery: Any) -> Any:
        submitted.append(delivery)
        if len(submitted) == 2:
            raise Refusal(422, "the payload's account 9 is not this endpoint's account")
        return "stored", 7

    handler = _handler(submit)
    body = _body()
    status, _, answer = asyncio.run(_call(handler, body, signed_now(SECRET, body, "d-5")))
    assert (status, answer) == (200, {"status": "stored", "delivery_id": "d-5", "event_id": 7})
    assert (submitted[0].conn_id, submitted[0].account_id, submitted[0].delivery_id) == (CONN_ID, 1, "d-5")
    status, _, answer = asyncio.run(_call(handler, body, signed_now(SECRET, body, "d-6")))
    assert (status, answer["detail"]) == (422, "the payload's account 9 is not this endpoint's account")


def test_the_url_token_the_root_middleware_took_out_still_authenticates(monkeypatch) -> None:
    set_env(
        monkeypatch,
        connection_env(CONN_ID, webhook_allow_unsigned=True, webhook_url_token="url-token-0f3e7d9a2b"),
    )

    async def submit(delivery: Any) -> Any:
        return "stored", 1

    handler = _handler(submit)
    body = _body()
    headers = {"Content-Type": "application/json"}

    # As ReceiverRootMiddleware leaves it: the token in the scope, none in the query string.
    scope_token = {URL_TOKEN_SCOPE_KEY: "url-token-0f3e7d9a2b"}
    assert asyncio.run(_call(handler, body, headers, **scope_token))[0] == 200
    assert asyncio.run(_call(handler, body, headers))[0] == 401


def test_the_root_middleware_takes_the_token_out_of_the_query_string_and_warms_up() -> None:
    from neoleads_provider.plugins import ReceiverRootMiddleware

    seen: list[dict[str, Any]] = []
    warmed: list[bool] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append(dict(scope))
        if scope["type"] == "lifespan":
            assert (await receive())["type"] == "lifespan.startup"

    class Receiver:
        def warm_up(self) -> None:
            warmed.append(True)

    middleware = ReceiverRootMiddleware(inner, receiver=Receiver())  # type: ignore[arg-type]

    async def run() -> None:
        async def nothing() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def startup() -> dict[str, Any]:
            assert not warmed
            return {"type": "lifespan.startup"}

        async def ignore(message: Any) -> None:
            return None

        for path, query in (
            ("/neoleads/webhooks/c1", b"a=1&token=secret-one&b=2"),
            ("/api/v2/dags", b"token=not-ours"),
        ):
            await middleware(
                {"type": "http", "path": path, "raw_path": path.encode(), "query_string": query},
                nothing,
                ignore,
            )
        await middleware({"type": "lifespan"}, startup, ignore)

    asyncio.run(run())
    webhook, other, _ = seen
    assert webhook["query_string"] == b"a=1&b=2"
    assert webhook[URL_TOKEN_SCOPE_KEY] == "secret-one"
    assert other["query_string"] == b"token=not-ours"
    assert URL_TOKEN_SCOPE_KEY not in other
    assert warmed == [True]


def test_the_warmed_up_standalone_app_has_its_connection_and_store_ready(events_url: str) -> None:
    # A fresh engine: the fixture's migration left a pooled connection behind in the cached one.
    dispose_engines()
    app = create_server_app(
        engine_factory=lambda: get_engine(events_url), access_log=False, warm_up=[CONN_ID]
    )
    receiver = app.app
    cached = receiver.deliveries.connections.cached(CONN_ID)
    assert cached is not None
    assert cached.status == "ok"
    pool = get_engine(events_url).pool
    assert pool.checkedin() == 1  # a pooled connection waits for the first write


def test_a_connection_created_after_the_warm_up_receives_at_once(events_url: str, monkeypatch) -> None:
    """A deployment creates its connection after the server started: warm-up must not remember "unknown"."""
    app = create_server_app(
        engine_factory=lambda: get_engine(events_url), access_log=False, warm_up=["neoleads_later"]
    )
    assert app.app.deliveries.connections.cached("neoleads_later") is None
    set_env(monkeypatch, connection_env("neoleads_later", webhook_secrets=[SECRET]))
    with serving(app) as base:
        body = _body()
        status, answer = post_webhook(
            f"{base}/neoleads/webhooks/neoleads_later", body, signed_now(SECRET, body, "later-1")
        )
    assert (status, answer["status"]) == (200, "stored")
