"""The core of the Neoleads hook: settings, the session, requests, errors that name the field."""

from __future__ import annotations

import contextlib
from functools import cached_property
from typing import TYPE_CHECKING, Any, Self

from airflow.sdk import BaseHook

from neoleads_provider.connection import DEFAULT_CONN_ID, NeoleadsConnectionSettings
from neoleads_provider.exceptions import (
    NeoleadsAuthError,
    NeoleadsConfigError,
    NeoleadsError,
    NeoleadsNotFoundError,
)
from neoleads_provider.hooks.transport import (
    IDEMPOTENT_METHODS,
    RetryPolicy,
    build_session,
    secret_forms,
    send_once,
)

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

    import requests

    from neoleads_provider.ratelimit import RateLimiter

MESSAGE_TYPES = ("outgoing", "incoming")
CONVERSATION_STATUSES = ("open", "resolved", "pending", "snoozed")
MAX_ATTACHMENTS = 15
# The profile response echoes the caller's token; it must never travel further than the hook.
PROFILE_SECRET_FIELDS = ("access_token", "pubsub_token")
#: What Airflow's API shows, and some UI forms send back, in place of a stored password.
MASKED_TOKEN = "***"
# Where each id a call names is looked up, to say which one a 404 was about.
_LOOKUP_PATHS = {
    "inbox_id": "inboxes/{}",
    "contact_id": "contacts/{}",
    "conversation_id": "conversations/{}",
}


class NeoleadsHookBase(BaseHook):
    """The hook's core: the connection's settings, one session, requests with their retry policy, and errors
    that name what is missing. The resource mixins (inboxes, contacts, conversations, webhooks) build on it."""

    def __init__(
        self,
        neoleads_conn_id: str = DEFAULT_CONN_ID,
        *,
        timeout: float | None = None,
        max_retries: int | None = None,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        rate_limiter: RateLimiter | None = None,
    ) -> None:
        super().__init__()
        self.neoleads_conn_id = neoleads_conn_id
        self.rate_limiter = rate_limiter
        self._timeout = timeout
        self._max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max

    def __repr__(self) -> str:
        return f"{type(self).__name__}(neoleads_conn_id={self.neoleads_conn_id!r})"

    # ------------------------------------------------------------------ configuration

    @cached_property
    def settings(self) -> NeoleadsConnectionSettings:
        """The connection's fields, validated once."""
        return NeoleadsConnectionSettings.from_connection(self.get_connection(self.neoleads_conn_id))

    @property
    def account_id(self) -> int:
        return self.settings.account_id

    @property
    def timeout(self) -> float:
        return self._timeout if self._timeout is not None else self.settings.timeout

    @property
    def max_retries(self) -> int:
        return self._max_retries if self._max_retries is not None else self.settings.max_retries

    @cached_property
    def session(self) -> requests.Session:
        """The one session this hook uses, configured once (:func:`~neoleads_provider.hooks.transport.build_session`)."""
        return build_session(self.settings)

    @cached_property
    def retry_policy(self) -> RetryPolicy:
        """When a failed attempt is tried again (:class:`~neoleads_provider.hooks.transport.RetryPolicy`)."""
        return RetryPolicy(
            max_retries=self.max_retries,
            backoff_base=self.backoff_base,
            backoff_max=self.backoff_max,
            rate_limit_max_wait=self.settings.rate_limit_max_wait,
        )

    def get_conn(self) -> requests.Session:
        """Return the configured ``requests.Session``."""
        return self.session

    def close(self) -> None:
        """Close the pooled connections."""
        if "session" in self.__dict__:
            self.session.close()
            del self.__dict__["session"]

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @cached_property
    def _secret_forms(self) -> tuple[str, ...]:
        """The connection's token in every form a server might echo it (see :func:`secret_forms`)."""
        return secret_forms(self.settings.api_token)

    def url_for(self, path: str) -> str:
        """Absolute URL for ``path``: account-scoped unless it starts with ``/``."""
        if not path.startswith("/"):
            path = f"/api/v1/accounts/{self.account_id}/{path}"
        return self.settings.base_url + path

    # ------------------------------------------------------------------ transport

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        data: Any = None,
        files: Sequence[tuple[str, tuple[str, bytes, str]]] | None = None,
        idempotent: bool | None = None,
    ) -> Any:
        """Send one API request and return the parsed JSON body (None when the body is empty).

        Use it for endpoints that have no method of their own yet.

        :param path: relative to ``/api/v1/accounts/{account_id}/``, or absolute from the host when it starts with ``/``.
        :param idempotent: whether replaying after an unseen answer is harmless; by default true for
            GET, HEAD, OPTIONS, PUT and DELETE.
        :raises NeoleadsApiError: a subclass for each status class, naming method, path and the server's message.
        :raises NeoleadsTransportError: the request failed below HTTP.
        """
        method = method.upper()
        if idempotent is None:
            idempotent = method in IDEMPOTENT_METHODS
        display_path = path if path.startswith("/") else f"/api/v1/accounts/{self.account_id}/{path}"

        def attempt() -> Any:
            return send_once(
                self.session,
                method,
                self.url_for(path),
                display_path,
                timeout=self.timeout,
                forms=self._secret_forms,
                rate_limiter=self.rate_limiter,
                json=json,
                params=params,
                data=data,
                files=files,
            )

        try:
            return self.retry_policy.call(attempt, method, display_path, idempotent=idempotent)
        except NeoleadsAuthError as exc:
            exc.add_hint(self._auth_hint(exc))
            raise

    def _auth_hint(self, exc: NeoleadsAuthError) -> str:
        if "account" in exc.server_message.lower():
            return (
                f"account_id {self.account_id} of connection {self.neoleads_conn_id!r} is not an account of "
                "this token's user; `neoleads doctor` lists the token's accounts"
            )
        return (
            f"The API access token in the password of connection {self.neoleads_conn_id!r} was refused; copy a "
            "valid one from the Neoleads profile page"
        )

    @contextlib.contextmanager
    def _naming_what_is_missing(self, **ids: int | None) -> Iterator[None]:
        """On a 404, find which of ``ids`` (or the account itself) the server does not know, and say so.

        The server answers "Resource could not be found" whichever it was; a failed call costs one or two
        more lookups to name it, e.g. ``inbox_id 99 was not found in account 1 (connection neoleads_default)``.
        """
        try:
            yield
        except NeoleadsNotFoundError as exc:
            hint = None if exc.hint else self._missing(ids)
            if hint is not None:
                exc.add_hint(hint)
            raise

    def _missing(self, ids: Mapping[str, int | None]) -> str | None:
        where = f"(connection {self.neoleads_conn_id!r})"
        try:
            accounts = [account.get("id") for account in self.get_profile().get("accounts") or []]
            if self.account_id not in accounts:
                return f"account_id {self.account_id} is not one of this token's accounts {sorted(accounts)} {where}"
            for name, value in ids.items():
                if value is None:
                    continue
                try:
                    self.request("GET", _LOOKUP_PATHS[name].format(int(value)))
                except NeoleadsNotFoundError:
                    return f"{name} {value} was not found in account {self.account_id} {where}"
        except NeoleadsError:
            return None  # the lookup failed too: the server's own message is all there is
        return None

    # ------------------------------------------------------------------ profile and connection test

    def get_profile(self) -> dict[str, Any]:
        """The token's user profile (``GET /api/v1/profile``), without the echoed token."""
        profile = dict(self.request("GET", "/api/v1/profile"))
        for secret_field in PROFILE_SECRET_FIELDS:
            profile.pop(secret_field, None)
        return profile

    def test_connection(self) -> tuple[bool, str]:
        """Check the token and the account; report the user's role. Never raises."""
        try:
            if self.settings.api_token == MASKED_TOKEN:
                # Airflow 3.1.0-3.1.6 test the values the UI sent, and the list page sends the masked token.
                return False, (
                    f"Airflow passed the masked token {MASKED_TOKEN!r}, not the stored one: this Airflow "
                    "release tests only what the connections list sends. Check the stored connection with "
                    "`neoleads doctor --conn-id <connection id>` instead; Airflow 3.1.7 to 3.3.0 test the "
                    "stored token, and later releases too with this provider's plugin on the API server."
                )
            profile = self.get_profile()
            accounts = {account.get("id"): account for account in profile.get("accounts") or []}
            account = accounts.get(self.account_id)
            if account is None:
                known = ", ".join(str(account_id) for account_id in sorted(accounts, key=str)) or "none"
                return False, (
                    f"The token works, but account {self.account_id} is not one of its accounts (it has: {known}). "
                    "Fix the connection's account_id."
                )
            role = account.get("role") or profile.get("role") or "unknown"
            note = "" if role == "administrator" else " (webhook setup needs an administrator token)"
            return True, (
                f"Connected as {profile.get('name')!r} to account {self.account_id} "
                f"({account.get('name')!r}) with role {role}{note}"
            )
        except NeoleadsAuthError as exc:
            return False, f"The API access token was refused: {exc.server_message}"
        except NeoleadsConfigError as exc:
            # The UI's Test buttons run this under a random connection id: name the field, not that id.
            message = str(exc).replace(f"Connection {self.neoleads_conn_id!r}: ", "", 1)
            message = message.replace(f"Connection {self.neoleads_conn_id!r}", "The connection", 1)
            return False, message[:1].upper() + message[1:]
        except NeoleadsError as exc:
            return False, str(exc)

    def _as_administrator(self, action: str, method: str, path: str, **kwargs: Any) -> Any:
        """Send an administrator-only request; turn a 401 for a non-administrator into an error naming the role.

        Neoleads answers a role denial with the same 401 as a bad token ("You are not authorized to do this
        action"), so the profile is read to tell the two apart.
        """
        try:
            return self.request(method, path, **kwargs)
        except NeoleadsAuthError as exc:
            role = self._role_in_account()
            if role is None or role == "administrator":
                raise
            raise NeoleadsAuthError(
                exc.method,
                exc.path,
                exc.status_code,
                f"{exc.server_message}. To {action}, connection {self.neoleads_conn_id!r} needs an "
                f"administrator's API access token, but its token belongs to a user whose role in account "
                f"{self.account_id} is {role!r}",
                body=exc.body,
            ) from None

    def _role_in_account(self) -> str | None:
        """The token's role in the connection's account, or None when the profile cannot tell."""
        try:
            profile = self.get_profile()
        except NeoleadsError:
            return None
        for account in profile.get("accounts") or []:
            if account.get("id") == self.account_id:
                return str(account.get("role") or "") or None
        return None


def without_none(**fields: Any) -> dict[str, Any]:
    return {key: value for key, value in fields.items() if value is not None}
