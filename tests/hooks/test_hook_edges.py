"""NeoleadsHook at its edges, over real HTTP to a tiny loopback server: redirects are errors (never followed,
never success, never retried), a token echoed in an error body is scrubbed everywhere the error goes, and a
base URL that is not http(s) fails when the connection is read, before anything is sent."""

from __future__ import annotations

import json
import logging
import pickle
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, quote_plus

import pytest

from neoleads_provider.exceptions import (
    NeoleadsApiError,
    NeoleadsAuthError,
    NeoleadsConfigError,
    NeoleadsError,
    NeoleadsForbiddenError,
    NeoleadsNotFoundError,
    NeoleadsRateLimitError,
    NeoleadsRedirectError,
    NeoleadsServerError,
    NeoleadsTransportError,
    NeoleadsValidationError,
)
from neoleads_provider.hooks.neoleads import NeoleadsHook
from tests._helpers import use_connection

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

# A token whose URL-encoded forms differ from it, so each form is checked on its own.
TOKEN = "s3cr3t/t0ken+x=y"
TOKEN_FORMS = (TOKEN, quote(TOKEN, safe=""), quote_plus(TOKEN), quote(TOKEN, safe="").lower())
CONN_ID = "neoleads_edge"
MESSAGES = "/api/v1/accounts/1/conversations/7/messages"

Answer = tuple[int, dict[str, str], bytes]


class _Scripted(BaseHTTPRequestHandler):
    """Answers whatever ``server.answer(handler)`` returns; records every request line."""

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.server.requests.append((self.command, self.path))  # type: ignore[attr-defined]
        status, headers, body = self.server.answer(self)  # type: ignore[attr-defined]
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    def log_message(self, format: str, *args: Any) -> None:
        pass


class ScriptedServer:
    def __init__(self, server: ThreadingHTTPServer) -> None:
        self._server = server
        self.url = f"http://127.0.0.1:{server.server_address[1]}"

    @property
    def requests(self) -> list[tuple[str, str]]:
        return self._server.requests  # type: ignore[attr-defined]

    def answer(self, answer: Callable[[BaseHTTPRequestHandler], Answer]) -> None:
        self._server.answer = answer  # type: ignore[attr-defined]


@pytest.fixture
def scripted() -> Iterator[ScriptedServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    server.requests = []  # type: ignore[attr-defined]
    server.answer = lambda handler: (204, {}, b"")  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield ScriptedServer(server)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def hook(scripted: ScriptedServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[NeoleadsHook]:
    use_connection(monkeypatch, CONN_ID, host=scripted.url, password=TOKEN, max_retries=2)
    with NeoleadsHook(CONN_ID, backoff_base=0.01, backoff_max=0.02) as hook:
        yield hook


def json_answer(status: int, body: object, **headers: str) -> Answer:
    return status, {"Content-Type": "application/json", **headers}, json.dumps(body).encode()


# ---------------------------------------------------------------- redirects


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_with_a_json_body_is_an_error_not_a_sent_message(hook, scripted, status):
    location = f"https://user:pw@app.example.com{MESSAGES}?token=abc&x=1#frag"
    # The body looks like a sent message: taking it as success would report a message that was never sent.
    scripted.answer(lambda handler: json_answer(status, {"id": 99, "content": "hi"}, Location=location))
    with pytest.raises(NeoleadsRedirectError) as excinfo:
        hook.send_message(7, "hi")
    error = excinfo.value
    assert isinstance(error, NeoleadsApiError)
    assert error.status_code == status
    assert error.location == f"https://app.example.com{MESSAGES}"
    assert str(error) == (
        f"Neoleads POST {MESSAGES} returned {status}: a redirect to https://app.example.com{MESSAGES}; "
        "the base URL should be the server's final address, e.g. https rather than http"
    )
    for hidden in ("user", "pw", "token=abc", "frag"):
        assert hidden not in str(error)
    # Neither followed (to app.example.com, which does not resolve) nor retried.
    assert scripted.requests == [("POST", MESSAGES)]


def test_a_redirect_on_a_read_is_not_retried_and_a_relative_location_is_made_absolute(hook, scripted):
    scripted.answer(lambda handler: (302, {"Location": "/login?next=/app"}, b"<html>moved</html>"))
    with pytest.raises(NeoleadsRedirectError) as excinfo:
        hook.list_inboxes()
    assert excinfo.value.location == f"{scripted.url}/login"
    assert f"GET /api/v1/accounts/1/inboxes returned 302: a redirect to {scripted.url}/login;" in str(
        excinfo.value
    )
    assert scripted.requests == [("GET", "/api/v1/accounts/1/inboxes")]


def test_a_redirect_without_location(hook, scripted):
    scripted.answer(lambda handler: json_answer(304, {}))
    with pytest.raises(
        NeoleadsRedirectError, match=r"returned 304: a redirect with no usable Location; the base"
    ):
        hook.get_conversation(7)
    assert len(scripted.requests) == 1


def test_the_session_is_never_asked_to_follow_redirects(hook, scripted, monkeypatch):
    seen: list[Any] = []
    original = hook.session.request

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("allow_redirects"))
        return original(*args, **kwargs)

    monkeypatch.setattr(hook.session, "request", spy)
    scripted.answer(lambda handler: json_answer(200, {"payload": []}))
    hook.list_inboxes()
    hook.send_message(7, "hi")
    assert seen == [False, False]


# ---------------------------------------------------------------- errors pickle


@pytest.mark.parametrize(
    "error",
    [
        NeoleadsRedirectError("POST", MESSAGES, 301, "https://app.example.com/x", body={"a": 1}),
        NeoleadsRedirectError("GET", "/p", 302, None),
        NeoleadsApiError("GET", "/p", 418, "teapot", body="short and stout"),
        NeoleadsAuthError("GET", "/p", 401, "Invalid Access Token"),
        NeoleadsForbiddenError("GET", "/p", 403, "no"),
        NeoleadsNotFoundError("GET", "/p", 404, "Resource could not be found"),
        NeoleadsValidationError("POST", "/p", 422, "taken", body={"x": 1}, attributes=["email"]),
        NeoleadsRateLimitError("GET", "/p", 429, "Retry later", retry_after=1.5),
        NeoleadsServerError("POST", "/p", 500, "boom"),
        NeoleadsTransportError("POST", "/p", "ReadTimeout: slow", maybe_delivered=True),
        NeoleadsConfigError(
            "Connection 'x': field 'host' must be an http:// or https:// URL, got scheme 'ftp'"
        ),
    ],
    ids=lambda error: type(error).__name__,
)
def test_errors_pickle_and_rebuild(error):
    rebuilt = pickle.loads(pickle.dumps(error))
    assert type(rebuilt) is type(error)
    assert str(rebuilt) == str(error)
    assert rebuilt.args == error.args
    assert vars(rebuilt) == vars(error)


# ---------------------------------------------------------------- the token in error bodies


def echoing(status: int, *, as_json: bool = True) -> Callable[[BaseHTTPRequestHandler], Answer]:
    """Answer ``status`` with a body that repeats the request's token raw and URL-encoded."""

    def answer(handler: BaseHTTPRequestHandler) -> Answer:
        token = handler.headers["api_access_token"]
        if not as_json:
            # Long enough that the token straddles the 300 characters an error quotes of a text body.
            text = "x" * 290 + f" token={token} " + quote(token, safe="")
            return status, {"Content-Type": "text/plain"}, text.encode()
        body = {
            "error": f"Invalid Access Token {token}",
            "message": f"token {token} is not valid here (?api_access_token={quote_plus(token)})",
            "attributes": [f"api_access_token={quote(token, safe='')}"],
            "echo": {token: [quote(token, safe="").lower()]},
        }
        return json_answer(status, body)

    return answer


def assert_no_token(*texts: object) -> None:
    for text in texts:
        blob = text if isinstance(text, bytes) else str(text).encode()
        for form in TOKEN_FORMS:
            assert form.encode() not in blob, f"{form!r} leaked in {text!r}"


@pytest.mark.parametrize(
    ("status", "as_json", "call", "expected"),
    [
        (401, True, lambda hook: hook.list_inboxes(), NeoleadsAuthError),
        (422, True, lambda hook: hook.send_message(7, "hi"), NeoleadsValidationError),
        (500, True, lambda hook: hook.send_message(7, "hi"), NeoleadsServerError),
        (503, True, lambda hook: hook.list_inboxes(), NeoleadsServerError),
        (500, False, lambda hook: hook.send_message(7, "hi"), NeoleadsServerError),
        (401, False, lambda hook: hook.list_inboxes(), NeoleadsAuthError),
    ],
)
def test_a_token_echoed_in_an_error_body_is_scrubbed(hook, scripted, caplog, status, as_json, call, expected):
    caplog.set_level(logging.DEBUG)
    scripted.answer(echoing(status, as_json=as_json))
    with pytest.raises(expected) as excinfo:
        call(hook)
    error = excinfo.value
    assert "***" in str(error)
    rebuilt = pickle.loads(pickle.dumps(error))
    assert_no_token(
        str(error),
        repr(error),
        error.args,
        error.server_message,
        json.dumps(error.body),
        getattr(error, "attributes", ""),
        pickle.dumps(error),
        repr(rebuilt),
        vars(rebuilt),
        caplog.text,
    )
    if status == 503:  # retried, and each retry logged with the error
        assert len(scripted.requests) == 3
        assert "Retrying GET" in caplog.text


def test_a_token_in_a_connection_test_answer_is_scrubbed(hook, scripted):
    scripted.answer(echoing(401))
    ok, message = hook.test_connection()
    assert not ok
    assert message == "The API access token was refused: token *** is not valid here (?api_access_token=***)"
    assert_no_token(message)


# ---------------------------------------------------------------- base URLs that are not http(s)


@pytest.mark.parametrize(
    ("host", "scheme"),
    [
        ("ftp://user:pw@files.example.com", "ftp"),
        ("file:///etc/neoleads", "file"),
        ("ws://127.0.0.1:1", "ws"),
    ],
)
def test_a_non_http_base_url_fails_at_once_before_anything_is_sent(monkeypatch, host, scheme):
    use_connection(monkeypatch, "neoleads_ftp", host=host, password=TOKEN)
    started = time.monotonic()
    with pytest.raises(NeoleadsConfigError) as excinfo:
        NeoleadsHook("neoleads_ftp").send_message(7, "hello", source_id="ext-1")
    assert time.monotonic() - started < 2
    assert not isinstance(excinfo.value, NeoleadsTransportError)
    assert str(excinfo.value) == (
        f"Connection 'neoleads_ftp': field 'host' must be an http:// or https:// URL, got scheme {scheme!r}"
    )
    assert "pw" not in str(excinfo.value)
    assert_no_token(str(excinfo.value))


def test_a_base_url_without_a_host_name_fails_at_once(monkeypatch):
    use_connection(monkeypatch, "neoleads_nohost", host="https://", password=TOKEN)
    with pytest.raises(
        NeoleadsConfigError, match="field 'host' must be an http:// or https:// URL with a host"
    ):
        NeoleadsHook("neoleads_nohost").send_message(7, "hello")


def test_an_unsupported_scheme_met_by_requests_is_never_sent(hook, scripted, monkeypatch):
    # Defence in depth: were a non-http(s) URL ever to reach requests, the error must say it was never sent.
    monkeypatch.setattr(hook, "url_for", lambda path: "ftp://127.0.0.1/x")
    with pytest.raises(NeoleadsTransportError) as excinfo:
        hook.request("POST", "conversations/7/messages", json={"content": "x"})
    assert excinfo.value.maybe_delivered is False
    assert "may have reached the server" not in str(excinfo.value)
    assert isinstance(excinfo.value, NeoleadsError)
