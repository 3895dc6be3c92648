"""The bulk operator's idempotency record (table ``neoleads_send_record``). Functions take a ``Connection``
first and never commit, like the rest of ``store/``.

A row is keyed by the task instance (``dag_id``, ``run_id``, ``task_id``, ``map_index``) and the input row's
``row_key``. The operator writes it ``pending``, with the message's deterministic ``source_id`` and the
conversation it goes to, *before* it posts the message, and ``sent`` with the message id after. A rerun of
the same task instance therefore skips ``sent`` rows, and for ``pending`` ones asks the API whether the
message with that ``source_id`` is already in the conversation (the POST may have committed while its
answer was lost) before sending it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import delete, func, select, update

from neoleads_provider.store.schema import send_records

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy import Connection, Table
    from sqlalchemy.dialects import postgresql, sqlite

__all__ = [
    "SendKey",
    "SendLedger",
    "SendRecord",
    "count_by_state",
    "load_records",
    "mark_pending",
    "mark_sent",
    "purge_older_than",
]

SendState = Literal["pending", "sent"]
MAX_ROW_KEY_LENGTH = 255


@dataclass(frozen=True)
class SendKey:
    """The task instance a bulk send belongs to."""

    dag_id: str
    run_id: str
    task_id: str
    map_index: int = -1

    def where(self) -> list[Any]:
        columns = send_records.c
        return [
            columns.dag_id == self.dag_id,
            columns.run_id == self.run_id,
            columns.task_id == self.task_id,
            columns.map_index == self.map_index,
        ]


@dataclass(frozen=True)
class SendRecord:
    """One input row's send state."""

    row_key: str
    state: SendState
    source_id: str
    contact_id: int | None
    conversation_id: int | None
    message_id: int | None
    updated_at: datetime


def _now() -> datetime:
    return datetime.now(UTC)


def load_records(conn: Connection, key: SendKey) -> dict[str, SendRecord]:
    """Return every record of this task instance, by ``row_key`` (one indexed query: the primary key's prefix)."""
    columns = send_records.c
    statement = select(
        columns.row_key,
        columns.state,
        columns.source_id,
        columns.contact_id,
        columns.conversation_id,
        columns.message_id,
        columns.updated_at,
    ).where(*key.where())
    records = {}
    for row in conn.execute(statement):
        values = row._asdict()
        if values["updated_at"].tzinfo is None:
            # SQLite keeps no zone; everything is written in UTC.
            values["updated_at"] = values["updated_at"].replace(tzinfo=UTC)
        records[row.row_key] = SendRecord(**values)
    return records


def count_by_state(conn: Connection, key: SendKey) -> dict[str, int]:
    """Return ``{state: count}`` for this task instance."""
    statement = select(send_records.c.state, func.count()).where(*key.where()).group_by(send_records.c.state)
    return {state: int(count) for state, count in conn.execute(statement)}


def _upsert(
    conn: Connection, key: SendKey, row_key: str, values: dict[str, Any], *, only_pending: bool
) -> None:
    if len(row_key) > MAX_ROW_KEY_LENGTH:
        raise ValueError(f"row_key must be at most {MAX_ROW_KEY_LENGTH} characters, got {len(row_key)}")
    identity = {
        "dag_id": key.dag_id,
        "run_id": key.run_id,
        "task_id": key.task_id,
        "map_index": key.map_index,
        "row_key": row_key,
    }
    dialect = conn.dialect.name
    if dialect in ("postgresql", "sqlite"):
        # Two Insert classes with the same ON CONFLICT API; the union lets one statement serve both.
        dialect_insert: Callable[[Table], postgresql.Insert | sqlite.Insert]
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        else:
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        statement = dialect_insert(send_records).values(**identity, **values)
        statement = statement.on_conflict_do_update(
            index_elements=list(identity),
            set_={name: statement.excluded[name] for name in values},
            # A pending write must never turn a sent record back into a pending one.
            where=(send_records.c.state == "pending") if only_pending else None,
        )
        conn.execute(statement)
        return
    # Other databases: update first, insert if there was nothing to update.
    where = [*key.where(), send_records.c.row_key == row_key]
    if only_pending:
        where.append(send_records.c.state == "pending")
    if conn.execute(update(send_records).where(*where).values(**values)).rowcount:
        return
    exists = conn.execute(
        select(send_records.c.state).where(*key.where(), send_records.c.row_key == row_key)
    ).first()
    if exists is None:
        conn.execute(send_records.insert().values(**identity, **values))


def mark_pending(
    conn: Connection,
    key: SendKey,
    row_key: str,
    *,
    source_id: str,
    contact_id: int | None,
    conversation_id: int,
) -> None:
    """Record that the message for ``row_key`` is about to be sent into ``conversation_id``.

    A record already ``sent`` is left alone.
    """
    values = {
        "state": "pending",
        "source_id": source_id,
        "contact_id": contact_id,
        "conversation_id": conversation_id,
        "message_id": None,
        "updated_at": _now(),
    }
    _upsert(conn, key, row_key, values, only_pending=True)


def mark_sent(
    conn: Connection,
    key: SendKey,
    row_key: str,
    *,
    source_id: str,
    contact_id: int | None,
    conversation_id: int,
    message_id: int,
) -> None:
    """Record that the message for ``row_key`` is in the conversation, as message ``message_id``."""
    values = {
        "state": "sent",
        "source_id": source_id,
        "contact_id": contact_id,
        "conversation_id": conversation_id,
        "message_id": message_id,
        "updated_at": _now(),
    }
    _upsert(conn, key, row_key, values, only_pending=False)


def purge_older_than(conn: Connection, cutoff: datetime) -> int:
    """Delete records last updated before ``cutoff``; return how many.

    After that, a rerun of those task instances would send their rows again: keep records at least as long
    as a run may be cleared and rerun.
    """
    if cutoff.tzinfo is None:
        cutoff = cutoff.replace(tzinfo=UTC)
    result = conn.execute(delete(send_records).where(send_records.c.updated_at < cutoff))
    return int(result.rowcount or 0)


class SendLedger:
    """One task instance's send records in one store: what the bulk operator reads and writes, nothing else.

    Every method commits before it returns and raises :class:`~neoleads_provider.store.errors.EventStoreError`
    (never SQLAlchemy's errors). Safe to share between threads: each call takes its own connection, queued
    behind the process's other writers on SQLite.

    :param events_db_url: the store's SQLAlchemy URL; None reads ``[neoleads] events_db_url``.
    """

    def __init__(self, events_db_url: str | None, key: SendKey) -> None:
        from neoleads_provider.store.engine import get_engine

        self.key = key
        self._engine = get_engine(events_db_url)

    def load(self) -> dict[str, SendRecord]:
        """Create the table if the store predates it, then return the records of earlier tries by row key."""
        from neoleads_provider.store.errors import translate_errors
        from neoleads_provider.store.migrate import migrate

        with translate_errors():
            migrate(self._engine)
            with self._engine.connect() as conn:
                return load_records(conn, self.key)

    def _write(self, action: Any, row_key: str, **values: Any) -> None:
        from neoleads_provider.store.engine import write_lock
        from neoleads_provider.store.errors import translate_errors

        with translate_errors(), write_lock(self._engine), self._engine.begin() as conn:
            action(conn, self.key, row_key, **values)

    def mark_pending(
        self, row_key: str, *, source_id: str, contact_id: int | None, conversation_id: int
    ) -> None:
        """:func:`mark_pending`, committed."""
        self._write(
            mark_pending, row_key, source_id=source_id, contact_id=contact_id, conversation_id=conversation_id
        )

    def mark_sent(
        self, row_key: str, *, source_id: str, contact_id: int | None, conversation_id: int, message_id: int
    ) -> None:
        """:func:`mark_sent`, committed."""
        self._write(
            mark_sent,
            row_key,
            source_id=source_id,
            contact_id=contact_id,
            conversation_id=conversation_id,
            message_id=message_id,
        )
