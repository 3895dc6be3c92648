"""Create or upgrade the event store schema, and check it before use.

Each schema version is one step function in :data:`STEPS`; :func:`migrate` runs the steps newer than the
version recorded in ``neoleads_schema_version`` and records each one. A later version adds a step (for
example ``2: _add_some_column``) and bumps ``schema.SCHEMA_VERSION``. Migrations run from the CLI
(``neoleads events migrate``), at the standalone receiver's start, or once per process on the plugin's
first delivery, never per request.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy import UniqueConstraint, func, insert, inspect, select, text
from sqlalchemy.exc import DBAPIError

from neoleads_provider.store.engine import safe_url
from neoleads_provider.store.errors import EventStoreSchemaError
from neoleads_provider.store.schema import (
    SCHEMA_VERSION,
    metadata,
    schema_versions,
    send_records,
    watch_cursors,
    webhook_events,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy import Connection, Engine

__all__ = ["STEPS", "check_schema", "current_version", "migrate"]

log = logging.getLogger(__name__)

# Any constant works; it only has to be the same in every process migrating this database.
_PG_ADVISORY_LOCK_KEY = 0x4E454F4C  # "NEOL"
_process_lock = threading.Lock()


def _step_1_create_event_table(conn: Connection) -> None:
    metadata.create_all(conn, tables=[webhook_events], checkfirst=True)


def _step_2_create_send_record_table(conn: Connection) -> None:
    metadata.create_all(conn, tables=[send_records], checkfirst=True)


# The names schema version 2 gave what version 3 replaces (store/schema.py's naming convention).
_V2_DELIVERY_UNIQUE = "uq_neoleads_webhook_event_delivery_id"
_V2_INDEXES = (
    "ix_neoleads_webhook_event_account_id_conversation_id_event_id",
    "ix_neoleads_webhook_event_account_id_inbox_id_event_id",
)
_V3_COPIED_COLUMNS = tuple(column.name for column in webhook_events.columns if column.name != "event_key")


def _step_3_scope_events_to_connections(conn: Connection) -> None:
    """Add ``event_key`` (one stored event per logical event), scope uniqueness and indexes to ``conn_id``,
    and add the asset watchers' cursor table.

    Rows stored before this version get ``legacy:<delivery id>`` as their key: unique, so no existing row is
    merged or lost, but a copy of an old event arriving now is not recognised as one.
    """
    metadata.create_all(conn, tables=[watch_cursors], checkfirst=True)
    existing_columns = {column["name"] for column in inspect(conn).get_columns(webhook_events.name)}
    if "event_key" in existing_columns:
        return  # created by step 1 at this version already
    table = webhook_events.name
    if conn.dialect.name == "sqlite":
        # SQLite cannot drop a table's UNIQUE constraint: rebuild the table under the new definition. Index
        # names are global and would follow the renamed table, so every index of the old one goes first.
        for reflected in inspect(conn).get_indexes(table):
            conn.exec_driver_sql(f'DROP INDEX IF EXISTS "{reflected["name"]}"')
        conn.exec_driver_sql(f'ALTER TABLE "{table}" RENAME TO "{table}_v2"')
        webhook_events.create(conn)
        names = ", ".join(_V3_COPIED_COLUMNS)
        conn.exec_driver_sql(
            f'INSERT INTO "{table}" ({names}, event_key) '  # noqa: S608 - constant names only
            f"SELECT {names}, 'legacy:' || delivery_id FROM \"{table}_v2\" ORDER BY id"
        )
        conn.exec_driver_sql(f'DROP TABLE "{table}_v2"')
        return
    conn.exec_driver_sql(f'ALTER TABLE "{table}" ADD COLUMN event_key VARCHAR(160)')
    conn.exec_driver_sql(f"UPDATE \"{table}\" SET event_key = 'legacy:' || delivery_id")  # noqa: S608
    conn.exec_driver_sql(f'ALTER TABLE "{table}" ALTER COLUMN event_key SET NOT NULL')
    conn.exec_driver_sql(f'ALTER TABLE "{table}" DROP CONSTRAINT IF EXISTS "{_V2_DELIVERY_UNIQUE}"')
    for index_name in _V2_INDEXES:
        conn.exec_driver_sql(f'DROP INDEX IF EXISTS "{index_name}"')
    for constraint in webhook_events.constraints:
        if isinstance(constraint, UniqueConstraint):
            # Plain DDL: AddConstraint would mark the shared Table's constraint as created separately, and
            # every store created later in this process would then lack it.
            columns = ", ".join(f'"{column.name}"' for column in constraint.columns)
            conn.exec_driver_sql(
                f'ALTER TABLE "{table}" ADD CONSTRAINT "{constraint.name}" UNIQUE ({columns})'
            )
    for index in webhook_events.indexes:
        index.create(conn, checkfirst=True)


# version -> the step that brings the schema from version-1 to version. Steps must be idempotent
# (checkfirst / IF NOT EXISTS), so a step interrupted before its version row was written can run again.
STEPS: dict[int, Callable[[Connection], None]] = {
    1: _step_1_create_event_table,
    2: _step_2_create_send_record_table,
    3: _step_3_scope_events_to_connections,
}
assert max(STEPS) == SCHEMA_VERSION, "every SCHEMA_VERSION needs a migration step"


def _recorded_version(conn: Connection) -> int | None:
    if not inspect(conn).has_table(schema_versions.name):
        return None
    return conn.execute(select(func.max(schema_versions.c.version))).scalar()


def current_version(engine: Engine) -> int | None:
    """Return the schema version recorded in the store, or None when it was never migrated."""
    with engine.connect() as conn:
        return _recorded_version(conn)


def _apply_steps(conn: Connection) -> int:
    schema_versions.create(conn, checkfirst=True)
    version = _recorded_version(conn) or 0
    if version > SCHEMA_VERSION:
        log.warning(
            "Neoleads event store schema is version %s, newer than this provider's %s; leaving it as is",
            version,
            SCHEMA_VERSION,
        )
        return version
    reached = version
    for step_version in sorted(STEPS):
        if step_version <= version:
            continue
        log.info("Migrating the Neoleads event store to schema version %s", step_version)
        STEPS[step_version](conn)
        reached = step_version
    if reached != version:
        # All steps share this one transaction, so one row for the version reached records the same
        # thing as a row per step would.
        conn.execute(insert(schema_versions).values(version=reached, applied_at=datetime.now(UTC)))
    return reached


def _migrate_once(engine: Engine) -> int:
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            # pysqlite runs DDL outside its implicit transactions, so two processes could both see "no table"
            # and race on CREATE TABLE. With the driver's transaction handling off, BEGIN IMMEDIATE takes the
            # write lock before anything is read: concurrent migrators queue (busy_timeout) instead of racing.
            conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                version = _apply_steps(conn)
            except BaseException:
                conn.exec_driver_sql("ROLLBACK")
                raise
            conn.exec_driver_sql("COMMIT")
            return version
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Serialise concurrent migrators (several API server workers starting at once); released at commit.
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_ADVISORY_LOCK_KEY})
        return _apply_steps(conn)


def migrate(engine: Engine) -> int:
    """Create or upgrade the schema; safe to run again and from several processes at once.

    :return: the schema version now in the store.
    :raises sqlalchemy.exc.SQLAlchemyError: the database is unreachable or refused the DDL.
    """
    with _process_lock:
        try:
            return _migrate_once(engine)
        except DBAPIError:
            # Another database, or a process that migrated without the locks above, may have won a race on
            # "table already exists" or on the version row; if it finished the job, nothing is left to do.
            version = current_version(engine)
            if version is not None and version >= SCHEMA_VERSION and _has_event_table(engine):
                return version
            raise


def _has_event_table(engine: Engine) -> bool:
    with engine.connect() as conn:
        return inspect(conn).has_table(webhook_events.name)


def check_schema(engine: Engine) -> int:
    """Raise :class:`EventStoreSchemaError` unless the store is migrated to this provider's version (or newer).

    :return: the recorded schema version.
    """
    hint = "run `neoleads events migrate` (or set [neoleads] events_db_url to the right database)"
    version = current_version(engine)
    where = safe_url(engine.url)
    if version is None:
        raise EventStoreSchemaError(f"The Neoleads event store at {where} has no schema: {hint}")
    if version < SCHEMA_VERSION:
        raise EventStoreSchemaError(
            f"The Neoleads event store at {where} has schema version {version}, "
            f"but this provider needs {SCHEMA_VERSION}: {hint}"
        )
    if not _has_event_table(engine):
        raise EventStoreSchemaError(
            f"The Neoleads event store at {where} has no table {webhook_events.name!r}: {hint}"
        )
    return version
