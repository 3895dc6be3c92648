"""Turn the ``[neoleads] events_db_url`` setting into one SQLAlchemy engine per URL per process.

The receiver, the sensors, the triggers and the CLI all share the event store through these engines.
SQLite gets WAL so readers (sensors) never block the writer (the receiver); PostgreSQL gets
``pool_pre_ping`` so a restarted database costs one retried checkout instead of a failed request.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import make_url

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from sqlalchemy.engine import URL, Engine

__all__ = [
    "SQLITE_BUSY_TIMEOUT_MS",
    "WalCheckpointer",
    "dispose_engines",
    "get_engine",
    "get_events_db_url",
    "safe_url",
    "write_lock",
]

DEFAULT_DB_FILENAME = "neoleads_events.db"
# A writer waits this long for another writer's lock instead of failing at once with "database is locked".
SQLITE_BUSY_TIMEOUT_MS = 5000

log = logging.getLogger(__name__)

# SQLite's default: a commit that takes the write-ahead log past this many pages copies it into the database.
SQLITE_AUTOCHECKPOINT_PAGES = 1000
# For the receiver's writer, whose log a background thread checkpoints: only a safety net (about 400 MB) in case
# that thread cannot keep up or keeps failing.
WRITER_AUTOCHECKPOINT_PAGES = 100_000
# Passes of one background checkpoint at most, while each copies more of what is left.
_CHECKPOINT_PASSES = 8

_engines: dict[str, Engine] = {}
_lock = threading.Lock()
_write_locks: weakref.WeakKeyDictionary[Engine, threading.Lock] = weakref.WeakKeyDictionary()


def get_events_db_url() -> str:
    """Return the event store URL: ``[neoleads] events_db_url``, else a SQLite file in ``AIRFLOW_HOME``.

    The option can also be set with the environment variable ``AIRFLOW__NEOLEADS__EVENTS_DB_URL``.
    """
    # Imported here: reading Airflow's configuration is not free, and this module is imported by DAG files.
    from airflow.configuration import AIRFLOW_HOME, conf

    url = (conf.get("neoleads", "events_db_url", fallback="") or "").strip()
    if url:
        return url
    return f"sqlite:///{os.path.join(AIRFLOW_HOME, DEFAULT_DB_FILENAME)}"


def safe_url(url: str | URL) -> str:
    """Render a database URL for logs and messages, with any password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable database URL>"


def url_password(url: str) -> str | None:
    """The password in a database URL (to register it for masking), or None when it has none or is unparseable."""
    try:
        password = make_url(url).password
    except Exception:
        return None
    return str(password) if password else None


def _normalise(url: str) -> URL:
    parsed = make_url(url)
    # ``postgresql://`` means psycopg2 to SQLAlchemy; fall back to psycopg 3 when only that one is installed.
    wants_default_driver = parsed.drivername == "postgres" or (
        parsed.drivername == "postgresql" and importlib.util.find_spec("psycopg2") is None
    )
    if wants_default_driver and importlib.util.find_spec("psycopg") is not None:
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _on_sqlite_connect(dbapi_connection: Any, connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        # WAL lets sensors read while the receiver writes. In WAL mode NORMAL keeps every commit across an
        # application crash (a power loss may drop the last few) without FULL's fsync per transaction.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def _create(url: URL) -> Engine:
    if url.get_backend_name() == "sqlite":
        # The receiver's batch insert has one statement text per batch size (up to 256); keep them all prepared.
        engine = create_engine(url, future=True, connect_args={"cached_statements": 512})
        event.listen(engine, "connect", _on_sqlite_connect)
        return engine
    # PostgreSQL (and anything else with a server): test a pooled connection before handing it out, and
    # give up on a connect after 10 s rather than the operating system's minutes.
    connect_args = (
        {"connect_timeout": 10}
        if url.get_backend_name() == "postgresql" and "connect_timeout" not in url.query
        else {}
    )
    return create_engine(url, pool_pre_ping=True, future=True, connect_args=connect_args)


def get_engine(url: str | None = None) -> Engine:
    """Return the process-wide engine for ``url`` (default: :func:`get_events_db_url`), creating it once.

    :param url: a SQLAlchemy URL; ``postgresql://`` uses psycopg 3 when psycopg2 is not installed.
    :raises sqlalchemy.exc.ArgumentError: the URL cannot be parsed.
    """
    key = url or get_events_db_url()
    engine = _engines.get(key)
    if engine is not None:
        return engine
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _create(_normalise(key))
            _engines[key] = engine
        return engine


def write_lock(engine: Engine) -> AbstractContextManager[Any]:
    """Hold this around a write transaction: on SQLite it queues this process's writers on a lock.

    SQLite allows one writer at a time. Without the lock, concurrent threads collide on the database lock
    and SQLite's busy handler puts the losers to sleep for milliseconds at a time, so a burst of writers
    (the receiver's worker threads) spends more time asleep than writing. Writers in other processes
    still meet the busy handler. Other databases lock rows, not the file: no lock there.
    """
    if engine.dialect.name != "sqlite":
        return contextlib.nullcontext()
    with _lock:
        lock = _write_locks.get(engine)
        if lock is None:
            lock = _write_locks[engine] = threading.Lock()
    return lock


def dispose_engines() -> None:
    """Close every cached engine's pooled connections and forget the engines (tests, forks)."""
    with _lock:
        engines = list(_engines.values())
        _engines.clear()
    for engine in engines:
        engine.dispose()


def _forget_engines_in_child() -> None:
    global _lock
    # A forked child must not reuse the parent's sockets; close=False leaves them to the parent.
    # The lock may have been held by a parent thread that does not exist in the child.
    _lock = threading.Lock()
    for engine in list(_engines.values()):
        engine.dispose(close=False)
    _engines.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_engines_in_child)


class WalCheckpointer:
    """Copy a busy SQLite writer's write-ahead log into the database file from a thread of its own.

    By default SQLite checkpoints inside whichever commit takes the log past 1000 pages: every few thousand
    webhook deliveries, one commit of the receiver's writer stalled for the copy, holding up every delivery
    queued behind it (the receiver's p99 latency was those stalls, and they cost a sixth of its throughput).
    The writer raises that threshold a hundredfold for its own connection with :meth:`writer_connected` (a safety
    net, not the usual path) and calls :meth:`committed` after each commit; this thread then runs ``PRAGMA wal_checkpoint(PASSIVE)`` at most every ``interval``
    seconds, which neither waits for nor blocks the writer or readers. Other connections keep SQLite's
    default. Not used for other databases.
    """

    def __init__(self, engine: Engine, *, interval: float = 0.5) -> None:
        self._engine = engine
        self._interval = interval
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._dirty = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._last_warning = 0.0

    @staticmethod
    def writer_connected(dbapi_connection: Any) -> None:
        """Leave checkpoints to this thread, bar a safety net (until :meth:`writer_released`)."""
        dbapi_connection.execute(f"PRAGMA wal_autocheckpoint={WRITER_AUTOCHECKPOINT_PAGES}")
        # When the log starts over after a burst, give the disk back down to 64 MB.
        dbapi_connection.execute(f"PRAGMA journal_size_limit={64 * 1024 * 1024}")

    @staticmethod
    def writer_released(dbapi_connection: Any) -> None:
        """Give ``dbapi_connection`` SQLite's default back before it returns to the pool."""
        dbapi_connection.execute(f"PRAGMA wal_autocheckpoint={SQLITE_AUTOCHECKPOINT_PAGES}")

    def committed(self) -> None:
        """Note a commit of the writer; start the checkpointing thread if it is not running."""
        self._dirty = True
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stopping = False
                self._wake.clear()
                self._thread = threading.Thread(target=self._run, name="neoleads-wal-checkpoint", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        """Checkpoint what is left and let the thread end (the writer has gone idle)."""
        with self._lock:
            self._stopping = True
            self._wake.set()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(30)
        if self._dirty:
            # Commits made after the thread's last look (another writer's, as it ended): copy them now.
            self.checkpoint()

    def checkpoint(self) -> None:
        """Passive checkpoints now, until the log is copied; errors are logged, never raised (the next look retries).

        SQLite starts the log over only once a checkpoint has copied all of it; under steady writes one pass
        never quite does (frames arrive while it copies), so it goes again while each pass leaves less.
        """
        self._dirty = False
        try:
            with self._engine.connect() as conn:
                left = None
                for _ in range(_CHECKPOINT_PASSES):
                    _, frames, copied = conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").one()
                    if copied >= frames or (left is not None and frames - copied >= left):
                        break
                    left = frames - copied
        except Exception as exc:
            now = time.monotonic()
            if now - self._last_warning >= 60:  # the next one retries; once a minute is enough to say so
                self._last_warning = now
                log.warning("Neoleads event store: background WAL checkpoint failed: %s", exc)

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(self._interval)
            if self._dirty or self._stopping:
                self.checkpoint()
