"""Queries on the event store. Each function takes a SQLAlchemy ``Connection`` first and never commits.

Callers own the transaction::

    with get_engine().begin() as conn:
        stored = insert_event(conn, delivery_id=..., conn_id=..., fields=..., body=..., received_at=...)

Datetimes go in and come out timezone-aware in UTC; a naive datetime passed in is taken to be UTC.
"""

from __future__ import annotations

import dataclasses
import functools
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec
from sqlalchemy import delete, func, insert, select
from sqlalchemy.exc import IntegrityError

from neoleads_provider.store.records import StoredEvent
from neoleads_provider.store.schema import webhook_events

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sqlalchemy import Connection, Row

    from neoleads_provider.webhooks.payload import EventFields

__all__ = [
    "NewEvent",
    "count_older_than",
    "get_event",
    "insert_event",
    "insert_event_id",
    "insert_events",
    "last_received_at",
    "list_events",
    "purge_older_than",
]

MAX_LIST_LIMIT = 10_000

_encode_json = msgspec.json.Encoder().encode


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _columns(fields: EventFields) -> dict[str, Any]:
    # A shallow copy: dataclasses.asdict deep-copies every value, which costs more than the insert itself.
    return {item.name: getattr(fields, item.name) for item in dataclasses.fields(fields)}


def _event_from_row(row: Row[Any]) -> StoredEvent:
    event = StoredEvent.from_row(row)
    # SQLite keeps no zone; everything is written in UTC, so say so on the way out.
    if event.received_at.tzinfo is None:
        event = dataclasses.replace(event, received_at=event.received_at.replace(tzinfo=UTC))
    return event


@functools.cache
def _upsert_statement(dialect: str, returning: bool) -> Any:
    """``INSERT ... ON CONFLICT (delivery_id) DO NOTHING [RETURNING id]``, built once per dialect."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    # ON CONFLICT DO NOTHING: a duplicate is not an error, so a PostgreSQL transaction is not aborted by it.
    statement = dialect_insert(webhook_events).on_conflict_do_nothing(
        index_elements=[webhook_events.c.delivery_id]
    )
    return statement.returning(webhook_events.c.id) if returning else statement


# Every column but the generated id, in the order _insert_rows passes the values, with the PostgreSQL type
# each value is read as (text is assigned to the varchar columns, with their length checks).
_INSERT_COLUMNS = (
    ("delivery_id", "text"),
    ("conn_id", "text"),
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
_ON_CONFLICT = "ON CONFLICT (delivery_id) DO NOTHING RETURNING delivery_id, id"
# SQLite allows 32766 parameters per statement: 256 rows of 13 columns fit well inside.
_SQLITE_CHUNK = 256
# Only constant names, types and placeholders go into these texts; every value is a parameter.
_POSTGRES_INSERT = (
    f"INSERT INTO {webhook_events.name} ({_INSERT_NAMES}) SELECT {_INSERT_NAMES} "  # noqa: S608
    f"FROM json_to_recordset(%s::json) AS batch({', '.join(f'{name} {kind}' for name, kind in _INSERT_COLUMNS)}) "
    # WHERE true: without it PostgreSQL would read ON CONFLICT as the start of a join condition.
    f"WHERE true {_ON_CONFLICT}"
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
        new.delivery_id,
        new.conn_id,
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


def _insert_rows(conn: Connection, events: Sequence[NewEvent]) -> dict[str, int]:
    """Insert as driver-level SQL; return ``{delivery_id: id}`` of the rows actually inserted.

    The receiver's writer spends its time here. As a compiled statement, SQLAlchemy's bind processing and
    insertmanyvalues machinery cost about as much CPU again as SQLite took to store the rows, all of it
    holding the interpreter lock the receiver's event loop needs. So the SQL is written here, once:
    SQLite gets one multi-row ``VALUES`` statement per batch size. PostgreSQL gets the whole batch as one
    JSON parameter read by ``json_to_recordset``: psycopg re-parses a multi-row ``VALUES`` text on every
    batch and escapes array parameters in Python, either costing more than twice the CPU of encoding the
    batch with msgspec. Values are converted as SQLAlchemy's column types would; tests/store/test_insert_paths.py
    reads rows written both ways back and compares them. Errors, events and disconnect handling are
    SQLAlchemy's, as for any statement.
    """
    inserted: dict[str, int] = {}
    if conn.dialect.name == "sqlite":
        for start in range(0, len(events), _SQLITE_CHUNK):
            chunk = events[start : start + _SQLITE_CHUNK]
            params = tuple(value for new in chunk for value in _row(new, _sqlite_datetime(new.received_at)))
            result = conn.exec_driver_sql(_sqlite_insert(len(chunk)), params)
            inserted.update((delivery_id, event_id) for delivery_id, event_id in result)
        return inserted
    names = [name for name, _ in _INSERT_COLUMNS]
    batch = _encode_json([dict(zip(names, _row(new, _utc(new.received_at)), strict=True)) for new in events])
    result = conn.exec_driver_sql(_POSTGRES_INSERT, (batch.decode("utf-8"),))
    inserted.update((delivery_id, event_id) for delivery_id, event_id in result)
    return inserted


def insert_event(
    conn: Connection,
    *,
    delivery_id: str,
    conn_id: str,
    fields: EventFields,
    body: str,
    received_at: datetime,
) -> bool:
    """Insert one delivery; return False, leaving the transaction usable, if ``delivery_id`` is already stored.

    :param delivery_id: the sender's delivery id (unique across the table).
    :param conn_id: the Airflow connection the delivery was received for.
    :param fields: the indexed columns extracted from the payload.
    :param body: the raw JSON body, as text.
    :param received_at: when the receiver got it.
    """
    return (
        insert_event_id(
            conn, delivery_id=delivery_id, conn_id=conn_id, fields=fields, body=body, received_at=received_at
        )
        is not None
    )


def insert_event_id(
    conn: Connection,
    *,
    delivery_id: str,
    conn_id: str,
    fields: EventFields,
    body: str,
    received_at: datetime,
) -> int | None:
    """Like :func:`insert_event`, but return the new row's id, or None for a duplicate ``delivery_id``."""
    values = {
        "delivery_id": delivery_id,
        "conn_id": conn_id,
        **_columns(fields),
        "received_at": _utc(received_at),
        "body": body,
    }
    dialect = conn.dialect.name
    if dialect in ("postgresql", "sqlite"):
        returning = bool(conn.dialect.insert_returning)
        statement = _upsert_statement(dialect, returning)
        # The values go in as parameters, not into the statement: it is compiled once per process instead
        # of once per delivery (building and caching a statement around a 2 KB body costs more than the insert).
        if returning:
            # With RETURNING the driver reports no rowcount; the returned row is the answer.
            return conn.execute(statement, values).scalar()
        result = conn.execute(statement, values)
        return result.lastrowid if result.rowcount == 1 else None
    # Other databases: a savepoint confines the unique-key violation to this one statement.
    try:
        with conn.begin_nested():
            result = conn.execute(insert(webhook_events).values(values))
    except IntegrityError:
        existing = get_event(conn, delivery_id=delivery_id)
        if existing is None:
            raise
        return None
    return int(result.inserted_primary_key[0])


@dataclasses.dataclass(frozen=True)
class NewEvent:
    """One delivery to insert with :func:`insert_events`."""

    delivery_id: str
    conn_id: str
    fields: EventFields
    body: str
    received_at: datetime


def insert_events(conn: Connection, events: Sequence[NewEvent]) -> list[tuple[int, bool]]:
    """Insert several deliveries in one statement; return ``(event id, inserted)`` per event, in order.

    ``inserted`` is False for a delivery id already stored, or repeated earlier in ``events``: its id is
    the stored event's. One multi-row statement costs about as much as one single-row insert, which is
    what lets the receiver commit a batch of concurrent deliveries at once.
    """
    dialect = conn.dialect.name
    if dialect not in ("postgresql", "sqlite") or not conn.dialect.insert_returning:
        results = []
        for new in events:
            new_id = insert_event_id(
                conn,
                delivery_id=new.delivery_id,
                conn_id=new.conn_id,
                fields=new.fields,
                body=new.body,
                received_at=new.received_at,
            )
            if new_id is None:
                existing = get_event(conn, delivery_id=new.delivery_id)
                if existing is None:
                    raise RuntimeError("a duplicate delivery's stored event could not be read back")
                results.append((existing.id, False))
            else:
                results.append((new_id, True))
        return results
    inserted = _insert_rows(conn, events)
    missing = {new.delivery_id for new in events} - set(inserted)
    stored: dict[str, int] = {}
    if missing:
        rows = conn.execute(
            select(webhook_events.c.delivery_id, webhook_events.c.id).where(
                webhook_events.c.delivery_id.in_(missing)
            )
        )
        stored = {row.delivery_id: row.id for row in rows}
    results = []
    for new in events:
        new_id = inserted.pop(new.delivery_id, None)
        if new_id is not None:
            stored[new.delivery_id] = new_id
            results.append((new_id, True))
            continue
        if new.delivery_id not in stored:
            raise RuntimeError("a duplicate delivery's stored event could not be read back")
        results.append((stored[new.delivery_id], False))
    return results


def get_event(
    conn: Connection, event_id: int | None = None, *, delivery_id: str | None = None
) -> StoredEvent | None:
    """Return the event with this id, or with this delivery id, or None.

    :raises ValueError: neither or both of ``event_id`` and ``delivery_id`` were given.
    """
    if (event_id is None) == (delivery_id is None):
        raise ValueError("pass exactly one of event_id or delivery_id")
    statement = select(webhook_events)
    if event_id is not None:
        statement = statement.where(webhook_events.c.id == event_id)
    else:
        statement = statement.where(webhook_events.c.delivery_id == delivery_id)
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
