"""The receiver's one write: commit a batch of deliveries, durably, before any of them is acknowledged.

Used from the receiver's writer thread only (``webhooks/batching.py`` hands it the deliveries queued while
the previous batch ran). Each writer thread keeps one connection across its transactions: checking one out
of the pool per batch cost more than the insert itself (a ping round trip to PostgreSQL before, a rollback
after). :meth:`EventWriter.release` closes it when the thread goes idle.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from neoleads_provider.store.engine import WalCheckpointer, write_lock
from neoleads_provider.store.errors import EventStoreError, error_text, is_transient, translate_errors
from neoleads_provider.store.repository import insert_events

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from sqlalchemy import Connection, Engine

    from neoleads_provider.store.repository import NewEvent

__all__ = ["MIGRATION_RETRY_SECONDS", "EventWriter", "RowRefusedError"]

# After a failed migration, the next delivery tries again only this much later.
MIGRATION_RETRY_SECONDS = 30
_R = TypeVar("_R")


class RowRefusedError(EventStoreError):
    """The database refused this one row's values (a value too long for its column, say)."""


@dataclass
class _MigrationGuard:
    """Run ``migrate`` once per database, on the first write; retry a failure only every 30 s."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    done: set[str] = field(default_factory=set)
    failed_at: dict[str, float] = field(default_factory=dict)

    def ensure(self, engine: Engine) -> None:
        key = str(engine.url)
        if key in self.done:
            return
        with self.lock:
            if key in self.done:
                return
            failed = self.failed_at.get(key)
            if failed is not None and time.monotonic() - failed < MIGRATION_RETRY_SECONDS:
                raise EventStoreError("the event store migration failed recently; not retrying yet")
            from neoleads_provider.store.migrate import migrate

            try:
                migrate(engine)
            except Exception:
                self.failed_at[key] = time.monotonic()
                raise
            self.done.add(key)


class EventWriter:
    """Commit deliveries to the event store; every failure is an :class:`EventStoreError`.

    :param engine_factory: returns the store's engine (read on every write, so tests can swap it).
    :param auto_migrate: create or upgrade the schema on the first write (the Airflow plugin does).
    """

    def __init__(self, engine_factory: Callable[[], Engine], *, auto_migrate: bool = False) -> None:
        self._engine_factory = engine_factory
        self._migrations = _MigrationGuard() if auto_migrate else None
        self._held = threading.local()
        self._checkpointers: dict[Engine, WalCheckpointer] = {}

    def engine(self) -> Engine:
        """The store's engine, migrated first if this writer migrates."""
        engine = self._engine_factory()
        if self._migrations is not None:
            self._migrations.ensure(engine)
        return engine

    def open(self) -> None:
        """Open the store now (migrating it, if this writer migrates) and keep a pooled connection ready.

        :raises EventStoreError: the store cannot be reached or migrated.
        """
        with translate_errors():
            engine = self.engine()
            # Checked out and returned: the pool keeps it, so the first write needs no new connection.
            with engine.connect():
                pass

    def _connection(self, engine: Engine) -> Connection:
        conn: Connection | None = getattr(self._held, "conn", None)
        if conn is not None and conn.engine is engine and not conn.closed and not conn.invalidated:
            return conn
        self._drop_connection()
        conn = engine.connect()
        try:
            if engine.dialect.name == "sqlite":
                WalCheckpointer.writer_connected(conn.connection.driver_connection)
            elif engine.dialect.name == "postgresql":
                # A batch is one INSERT statement, which PostgreSQL commits atomically on its own; in a
                # transaction block psycopg would spend two more round trips on it (BEGIN, then COMMIT), a
                # third of the writer's time. The statement returns only once its commit is durable.
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        except BaseException:
            conn.close()
            raise
        self._held.conn = conn
        return conn

    def _checkpointer(self, engine: Engine) -> WalCheckpointer | None:
        if engine.dialect.name != "sqlite":
            return None
        checkpointer = self._checkpointers.get(engine)
        if checkpointer is None:
            checkpointer = self._checkpointers[engine] = WalCheckpointer(engine)
        return checkpointer

    def _drop_connection(self) -> Engine | None:
        """Close this thread's kept connection, if any; return its engine."""
        conn: Connection | None = getattr(self._held, "conn", None)
        self._held.conn = None
        if conn is None:
            return None
        if conn.engine in self._checkpointers:
            with contextlib.suppress(Exception):  # it may be the broken one being dropped
                WalCheckpointer.writer_released(conn.connection.driver_connection)
        with contextlib.suppress(Exception):
            conn.close()
        return conn.engine

    def release(self) -> None:
        """The writer thread goes idle: close its kept connection and finish checkpointing for it."""
        engine = self._drop_connection()
        checkpointer = self._checkpointers.get(engine) if engine is not None else None
        if checkpointer is not None:
            checkpointer.stop()

    def _commit(self, work: Callable[[Connection], _R]) -> _R:
        """Run ``work`` in one committed transaction; its result is returned only after the commit."""
        from sqlalchemy.exc import DBAPIError

        for attempt in (1, 2):
            engine = self.engine()
            with write_lock(engine):
                conn = self._connection(engine)
                try:
                    with conn.begin():
                        result = work(conn)
                except DBAPIError as exc:
                    self._drop_connection()
                    # The database dropped the kept connection (a restart, an idle timeout). The insert is
                    # idempotent (ON CONFLICT DO NOTHING), so it runs once more on a new, pinged connection;
                    # a delivery whose first insert did commit is then answered "duplicate".
                    if attempt == 2 or not exc.connection_invalidated:
                        raise
                    continue
                except BaseException:
                    self._drop_connection()
                    raise
            # Committed: nothing after this point may turn the answer into a refusal.
            checkpointer = self._checkpointer(engine)
            if checkpointer is not None:
                with contextlib.suppress(Exception):
                    checkpointer.committed()
            return result
        raise AssertionError("unreachable")

    def write(self, events: Sequence[NewEvent]) -> list[tuple[int, bool] | EventStoreError]:
        """Commit ``events``; return ``(event id, inserted)`` per event, or why that one was not stored.

        All rows go in one transaction. If the database refuses it over a row's values, each event is
        committed on its own, so only that one fails (with :class:`RowRefusedError`); an event committed
        alone is never reported as failed because a later one was.

        :raises EventStoreError: the store is unavailable (nothing was committed).
        """
        from sqlalchemy.exc import DataError, IntegrityError

        if not events:
            return []
        try:
            return list(self._commit(lambda conn: insert_events(conn, events)))
        except (IntegrityError, DataError) as exc:
            if len(events) == 1:
                return [RowRefusedError(error_text(exc))]
        except EventStoreError:
            raise
        except Exception as exc:
            raise EventStoreError(error_text(exc), transient=is_transient(exc)) from exc
        outcomes: list[tuple[int, bool] | EventStoreError] = []
        for new in events:
            try:
                outcomes.extend(self.write([new]))
            except EventStoreError as exc:
                outcomes.append(exc)
        return outcomes
