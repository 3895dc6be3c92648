"""Errors raised by the Neoleads provider.

Every API error names the HTTP method, the path and what the server said. None of them ever carries
the API token: paths and server messages are the only text that goes in.
"""

from __future__ import annotations

from airflow.sdk.exceptions import AirflowException


class NeoleadsError(AirflowException):
    """Base class for every error raised by the Neoleads provider."""


class NeoleadsConfigError(NeoleadsError):
    """The Airflow connection or an argument is missing or malformed."""


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


class NeoleadsApiError(NeoleadsError):
    """The server answered with a non-2xx status."""

    def __init__(
        self, method: str, path: str, status_code: int, message: str, *, body: object = None
    ) -> None:
        self.method = method
        self.path = path
        self.status_code = status_code
        self.server_message = message
        self.body = body
        super().__init__(f"Neoleads {method} {path} returned {status_code}: {message}")


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


class NeoleadsServerError(NeoleadsApiError):
    """5xx: the server failed."""
