"""The event store's tables: a row per webhook delivery, and a row per bulk-outreach send.

The indexed columns are copied out of the payload at receive time so that a sensor's query never has to
parse JSON: waiting on a conversation is an index range scan whatever the table's size.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

# Stable constraint and index names, so migrations can refer to them on every database.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "pk": "pk_%(table_name)s",
}

SCHEMA_VERSION = 3

metadata = MetaData(naming_convention=NAMING_CONVENTION)

# SQLite only auto-increments an INTEGER PRIMARY KEY, so BigInteger becomes Integer there.
_ID = BigInteger().with_variant(Integer(), "sqlite")

webhook_events = Table(
    "neoleads_webhook_event",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    # The Airflow connection the delivery was received (and verified) for: every lookup is scoped to it.
    Column("conn_id", String(250), nullable=False),
    # X-Chatwoot-Delivery, or a digest of the body for servers that send none.
    Column("delivery_id", String(128), nullable=False),
    # The logical event (events.event_identity): the same for its copy through the other delivery path
    # and for a replay under a new delivery id, so each is stored once.
    Column("event_key", String(160), nullable=False),
    Column("event", String(64), nullable=False),
    Column("account_id", BigInteger),
    Column("inbox_id", BigInteger),
    # The conversation's display id: the id used in API paths and in webhook payloads.
    Column("conversation_id", BigInteger),
    Column("message_id", BigInteger),
    Column("contact_id", BigInteger),
    Column("message_type", String(16)),
    Column("private", Boolean),
    Column("sender_type", String(32)),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("body", Text, nullable=False),
    # Delivery ids are unique per connection only: one connection's sender must not be able to claim
    # (and so shadow) a delivery id another connection will receive.
    UniqueConstraint("conn_id", "delivery_id"),
    UniqueConstraint("conn_id", "event_key"),
    # A sensor waits on one conversation of its connection for events newer than a watermark.
    Index(None, "conn_id", "conversation_id", "event", "id"),
    # Event-driven DAGs follow a whole inbox (or connection) forward from a cursor.
    Index(None, "conn_id", "inbox_id", "event", "id"),
    # Retention deletes by age.
    Index(None, "received_at"),
    # Never reuse an id, even after a purge empties the table: watchers' cursors are ids.
    sqlite_autoincrement=True,
)

# The bulk operator's idempotency record: one row per (task instance, input row). ``pending`` is written with
# the message's deterministic source_id before the message is sent, ``sent`` after, so a rerun skips what was
# sent and checks the API for what may have been (see store/sends.py).
send_records = Table(
    "neoleads_send_record",
    metadata,
    Column("dag_id", String(250), primary_key=True),
    Column("run_id", String(250), primary_key=True),
    Column("task_id", String(250), primary_key=True),
    Column("map_index", Integer, primary_key=True, autoincrement=False),
    Column("row_key", String(255), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("source_id", String(64), nullable=False),
    Column("contact_id", BigInteger),
    Column("conversation_id", BigInteger),
    Column("message_id", BigInteger),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# Where each asset watcher (NeoleadsEventTrigger) is in the event table: one JSON state per cursor key. Kept
# beside the events so the trigger's stream producer, which Airflow gives no state store, can move it
# exactly when the asset events it covers are persisted.
watch_cursors = Table(
    "neoleads_watch_cursor",
    metadata,
    Column("cursor_key", String(200), primary_key=True),
    Column("state", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

schema_versions = Table(
    "neoleads_schema_version",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("applied_at", DateTime(timezone=True), nullable=False),
)
