"""The Airflow plugin that serves the Neoleads webhook receiver on the API server at ``/neoleads``.

Airflow loads plugins in every process (scheduler, workers, DAG processor), but only the API server mounts
``fastapi_apps`` and adds ``fastapi_root_middlewares``. So the entries here are small ASGI shims: importing
this module costs almost nothing and never opens the event store.

- :class:`LazyReceiverApp` builds the real receiver (FastAPI, SQLAlchemy, the store) when first needed.
- :class:`ReceiverRootMiddleware` runs around the whole API server. At startup it builds and warms the
  receiver up (connections resolved, store opened and migrated), before the server accepts a request, so
  the first delivery is answered as fast as the rest. On a webhook URL it moves the unsigned mode's
  ``?token=`` out of the query string before anything can log it: Airflow 3.1's access log writes query
  strings, wrong guesses included.
- :class:`~neoleads_provider.connection_test_button.ConnectionTestPortMiddleware` mends the connections list's
  Test button for Neoleads connections (Airflow 3.3 sends ``"port": 0`` for a connection without a port).

Airflow does not authenticate plugin apps; the receiver authenticates every delivery itself.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from airflow.plugins_manager import AirflowPlugin

from neoleads_provider.connection_test_button import ConnectionTestPortMiddleware
from neoleads_provider.webhooks import URL_PREFIX, URL_TOKEN_SCOPE_KEY

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, MutableMapping

    Scope = MutableMapping[str, Any]
    Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
    Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class LazyReceiverApp:
    """An ASGI app that builds :func:`neoleads_provider.webhooks.app.create_app` on first use."""

    def __init__(self, **create_app_kwargs: Any) -> None:
        self._kwargs = {"auto_migrate": True, **create_app_kwargs}
        self._app: Any = None
        self._lock = threading.Lock()

    @property
    def app(self) -> Any:
        """The receiver app (:class:`~neoleads_provider.webhooks.app.WebhookReceiverApp`), built now if it was not yet."""
        if self._app is None:
            with self._lock:
                if self._app is None:
                    from neoleads_provider.webhooks.app import create_app

                    self._app = create_app(**self._kwargs)
        return self._app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            app = self.app
        except Exception as exc:
            from neoleads_provider.exceptions import NeoleadsConfigError

            if scope["type"] != "http" or not isinstance(exc, NeoleadsConfigError):
                raise
            # A setting the receiver cannot run with ([neoleads] webhook_max_body_bytes...): say which, as a
            # 503 the sender may retry once it is fixed, never a bare 500. The message holds no secret.
            import json

            body = json.dumps({"detail": f"receiver misconfigured: {exc}"}).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await app(scope, receive, send)

    def warm_up(self) -> None:
        """Build the receiver and warm it up (blocking); a failure is logged, never raised."""
        import logging

        from neoleads_provider.connection import DEFAULT_CONN_ID

        try:
            self.app.warm_up((DEFAULT_CONN_ID,))
        except Exception:
            logging.getLogger("neoleads_provider.webhooks.app").exception(
                "Neoleads webhook receiver could not warm up; the first delivery will finish the job"
            )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} built={self._app is not None}>"


receiver_app = LazyReceiverApp()

_WEBHOOK_PATH = f"{URL_PREFIX}/webhooks/".encode()
#: How long the API server's startup waits for the receiver's warm-up at most.
WARM_UP_WAIT_SECONDS = 10.0


def _take_token(scope: Scope) -> None:
    query: bytes = scope.get("query_string", b"")
    if b"token" not in query:
        return
    from urllib.parse import parse_qsl, urlencode

    pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
    tokens = [value for key, value in pairs if key == "token"]
    if tokens:
        scope[URL_TOKEN_SCOPE_KEY] = tokens[-1]
        scope["query_string"] = urlencode([(key, value) for key, value in pairs if key != "token"]).encode()


class ReceiverRootMiddleware:
    """Around the whole API server: warm the receiver up at startup; keep URL tokens out of every log."""

    def __init__(self, app: Any, receiver: LazyReceiverApp | None = None) -> None:
        self.app = app
        self.receiver = receiver if receiver is not None else receiver_app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            raw_path: bytes = scope.get("raw_path") or scope.get("path", "").encode("latin-1")
            if _WEBHOOK_PATH in raw_path:
                # The scope object is the one the server's access log reads when the response goes out.
                _take_token(scope)
        elif kind == "lifespan":
            receive = self._warming_up(receive)
        await self.app(scope, receive, send)

    def _warming_up(self, receive: Receive) -> Receive:
        async def receive_and_warm_up() -> Any:
            message = await receive()
            if message.get("type") == "lifespan.startup":
                import anyio.to_thread

                # Before the startup message reaches the API server, which accepts requests only after it;
                # but never longer than WARM_UP_WAIT_SECONDS (an unreachable store must not hold the whole
                # API server back): the warm-up then finishes in the background.
                warming = threading.Thread(target=self.receiver.warm_up, name="neoleads-warm-up", daemon=True)
                warming.start()
                await anyio.to_thread.run_sync(warming.join, WARM_UP_WAIT_SECONDS)
            return message

        return receive_and_warm_up


class NeoleadsPlugin(AirflowPlugin):
    """Mounts the Neoleads webhook receiver at ``/neoleads`` (``POST /neoleads/webhooks/{conn_id}``).

    Its middlewares warm the receiver up, keep URL tokens out of logs, and mend the connections list's Test
    button for Neoleads connections (:mod:`neoleads_provider.connection_test_button`).
    """

    name = "neoleads"
    fastapi_apps = [{"app": receiver_app, "url_prefix": URL_PREFIX, "name": "Neoleads webhooks"}]
    fastapi_root_middlewares = [
        {"middleware": ReceiverRootMiddleware, "args": [], "kwargs": {}, "name": "Neoleads webhook receiver"},
        {
            "middleware": ConnectionTestPortMiddleware,
            "args": [],
            "kwargs": {},
            "name": "Neoleads connection Test button",
        },
    ]
