"""The hook resolves proxy and CA-bundle environment settings once, by requests' rules, and still honours them."""

from __future__ import annotations

import socket
import threading
from typing import TYPE_CHECKING

import pytest

from neoleads_provider.hooks.neoleads import NeoleadsHook

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture
def recording_proxy() -> Iterator[tuple[str, list[bytes]]]:
    """A stand-in HTTP proxy on loopback: records each request line and answers a small JSON body."""
    lines: list[bytes] = []
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)  # accept() wakes up this often to see whether the test is over
    body = b'{"payload": []}'
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(10)
            with client:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = client.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                lines.append(data.split(b"\r\n", 1)[0])
                client.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                    + b"Content-Length: "
                    + str(len(body)).encode()
                    + b"\r\n\r\n"
                    + body
                )

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}", lines
    finally:
        stop.set()
        thread.join(5)
        server.close()


def test_http_proxy_from_the_environment_is_used(
    neoleads_sandbox, neoleads_connection, recording_proxy, monkeypatch
) -> None:
    proxy_url, lines = recording_proxy
    monkeypatch.setenv("HTTP_PROXY", proxy_url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    hook = NeoleadsHook()
    assert hook.list_inboxes() == []
    assert hook.list_inboxes() == []
    # Absolute-form request lines are what a client sends to a proxy.
    assert lines == [f"GET {neoleads_sandbox.url}/api/v1/accounts/1/inboxes HTTP/1.1".encode()] * 2
    assert hook.session.trust_env is False


def test_no_proxy_sends_requests_direct(
    neoleads_sandbox, neoleads_connection, recording_proxy, monkeypatch
) -> None:
    proxy_url, lines = recording_proxy
    monkeypatch.setenv("HTTP_PROXY", proxy_url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    inboxes = NeoleadsHook().list_inboxes()
    assert {inbox["id"] for inbox in inboxes} == {1, 2}
    assert lines == []


def test_ca_bundle_from_the_environment(neoleads_sandbox, neoleads_connection, monkeypatch, tmp_path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("not used for http")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))
    assert NeoleadsHook().session.verify == str(bundle)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    assert NeoleadsHook().session.verify is True
