"""The standalone receiver: the same app, at the same path, as on the Airflow API server.

``neoleads webhooks serve`` runs this where the API server is not reachable from Neoleads, or to keep
webhook traffic off it. Connections are resolved from the secrets backend, ``AIRFLOW_CONN_*`` variables
and the metadata database, as Airflow does outside its servers.
"""

from __future__ import annotations

import gc
import logging
import time
from typing import TYPE_CHECKING, Any

from neoleads_provider.webhooks import URL_PREFIX
from neoleads_provider.webhooks.asgi import send_json

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, MutableMapping

    from sqlalchemy import Engine  # noqa: TID251 - a type only

    from neoleads_provider.webhooks.access_log import AccessLog

__all__ = ["create_server_app", "serve"]

log = logging.getLogger(__name__)


class _Mounted:
    """Serve ``app`` below ``prefix`` as Starlette's ``Mount`` would, and 404 everything else.

    The standalone server has nothing else to route, so a FastAPI parent app (two more layers of
    middleware per delivery) would only cost time.
    """

    def __init__(self, prefix: str, app: Any) -> None:
        self._prefix = prefix
        #: The mounted app (the receiver).
        self.app = app

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)  # lifespan
            return
        path: str = scope["path"]
        if path.startswith(self._prefix + "/"):
            root_path = scope.get("root_path", "") + self._prefix
            await self.app({**scope, "root_path": root_path}, receive, send)
            return
        if scope["type"] == "http":
            await send_json(send, 404, {"detail": "Not Found"})


def create_server_app(
    *,
    engine_factory: Callable[[], Engine] | None = None,
    resolve_connection: Callable[[str], Any] | None = None,
    clock: Callable[[], float] = time.time,
    access_log: bool | AccessLog = True,
    warm_up: Iterable[str] | None = None,
) -> Any:
    """Return an ASGI app with the receiver mounted at ``/neoleads``, at the paths the Airflow plugin uses.

    :param access_log: write client, method, path, status and time of every request (never the query
        string) to standard error, or to the :class:`~neoleads_provider.webhooks.access_log.AccessLog` given.
    :param warm_up: connection ids to resolve, with the store opened, before this returns (see
        :meth:`~neoleads_provider.webhooks.app.WebhookReceiverApp.warm_up`); None skips the warm-up.
    """
    from neoleads_provider.webhooks.access_log import AccessLog, AccessLogMiddleware
    from neoleads_provider.webhooks.app import create_app

    receiver = create_app(engine_factory=engine_factory, resolve_connection=resolve_connection, clock=clock)
    if warm_up is not None:
        receiver.warm_up(warm_up)
    app: Any = _Mounted(URL_PREFIX, receiver)
    if access_log is False:
        return app
    return AccessLogMiddleware(app, access_log if isinstance(access_log, AccessLog) else None)


def _raise_open_file_limit() -> None:
    """Raise this process's open-file limit to its hard limit: each waiting sender holds a descriptor."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        log.info("Raised the open-file limit from %s to %s", soft, hard)


def _head_deadline_protocol(deadline: float) -> Any:
    """uvicorn's HTTP protocol, closing a connection whose request head is not in after ``deadline`` s.

    uvicorn bounds the time between requests (keep-alive) but not the time a request's headers may take to
    arrive: thousands of senders trickling headers would hold their sockets forever. The body has its own
    deadline in the receiver (408). None when uvicorn's httptools protocol is not installed.
    """
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # pragma: no cover - uvicorn without httptools
        return None

    class HeadDeadlineProtocol(HttpToolsProtocol):
        _head_timer: Any = None

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(deadline, self._head_timed_out)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            # No request in progress: the head never arrived. Nothing to answer; just let go.
            idle = self.cycle is None or self.cycle.response_complete
            if idle and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeadDeadlineProtocol


def serve(
    host: str = "127.0.0.1",
    port: int = 8082,
    *,
    db_url: str | None = None,
    log_level: str = "info",
    access_log: bool = True,
    warm_conn_ids: Iterable[str] = (),
) -> None:
    """Migrate the event store once, warm the receiver up, then serve it with uvicorn until interrupted.

    :param db_url: the event store URL; default ``[neoleads] events_db_url``.
    :param access_log: write a line per request; the store records every accepted delivery in any case.
    :param warm_conn_ids: connections to resolve before the port opens (``neoleads_default`` always is).
    :raises sqlalchemy.exc.SQLAlchemyError: the store cannot be reached or migrated at start.
    """
    import uvicorn

    from neoleads_provider.connection import DEFAULT_CONN_ID
    from neoleads_provider.store.engine import get_engine, safe_url
    from neoleads_provider.store.migrate import migrate
    from neoleads_provider.webhooks.access_log import AccessLogMiddleware
    from neoleads_provider.webhooks.delivery import REQUEST_DEADLINE_SECONDS

    engine = get_engine(db_url)
    version = migrate(engine)
    log.info("Neoleads event store %s is at schema version %s", safe_url(engine.url), version)
    _raise_open_file_limit()
    # Ready before the port opens: the first delivery must not pay for imports, lookups or the store.
    app = create_server_app(
        engine_factory=lambda: get_engine(db_url),
        # Access lines are INFO: a quieter --log-level leaves them out, as it did uvicorn's.
        access_log=access_log
        and logging.getLevelNamesMapping().get(log_level.upper(), logging.INFO) <= logging.INFO,
        warm_up=(*warm_conn_ids, DEFAULT_CONN_ID) if warm_conn_ids else (DEFAULT_CONN_ID,),
    )
    # Everything loaded so far (Airflow, the app) lives as long as the server: out of the collector's sight,
    # a full collection under load walks only what deliveries allocated, not the half million objects of
    # the imports (tens of milliseconds each time, in the p99).
    gc.collect()
    gc.freeze()
    log.info("Receiving Neoleads webhooks at http://%s:%s%s/webhooks/<conn_id>", host, port, URL_PREFIX)
    # uvicorn's own access log prints query strings; AccessLogMiddleware replaces it.
    http = _head_deadline_protocol(REQUEST_DEADLINE_SECONDS) or "auto"
    try:
        uvicorn.run(app, host=host, port=port, access_log=False, log_level=log_level, http=http)
    finally:
        if isinstance(app, AccessLogMiddleware):
            app.log.close()
