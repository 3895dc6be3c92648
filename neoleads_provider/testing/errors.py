"""The sandbox's API errors: :class:`SandboxError` and the factories of the real server's error answers.

The app turns a raised :class:`SandboxError` into its status and exact body (see ``app.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping

NOT_FOUND_BODY = {"error": "Resource could not be found"}
SERVER_ERROR_BODY = {"status": 500, "error": "Internal Server Error"}
NOT_AUTHORIZED_BODY = {"error": "You are not authorized to do this action"}


class SandboxError(Exception):
    """An API error: the HTTP status and the exact body the real server sends (``None`` = empty body)."""

    def __init__(self, status: int, body: Mapping[str, Any] | None) -> None:
        super().__init__(f"HTTP {status}: {body!r}")
        self.status = status
        self.body = dict(body) if body is not None else None


def not_found(*, empty: bool = False) -> SandboxError:
    """Return the 404 ``ActiveRecord::RecordNotFound`` answer, or the bodiless ``head :not_found``."""
    return SandboxError(404, None if empty else NOT_FOUND_BODY)


def not_authorized() -> SandboxError:
    """Return the 401 a Pundit denial gets (Chatwoot answers 401, not 403)."""
    return SandboxError(401, NOT_AUTHORIZED_BODY)


def unprocessable(error: str) -> SandboxError:
    """Return a 422 with the ``{"error": ...}`` shape used for handled failures."""
    return SandboxError(422, {"error": error})


def record_invalid(errors: list[tuple[str, str]]) -> SandboxError:
    """Return the 422 of a failed model validation: full messages joined by ``", "`` plus attribute names."""
    attributes: list[str] = []
    for attribute, _ in errors:
        if attribute not in attributes:
            attributes.append(attribute)
    return SandboxError(
        422, {"message": ", ".join(message for _, message in errors), "attributes": attributes}
    )


def server_error() -> SandboxError:
    """Return the Rails public-exceptions 500 for a JSON request."""
    return SandboxError(500, SERVER_ERROR_BODY)
