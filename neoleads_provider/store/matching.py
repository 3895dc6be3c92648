"""Find the stored webhook events an :class:`~neoleads_provider.events.EventFilter` describes.

The query puts every criterion that has a column in SQL, so waiting on a conversation is a range scan of the
``(conn_id, conversation_id, event, id)`` index (or ``(conn_id, inbox_id, event, id)`` for a whole inbox);
only the content pattern runs in Python, on candidate rows read in batches. The columns were written by
:func:`neoleads_provider.events.read_event`, the same reader :meth:`EventFilter.matches` uses, so a stored
event and the same payload checked in Python always get the same answer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import UTC
from typing import TYPE_CHECKING, Any

from neoleads_provider.events.fields import read_event
from neoleads_provider.events.names import MESSAGE_EVENTS

if TYPE_CHECKING:
    from sqlalchemy import Connection, Select

    from neoleads_provider.events.filter import EventFilter
    from neoleads_provider.store.records import StoredEvent

__all__ = ["DEFAULT_BATCH_SIZE", "find_first_match", "find_matches"]

# How many candidate rows one query reads while a content pattern is being tried on them.
DEFAULT_BATCH_SIZE = 200


# -- queries --------------------------------------------------------------------------------------------


def _candidates(flt: EventFilter, *, after_id: int, limit: int) -> Select[Any]:
    """Build the query for rows that pass every SQL-expressible criterion, oldest first."""
    from sqlalchemy import and_, or_, select

    from neoleads_provider.store.schema import webhook_events as table

    columns = table.c
    # Equality on the leading index columns, then a range on id, lets ORDER BY id LIMIT n stop early.
    clauses: list[Any] = [columns.conn_id == flt.conn_id]
    if flt.account_id is not None:
        clauses.append(columns.account_id == flt.account_id)
    if flt.conversation_id is not None:
        clauses.append(columns.conversation_id == flt.conversation_id)
    if flt.inbox_id is not None:
        clauses.append(columns.inbox_id == flt.inbox_id)
    if len(flt.events) == 1:
        clauses.append(columns.event == flt.events[0])
    else:
        clauses.append(columns.event.in_(flt.events))
    clauses.append(columns.id > after_id)

    message_clauses: list[Any] = []
    if flt.message_types is not None:
        message_clauses.append(columns.message_type.in_(flt.message_types))
    if not flt.include_private:
        # NULL (unknown) counts as not private, as a payload without the key does.
        message_clauses.append(columns.private.is_not(True))
    if flt.sender_types is not None:
        message_clauses.append(columns.sender_type.in_(flt.sender_types))
    if flt.after_message_id is not None:
        message_clauses.append(columns.message_id > flt.after_message_id)
    other_events = [name for name in flt.events if name not in MESSAGE_EVENTS]
    if message_clauses:
        if not other_events:
            clauses.extend(message_clauses)
        elif len(other_events) < len(flt.events):
            clauses.append(or_(columns.event.in_(other_events), and_(*message_clauses)))
    return select(table).where(*clauses).order_by(columns.id).limit(limit)


def _scan(
    conn: Connection, flt: EventFilter, *, after_id: int, want: int, batch_size: int
) -> list[StoredEvent]:
    from neoleads_provider.store.records import StoredEvent

    if isinstance(after_id, bool) or not isinstance(after_id, int) or after_id < 0:
        raise ValueError(f"after_id must be an integer >= 0, got {after_id!r}")
    found: list[StoredEvent] = []
    cursor = after_id
    # Without a pattern SQL decides alone, so ask for exactly what is wanted.
    size = batch_size if flt.has_content_pattern else want
    while len(found) < want:
        rows = conn.execute(_candidates(flt, after_id=cursor, limit=size)).all()
        for row in rows:
            event = StoredEvent.from_row(row)
            if event.received_at.tzinfo is None:
                # SQLite keeps no zone; the receiver writes UTC, so say so on the way out.
                event = dataclasses.replace(event, received_at=event.received_at.replace(tzinfo=UTC))
            if not flt.has_content_pattern or _content_matches_stored(flt, event):
                found.append(event)
                if len(found) == want:
                    break
        if len(rows) < size:
            break
        cursor = rows[-1].id
    return found


def _content_matches_stored(flt: EventFilter, event: StoredEvent) -> bool:
    try:
        payload = event.payload
    except ValueError:
        # A body that is not JSON has no content to match; the receiver never stores one.
        return False
    if not isinstance(payload, Mapping):
        return False
    # The row's event column is authoritative, in case a payload lacks the key.
    return flt.content_matches(read_event({**payload, "event": event.event}))


def find_first_match(conn: Connection, flt: EventFilter, *, after_id: int = 0) -> StoredEvent | None:
    """Return the oldest stored event that matches ``flt`` among rows with ``id > after_id``, or None.

    Candidates are read in batches of :data:`DEFAULT_BATCH_SIZE`, so a content pattern that misses
    on many rows never loads them all at once.

    :param conn: a connection to the event store; nothing is written.
    :param after_id: a store row id to start after (0: from the beginning).
    """
    found = _scan(conn, flt, after_id=after_id, want=1, batch_size=DEFAULT_BATCH_SIZE)
    return found[0] if found else None


def find_matches(
    conn: Connection, flt: EventFilter, *, after_id: int = 0, limit: int = 100
) -> list[StoredEvent]:
    """Return up to ``limit`` matching stored events with ``id > after_id``, oldest first.

    To page forward, pass the last returned event's ``id`` as the next ``after_id``. Row ids are
    allocated when a delivery is inserted, not when it commits, so on PostgreSQL a row with a smaller id
    can become visible after a larger one: a consumer that must not miss any should re-read a short
    window behind its cursor and deduplicate on ``delivery_id``.

    :raises ValueError: ``limit`` is not a positive integer.
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a positive integer, got {limit!r}")
    return _scan(conn, flt, after_id=after_id, want=limit, batch_size=max(limit, DEFAULT_BATCH_SIZE))
