"""Errors raised by the Neoleads provider.

Every API error names the HTTP method, the path and what the server said. None of them ever carries
the API token: paths and server messages (from which the hook scrubs any echoed token) are the only text
that goes in. Every one pickles and rebuilds with its attributes (the triggerer and task runner pickle them).
"""

from __future__ import annotations

from typing import Any

from airflow.sdk.exceptions import AirflowException


class NeoleadsError(AirflowException):
    """Base class for every error raised by the Neoleads provider."""


class NeoleadsConfigError(NeoleadsError):
    """The Airflow connection or an argument is missing or malformed."""


def _rebuild(cls: type[BaseException], args: tuple[Any, ...], kwargs: dict[str, Any]) -> BaseException:
    """Unpickle an error whose constructor takes more than its message (see ``__reduce__`` below)."""
    return cls(*args, **kwargs)


class NeoleadsTransportError(NeoleadsError):
    """The request failed below HTTP: DNS, connect, TLS, timeout or a dropped connection.

    ``maybe_delivered`` is True when the request may have reached the server (a read timeout or a
    connection dropped after sending), so a non-idempotent call must not simply be replayed.
    """

    def __init__(self, method: str, path: str, reason: str, *, maybe_delivered: bool) -> None:
        self.method = method
        self.path = path
        self.reason = reason
        self.maybe_delivered = maybe_delivered
        hint = " (the request may have reached the server)" if maybe_delivered else ""
        super().__init__(f"Neoleads {method} {path} failed: {reason}{hint}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from its own arguments: the triggerer and task runner pickle exceptions across processes.
        return (
            _rebuild,
            (type(self), (self.method, self.path, self.reason), {"maybe_delivered": self.maybe_delivered}),
            dict(self.__dict__),
        )


class NeoleadsApiError(NeoleadsError):
    """The server answered with a non-2xx status."""

    def __init__(
        self, method: str, path: str, status_code: int, message: str, *, body: object = None
    ) -> None:
        self.method = method
        self.path = path
        # AirflowException infers HTTPStatus from its class default; the server's status may be any int.
        self.status_code = status_code  # type: ignore[assignment]
        self.server_message = message
        self.body = body
        super().__init__(f"Neoleads {method} {path} returned {status_code}: {message}")

    def _init_args(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The constructor's arguments, for pickling; subclasses with more keywords add theirs."""
        return (self.method, self.path, self.status_code, self.server_message), {"body": self.body}

    #: What the failure means in the caller's terms (the field, its value, the connection), once known.
    hint: str | None = None

    def add_hint(self, hint: str) -> None:
        """Append what the failure means in the caller's terms, e.g. ``inbox_id 99 was not found in account 1
        (connection neoleads_default)``: the server's own message rarely names the field."""
        self.hint = hint
        self.args = (f"{self.args[0]}. {hint}",)

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from its own arguments: the triggerer and task runner pickle exceptions across processes.
        args, kwargs = self._init_args()
        return (_rebuild, (type(self), args, kwargs), dict(self.__dict__))

    def __setstate__(self, state: dict[str, Any] | None) -> None:
        if state is None:  # BaseException's contract: nothing to restore (pickle always passes our dict)
            return
        hint = state.pop("hint", None)
        self.__dict__.update(state)
        if hint:
            self.add_hint(hint)


class NeoleadsAuthError(NeoleadsApiError):
    """401: the token is invalid, lacks the role, or is not a member of the account."""


class NeoleadsForbiddenError(NeoleadsApiError):
    """403: the operation is not allowed for this resource."""


class NeoleadsNotFoundError(NeoleadsApiError):
    """404: the account, contact, conversation, inbox or source_id does not exist."""


class NeoleadsValidationError(NeoleadsApiError):
    """422: the server refused the input; ``attributes`` names the offending fields when it says."""

    def __init__(
        self,
        method: str,
        path: str,
        status_code: int,
        message: str,
        *,
        body: object = None,
        attributes: list[str] | None = None,
    ) -> None:
        self.attributes = list(attributes or [])
        super().__init__(method, path, status_code, message, body=body)

    def _init_args(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        args, kwargs = super()._init_args()
        return args, {**kwargs, "attributes": self.attributes}


class NeoleadsRateLimitError(NeoleadsApiError):
    """429: throttled. ``retry_after`` is the server's Retry-After in seconds, when it sent one."""

    def __init__(
        self,
        method: str,
        path: str,
        status_code: int,
        message: str,
        *,
        body: object = None,
        retry_after: float | None = None,
    ) -> None:
        self.retry_after = retry_after
        super().__init__(method, path, status_code, message, body=body)

    def _init_args(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        args, kwargs = super()._init_args()
        return args, {**kwargs, "retry_after": self.retry_after}


class NeoleadsServerError(NeoleadsApiError):
    """5xx: the server failed."""


REDIRECT_HINT = "the base URL should be the server's final address, e.g. https rather than http"


class NeoleadsRedirectError(NeoleadsApiError):
    """3xx: the server answered with a redirect, which the hook never follows (nor retries).

    Following it could resend a POST as a GET, or send the token to another host; taking it as success
    would report a message sent that never was. ``location`` is where it pointed, without its query string
    or any credentials; None when the server sent no ``Location``.
    """

    def __init__(
        self, method: str, path: str, status_code: int, location: str | None, *, body: object = None
    ) -> None:
        self.location = location
        where = f"a redirect to {location}" if location else "a redirect with no usable Location"
        super().__init__(method, path, status_code, f"{where}; {REDIRECT_HINT}", body=body)

    def _init_args(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (self.method, self.path, self.status_code, self.location), {"body": self.body}
