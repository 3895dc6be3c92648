"""The standalone receiver: the same app, at the same path, as on the Airflow API server.

``neoleads webhooks serve`` runs this where the API server is not reachable from Neoleads, or to keep
webhook traffic off it. Connections are resolved from the secrets backend, ``AIRFLOW_CONN_*`` variables
and the metadata database, as Airflow does outside its servers.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TYPE_CHECKING, Any

from neoleads_provider.plugins import URL_PREFIX
from neoleads_provider.webhooks.asgi import send_json

if TYPE_CHECKING:
    from collections.abc import Callable, MutableMapping

    from sqlalchemy import Engine  # noqa: TID251 - a type only

__all__ = ["create_server_app", "serve"]

log = logging.getLogger(__name__)
access_log = logging.getLogger("neoleads_provider.webhooks.access")


def _printable(text: Any) -> str:
    """The path as one log line: a percent-decoded ``%0d%0a`` must not forge a second line."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


class AccessLogMiddleware:
    """Log method, path and status of each request; never the query string, which may hold ``?token=``."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0
        started = time.perf_counter()

        async def send_and_record(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            client = scope.get("client")
            access_log.info(
                '%s "%s %s" %s %.1f ms',
                client[0] if client else "-",
                scope.get("method"),
                _printable(scope.get("path")),
                status or 500,
                (time.perf_counter() - started) * 1000,
            )


class _Mounted:
    """Serve ``app`` below ``prefix`` as Starlette's ``Mount`` would, and 404 everything else.

    The standalone server has nothing else to route, so a FastAPI parent app (two more layers of
    middleware per delivery) would only cost time.
    """

    def __init__(self, prefix: str, app: Any) -> None:
        self._prefix = prefix
        self._app = app

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self._app(scope, receive, send)  # lifespan
            return
        path: str = scope["path"]
        if path.startswith(self._prefix + "/"):
            root_path = scope.get("root_path", "") + self._prefix
            await self._app({**scope, "root_path": root_path}, receive, send)
            return
        if scope["type"] == "http":
            await send_json(send, 404, {"detail": "Not Found"})


def create_server_app(
    *,
    engine_factory: Callable[[], Engine] | None = None,
    resolve_connection: Callable[[str], Any] | None = None,
    clock: Callable[[], float] = time.time,
    access_log: bool = True,
) -> Any:
    """Return an ASGI app with the receiver mounted at ``/neoleads``, at the paths the Airflow plugin uses.

    :param access_log: log method, path, status and time of every request (never the query string).
    """
    from neoleads_provider.webhooks.app import create_app

    app: Any = _Mounted(
        URL_PREFIX,
        create_app(engine_factory=engine_factory, resolve_connection=resolve_connection, clock=clock),
    )
    return AccessLogMiddleware(app) if access_log else app


def serve(
    host: str = "127.0.0.1",
    port: int = 8082,
    *,
    db_url: str | None = None,
    log_level: str = "info",
    access_log: bool = True,
) -> None:
    """Migrate the event store once, then serve the receiver with uvicorn until interrupted.

    :param db_url: the event store URL; default ``[neoleads] events_db_url``.
    :param access_log: write a line per request; the store records every accepted delivery in any case.
    :raises sqlalchemy.exc.SQLAlchemyError: the store cannot be reached or migrated at start.
    """
    import uvicorn

    from neoleads_provider.store.engine import get_engine, safe_url
    from neoleads_provider.store.migrate import migrate

    engine = get_engine(db_url)
    version = migrate(engine)
    log.info("Neoleads event store %s is at schema version %s", safe_url(engine.url), version)
    app = create_server_app(engine_factory=lambda: get_engine(db_url), access_log=access_log)
    log.info("Receiving Neoleads webhooks at http://%s:%s%s/webhooks/<conn_id>", host, port, URL_PREFIX)
    # uvicorn's own access log prints query strings; AccessLogMiddleware replaces it.
    if access_log:
        _plain_access_log(log_level)
    uvicorn.run(app, host=host, port=port, access_log=False, log_level=log_level)


def _plain_access_log(log_level: str) -> None:
    """Write access lines straight to stderr in a plain format, as uvicorn's own access log would.

    Passed on to Airflow's logging set-up (a structlog formatter), each line cost more CPU than verifying
    and storing the delivery it describes.
    """
    if any(getattr(handler, "neoleads_plain_access", False) for handler in access_log.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(name)s: %(message)s"))
    handler.neoleads_plain_access = True  # type: ignore[attr-defined]
    access_log.addHandler(handler)
    access_log.propagate = False
    access_log.setLevel(log_level.upper())
