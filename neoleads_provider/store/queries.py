"""The event store lookups sensors and triggers make, by store URL, raising only :mod:`store.errors`.

Blocking: async code calls them from a worker thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from neoleads_provider.store.engine import get_engine
from neoleads_provider.store.errors import EventStoreSchemaError, translate_errors
from neoleads_provider.store.matching import find_first_match, find_matches
from neoleads_provider.store.repository import list_events

if TYPE_CHECKING:
    from collections.abc import Collection

    from neoleads_provider.events.filter import EventFilter
    from neoleads_provider.store.records import StoredEvent

__all__ = [
    "find_first_event",
    "find_new_events",
    "load_event",
    "load_watch_cursor",
    "newest_event_id",
    "save_watch_cursor",
]


def _engine(events_db_url: str | None) -> Any:
    # A URL no driver can open (``nosuchdb://``) is an EventStoreError too, not transient.
    with translate_errors():
        return get_engine(events_db_url)


def find_first_event(events_db_url: str | None, flt: EventFilter) -> StoredEvent | None:
    """The oldest stored event that matches ``flt``, or None.

    :param events_db_url: the store's SQLAlchemy URL; None reads ``[neoleads] events_db_url``.
    :raises EventStoreSchemaError: the store has no (or an old) schema; the message says to migrate it.
    :raises EventStoreError: the store failed (``transient`` says whether waiting could help).
    """
    engine = _engine(events_db_url)
    with translate_errors(engine), engine.connect() as conn:
        return find_first_match(conn, flt)


def load_event(events_db_url: str | None, event_id: int, conn_id: str) -> StoredEvent | None:
    """The stored event with this id, if it belongs to ``conn_id``; None otherwise.

    :raises EventStoreError: the store failed.
    """
    from neoleads_provider.store.repository import get_event

    engine = _engine(events_db_url)
    with translate_errors(engine), engine.connect() as conn:
        return get_event(conn, event_id, conn_id=conn_id)


def newest_event_id(events_db_url: str | None, conn_id: str | None = None) -> int:
    """The id of the newest stored event (of ``conn_id``, if given); 0 when there is none or no table yet.

    A store that has no schema yet is empty: the receiver creates it on its first delivery.

    :raises EventStoreError: the store failed.
    """
    engine = _engine(events_db_url)
    try:
        with translate_errors(engine), engine.connect() as conn:
            newest = list_events(conn, conn_id=conn_id, limit=1)
    except EventStoreSchemaError:
        return 0
    return newest[0].id if newest else 0


def find_new_events(
    events_db_url: str | None,
    flt: EventFilter,
    *,
    after_id: int,
    fired: Collection[int] = (),
    batch_size: int,
    max_pages: int,
) -> list[StoredEvent]:
    """The matching events with ``id > after_id``, oldest first, paging past the already ``fired`` ones.

    At most ``max_pages`` pages of ``batch_size`` rows are read; the ones already fired are included (the
    caller needs them to move its watermark) but do not count towards filling a page of new ones.

    :raises EventStoreSchemaError: the store has no (or an old) schema.
    :raises EventStoreError: the store failed.
    """
    engine = _engine(events_db_url)
    fired_ids = set(fired)
    found: list[StoredEvent] = []
    cursor = after_id
    with translate_errors(engine), engine.connect() as conn:
        for _ in range(max_pages):
            page = find_matches(conn, flt, after_id=cursor, limit=batch_size)
            found.extend(page)
            if len(page) < batch_size or any(event.id not in fired_ids for event in page):
                break
            cursor = page[-1].id
    return found


def load_watch_cursor(events_db_url: str | None, cursor_key: str) -> Any:
    """The asset watcher cursor saved under ``cursor_key``, or None (also when the store has no schema yet).

    :raises EventStoreError: the store failed.
    """
    from neoleads_provider.store.repository import load_cursor

    engine = _engine(events_db_url)
    try:
        with translate_errors(engine), engine.connect() as conn:
            return load_cursor(conn, cursor_key)
    except EventStoreSchemaError:
        return None


def save_watch_cursor(events_db_url: str | None, cursor_key: str, state: Any) -> None:
    """Save an asset watcher's cursor (committed when this returns).

    :raises EventStoreSchemaError: the store has no (or an old) schema.
    :raises EventStoreError: the store failed.
    """
    from neoleads_provider.store.engine import write_lock
    from neoleads_provider.store.repository import save_cursor

    engine = _engine(events_db_url)
    with translate_errors(engine), write_lock(engine), engine.begin() as conn:
        save_cursor(conn, cursor_key, state)
