"""``neoleads events ...``: create, inspect and prune the webhook event store.

Commands: ``migrate``, ``purge --older-than 7d [--dry-run]``, ``list`` and ``show``. Each takes
``--db-url`` (default ``[neoleads] events_db_url``). Exit status 0 on success, 1 on a store problem or
an unknown event; argparse exits 2 on bad arguments.

Also what every command module shares (:func:`with_logs_on_stderr`, the argument types :func:`positive_int`
and :func:`http_url`): building the parser, which ``airflow`` does on every start,
may load only the command modules, so these cannot move to a module of their own.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy import Engine  # noqa: TID251 - a type only

    from neoleads_provider.store.records import StoredEvent

__all__ = [
    "http_url",
    "logs_to_stderr",
    "parse_duration",
    "parse_since",
    "positive_int",
    "register",
    "with_logs_on_stderr",
]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION_RE = re.compile(r"(?:\d+[smhdw])+")
_DURATION_PART_RE = re.compile(r"(\d+)([smhdw])")
_PURGE_BATCH_SIZE = 1000


def logs_to_stderr() -> None:
    """Send log lines to stderr, keeping stdout for the command's output (tables, JSON).

    Airflow's logging configuration writes to stdout, and Airflow logs while it is being imported, so the
    import happens with stdout pointing at stderr; handlers set up earlier are moved over afterwards.
    """
    with contextlib.redirect_stdout(sys.stderr):
        import airflow.configuration  # noqa: F401
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
            handler.setStream(sys.stderr)


def with_logs_on_stderr(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Wrap a command handler so that :func:`logs_to_stderr` runs before anything imports Airflow."""

    @functools.wraps(handler)
    def wrapper(args: argparse.Namespace) -> int:
        logs_to_stderr()
        return handler(args)

    return wrapper


def parse_duration(text: str) -> timedelta:
    """Parse ``30s``, ``15m``, ``12h``, ``7d``, ``2w`` or a combination such as ``1d12h``.

    :raises argparse.ArgumentTypeError: the text is not a positive duration in those units.
    """
    compact = text.strip().lower().replace(" ", "")
    if not _DURATION_RE.fullmatch(compact):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: use a number and a unit s, m, h, d or w, e.g. 7d, 12h or 1d12h"
        )
    seconds = sum(int(number) * _UNITS[unit] for number, unit in _DURATION_PART_RE.findall(compact))
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be longer than zero")
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise argparse.ArgumentTypeError(f"{text!r} is too long a duration") from None


def parse_since(text: str) -> datetime:
    """Parse ``--since``: a duration back from now (``2h``) or an ISO 8601 time (naive means UTC).

    :raises argparse.ArgumentTypeError: neither form.
    """
    try:
        return datetime.now(UTC) - parse_duration(text)
    except argparse.ArgumentTypeError:
        pass
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a duration (e.g. 2h, 7d) nor an ISO 8601 time (e.g. 2026-05-01T12:00:00Z)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def positive_int(text: str, *, kind: str = "a whole number") -> int:
    """Parse an id or a count of at least 1; ``kind`` says what it must be, e.g. "an inbox id (a whole number)".

    :raises argparse.ArgumentTypeError: not a whole number, or less than 1.
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {kind}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def http_url(text: str) -> str:
    """Parse an absolute http(s) URL, without the spaces around it.

    :raises argparse.ArgumentTypeError: another scheme, or no host.
    """
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an http(s) URL")
    return text.strip()


def _limit(text: str) -> int:
    from neoleads_provider.store.repository import MAX_LIST_LIMIT

    value = positive_int(text)
    if value > MAX_LIST_LIMIT:
        raise argparse.ArgumentTypeError(f"{text!r} is more than the maximum {MAX_LIST_LIMIT}")
    return value


def register(subparsers: Any) -> None:
    """Add the ``events`` command group to the ``neoleads`` parser."""
    events = subparsers.add_parser(
        "events",
        help="inspect and maintain the webhook event store",
        description="Create, inspect and prune the webhook event store ([neoleads] events_db_url).",
    )
    commands = events.add_subparsers(dest="events_command", metavar="COMMAND", required=True)

    db_url = argparse.ArgumentParser(add_help=False)
    db_url.add_argument(
        "--db-url",
        metavar="URL",
        help="SQLAlchemy URL of the event store (default: [neoleads] events_db_url, "
        "or sqlite:///$AIRFLOW_HOME/neoleads_events.db)",
    )

    migrate = commands.add_parser(
        "migrate", parents=[db_url], help="create or upgrade the event store tables (safe to repeat)"
    )
    migrate.set_defaults(func=with_logs_on_stderr(_migrate))

    purge = commands.add_parser("purge", parents=[db_url], help="delete events older than a given age")
    purge.add_argument(
        "--older-than",
        required=True,
        type=parse_duration,
        metavar="AGE",
        help="delete events received longer ago than this: e.g. 30m, 12h, 7d, 2w (units s, m, h, d, w)",
    )
    purge.add_argument("--dry-run", action="store_true", help="only count what would be deleted")
    purge.set_defaults(func=with_logs_on_stderr(_purge))

    scope = argparse.ArgumentParser(add_help=False)
    scope.add_argument(
        "--conn-id",
        default="neoleads_default",
        help="events received for this connection (default neoleads_default)",
    )
    scope.add_argument(
        "--all-connections", action="store_true", help="events of every connection (ignores --conn-id)"
    )
    list_ = commands.add_parser("list", parents=[db_url, scope], help="list stored events, newest first")
    list_.add_argument("--event", help="only this event, e.g. message_created")
    list_.add_argument("--conversation-id", type=positive_int, help="only this conversation (display id)")
    list_.add_argument(
        "--since", type=parse_since, metavar="WHEN", help="only events received since: 2h, 7d or an ISO time"
    )
    list_.add_argument("--limit", type=_limit, default=50, help="at most this many (default 50)")
    list_.add_argument("--json", action="store_true", help="print JSON, one object per event, in a list")
    list_.set_defaults(func=with_logs_on_stderr(_list))

    show = commands.add_parser("show", parents=[db_url, scope], help="show one event with its full payload")
    show.add_argument("event", metavar="ID_OR_DELIVERY_ID", help="the event id, or its delivery id")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=with_logs_on_stderr(_show))


# --------------------------------------------------------------------------- handlers


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


def _engine(args: argparse.Namespace) -> Engine:
    from neoleads_provider.store.engine import get_engine

    return get_engine(args.db_url)


def _store_error(args: argparse.Namespace, exc: Exception) -> int:
    from neoleads_provider.store.engine import get_events_db_url, safe_url

    where = safe_url(args.db_url or get_events_db_url())
    return _error(f"cannot use the event store at {where}: {exc}")


def _migrate(args: argparse.Namespace) -> int:
    from neoleads_provider.store.engine import safe_url
    from neoleads_provider.store.errors import EventStoreError, translate_errors
    from neoleads_provider.store.migrate import current_version, migrate

    try:
        with translate_errors():
            engine = _engine(args)
            before = current_version(engine)
            after = migrate(engine)
    except EventStoreError as exc:
        return _store_error(args, exc)
    where = safe_url(engine.url)
    if before == after:
        print(f"Event store {where} is already at schema version {after}.")
    else:
        print(f"Event store {where} migrated from schema version {before or 0} to {after}.")
    return 0


def _run_checked(args: argparse.Namespace, action: Any) -> int:
    from neoleads_provider.store.errors import EventStoreError, EventStoreSchemaError, translate_errors
    from neoleads_provider.store.migrate import check_schema

    try:
        with translate_errors():
            engine = _engine(args)
            check_schema(engine)
            return int(action(engine))
    except EventStoreSchemaError as exc:
        return _error(str(exc))
    except EventStoreError as exc:
        return _store_error(args, exc)


def _purge(args: argparse.Namespace) -> int:
    from neoleads_provider.store.repository import count_older_than, purge_older_than

    cutoff = datetime.now(UTC) - args.older_than

    def action(engine: Engine) -> int:
        if args.dry_run:
            with engine.connect() as conn:
                count = count_older_than(conn, cutoff)
            print(f"Would delete {count} event(s) received before {cutoff.isoformat()} (dry run).")
            return 0
        total = 0
        while True:
            # One transaction per batch: a long purge never holds the table against the receiver.
            with engine.begin() as conn:
                deleted = purge_older_than(conn, cutoff, batch_size=_PURGE_BATCH_SIZE, max_batches=1)
            total += deleted
            if deleted < _PURGE_BATCH_SIZE:
                break
        print(f"Deleted {total} event(s) received before {cutoff.isoformat()}.")
        return 0

    return _run_checked(args, action)


def _summary(event: StoredEvent) -> dict[str, Any]:
    return {
        "event_id": event.id,
        "delivery_id": event.delivery_id,
        "conn_id": event.conn_id,
        "event": event.event,
        "account_id": event.account_id,
        "inbox_id": event.inbox_id,
        "conversation_id": event.conversation_id,
        "message_id": event.message_id,
        "contact_id": event.contact_id,
        "message_type": event.message_type,
        "private": event.private,
        "sender_type": event.sender_type,
        "received_at": event.received_at.isoformat(),
    }


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def _list(args: argparse.Namespace) -> int:
    from neoleads_provider.store.repository import list_events

    def action(engine: Engine) -> int:
        with engine.connect() as conn:
            events = list_events(
                conn,
                conn_id=None if args.all_connections else args.conn_id,
                event=args.event,
                conversation_id=args.conversation_id,
                since=args.since,
                limit=args.limit,
            )
        if args.json:
            print(json.dumps([_summary(event) for event in events], indent=2))
            return 0
        if not events:
            print("No events.")
            return 0
        header = ("ID", "RECEIVED (UTC)", "CONN_ID", "EVENT", "CONV", "MSG", "TYPE", "SENDER", "DELIVERY_ID")
        rows = [
            (
                str(event.id),
                event.received_at.strftime("%Y-%m-%d %H:%M:%S"),
                event.conn_id,
                event.event,
                _cell(event.conversation_id),
                _cell(event.message_id),
                _cell(event.message_type) + (" (private)" if event.private else ""),
                _cell(event.sender_type),
                event.delivery_id,
            )
            for event in events
        ]
        widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
        for row in (header, *rows):
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        return 0

    return _run_checked(args, action)


def _show(args: argparse.Namespace) -> int:
    from neoleads_provider.store.repository import get_event

    def action(engine: Engine) -> int:
        with engine.connect() as conn:
            conn_id = None if args.all_connections else args.conn_id
            found = None
            if args.event.isdigit() and len(args.event) < 19:
                found = get_event(conn, int(args.event), conn_id=conn_id)
            if found is None and conn_id is not None:
                found = get_event(conn, conn_id=conn_id, delivery_id=args.event)
        if found is None:
            if conn_id is None:
                return _error(
                    f"no stored event has id {args.event!r} (a delivery id is unique per connection only: "
                    "look it up with --conn-id)"
                )
            return _error(f"no stored event of connection {conn_id!r} has id or delivery id {args.event!r}")
        try:
            payload: Any = found.payload
        except ValueError:
            payload = found.body
        if args.json:
            print(json.dumps({**_summary(found), "payload": payload}, indent=2))
            return 0
        for key, value in _summary(found).items():
            print(f"{key + ':':<17}{_cell(value)}")
        print("payload:")
        print(json.dumps(payload, indent=2, ensure_ascii=False))
        return 0

    return _run_checked(args, action)
