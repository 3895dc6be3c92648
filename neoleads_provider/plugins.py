"""The Airflow plugin that serves the Neoleads webhook receiver on the API server at ``/neoleads``.

Airflow loads plugins in every process (scheduler, workers, DAG processor), but only the API server mounts
``fastapi_apps``. So the entry here is a small ASGI shim that builds the real receiver (FastAPI, SQLAlchemy,
the store) on its first request: importing this module costs almost nothing and never opens the event store.
The store schema is created or upgraded once per process, on the first delivery, not per request.

Airflow does not authenticate plugin apps; the receiver authenticates every delivery itself.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from airflow.plugins_manager import AirflowPlugin

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, MutableMapping

    Scope = MutableMapping[str, Any]
    Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
    Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

URL_PREFIX = "/neoleads"


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
        await self.app(scope, receive, send)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} built={self._app is not None}>"


receiver_app = LazyReceiverApp()


class NeoleadsPlugin(AirflowPlugin):
    """Mounts the Neoleads webhook receiver at ``/neoleads`` (``POST /neoleads/webhooks/{conn_id}``)."""

    name = "neoleads"
    fastapi_apps = [{"app": receiver_app, "url_prefix": URL_PREFIX, "name": "Neoleads webhooks"}]
