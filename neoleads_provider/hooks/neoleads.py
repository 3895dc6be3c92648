"""The Neoleads hook: the provider's only HTTP client for the Neoleads Application API."""

from __future__ import annotations

import contextlib
import json
import logging
import mimetypes
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from airflow.sdk import BaseHook

from neoleads_provider.connection import DEFAULT_CONN_ID, NeoleadsConnectionSettings
from neoleads_provider.events.names import WEBHOOK_EVENTS
from neoleads_provider.exceptions import (
    NeoleadsAuthError,
    NeoleadsConfigError,
    NeoleadsError,
    NeoleadsNotFoundError,
    NeoleadsServerError,
    NeoleadsTransportError,
    NeoleadsValidationError,
)
from neoleads_provider.hooks.transport import (
    IDEMPOTENT_METHODS,
    RetryPolicy,
    build_session,
    secret_forms,
    send_once,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping, Sequence

    import requests

    from neoleads_provider.ratelimit import RateLimiter

log = logging.getLogger(__name__)

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


class ContactLookup(TypedDict):
    """The keys ``find_contact`` looks a contact up by."""

    identifier: str | None
    email: str | None
    phone_number: str | None


class ContactFields(ContactLookup):
    """The keyword arguments ``get_or_create_contact`` takes, which ``create_contact`` takes too."""

    name: str | None
    inbox_id: int | None
    custom_attributes: Mapping[str, Any] | None
    additional_attributes: Mapping[str, Any] | None


class NeoleadsHook(BaseHook):
    """Talk to the Neoleads Application API with the token and account of an Airflow connection.

    One ``requests.Session`` per hook, with connection pooling. Requests are retried where replaying is safe:
    429 (after a jittered back-off, or the server's ``Retry-After``), connection failures before the request
    was sent, and 502/503/504 or timeouts on idempotent requests. A create call that may have reached the
    server is never replayed blindly.

    :param neoleads_conn_id: the ``neoleads`` connection: host = base URL, password = API access token,
        extra ``account_id``.
    :param timeout: seconds per request; overrides the connection's ``timeout``.
    :param max_retries: retries after the first try; overrides the connection's ``max_retries``.
    :param backoff_base: first back-off in seconds; later ones double, with jitter.
    :param rate_limiter: called before every HTTP attempt, retries included (e.g. a
        :class:`~neoleads_provider.ratelimit.TokenBucket` shared by the threads of a bulk send).
    """

    conn_name_attr = "neoleads_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = "neoleads"
    hook_name = "Neoleads"

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

    def __enter__(self) -> NeoleadsHook:
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

    # ------------------------------------------------------------------ inboxes

    def list_inboxes(self) -> list[dict[str, Any]]:
        """All inboxes the token can see. API inboxes have ``channel_type == "Channel::Api"``."""
        return list(self.request("GET", "inboxes")["payload"])

    def get_inbox(self, inbox_id: int) -> dict[str, Any]:
        """One inbox."""
        with self._naming_what_is_missing(inbox_id=inbox_id):
            return dict(self.request("GET", f"inboxes/{int(inbox_id)}"))

    def create_api_inbox(self, name: str, webhook_url: str | None = None) -> dict[str, Any]:
        """Create an API inbox (``POST /inboxes``); needs an administrator's token.

        Neoleads posts every inbox-scoped event (messages, conversations, typing) to ``webhook_url``,
        signed with the inbox's own ``secret``. A create that may have reached the server is not replayed.

        :return: the inbox: ``id``, ``inbox_identifier``, ``webhook_url`` and the signing ``secret``
            (servers from 4.13 on).
        :raises NeoleadsAuthError: the token is refused; when it is not an administrator's, the message says so
            and names the user's role.
        """
        channel = _without_none(type="api", webhook_url=webhook_url)
        body = {"name": name, "channel": channel}
        return dict(self._as_administrator("create an API inbox", "POST", "inboxes", json=body))

    def update_inbox_webhook(self, inbox_id: int, webhook_url: str | None) -> dict[str, Any]:
        """Point an API inbox's webhook at ``webhook_url`` (``PATCH /inboxes/{id}``); administrators only.

        :param webhook_url: the new URL; None clears it, and Neoleads then delivers nothing for the inbox.
        :return: the inbox, with its signing ``secret``.
        :raises NeoleadsAuthError: as :meth:`create_api_inbox`.
        """
        return dict(
            self._as_administrator(
                "change an inbox's webhook_url",
                "PATCH",
                f"inboxes/{int(inbox_id)}",
                json={"channel": {"webhook_url": webhook_url}},
                idempotent=True,
            )
        )

    def reset_inbox_secret(self, inbox_id: int) -> dict[str, Any]:
        """Give an API inbox a new signing secret (``POST /inboxes/{id}/reset_secret``); administrators only.

        Neoleads signs with the new secret at once, so the receiver must accept it before the next event.

        :return: the inbox, with the new ``secret``.
        :raises NeoleadsNotFoundError: the inbox does not exist, or is not an API inbox.
        :raises NeoleadsAuthError: as :meth:`create_api_inbox`.
        """
        # Replaying is harmless: each reset only replaces the secret, and the answer we act on carries the
        # one that is current when it returns.
        return dict(
            self._as_administrator(
                "reset an inbox's signing secret",
                "POST",
                f"inboxes/{int(inbox_id)}/reset_secret",
                idempotent=True,
            )
        )

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

    # ------------------------------------------------------------------ contacts

    def create_contact(
        self,
        *,
        name: str | None = None,
        email: str | None = None,
        phone_number: str | None = None,
        identifier: str | None = None,
        inbox_id: int | None = None,
        source_id: str | None = None,
        custom_attributes: Mapping[str, Any] | None = None,
        additional_attributes: Mapping[str, Any] | None = None,
        avatar_url: str | None = None,
    ) -> dict[str, Any]:
        """Create a contact (``POST /contacts``); with ``inbox_id`` also its contact inbox.

        :return: ``{"contact": {...}, "contact_inbox": {"inbox": ..., "source_id": ...}}``.
        :raises NeoleadsValidationError: e.g. "Email has already been taken" (``attributes`` names the fields).
        """
        body = _without_none(
            name=name,
            email=email,
            phone_number=phone_number,
            identifier=identifier,
            inbox_id=inbox_id,
            source_id=source_id,
            custom_attributes=dict(custom_attributes) if custom_attributes else None,
            additional_attributes=dict(additional_attributes) if additional_attributes else None,
            avatar_url=avatar_url,
        )
        with self._naming_what_is_missing(inbox_id=inbox_id):
            return dict(self.request("POST", "contacts", json=body)["payload"])

    def get_contact(self, contact_id: int) -> dict[str, Any]:
        """One contact, with its ``contact_inboxes``."""
        return dict(self.request("GET", f"contacts/{int(contact_id)}")["payload"])

    def update_contact(self, contact_id: int, **fields: Any) -> dict[str, Any]:
        """Update a contact; custom and additional attributes are merged by the server."""
        return dict(
            self.request("PUT", f"contacts/{int(contact_id)}", json=_without_none(**fields))["payload"]
        )

    def find_contact(
        self,
        *,
        identifier: str | None = None,
        email: str | None = None,
        phone_number: str | None = None,
    ) -> dict[str, Any] | None:
        """Find a contact by exact identifier, email or phone (``POST /contacts/filter``).

        When several contacts match different keys, the identifier wins, then the email, then the phone,
        as the server itself does when it finds or creates contacts for the Client API.
        """
        keys = [("identifier", identifier), ("email", email), ("phone_number", phone_number)]
        conditions = [(key, str(value)) for key, value in keys if value not in (None, "")]
        if not conditions:
            raise NeoleadsConfigError("find_contact needs at least one of identifier, email or phone_number")
        payload = [
            {
                "attribute_key": key,
                "filter_operator": "equal_to",
                "values": [value],
                "query_operator": "OR" if index < len(conditions) - 1 else None,
            }
            for index, (key, value) in enumerate(conditions)
        ]
        candidates = list(
            self.request("POST", "contacts/filter", json={"payload": payload}, idempotent=True)["payload"]
        )
        for key, value in conditions:
            for contact in candidates:
                if _same_contact_key(key, contact.get(key), value):
                    return dict(contact)
        return None

    def create_contact_inbox(
        self, contact_id: int, inbox_id: int, source_id: str | None = None
    ) -> dict[str, Any]:
        """Give a contact an inbox (``POST /contacts/{id}/contact_inboxes``); returns ``{"source_id", "inbox"}``.

        Replayed only with an explicit ``source_id``, which makes the server's create idempotent.
        """
        body = _without_none(inbox_id=int(inbox_id), source_id=source_id)
        with self._naming_what_is_missing(contact_id=contact_id, inbox_id=inbox_id):
            return dict(
                self.request(
                    "POST",
                    f"contacts/{int(contact_id)}/contact_inboxes",
                    json=body,
                    idempotent=source_id is not None,
                )
            )

    def get_or_create_contact(
        self,
        *,
        name: str | None = None,
        email: str | None = None,
        phone_number: str | None = None,
        identifier: str | None = None,
        inbox_id: int | None = None,
        custom_attributes: Mapping[str, Any] | None = None,
        additional_attributes: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Reuse the contact with the same identifier, email or phone, or create it.

        A create that may have reached the server (timeout, 5xx) is reconciled by looking the contact up
        before anything is sent again, so it never leaves a duplicate.

        :return: ``{"contact": {...}, "source_id": str | None, "inbox_id": int | None, "created": bool}``;
            ``source_id`` is the contact's in ``inbox_id`` (created there when missing).
        """
        lookup: ContactLookup = {"identifier": identifier, "email": email, "phone_number": phone_number}
        can_reconcile = any(value not in (None, "") for value in lookup.values())
        fields: ContactFields = {
            "name": name,
            "custom_attributes": custom_attributes,
            "additional_attributes": additional_attributes,
            "inbox_id": inbox_id,
            **lookup,
        }
        try:
            return _created_contact_result(self.create_contact(**fields), inbox_id)
        except NeoleadsValidationError as exc:
            if not can_reconcile or not exc.server_message or "already been taken" not in exc.server_message:
                raise
            log.info("A contact with the same %s exists; reusing it", ", ".join(exc.attributes) or "key")
        except (NeoleadsTransportError, NeoleadsServerError) as exc:
            if not can_reconcile or (isinstance(exc, NeoleadsTransportError) and not exc.maybe_delivered):
                raise
            log.warning("Creating the contact may or may not have succeeded (%s); looking it up first", exc)

        contact = self.find_contact(**lookup)
        if contact is None:
            # The earlier create did not land: it is now safe to send it again, once.
            return _created_contact_result(self.create_contact(**fields), inbox_id)
        source_id = self.ensure_contact_inbox(contact, inbox_id) if inbox_id else None
        return {"contact": contact, "source_id": source_id, "inbox_id": inbox_id, "created": False}

    def ensure_contact_inbox(self, contact: Mapping[str, Any], inbox_id: int) -> str:
        """The contact's ``source_id`` in ``inbox_id``, creating the contact inbox only when it has none."""
        contact_inboxes = contact.get("contact_inboxes")
        if contact_inboxes is None:
            contact_inboxes = self.get_contact(contact["id"]).get("contact_inboxes") or []
        source_id = _source_id_in(contact_inboxes, inbox_id)
        if source_id is not None:
            return source_id
        try:
            return str(self.create_contact_inbox(contact["id"], inbox_id)["source_id"])
        except (NeoleadsTransportError, NeoleadsServerError):
            # It may have been created; the contact's inboxes say for sure.
            source_id = _source_id_in(self.get_contact(contact["id"]).get("contact_inboxes") or [], inbox_id)
            if source_id is None:
                raise
            return source_id

    # ------------------------------------------------------------------ conversations

    def create_conversation(
        self,
        *,
        source_id: str | None = None,
        inbox_id: int | None = None,
        contact_id: int | None = None,
        status: str | None = None,
        assignee_id: int | None = None,
        team_id: int | None = None,
        custom_attributes: Mapping[str, Any] | None = None,
        additional_attributes: Mapping[str, Any] | None = None,
        message: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Open a conversation (``POST /conversations``) from a ``source_id``, or from ``inbox_id`` + ``contact_id``.

        :return: the conversation; its ``id`` is the display id used in every path.
        """
        if not source_id and not (inbox_id and contact_id):
            raise NeoleadsConfigError("create_conversation needs source_id, or both inbox_id and contact_id")
        _check_status(status)
        body = _without_none(
            source_id=source_id,
            inbox_id=inbox_id,
            contact_id=contact_id,
            status=status,
            assignee_id=assignee_id,
            team_id=team_id,
            custom_attributes=dict(custom_attributes) if custom_attributes else None,
            additional_attributes=dict(additional_attributes) if additional_attributes else None,
            message=dict(message) if message else None,
        )
        with self._naming_what_is_missing(inbox_id=inbox_id, contact_id=contact_id):
            return dict(self.request("POST", "conversations", json=body))

    def list_contact_conversations(self, contact_id: int) -> list[dict[str, Any]]:
        """The contact's conversations (``GET /contacts/{id}/conversations``), latest activity first."""
        with self._naming_what_is_missing(contact_id=contact_id):
            answer = self.request("GET", f"contacts/{int(contact_id)}/conversations")
        return [dict(item) for item in answer.get("payload") or []]

    def get_conversation(self, conversation_id: int) -> dict[str, Any]:
        """One conversation, by display id."""
        with self._naming_what_is_missing(conversation_id=conversation_id):
            return dict(self.request("GET", f"conversations/{int(conversation_id)}"))

    def toggle_status(
        self, conversation_id: int, status: str | None = None, *, snoozed_until: int | None = None
    ) -> dict[str, Any]:
        """Set (or, without ``status``, toggle) a conversation's status.

        :return: ``{"success", "conversation_id", "current_status", "snoozed_until"}``.
        """
        _check_status(status)
        body = _without_none(status=status, snoozed_until=snoozed_until)
        # Setting an explicit status twice has the same effect as once; a bare toggle does not.
        with self._naming_what_is_missing(conversation_id=conversation_id):
            return dict(
                self.request(
                    "POST",
                    f"conversations/{int(conversation_id)}/toggle_status",
                    json=body,
                    idempotent=status is not None,
                )["payload"]
            )

    # ------------------------------------------------------------------ messages

    def send_message(
        self,
        conversation_id: int,
        content: str | None = None,
        *,
        message_type: str = "outgoing",
        private: bool = False,
        content_type: str | None = None,
        content_attributes: Mapping[str, Any] | None = None,
        template_params: Mapping[str, Any] | None = None,
        attachments: Iterable[str | Path] | None = None,
        source_id: str | None = None,
    ) -> dict[str, Any]:
        """Post a message into a conversation; files in ``attachments`` go as multipart.

        :param message_type: ``outgoing`` (from the agent) or ``incoming`` (from the contact; API inboxes only).
        :param source_id: an external id stored on the message, used to recognise it later.
        :return: the message; in REST responses ``message_type`` is an integer (0 incoming, 1 outgoing).
        """
        if message_type not in MESSAGE_TYPES:
            raise NeoleadsConfigError(f"message_type must be 'outgoing' or 'incoming'; got {message_type!r}")
        files = _read_attachments(attachments or ())
        if not content and not files and not template_params:
            raise NeoleadsConfigError("send_message needs content, attachments or template_params")
        path = f"conversations/{int(conversation_id)}/messages"
        fields = _without_none(
            content=content,
            message_type=message_type,
            private=bool(private),
            content_type=content_type,
            content_attributes=dict(content_attributes) if content_attributes else None,
            template_params=dict(template_params) if template_params else None,
            source_id=source_id,
        )
        with self._naming_what_is_missing(conversation_id=conversation_id):
            if not files:
                return dict(self.request("POST", path, json=fields))
            return dict(self.request("POST", path, data=_form_fields(fields), files=files))

    def list_messages(
        self, conversation_id: int, *, after: int | None = None, before: int | None = None
    ) -> list[dict[str, Any]]:
        """Messages of a conversation, oldest first.

        With no cursor: the latest 20; ``before=id``: the 20 before it; ``after=id``: up to 100 after it;
        both: up to 1000 between them.
        """
        params = _without_none(after=after, before=before)
        return list(
            self.request("GET", f"conversations/{int(conversation_id)}/messages", params=params)["payload"]
        )

    def find_message_by_source_id(
        self, conversation_id: int, source_id: str, *, max_pages: int = 5
    ) -> dict[str, Any] | None:
        """The most recent message carrying ``source_id``, looking back at most ``max_pages`` pages of 20."""
        before: int | None = None
        for _ in range(max_pages):
            page = self.list_messages(conversation_id, before=before)
            for message in reversed(page):
                if message.get("source_id") == source_id:
                    return message
            if len(page) < 20:
                return None
            before = min(int(message["id"]) for message in page)
        return None

    # ------------------------------------------------------------------ account webhooks

    def list_webhooks(self) -> list[dict[str, Any]]:
        """The account's webhooks (administrator token), each with its signing ``secret``."""
        return list(self.request("GET", "webhooks")["payload"]["webhooks"])

    def create_webhook(
        self, url: str, subscriptions: Sequence[str], *, name: str | None = None
    ) -> dict[str, Any]:
        """Create an account webhook; the response carries the server-generated signing ``secret``."""
        body = _without_none(url=url, subscriptions=_checked_events(subscriptions), name=name)
        return dict(self.request("POST", "webhooks", json=body)["payload"]["webhook"])

    def update_webhook(
        self,
        webhook_id: int,
        *,
        url: str | None = None,
        subscriptions: Sequence[str] | None = None,
        name: str | None = None,
    ) -> dict[str, Any]:
        """Change an account webhook's URL, events or name."""
        body = _without_none(
            url=url,
            subscriptions=_checked_events(subscriptions) if subscriptions is not None else None,
            name=name,
        )
        return dict(
            self.request("PATCH", f"webhooks/{int(webhook_id)}", json=body, idempotent=True)["payload"][
                "webhook"
            ]
        )

    def delete_webhook(self, webhook_id: int) -> None:
        """Delete an account webhook."""
        self.request("DELETE", f"webhooks/{int(webhook_id)}")


def _without_none(**fields: Any) -> dict[str, Any]:
    return {key: value for key, value in fields.items() if value is not None}


def _check_status(status: str | None) -> None:
    if status is not None and status not in CONVERSATION_STATUSES:
        raise NeoleadsConfigError(f"status must be one of {', '.join(CONVERSATION_STATUSES)}; got {status!r}")


def _same_contact_key(key: str, found: Any, wanted: str) -> bool:
    if found in (None, ""):
        return False
    if key == "email":
        return str(found).lower() == wanted.lower()
    if key == "phone_number":
        return "+" + str(found).replace("+", "") == "+" + wanted.replace("+", "")
    return str(found) == wanted


def _created_contact_result(created: Mapping[str, Any], inbox_id: int | None) -> dict[str, Any]:
    """What :meth:`NeoleadsHook.get_or_create_contact` returns for a contact it created."""
    source_id = (created.get("contact_inbox") or {}).get("source_id") if inbox_id else None
    return {"contact": created["contact"], "source_id": source_id, "inbox_id": inbox_id, "created": True}


def _source_id_in(contact_inboxes: Iterable[Mapping[str, Any]], inbox_id: int) -> str | None:
    """The contact's ``source_id`` in ``inbox_id``, from its ``contact_inboxes``; None when it has none there."""
    for contact_inbox in contact_inboxes:
        if (contact_inbox.get("inbox") or {}).get("id") == int(inbox_id) and contact_inbox.get("source_id"):
            return str(contact_inbox["source_id"])
    return None


def _checked_events(events: Sequence[str]) -> list[str]:
    events = [events] if isinstance(events, str) else list(events)
    unknown = [event for event in events if event not in WEBHOOK_EVENTS]
    if not events or unknown:
        raise NeoleadsConfigError(
            f"subscriptions must be a non-empty list drawn from {', '.join(WEBHOOK_EVENTS)}; unknown: {unknown}"
        )
    return events


def _read_attachments(paths: Iterable[str | Path]) -> list[tuple[str, tuple[str, bytes, str]]]:
    # Read into memory so a throttled request can be sent again with the same bytes.
    files = []
    for raw in paths:
        path = Path(raw)
        if not path.is_file():
            raise NeoleadsConfigError(f"attachment {str(raw)!r} is not a readable file")
        mimetype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        files.append(("attachments[]", (path.name, path.read_bytes(), mimetype)))
    if len(files) > MAX_ATTACHMENTS:
        raise NeoleadsConfigError(f"at most {MAX_ATTACHMENTS} attachments per message; got {len(files)}")
    return files


def _form_fields(fields: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Flatten a JSON body into the Rails-style form fields a multipart request carries."""
    form: list[tuple[str, str]] = []
    for key, value in fields.items():
        if key == "content_attributes":
            # The server accepts content_attributes as a JSON string, which keeps nested values intact.
            form.append((key, json.dumps(value)))
        elif isinstance(value, dict):
            form.extend(
                (f"{key}[{sub}]", json.dumps(v) if isinstance(v, dict | list) else str(v))
                for sub, v in value.items()
            )
        elif isinstance(value, bool):
            form.append((key, "true" if value else "false"))
        else:
            form.append((key, str(value)))
    return form
