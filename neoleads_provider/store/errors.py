"""What the event store raises: the one place that knows SQLAlchemy's exceptions.

Code outside ``store/`` never imports SQLAlchemy (ruff's TID251 enforces it); it catches
:class:`EventStoreError` and asks :attr:`EventStoreError.transient` whether waiting could help.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from neoleads_provider.exceptions import NeoleadsError

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["EventStoreError", "EventStoreSchemaError", "error_text", "is_transient", "translate_errors"]


class EventStoreError(NeoleadsError):
    """The event store failed. ``transient``: an outage worth waiting out (refused, locked, dropped).

    The message names the error's type and first line, never a statement's parameters or a password.
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from its own arguments: the triggerer and task runner pickle exceptions across processes.
        return (_rebuild, (type(self), str(self), self.transient))


def _rebuild(cls: type[EventStoreError], message: str, transient: bool) -> EventStoreError:
    return cls(message, transient=transient)


class EventStoreSchemaError(EventStoreError):
    """The event store's tables are missing or older than this provider needs."""


def is_transient(exc: BaseException) -> bool:
    """Whether a store error is an outage worth waiting out (connection refused, lock, pool timeout...).

    A bad URL, a missing driver or a programming error is not: waiting would never fix it.
    """
    if isinstance(exc, EventStoreError):
        return exc.transient
    from sqlalchemy import exc as sa_exc

    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(
        exc, sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.TimeoutError | sa_exc.DisconnectionError
    )


def error_text(exc: BaseException) -> str:
    """``Type: first line`` of a database error: SQLAlchemy's full text would list the statement's parameters."""
    orig = getattr(exc, "orig", None)
    reason = (str(orig if orig is not None else exc).splitlines() or [""])[0][:300]
    return f"{type(exc).__name__}: {reason}"


@contextlib.contextmanager
def translate_errors(engine: Any = None) -> Iterator[None]:
    """Turn SQLAlchemy errors raised inside the block into :class:`EventStoreError`.

    :param engine: when given, a failure is first checked against the schema: a store that was never
        migrated raises :class:`EventStoreSchemaError`, whose message says how to migrate it.
    """
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except EventStoreError:
        raise
    except SQLAlchemyError as exc:
        if engine is not None:
            from neoleads_provider.store.migrate import check_schema

            try:
                check_schema(engine)
            except EventStoreSchemaError as schema_error:
                raise schema_error from exc
            except SQLAlchemyError:
                pass
        raise EventStoreError(error_text(exc), transient=is_transient(exc)) from exc
