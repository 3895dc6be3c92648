"""Queries on the event store. Each function takes a SQLAlchemy ``Connection`` first and never commits.

Callers own the transaction::

    with get_engine().begin() as conn:
        event_id, inserted = insert_event(conn, NewEvent(conn_id=..., delivery_id=..., event_key=..., ...))

Datetimes go in and come out timezone-aware in UTC; a naive datetime passed in is taken to be UTC.
"""

from __future__ import annotations

import dataclasses
import functools
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec
from sqlalchemy import delete, func, insert, or_, select
from sqlalchemy.exc import IntegrityError

from neoleads_provider.store.records import StoredEvent
from neoleads_provider.store.schema import webhook_events

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sqlalchemy import Connection, Row

    from neoleads_provider.events.fields import EventFields

__all__ = [
    "NewEvent",
    "count_older_than",
    "get_event",
    "insert_event",
    "insert_events",
    "last_received_at",
    "list_events",
    "purge_older_than",
]

MAX_LIST_LIMIT = 10_000

_encode_json = msgspec.json.Encoder().encode
_decode_json = msgspec.json.Decoder().decode


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _event_from_row(row: Row[Any]) -> StoredEvent:
    event = StoredEvent.from_row(row)
    # SQLite keeps no zone; everything is written in UTC, so say so on the way out.
    if event.received_at.tzinfo is None:
        event = dataclasses.replace(event, received_at=event.received_at.replace(tzinfo=UTC))
    return event


@dataclasses.dataclass(frozen=True)
class NewEvent:
    """One delivery to insert with :func:`insert_events`.

    :param conn_id: the Airflow connection the delivery was received for.
    :param delivery_id: the sender's delivery id (unique per connection).
    :param event_key: the logical event's identity (:func:`neoleads_provider.events.event_identity`),
        unique per connection: a second copy of the same event is not stored again.
    :param fields: what the payload is about (:func:`neoleads_provider.events.read_event`).
    :param body: the raw JSON body, as text.
    :param received_at: when the receiver got it.
    """

    conn_id: str
    delivery_id: str
    event_key: str
    fields: EventFields
    body: str
    received_at: datetime


# Every column but the generated id, in the order _row passes the values, with the PostgreSQL type each
# value is read as (text is assigned to the varchar columns, with their length checks).
_INSERT_COLUMNS = (
    ("conn_id", "text"),
    ("delivery_id", "text"),
    ("event_key", "text"),
    ("event", "text"),
    ("account_id", "bigint"),
    ("inbox_id", "bigint"),
    ("conversation_id", "bigint"),
    ("message_id", "bigint"),
    ("contact_id", "bigint"),
    ("message_type", "text"),
    ("private", "boolean"),
    ("sender_type", "text"),
    ("received_at", "timestamptz"),
    ("body", "text"),
)
_INSERT_NAMES = ", ".join(name for name, _ in _INSERT_COLUMNS)
# No conflict target: a repeated delivery id and a repeated event key are both "already stored".
_ON_CONFLICT = "ON CONFLICT DO NOTHING"
_RETURNING = "RETURNING conn_id, delivery_id, id"
# The rows the insert just made, as one JSON text: one step of the statement, where RETURNING takes one per row.
_SQLITE_NEWEST_ROWS = (
    "SELECT json_group_array(json_array(conn_id, delivery_id, id)) FROM "  # noqa: S608
    f"(SELECT conn_id, delivery_id, id FROM {webhook_events.name} ORDER BY id DESC LIMIT ?)"
)
# SQLite allows 32766 parameters per statement: 256 rows of 14 columns fit well inside.
_SQLITE_CHUNK = 256
# Only constant names, types and placeholders go into these texts; every value is a parameter.
_POSTGRES_INSERT = (
    f"INSERT INTO {webhook_events.name} ({_INSERT_NAMES}) SELECT {_INSERT_NAMES} "  # noqa: S608
    f"FROM json_to_recordset(%s::json) AS batch({', '.join(f'{name} {kind}' for name, kind in _INSERT_COLUMNS)}) "
    # WHERE true: without it PostgreSQL would read ON CONFLICT as the start of a join condition.
    f"WHERE true {_ON_CONFLICT} {_RETURNING}"
)


@functools.cache
def _sqlite_insert(rows: int) -> str:
    row = "(" + ", ".join(["?"] * len(_INSERT_COLUMNS)) + ")"
    return (
        f"INSERT INTO {webhook_events.name} ({_INSERT_NAMES}) VALUES {', '.join([row] * rows)} {_ON_CONFLICT}"  # noqa: S608
    )


def _sqlite_datetime(value: datetime) -> str:
    # The text SQLAlchemy's SQLite DateTime writes (and parses back): UTC, always with microseconds.
    value = _utc(value)
    return (
        f"{value.year:04d}-{value.month:02d}-{value.day:02d} "
        f"{value.hour:02d}:{value.minute:02d}:{value.second:02d}.{value.microsecond:06d}"
    )


def _row(new: NewEvent, received_at: Any) -> tuple[Any, ...]:
    fields = new.fields
    return (
        new.conn_id,
        new.delivery_id,
        new.event_key,
        fields.event,
        fields.account_id,
        fields.inbox_id,
        fields.conversation_id,
        fields.message_id,
        fields.contact_id,
        fields.message_type,
        fields.private,
        fields.sender_type,
        received_at,
        new.body,
    )


def _insert_rows(conn: Connection, events: Sequence[NewEvent]) -> dict[tuple[str, str], int]:
    """Insert as driver-level SQL; return ``{(conn_id, delivery_id): id}`` of the rows actually inserted.

    The receiver's writer spends its time here. As a compiled statement, SQLAlchemy's bind processing and
    insertmanyvalues machinery cost about as much CPU again as SQLite took to store the rows, all of it
    holding the interpreter lock the receiver's event loop needs. So the SQL is written here, once:
    SQLite gets one multi-row ``VALUES`` statement per batch size, and the new ids are read back in one
    step: sqlite3 releases the interpreter lock around every step, and a ``RETURNING`` row per step made the
    writer wait for the event loop to hand the lock back once per delivery. PostgreSQL gets the whole batch as one
    JSON parameter read by ``json_to_recordset``: psycopg re-parses a multi-row ``VALUES`` text on every
    batch and escapes array parameters in Python, either costing more than twice the CPU of encoding the
    batch with msgspec. Values are converted as SQLAlchemy's column types would; tests/store/test_insert_paths.py
    reads rows written both ways back and compares them. Errors, events and disconnect handling are
    SQLAlchemy's, as for any statement.
    """
    inserted: dict[tuple[str, str], int] = {}
    if conn.dialect.name == "sqlite":
        for start in range(0, len(events), _SQLITE_CHUNK):
            chunk = events[start : start + _SQLITE_CHUNK]
            params = tuple(value for new in chunk for value in _row(new, _sqlite_datetime(new.received_at)))
            count = conn.exec_driver_sql(_sqlite_insert(len(chunk)), params).rowcount
            if count > 0:
                # The insert holds the database's write lock until commit and AUTOINCREMENT gives each row a
                # larger id than any before it, so the rows it made are the table's ``count`` newest.
                newest = conn.exec_driver_sql(_SQLITE_NEWEST_ROWS, (count,)).scalar_one()
                inserted.update(
                    ((conn_id, delivery_id), event_id)
                    for conn_id, delivery_id, event_id in _decode_json(newest)
                )
        return inserted
    names = [name for name, _ in _INSERT_COLUMNS]
    batch = _encode_json([dict(zip(names, _row(new, _utc(new.received_at)), strict=True)) for new in events])
    result = conn.exec_driver_sql(_POSTGRES_INSERT, (batch.decode("utf-8"),))
    inserted.update(((conn_id, delivery_id), event_id) for conn_id, delivery_id, event_id in result)
    return inserted


def _insert_one_by_one(conn: Connection, events: Sequence[NewEvent]) -> dict[tuple[str, str], int]:
    """Other databases: a savepoint per row confines a unique-key violation to that row."""
    inserted: dict[tuple[str, str], int] = {}
    for new in events:
        values = dict(
            zip((name for name, _ in _INSERT_COLUMNS), _row(new, _utc(new.received_at)), strict=True)
        )
        try:
            with conn.begin_nested():
                result = conn.execute(insert(webhook_events).values(values))
        except IntegrityError:
            continue
        primary_key = result.inserted_primary_key
        if primary_key is None:  # only for executemany or a non-insert, never for this one-row insert
            raise RuntimeError("the event store did not report the inserted event's id")
        inserted[(new.conn_id, new.delivery_id)] = int(primary_key[0])
    return inserted


def insert_events(conn: Connection, events: Sequence[NewEvent]) -> list[tuple[int, bool]]:
    """Insert several deliveries in one statement; return ``(event id, inserted)`` per event, in order.

    ``inserted`` is False for a delivery already stored: the same delivery id on the same connection, or
    another copy of the same logical event (``event_key``), stored earlier or earlier in ``events``; its id
    is then the stored event's. One multi-row statement costs about as much as one single-row insert, which
    is what lets the receiver commit a batch of concurrent deliveries at once. A delivery id repeated in
    ``events`` with another body is the first one's duplicate too: the delivery id names the delivery.
    """
    if not events:
        return []
    if conn.dialect.name in ("postgresql", "sqlite") and conn.dialect.insert_returning:
        inserted = _insert_rows(conn, events)
    else:
        inserted = _insert_one_by_one(conn, events)
    missing = [new for new in events if (new.conn_id, new.delivery_id) not in inserted]
    by_delivery: dict[tuple[str, str], int] = dict(inserted)
    by_key: dict[tuple[str, str], int] = {}
    if missing:
        table = webhook_events.c
        rows = conn.execute(
            select(table.conn_id, table.delivery_id, table.event_key, table.id).where(
                table.conn_id.in_({new.conn_id for new in missing}),
                or_(
                    table.delivery_id.in_({new.delivery_id for new in missing}),
                    table.event_key.in_({new.event_key for new in missing}),
                ),
            )
        )
        for row in rows:
            by_delivery.setdefault((row.conn_id, row.delivery_id), row.id)
            by_key[(row.conn_id, row.event_key)] = row.id
    results: list[tuple[int, bool]] = []
    claimed: set[tuple[str, str]] = set()
    for new in events:
        key = (new.conn_id, new.delivery_id)
        new_id = inserted.get(key)
        if new_id is not None and key not in claimed:
            claimed.add(key)
            results.append((new_id, True))
            continue
        existing = by_delivery.get(key) or by_key.get((new.conn_id, new.event_key))
        if existing is None:
            raise RuntimeError("a duplicate delivery's stored event could not be read back")
        results.append((existing, False))
    return results


def insert_event(conn: Connection, new: NewEvent) -> tuple[int, bool]:
    """Insert one delivery: :func:`insert_events` for a single event."""
    return insert_events(conn, [new])[0]


def get_event(
    conn: Connection,
    event_id: int | None = None,
    *,
    conn_id: str | None = None,
    delivery_id: str | None = None,
) -> StoredEvent | None:
    """Return the event with this id, or with this delivery id on connection ``conn_id``, or None.

    :param conn_id: with ``event_id``, also require the event to belong to this connection; with
        ``delivery_id``, required (delivery ids are unique per connection only).
    :raises ValueError: neither or both of ``event_id`` and ``delivery_id`` were given, or ``delivery_id``
        without ``conn_id``.
    """
    if (event_id is None) == (delivery_id is None):
        raise ValueError("pass exactly one of event_id or delivery_id")
    table = webhook_events.c
    statement = select(webhook_events)
    if event_id is not None:
        statement = statement.where(table.id == event_id)
    else:
        if conn_id is None:
            raise ValueError("a delivery id is unique per connection only: pass conn_id with it")
        statement = statement.where(table.delivery_id == delivery_id)
    if conn_id is not None:
        statement = statement.where(table.conn_id == conn_id)
    row = conn.execute(statement).first()
    return _event_from_row(row) if row is not None else None


def list_events(
    conn: Connection,
    *,
    conn_id: str | None = None,
    event: str | None = None,
    conversation_id: int | None = None,
    since: datetime | None = None,
    limit: int = 50,
) -> list[StoredEvent]:
    """Return stored events, newest first, optionally filtered.

    :param since: only events received at or after this time.
    :param limit: at most this many (1 to 10,000).
    :raises ValueError: ``limit`` is out of range.
    """
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIST_LIMIT}, got {limit}")
    statement = select(webhook_events)
    if conn_id is not None:
        statement = statement.where(webhook_events.c.conn_id == conn_id)
    if event is not None:
        statement = statement.where(webhook_events.c.event == event)
    if conversation_id is not None:
        statement = statement.where(webhook_events.c.conversation_id == conversation_id)
    if since is not None:
        statement = statement.where(webhook_events.c.received_at >= _utc(since))
    # ids are assigned in commit order closely enough, and unlike received_at they never tie.
    statement = statement.order_by(webhook_events.c.id.desc()).limit(limit)
    return [_event_from_row(row) for row in conn.execute(statement)]


def count_older_than(conn: Connection, cutoff: datetime) -> int:
    """Return how many events were received before ``cutoff`` (what a purge would delete)."""
    statement = (
        select(func.count()).select_from(webhook_events).where(webhook_events.c.received_at < _utc(cutoff))
    )
    return int(conn.execute(statement).scalar_one())


def purge_older_than(
    conn: Connection, cutoff: datetime, *, batch_size: int = 1000, max_batches: int | None = None
) -> int:
    """Delete events received before ``cutoff``, ``batch_size`` rows per statement; return how many.

    :param max_batches: stop after this many batches, so a caller can commit between batches
        (``neoleads events purge`` does) and never hold a long lock on a busy table.
    :raises ValueError: ``batch_size`` is not positive.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    cutoff = _utc(cutoff)
    deleted = 0
    batches = 0
    while max_batches is None or batches < max_batches:
        ids = list(
            conn.execute(
                select(webhook_events.c.id)
                .where(webhook_events.c.received_at < cutoff)
                .order_by(webhook_events.c.id)
                .limit(batch_size)
            ).scalars()
        )
        if not ids:
            break
        conn.execute(delete(webhook_events).where(webhook_events.c.id.in_(ids)))
        deleted += len(ids)
        batches += 1
        if len(ids) < batch_size:
            break
    return deleted


def last_received_at(conn: Connection, conn_id: str | None = None) -> datetime | None:
    """Return when the newest event (for ``conn_id``, if given) was received, or None if there is none."""
    statement = select(func.max(webhook_events.c.received_at))
    if conn_id is not None:
        statement = statement.where(webhook_events.c.conn_id == conn_id)
    value = conn.execute(statement).scalar()
    if value is None:
        return None
    if isinstance(value, str):
        # SQLite returns max() of a DateTime column as its stored text.
        value = datetime.fromisoformat(value)
    return _utc(value)


def load_cursor(conn: Connection, cursor_key: str) -> Any:
    """Return the JSON state saved under ``cursor_key`` by :func:`save_cursor`, or None."""
    from neoleads_provider.store.schema import watch_cursors

    text = conn.execute(
        select(watch_cursors.c.state).where(watch_cursors.c.cursor_key == cursor_key)
    ).scalar()
    return None if text is None else msgspec.json.decode(text)


def save_cursor(conn: Connection, cursor_key: str, state: Any) -> None:
    """Save ``state`` (JSON-serialisable) under ``cursor_key``, replacing what was there."""
    from sqlalchemy import update

    from neoleads_provider.store.schema import watch_cursors

    values = {"state": _encode_json(state).decode("utf-8"), "updated_at": datetime.now(UTC)}
    updated = conn.execute(
        update(watch_cursors).where(watch_cursors.c.cursor_key == cursor_key).values(**values)
    ).rowcount
    if not updated:
        conn.execute(insert(watch_cursors).values(cursor_key=cursor_key, **values))
