"""Which Airflow connection a webhook URL names, and whether it can receive: looked up once per TTL.

The receiver resolves ``/webhooks/{conn_id}`` through :class:`ConnectionCache`: a connection found, or not
found, is reused for ``ttl`` seconds (so a flood of deliveries costs one secrets-backend lookup per id and
TTL), and a failed verification may force one fresh read per TTL (a rotated secret works at once).
Unknown ids and connections of another type are the same :class:`Endpoint` ("unknown"): the receiver
answers both alike, so a stranger learns nothing about the other connections.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from neoleads_provider.connection import CONN_TYPE, NeoleadsConnectionSettings

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "CONNECTION_CACHE_TTL_SECONDS",
    "MAX_CACHED_CONNECTIONS",
    "MAX_CACHED_UNKNOWN_IDS",
    "ConnectionCache",
    "ConnectionLookupError",
    "Endpoint",
    "default_resolve_connection",
    "endpoint_from_connection",
]

log = logging.getLogger("neoleads_provider.webhooks.app")

CONNECTION_CACHE_TTL_SECONDS = 30.0
# Random ids from the internet must not grow the cache (or the log throttle) without bound. Ids that name
# no Neoleads connection are kept apart, so a flood of them never pushes a real connection out.
MAX_CACHED_CONNECTIONS = 1024
MAX_CACHED_UNKNOWN_IDS = 4096


def default_resolve_connection(conn_id: str) -> Any | None:
    """Look ``conn_id`` up the way Airflow does in this process; None when no backend defines it.

    ``Connection.get_connection_from_secrets`` walks the configured secrets backend, then
    ``AIRFLOW_CONN_*`` environment variables, then the metadata database. That works both inside the
    API server and in the standalone receiver (which the Task SDK's ``Connection.get`` does not: outside a
    server context it skips the metadata database).
    """
    from airflow.exceptions import AirflowNotFoundException
    from airflow.models.connection import Connection

    try:
        return Connection.get_connection_from_secrets(conn_id)
    except AirflowNotFoundException:
        return None


@dataclass
class Endpoint:
    """What a connection id resolved to: usable settings, nothing, or a configuration problem."""

    status: Literal["ok", "unknown", "misconfigured"]
    settings: NeoleadsConnectionSettings | None = None
    fetched_at: float = 0.0


class ConnectionLookupError(Exception):
    """The secrets backend or metadata database could not be asked (not the same as "not defined")."""


def endpoint_from_connection(conn_id: str, conn: Any, now: float) -> Endpoint:
    if conn is None:
        return Endpoint("unknown", fetched_at=now)
    conn_type = getattr(conn, "conn_type", None)
    if conn_type != CONN_TYPE:
        # Answered exactly like an unknown id: the endpoint must not tell a stranger which other
        # connections exist. The operator learns it here.
        log.error(
            "Neoleads webhook endpoint %r refused deliveries: connection field 'conn_type' is %r, expected %r",
            conn_id,
            conn_type,
            CONN_TYPE,
        )
        return Endpoint("unknown", fetched_at=now)
    try:
        settings = NeoleadsConnectionSettings.from_connection(conn, require_token=False)
    except Exception as exc:
        # NeoleadsConfigError messages name the field and never include secret values.
        log.error("Neoleads webhook endpoint %r refused deliveries: %s", conn_id, exc)
        return Endpoint("misconfigured", fetched_at=now)
    if not settings.account_id:
        log.error(
            "Neoleads webhook endpoint %r refused deliveries: connection field 'account_id' is required, so "
            "that deliveries for other accounts can be refused",
            conn_id,
        )
        return Endpoint("misconfigured", fetched_at=now)
    return Endpoint("ok", settings=settings, fetched_at=now)


class ConnectionCache:
    """Per-process connection lookups, kept ``ttl`` seconds, with a lock per id against stampedes."""

    def __init__(self, resolve: Callable[[str], Any], *, ttl: float, clock: Callable[[], float]) -> None:
        self._resolve = resolve
        self._ttl = ttl
        self._clock = clock
        #: Connections that exist (usable or misconfigured), and ids that name none, each its own LRU.
        self._entries: OrderedDict[str, Endpoint] = OrderedDict()
        self._unknown: OrderedDict[str, Endpoint] = OrderedDict()
        self._forced_at: dict[str, float] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._unknown.clear()
            self._forced_at.clear()

    def warm(self, conn_id: str) -> Endpoint:
        """Look ``conn_id`` up ahead of its first delivery, keeping the answer only if it can receive.

        At startup a connection may not exist *yet* (a deployment creates it after the server is up): an
        "unknown" remembered for a TTL would refuse its first deliveries, so only a usable one is kept.
        """
        entry = self.get(conn_id)
        if entry.status != "ok":
            with self._lock:
                self._entries.pop(conn_id, None)
                self._unknown.pop(conn_id, None)
        return entry

    def _key_lock(self, conn_id: str) -> threading.Lock:
        with self._lock:
            return self._locks.setdefault(conn_id, threading.Lock())

    def cached(self, conn_id: str) -> Endpoint | None:
        """The cached entry if it is younger than the TTL (a dict lookup: no thread needed), else None."""
        with self._lock:
            for entries in (self._entries, self._unknown):
                entry = entries.get(conn_id)
                if entry is not None and self._clock() - entry.fetched_at < self._ttl:
                    entries.move_to_end(conn_id)
                    return entry
        return None

    def _fetch(self, conn_id: str) -> Endpoint:
        try:
            conn = self._resolve(conn_id)
        except Exception as exc:
            from airflow.exceptions import AirflowNotFoundException

            if not isinstance(exc, AirflowNotFoundException):
                with self._lock:
                    # Nothing is cached for it, so nothing else would ever drop its lock.
                    if conn_id not in self._entries and conn_id not in self._unknown:
                        self._locks.pop(conn_id, None)
                raise ConnectionLookupError(type(exc).__name__) from exc
            conn = None
        entry = endpoint_from_connection(conn_id, conn, self._clock())
        with self._lock:
            entries, other, limit = (
                (self._unknown, self._entries, MAX_CACHED_UNKNOWN_IDS)
                if entry.status == "unknown"
                else (self._entries, self._unknown, MAX_CACHED_CONNECTIONS)
            )
            other.pop(conn_id, None)
            entries[conn_id] = entry
            entries.move_to_end(conn_id)
            while len(entries) > limit:
                evicted, _ = entries.popitem(last=False)
                self._forced_at.pop(evicted, None)
                self._locks.pop(evicted, None)
        return entry

    def get(self, conn_id: str) -> Endpoint:
        entry = self.cached(conn_id)
        if entry is not None:
            return entry
        with self._key_lock(conn_id):
            # Another request may have fetched it while this one waited for the lock.
            entry = self.cached(conn_id)
            return entry if entry is not None else self._fetch(conn_id)

    def reread(self, conn_id: str) -> Endpoint | None:
        """Fetch again after a failed verification; None if this id was re-read less than ``ttl`` ago."""
        with self._key_lock(conn_id):
            now = self._clock()
            with self._lock:
                last = self._forced_at.get(conn_id)
                if last is not None and now - last < self._ttl:
                    return None
                self._forced_at[conn_id] = now
            return self._fetch(conn_id)
