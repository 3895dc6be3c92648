"""Test helpers for the sandbox over HTTP: a tiny API client and a webhook receiver on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

import requests

from neoleads_provider.testing import DEFAULT_TOKEN, NeoleadsSandbox

if TYPE_CHECKING:
    import subprocess


class Api:
    """A tiny client: paths are relative to the account unless they start with ``/``."""

    def __init__(self, sandbox: NeoleadsSandbox, token: str | None = DEFAULT_TOKEN) -> None:
        self.base = sandbox.url
        self.account = f"{sandbox.url}/api/v1/accounts/{sandbox.account_id}"
        self.session = requests.Session()
        self.session.trust_env = False
        if token is not None:
            self.session.headers["api_access_token"] = token

    def url(self, path: str) -> str:
        return self.base + path if path.startswith("/") else f"{self.account}/{path}"

    def get(self, path: str, **kwargs) -> requests.Response:
        return self.session.get(self.url(path), timeout=10, **kwargs)

    def post(self, path: str, **kwargs) -> requests.Response:
        return self.session.post(self.url(path), timeout=10, **kwargs)

    def patch(self, path: str, **kwargs) -> requests.Response:
        return self.session.patch(self.url(path), timeout=10, **kwargs)

    def delete(self, path: str, **kwargs) -> requests.Response:
        return self.session.delete(self.url(path), timeout=10, **kwargs)

    def contact(self, **fields) -> dict:
        response = self.post("contacts", json=fields)
        assert response.status_code == 200, response.text
        return response.json()["payload"]

    def conversation(self, **fields) -> dict:
        response = self.post("conversations", json=fields)
        assert response.status_code == 200, response.text
        return response.json()

    def message(self, conversation_id: int, **fields) -> dict:
        response = self.post(f"conversations/{conversation_id}/messages", json=fields)
        assert response.status_code == 200, response.text
        return response.json()


class Receiver:
    """A webhook receiver on 127.0.0.1 that records each POST and answers with ``status``."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, str], bytes]] = []
        self.status = 200
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                outer.received.append((self.path, dict(self.headers.items()), body))
                self.send_response(outer.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def bodies(self, path: str | None = None) -> list[dict]:
        return [json.loads(body) for p, _, body in self.received if path is None or p == path]

    def events(self, path: str | None = None) -> list[str]:
        return [body["event"] for body in self.bodies(path)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def wait_for_sandbox_cli(process: subprocess.Popen[str], port: int, timeout: float = 30) -> requests.Response:
    """Poll ``neoleads sandbox`` on ``port`` until its API answers; return the profile response.

    :raises AssertionError: with the process's output, if it exits or ``timeout`` passes first.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return requests.get(
                f"http://127.0.0.1:{port}/api/v1/profile",
                headers={"api_access_token": DEFAULT_TOKEN},
                timeout=2,
            )
        except requests.exceptions.ConnectionError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the sandbox CLI did not come up: {process.communicate()}") from None
            time.sleep(0.1)
