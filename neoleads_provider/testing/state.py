"""The sandbox's in-memory Neoleads: accounts, users, inboxes, contacts, conversations, messages, webhooks.

Everything here mirrors how the real server (Chatwoot's Application API) behaves, as recorded in the
project's API notes: the same validations and error bodies, the same wrappers, the same id kinds. Ids of
different kinds start far apart (contacts 301, conversation display ids 7001, messages 90001, account
webhooks 11) so that a client mixing them up fails loudly in tests instead of hitting the wrong row.

One re-entrant lock guards all of it: the HTTP handlers, the auto-reply timers and the delivery worker
(which marks failed API-inbox messages) all come in from different threads.
Webhook events are computed under the lock, as payload snapshots, and handed to ``sink``: the delivery
worker posts them later, as the real server's job queue does.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from neoleads_provider.events.build import (
    account_data,
    contact_inbox_data,
    contact_push_data,
    contact_webhook_data,
    conversation_meta,
    conversation_webhook_data,
    inbox_event_data,
    iso8601,
    message_webhook_data,
    user_webhook_data,
)
from neoleads_provider.events.names import INBOX_SCOPED_EVENTS
from neoleads_provider.events.names import MESSAGE_TYPES as MESSAGE_TYPE_NAMES

# The real server's name for the list (Chatwoot's Webhook::ALLOWED_WEBHOOK_EVENTS).
from neoleads_provider.events.names import WEBHOOK_EVENTS as ALLOWED_WEBHOOK_EVENTS

# The default of Chatwoot's webhooks.subscriptions column (db/schema.rb): what a webhook created without
# subscriptions listens to.
DEFAULT_WEBHOOK_SUBSCRIPTIONS = (
    "conversation_status_changed",
    "conversation_updated",
    "conversation_created",
    "contact_created",
    "contact_updated",
    "message_created",
    "message_updated",
    "webwidget_triggered",
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

DEFAULT_TOKEN = "sandbox-token"
DEFAULT_AGENT_TOKEN = "sandbox-agent-token"
DEFAULT_ACCOUNT_ID = 1
DEFAULT_ACCOUNT_NAME = "Sandbox Account"
DEFAULT_API_INBOX_ID = 1
DEFAULT_WEB_INBOX_ID = 2
# Fixed rather than random so a receiver can be configured before the sandbox starts; reset_secret rotates it.
DEFAULT_API_INBOX_SECRET = "sandbox-inbox-secret"
DEFAULT_ADMIN_USER_ID = 1
DEFAULT_AGENT_USER_ID = 2

FIRST_CONTACT_ID = 301
FIRST_CONVERSATION_ID = 1
FIRST_CONVERSATION_DISPLAY_ID = 7001
FIRST_MESSAGE_ID = 90001
FIRST_WEBHOOK_ID = 11
FIRST_CONTACT_INBOX_ID = 60001
FIRST_ATTACHMENT_ID = 80001
FIRST_INBOX_ID = 3
FIRST_CHANNEL_ID = 21

CONTACT_RESULTS_PER_PAGE = 15
CONVERSATION_RESULTS_PER_PAGE = 25
MAX_ATTACHMENTS = 15
MAX_CONTENT_LENGTH = 150_000
MAX_STRING_LENGTH = 255
MAX_WEBHOOK_URL_LENGTH = 2048

# A message type's REST integer by its name (MESSAGE_TYPE_NAMES is the names, indexed by the integer).
MESSAGE_TYPES = {name: number for number, name in enumerate(MESSAGE_TYPE_NAMES)}
CONTENT_TYPES = frozenset(
    {
        "text",
        "input_text",
        "input_textarea",
        "input_email",
        "input_select",
        "cards",
        "form",
        "article",
        "incoming_email",
        "input_csat",
        "integrations",
        "sticker",
        "voice_call",
    }
)
CONVERSATION_STATUSES = ("open", "resolved", "pending", "snoozed")

API_CHANNEL = "Channel::Api"
WEB_CHANNEL = "Channel::WebWidget"

NOT_FOUND_BODY = {"error": "Resource could not be found"}
SERVER_ERROR_BODY = {"status": 500, "error": "Internal Server Error"}
NOT_AUTHORIZED_BODY = {"error": "You are not authorized to do this action"}

# Devise.email_regexp (Chatwoot keeps Devise's default).
_EMAIL_RE = re.compile(r"\A[^@\s]+@[^@\s]+\Z")
# Chatwoot's /\+[1-9]\d{1,14}\z/ is anchored only at the end, so it is searched, not full-matched.
_PHONE_RE = re.compile(r"\+[1-9]\d{1,14}\Z")
_URL_RE = re.compile(r"https?://[^\s/$.?#][^\s]*", re.IGNORECASE)
_TRUE_STRINGS = frozenset({"1", "t", "true", "on", "yes", "y"})
_FALSE_STRINGS = frozenset({"0", "f", "false", "off", "no", "n"})

_FILTER_OPERATORS = {
    "name": ("equal_to", "not_equal_to", "contains", "does_not_contain"),
    "email": ("equal_to", "not_equal_to", "contains", "does_not_contain"),
    "phone_number": ("equal_to", "not_equal_to", "contains", "does_not_contain", "starts_with"),
    "identifier": ("equal_to", "not_equal_to"),
}


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


def unix(timestamp: float | None) -> int | None:
    """Render ``.to_i`` of a nullable timestamp, keeping ``None``."""
    return None if timestamp is None else int(timestamp)


def unix0(timestamp: float | None) -> int:
    """Render ``.to_i`` where Ruby turns ``nil`` into 0 (the conversation presenters do)."""
    return 0 if timestamp is None else int(timestamp)


def cast_bool(value: Any) -> bool | None:
    """Cast a parameter the way ActiveModel's boolean type does (``"false"``, ``"0"`` are false)."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    text = str(value).strip().lower()
    if text in _FALSE_STRINGS:
        return False
    return True if text in _TRUE_STRINGS else bool(text)


def cast_id(value: Any) -> int | None:
    """Return ``value`` as a record id, or ``None`` when it cannot name a record."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit() and value.strip().isascii():
        return int(value.strip())
    return None


def _present(value: Any) -> bool:
    """Ruby's ``present?``: not nil, not an empty or whitespace-only string, not an empty collection."""
    if value is None:
        return False
    if isinstance(value, str):
        return bool(value.strip())
    if isinstance(value, list | dict | tuple):
        return bool(value)
    return True


def _scalar_string(value: Any) -> str | None:
    """Cast a permitted scalar parameter to the string a ``string`` column would store; blank → ``None``."""
    if value is None or isinstance(value, dict | list):
        return None
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return text if text.strip() else None


def _new_token(length: int = 24) -> str:
    """Mimic ``has_secure_token``: a random base58-ish string."""
    alphabet = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
    return "".join(secrets.choice(alphabet) for _ in range(length))


def _copy_json(value: Any) -> Any:
    """Deep-copy a JSON-like value, so a webhook payload snapshot never changes after the fact."""
    if isinstance(value, dict):
        return {key: _copy_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy_json(item) for item in value]
    return value


# --------------------------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Account:
    """An account (tenant)."""

    id: int
    name: str


@dataclass
class User:
    """A user with an API access token and a role per account."""

    id: int
    name: str
    email: str
    access_token: str = field(repr=False)
    roles: dict[int, str]
    inbox_ids: set[int] | None = None  # None = every inbox (administrators)
    pubsub_token: str = field(default_factory=_new_token, repr=False)


@dataclass
class Inbox:
    """An inbox and its channel (API or website widget)."""

    id: int
    account_id: int
    channel_id: int
    name: str
    channel_type: str
    created_at: float
    updated_at: float
    webhook_url: str | None = None
    hmac_mandatory: bool = False
    additional_attributes: dict[str, Any] = field(default_factory=dict)
    inbox_identifier: str = field(default_factory=_new_token)
    secret: str | None = field(default=None, repr=False)
    hmac_token: str = field(default_factory=_new_token, repr=False)
    website_url: str | None = None
    website_token: str = field(default_factory=_new_token)
    lock_to_single_conversation: bool = False
    enable_auto_assignment: bool = True
    greeting_enabled: bool = False
    greeting_message: str | None = None


@dataclass
class Contact:
    """A contact (the customer)."""

    id: int
    account_id: int
    name: str
    email: str | None
    phone_number: str | None
    identifier: str | None
    blocked: bool
    additional_attributes: dict[str, Any]
    custom_attributes: dict[str, Any]
    created_at: float
    updated_at: float
    last_activity_at: float | None = None
    avatar_url: str = ""
    pubsub_token: str = field(default_factory=_new_token, repr=False)


@dataclass
class ContactInbox:
    """A contact's identity (``source_id``) in one inbox."""

    id: int
    contact_id: int
    inbox_id: int
    source_id: str
    created_at: float
    updated_at: float
    hmac_verified: bool = False
    pubsub_token: str = field(default_factory=_new_token, repr=False)


@dataclass
class Conversation:
    """A conversation; ``id`` is internal, ``display_id`` is what the API shows and takes."""

    id: int
    display_id: int
    account_id: int
    inbox_id: int
    contact_id: int
    contact_inbox_id: int
    status: str
    created_at: float
    updated_at: float
    last_activity_at: float
    uuid: str = field(default_factory=lambda: str(uuid.uuid4()))
    additional_attributes: dict[str, Any] = field(default_factory=dict)
    custom_attributes: dict[str, Any] = field(default_factory=dict)
    assignee_id: int | None = None
    team_id: int | None = None
    snoozed_until: float | None = None
    priority: str | None = None
    muted: bool = False
    labels: list[str] = field(default_factory=list)
    first_reply_created_at: float | None = None
    waiting_since: float | None = None
    agent_last_seen_at: float | None = None
    contact_last_seen_at: float | None = None
    assignee_last_seen_at: float | None = None
    message_ids: list[int] = field(default_factory=list)


@dataclass
class Attachment:
    """A file attached to a message; the bytes are kept so ``data_url`` can serve them."""

    id: int
    message_id: int
    account_id: int
    file_type: str
    filename: str
    content_type: str
    data: bytes = field(repr=False)

    @property
    def extension(self) -> str | None:
        """Return the file name's extension, as the real attachment serializer does."""
        return self.filename.rsplit(".", 1)[-1] if "." in self.filename else None


@dataclass
class Message:
    """A message; ``message_type`` is the integer enum value."""

    id: int
    account_id: int
    inbox_id: int
    conversation_id: int
    message_type: int
    content: str | None
    content_type: str
    content_attributes: dict[str, Any]
    additional_attributes: dict[str, Any]
    private: bool
    sender_type: str | None
    sender_id: int | None
    created_at: float
    updated_at: float
    source_id: str | None = None
    status: str = "sent"
    attachments: list[Attachment] = field(default_factory=list)


@dataclass
class Webhook:
    """An account webhook; the server generates its signing secret."""

    id: int
    account_id: int
    url: str
    subscriptions: list[str]
    secret: str = field(repr=False)
    name: str | None = None
    inbox_id: int | None = None


@dataclass(frozen=True)
class Delivery:
    """One webhook POST to make: the target, the payload snapshot and the secret to sign it with."""

    url: str
    event: str
    payload: dict[str, Any]
    secret: str | None = field(repr=False)
    target: str  # "account_webhook" or "api_inbox"
    target_id: int
    message_id: int | None = None


@dataclass(frozen=True)
class Upload:
    """A file received in a multipart request."""

    filename: str
    content_type: str
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class Caller:
    """Who is calling and in which account."""

    user: User
    account: Account

    @property
    def role(self) -> str:
        """Return the caller's role in the account."""
        return self.user.roles.get(self.account.id, "agent")

    @property
    def is_admin(self) -> bool:
        """Return whether the caller administers the account."""
        return self.role == "administrator"


# --------------------------------------------------------------------------------------------------------------
# The state
# --------------------------------------------------------------------------------------------------------------


class SandboxState:
    """The whole in-memory server: data, validations, renderers and webhook event generation.

    :param token: the administrator's API access token.
    :param agent_token: the agent's (non-admin) API access token.
    :param account_id: the id of the account the tokens belong to.
    :param sink: receives the webhook deliveries of each event, called under the lock; must not block.
    :param auto_reply: when set, the contact answers every outgoing, non-private API message with this text.
    :param auto_reply_delay: seconds before that answer.
    """

    def __init__(
        self,
        *,
        token: str = DEFAULT_TOKEN,
        agent_token: str = DEFAULT_AGENT_TOKEN,
        account_id: int = DEFAULT_ACCOUNT_ID,
        sink: Callable[[list[Delivery]], None] | None = None,
        auto_reply: str | None = None,
        auto_reply_delay: float = 0.5,
    ) -> None:
        if not token or not agent_token or token == agent_token:
            raise ValueError("token and agent_token must be two different non-empty strings")
        if isinstance(account_id, bool) or not isinstance(account_id, int) or account_id < 1:
            raise ValueError(f"account_id must be a positive whole number, got {account_id!r}")
        self.lock = threading.RLock()
        self.token = token
        self.agent_token = agent_token
        self.account_id = account_id
        self.sink = sink
        #: Base URL used for attachment links; the server sets it once it knows its port.
        self.base_url = "http://127.0.0.1"
        self.auto_reply: str | None = None
        self.auto_reply_delay = 0.5
        self._timers: set[threading.Timer] = set()
        self._generation = 0
        self.set_auto_reply(auto_reply, delay=auto_reply_delay)
        self.reset()

    # ---- lifecycle -------------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Drop every record and restore the default account, users and inboxes; cancel pending auto-replies."""
        with self.lock:
            self.cancel_timers()
            now = time.time()
            self.accounts: dict[int, Account] = {
                self.account_id: Account(self.account_id, DEFAULT_ACCOUNT_NAME),
                # Exists, but no sandbox user belongs to it: lets clients see the non-member 401.
                self.account_id + 1: Account(self.account_id + 1, "Other Account"),
            }
            self.users: dict[int, User] = {
                DEFAULT_ADMIN_USER_ID: User(
                    DEFAULT_ADMIN_USER_ID,
                    "Sandbox Admin",
                    "admin@sandbox.neoleads.test",
                    self.token,
                    {self.account_id: "administrator"},
                ),
                DEFAULT_AGENT_USER_ID: User(
                    DEFAULT_AGENT_USER_ID,
                    "Sandbox Agent",
                    "agent@sandbox.neoleads.test",
                    self.agent_token,
                    {self.account_id: "agent"},
                    inbox_ids={DEFAULT_API_INBOX_ID, DEFAULT_WEB_INBOX_ID},
                ),
            }
            self.inboxes: dict[int, Inbox] = {
                DEFAULT_API_INBOX_ID: Inbox(
                    DEFAULT_API_INBOX_ID,
                    self.account_id,
                    FIRST_CHANNEL_ID,
                    "API",
                    API_CHANNEL,
                    now,
                    now,
                    secret=DEFAULT_API_INBOX_SECRET,
                ),
                DEFAULT_WEB_INBOX_ID: Inbox(
                    DEFAULT_WEB_INBOX_ID,
                    self.account_id,
                    FIRST_CHANNEL_ID + 1,
                    "Website",
                    WEB_CHANNEL,
                    now,
                    now,
                    website_url="https://www.example.com",
                ),
            }
            self.contacts: dict[int, Contact] = {}
            self.contact_inboxes: dict[int, ContactInbox] = {}
            self.conversations: dict[int, Conversation] = {}
            self.messages: dict[int, Message] = {}
            self.webhooks: dict[int, Webhook] = {}
            self.attachments: dict[int, Attachment] = {}
            # Lookup indexes, so a benchmark with thousands of rows stays fast.
            self._display_index: dict[int, int] = {}
            self._source_index: dict[tuple[int, str], int] = {}
            self._contact_inbox_ids: dict[int, list[int]] = {}
            self._unique: dict[str, dict[str, int]] = {"email": {}, "identifier": {}, "phone_number": {}}
            self._next = {
                "contact": FIRST_CONTACT_ID,
                "conversation": FIRST_CONVERSATION_ID,
                "display": FIRST_CONVERSATION_DISPLAY_ID,
                "message": FIRST_MESSAGE_ID,
                "webhook": FIRST_WEBHOOK_ID,
                "contact_inbox": FIRST_CONTACT_INBOX_ID,
                "attachment": FIRST_ATTACHMENT_ID,
                "inbox": FIRST_INBOX_ID,
                "channel": FIRST_CHANNEL_ID + 2,
            }

    def _id(self, kind: str) -> int:
        value = self._next[kind]
        self._next[kind] = value + 1
        return value

    def counts(self) -> dict[str, int]:
        """Return how many records of each kind exist."""
        with self.lock:
            return {
                "accounts": len(self.accounts),
                "users": len(self.users),
                "inboxes": len(self.inboxes),
                "contacts": len(self.contacts),
                "contact_inboxes": len(self.contact_inboxes),
                "conversations": len(self.conversations),
                "messages": len(self.messages),
                "webhooks": len(self.webhooks),
                "attachments": len(self.attachments),
                "pending_auto_replies": len(self._timers),
            }

    # ---- auto-reply ------------------------------------------------------------------------------------------

    def set_auto_reply(self, text: str | None, *, delay: float = 0.5) -> None:
        """Make the contact answer every outgoing, non-private API message with ``text`` (``None`` disables)."""
        if text is not None and not isinstance(text, str):
            raise ValueError(f"auto_reply must be a string or None, got {type(text).__name__}")
        if isinstance(delay, bool) or not isinstance(delay, int | float) or delay < 0:
            raise ValueError(f"auto_reply_delay must be a number of seconds >= 0, got {delay!r}")
        with self.lock:
            self.auto_reply = text
            self.auto_reply_delay = float(delay)

    def cancel_timers(self) -> None:
        """Cancel every pending auto-reply."""
        with self.lock:
            self._generation += 1
            for timer in self._timers:
                timer.cancel()
            self._timers.clear()

    def _schedule_auto_reply(self, conversation: Conversation) -> None:
        if self.auto_reply is None:
            return
        generation = self._generation
        display_id = conversation.display_id
        text = self.auto_reply
        timer: threading.Timer

        def fire() -> None:
            with self.lock:
                self._timers.discard(timer)
                if generation != self._generation:
                    return
                # The conversation or contact may have been deleted meanwhile.
                with contextlib.suppress(SandboxError):
                    self.reply(display_id, text)

        timer = threading.Timer(self.auto_reply_delay, fire)
        timer.daemon = True
        self._timers.add(timer)
        timer.start()

    # ---- auth ------------------------------------------------------------------------------------------------

    def authenticate(self, token: str | None) -> User:
        """Return the user owning ``token``.

        :raises SandboxError: 401 with devise's body when no token is sent, or "Invalid Access Token".
        """
        if not token:
            raise SandboxError(401, {"errors": ["You need to sign in or sign up before continuing."]})
        with self.lock:
            for user in self.users.values():
                if secrets.compare_digest(user.access_token.encode(), token.encode()):
                    return user
        raise SandboxError(401, {"error": "Invalid Access Token"})

    def caller(self, user: User, account_id: Any) -> Caller:
        """Check that ``account_id`` exists and that ``user`` belongs to it.

        :raises SandboxError: 404 for an unknown account, 401 for a non-member.
        """
        with self.lock:
            account = self.accounts.get(cast_id(account_id) or -1)
            if account is None:
                raise not_found()
            if account.id not in user.roles:
                raise SandboxError(401, {"error": "You are not authorized to access this account"})
            return Caller(user, account)

    @staticmethod
    def require_admin(caller: Caller) -> None:
        """Raise the Pundit 401 unless the caller is an administrator."""
        if not caller.is_admin:
            raise not_authorized()

    def _can_see_inbox(self, caller: Caller, inbox: Inbox) -> bool:
        return caller.is_admin or caller.user.inbox_ids is None or inbox.id in caller.user.inbox_ids

    # ---- renderers -------------------------------------------------------------------------------------------

    def _account_data(self, account_id: int) -> dict[str, Any]:
        account = self.accounts[account_id]
        return account_data(account.id, account.name)

    def render_profile(self, user: User) -> dict[str, Any]:
        """Render ``GET /api/v1/profile``: the flat user, with its accounts, echoing the access token."""
        with self.lock:
            account_id = next(iter(user.roles))
            accounts = [
                {
                    "id": account_id_,
                    "name": self.accounts[account_id_].name,
                    "status": "active",
                    "active_at": None,
                    "role": role,
                    "permissions": [role],
                    "availability": "online",
                    "availability_status": "online",
                    "auto_offline": True,
                    "custom_role_id": None,
                    "custom_role": None,
                    "onboarding_step": None,
                }
                for account_id_, role in user.roles.items()
                if account_id_ in self.accounts
            ]
            return {
                "access_token": user.access_token,
                "account_id": account_id,
                "available_name": user.name,
                "avatar_url": "",
                "confirmed": True,
                "display_name": None,
                "message_signature": None,
                "email": user.email,
                "id": user.id,
                "inviter_id": None,
                "name": user.name,
                "provider": "email",
                "pubsub_token": user.pubsub_token,
                "custom_attributes": {},
                "role": user.roles[account_id],
                "ui_settings": {},
                "uid": user.email,
                "type": "user",
                "accounts": accounts,
            }

    @staticmethod
    def _user_push_data(user: User) -> dict[str, Any]:
        return {
            "id": user.id,
            "name": user.name,
            "available_name": user.name,
            "avatar_url": "",
            "type": "user",
            "availability_status": "online",
            "thumbnail": "",
        }

    @staticmethod
    def _user_webhook_data(user: User) -> dict[str, Any]:
        return user_webhook_data(id=user.id, name=user.name, email=user.email)

    @staticmethod
    def _slim_inbox(inbox: Inbox) -> dict[str, Any]:
        return {
            "id": inbox.id,
            "avatar_url": "",
            "channel_id": inbox.channel_id,
            "name": inbox.name,
            "channel_type": inbox.channel_type,
            "provider": None,
        }

    def render_inbox(self, inbox: Inbox, *, admin: bool) -> dict[str, Any]:
        """Render ``_inbox.json.jbuilder``: its keys in its order, null where the channel lacks them.

        The view emits the website-widget and Twilio keys for every inbox (``channel.try(...)``: null for an
        API inbox); the API inbox's ``secret`` and ``hmac_token`` only for administrators.
        """
        web = inbox.channel_type == WEB_CHANNEL
        data: dict[str, Any] = {
            "id": inbox.id,
            "avatar_url": "",
            "channel_id": inbox.channel_id,
            "name": inbox.name,
            "channel_type": inbox.channel_type,
            "greeting_enabled": inbox.greeting_enabled,
            "greeting_message": inbox.greeting_message,
            "working_hours_enabled": False,
            "enable_email_collect": True,
            "csat_survey_enabled": False,
            "csat_config": {},
            "enable_auto_assignment": inbox.enable_auto_assignment,
            "auto_assignment_config": {},
            "out_of_office_message": None,
            "working_hours": [],
            "timezone": "UTC",
            "callback_webhook_url": None,
            "allow_messages_after_resolved": True,
            "lock_to_single_conversation": inbox.lock_to_single_conversation,
            "sender_name_type": "friendly",
            "business_name": None,
            # The website widget's attributes, rendered for every inbox.
            "widget_color": "#1f93ff" if web else None,
            "website_url": inbox.website_url if web else None,
            "hmac_mandatory": inbox.hmac_mandatory,
            "welcome_title": "" if web else None,
            "welcome_tagline": "" if web else None,
            "web_widget_script": _web_widget_script(inbox.website_token) if web else None,
            "website_token": inbox.website_token if web else None,
            "selected_feature_flags": ["attachments", "emoji_picker", "end_conversation"] if web else None,
            "reply_time": "in_a_few_minutes" if web else None,
        }
        if web:
            if admin:
                data["hmac_token"] = inbox.hmac_token
            data["pre_chat_form_enabled"] = False
            data["pre_chat_form_options"] = {}
            data["continuity_via_email"] = True
        # Twilio's attributes, rendered for every inbox too.
        data["messaging_service_sid"] = None
        data["phone_number"] = None
        if inbox.channel_type == API_CHANNEL:
            if admin:
                data["hmac_token"] = inbox.hmac_token
                data["secret"] = inbox.secret
            data["webhook_url"] = inbox.webhook_url
            data["inbox_identifier"] = inbox.inbox_identifier
            data["additional_attributes"] = _copy_json(inbox.additional_attributes)
        data["provider"] = None
        return data

    def _inbox_as_json(self, inbox: Inbox) -> dict[str, Any]:
        """Render ``Inbox#as_json``: the raw row, as ``contact_inbox.inbox`` shows it in a contact create."""
        return {
            "id": inbox.id,
            "channel_id": inbox.channel_id,
            "account_id": inbox.account_id,
            "name": inbox.name,
            "created_at": iso8601(inbox.created_at),
            "updated_at": iso8601(inbox.updated_at),
            "channel_type": inbox.channel_type,
            "enable_auto_assignment": inbox.enable_auto_assignment,
            "greeting_enabled": inbox.greeting_enabled,
            "greeting_message": inbox.greeting_message,
            "email_address": None,
            "working_hours_enabled": False,
            "out_of_office_message": None,
            "timezone": "UTC",
            "enable_email_collect": True,
            "csat_survey_enabled": False,
            "allow_messages_after_resolved": True,
            "auto_assignment_config": {},
            "lock_to_single_conversation": inbox.lock_to_single_conversation,
            "portal_id": None,
            "sender_name_type": "friendly",
            "business_name": None,
            "csat_config": {},
        }

    def _contact_inboxes_of(self, contact_id: int) -> list[ContactInbox]:
        return [self.contact_inboxes[item_id] for item_id in self._contact_inbox_ids.get(contact_id, ())]

    @staticmethod
    def _unique_keys(contact: Contact) -> dict[str, str | None]:
        return {
            "email": contact.email.lower() if contact.email is not None else None,
            "identifier": contact.identifier,
            "phone_number": contact.phone_number,
        }

    def _index_contact(self, contact: Contact, *, remove: bool = False) -> None:
        for attribute, key in self._unique_keys(contact).items():
            if key is None:
                continue
            if remove:
                if self._unique[attribute].get(key) == contact.id:
                    del self._unique[attribute][key]
            else:
                self._unique[attribute].setdefault(key, contact.id)

    def render_contact(self, contact: Contact, *, with_contact_inboxes: bool = True) -> dict[str, Any]:
        """Render the contact partial."""
        data: dict[str, Any] = {
            "additional_attributes": _copy_json(contact.additional_attributes),
            "availability_status": "offline",
            "email": contact.email,
            "id": contact.id,
            "name": contact.name,
            "phone_number": contact.phone_number,
            "blocked": contact.blocked,
            "identifier": contact.identifier,
            "thumbnail": contact.avatar_url,
            "custom_attributes": _copy_json(contact.custom_attributes),
            "last_activity_at": unix(contact.last_activity_at),
            "created_at": unix(contact.created_at),
        }
        if with_contact_inboxes:
            data["contact_inboxes"] = [
                {"source_id": item.source_id, "inbox": self._slim_inbox(self.inboxes[item.inbox_id])}
                for item in self._contact_inboxes_of(contact.id)
                if item.inbox_id in self.inboxes
            ]
        return data

    @staticmethod
    def _contact_fields(contact: Contact) -> dict[str, Any]:
        """What ``Contact#push_event_data`` and ``Contact#webhook_data`` both show, as builder arguments."""
        return {
            "id": contact.id,
            "name": contact.name,
            "email": contact.email,
            "phone_number": contact.phone_number,
            "identifier": contact.identifier,
            "additional_attributes": _copy_json(contact.additional_attributes),
            "custom_attributes": _copy_json(contact.custom_attributes),
            "blocked": contact.blocked,
        }

    def _contact_push_data(self, contact: Contact) -> dict[str, Any]:
        return contact_push_data(thumbnail=contact.avatar_url, **self._contact_fields(contact))

    def _contact_webhook_data(self, contact: Contact) -> dict[str, Any]:
        return contact_webhook_data(
            account=self._account_data(contact.account_id),
            avatar=contact.avatar_url,
            **self._contact_fields(contact),
        )

    def _attachment_data(self, attachment: Attachment) -> dict[str, Any]:
        url = f"{self.base_url}/_sandbox/attachments/{attachment.id}/{attachment.filename}"
        return {
            "id": attachment.id,
            "message_id": attachment.message_id,
            "file_type": attachment.file_type,
            "account_id": attachment.account_id,
            "extension": attachment.extension,
            "data_url": url,
            "thumb_url": url if attachment.file_type == "image" else "",
            "file_size": len(attachment.data),
            "width": None,
            "height": None,
        }

    def _sender_push_data(self, message: Message) -> dict[str, Any] | None:
        if message.sender_type == "Contact" and message.sender_id in self.contacts:
            return self._contact_push_data(self.contacts[message.sender_id])
        if message.sender_type == "User" and message.sender_id in self.users:
            return self._user_push_data(self.users[message.sender_id])
        return None

    def _message_push_data(self, message: Message) -> dict[str, Any]:
        """Render ``Message#push_event_data`` (REST conversation lists and webhook ``conversation.messages``)."""
        conversation = self.conversations[message.conversation_id]
        contact_inbox = self.contact_inboxes.get(conversation.contact_inbox_id)
        data: dict[str, Any] = {
            "id": message.id,
            "content": message.content,
            "account_id": message.account_id,
            "inbox_id": message.inbox_id,
            "conversation_id": conversation.display_id,
            "message_type": message.message_type,
            "created_at": int(message.created_at),
            "updated_at": iso8601(message.updated_at),
            "private": message.private,
            "status": message.status,
            "source_id": message.source_id,
            "content_type": message.content_type,
            "content_attributes": _copy_json(message.content_attributes),
            "sender_type": message.sender_type,
            "sender_id": message.sender_id,
            "external_source_ids": {},
            "additional_attributes": _copy_json(message.additional_attributes),
            "processed_message_content": message.content,
            "sentiment": {},
            "conversation": {
                "assignee_id": conversation.assignee_id,
                "unread_count": self._unread_count(conversation),
                "last_activity_at": int(conversation.last_activity_at),
                "contact_inbox": {"source_id": contact_inbox.source_id if contact_inbox else None},
            },
        }
        if message.attachments:
            data["attachments"] = [self._attachment_data(item) for item in message.attachments]
        sender = self._sender_push_data(message)
        if sender is not None:
            data["sender"] = sender
        return data

    def render_message(self, message: Message, *, echo_id: Any = None) -> dict[str, Any]:
        """Render the REST message partial: ``message_type`` is the integer, ``conversation_id`` the display id."""
        conversation = self.conversations[message.conversation_id]
        data: dict[str, Any] = {
            "id": message.id,
            "content": message.content,
            "inbox_id": message.inbox_id,
            "conversation_id": conversation.display_id,
            "message_type": message.message_type,
            "content_type": message.content_type,
            "status": message.status,
            "content_attributes": _copy_json(message.content_attributes),
            "created_at": int(message.created_at),
            "private": message.private,
            "source_id": message.source_id,
        }
        if echo_id is not None:
            data["echo_id"] = echo_id
        sender = self._sender_push_data(message)
        if sender is not None:
            data["sender"] = sender
        if message.attachments:
            data["attachments"] = [self._attachment_data(item) for item in message.attachments]
        return data

    def _unread_count(self, conversation: Conversation) -> int:
        seen = conversation.agent_last_seen_at or 0.0
        return sum(
            1
            for message_id in conversation.message_ids
            if self.messages[message_id].message_type == MESSAGE_TYPES["incoming"]
            and self.messages[message_id].created_at > seen
        )

    def _last_message(self, conversation: Conversation, *, chat_only: bool) -> Message | None:
        for message_id in reversed(conversation.message_ids):
            message = self.messages[message_id]
            if not chat_only:
                return message
            if not message.private and message.message_type != MESSAGE_TYPES["activity"]:
                return message
        return None

    def _assignee_data(self, conversation: Conversation) -> dict[str, Any] | None:
        user = self.users.get(conversation.assignee_id or -1)
        return self._user_push_data(user) if user is not None else None

    def render_conversation(self, conversation: Conversation) -> dict[str, Any]:
        """Render the REST conversation partial: flat, ``id`` is the display id."""
        contact = self.contacts[conversation.contact_id]
        inbox = self.inboxes[conversation.inbox_id]
        contact_inbox = self.contact_inboxes.get(conversation.contact_inbox_id)
        meta: dict[str, Any] = {
            "sender": self.render_contact(contact, with_contact_inboxes=False),
            "channel": inbox.channel_type,
            "hmac_verified": bool(contact_inbox and contact_inbox.hmac_verified),
        }
        assignee = self._assignee_data(conversation)
        if assignee is not None:
            meta["assignee"] = assignee
            meta["assignee_type"] = "User"
        last = self._last_message(conversation, chat_only=False)
        last_non_activity = next(
            (
                self.messages[message_id]
                for message_id in reversed(conversation.message_ids)
                if self.messages[message_id].message_type != MESSAGE_TYPES["activity"]
            ),
            None,
        )
        return {
            "meta": meta,
            "id": conversation.display_id,
            "messages": [self._message_push_data(last)] if last is not None else [],
            "account_id": conversation.account_id,
            "uuid": conversation.uuid,
            "additional_attributes": _copy_json(conversation.additional_attributes),
            "agent_last_seen_at": unix0(conversation.agent_last_seen_at),
            "assignee_last_seen_at": unix0(conversation.assignee_last_seen_at),
            "can_reply": True,
            "contact_last_seen_at": unix0(conversation.contact_last_seen_at),
            "custom_attributes": _copy_json(conversation.custom_attributes),
            "inbox_id": conversation.inbox_id,
            "labels": list(conversation.labels),
            "muted": conversation.muted,
            "snoozed_until": iso8601(conversation.snoozed_until),
            "status": conversation.status,
            "created_at": int(conversation.created_at),
            "updated_at": conversation.updated_at,
            "timestamp": int(conversation.last_activity_at),
            "first_reply_created_at": unix0(conversation.first_reply_created_at),
            "unread_count": self._unread_count(conversation),
            "last_non_activity_message": (
                self._message_push_data(last_non_activity) if last_non_activity is not None else None
            ),
            "last_activity_at": int(conversation.last_activity_at),
            "priority": conversation.priority,
            "waiting_since": unix0(conversation.waiting_since),
            "sla_policy_id": None,
        }

    def _conversation_webhook_data(self, conversation: Conversation) -> dict[str, Any]:
        """Render ``Conversation#webhook_data`` (the event data presenter)."""
        contact = self.contacts[conversation.contact_id]
        inbox = self.inboxes[conversation.inbox_id]
        contact_inbox = self.contact_inboxes.get(conversation.contact_inbox_id)
        last_chat = self._last_message(conversation, chat_only=True)
        return conversation_webhook_data(
            account=self._account_data(conversation.account_id),
            id=conversation.display_id,
            inbox_id=conversation.inbox_id,
            channel=inbox.channel_type,
            contact_inbox=contact_inbox_data(
                id=contact_inbox.id,
                contact_id=contact_inbox.contact_id,
                inbox_id=contact_inbox.inbox_id,
                source_id=contact_inbox.source_id,
                created_at=iso8601(contact_inbox.created_at),
                updated_at=iso8601(contact_inbox.updated_at),
                hmac_verified=contact_inbox.hmac_verified,
                pubsub_token=contact_inbox.pubsub_token,
            )
            if contact_inbox is not None
            else None,
            meta=conversation_meta(
                sender=self._contact_push_data(contact),
                assignee=self._assignee_data(conversation),
                team=None,
                hmac_verified=bool(contact_inbox and contact_inbox.hmac_verified),
            ),
            status=conversation.status,
            messages=[self._message_push_data(last_chat)] if last_chat is not None else [],
            labels=conversation.labels,
            additional_attributes=_copy_json(conversation.additional_attributes),
            custom_attributes=_copy_json(conversation.custom_attributes),
            snoozed_until=iso8601(conversation.snoozed_until),
            unread_count=self._unread_count(conversation),
            first_reply_created_at=iso8601(conversation.first_reply_created_at),
            priority=conversation.priority,
            waiting_since=unix0(conversation.waiting_since),
            agent_last_seen_at=unix0(conversation.agent_last_seen_at),
            contact_last_seen_at=unix0(conversation.contact_last_seen_at),
            last_activity_at=int(conversation.last_activity_at),
            created_at=int(conversation.created_at),
            updated_at=conversation.updated_at,
        )

    def _message_webhook_data(self, message: Message) -> dict[str, Any]:
        """Render ``Message#webhook_data``: ``message_type`` is the string, ``created_at`` ISO 8601."""
        conversation = self.conversations[message.conversation_id]
        inbox = self.inboxes[message.inbox_id]
        sender: dict[str, Any] | None = None
        if message.sender_type == "Contact" and message.sender_id in self.contacts:
            sender = self._contact_webhook_data(self.contacts[message.sender_id])
        elif message.sender_type == "User" and message.sender_id in self.users:
            sender = self._user_webhook_data(self.users[message.sender_id])
        return message_webhook_data(
            account=self._account_data(message.account_id),
            id=message.id,
            content=message.content,
            message_type=MESSAGE_TYPE_NAMES[message.message_type],
            created_at=iso8601(message.created_at),
            inbox={"id": inbox.id, "name": inbox.name},
            conversation=self._conversation_webhook_data(conversation),
            sender=sender,
            private=message.private,
            source_id=message.source_id,
            content_type=message.content_type,
            content_attributes=_copy_json(message.content_attributes),
            additional_attributes=_copy_json(message.additional_attributes),
            attachments=[self._attachment_data(item) for item in message.attachments],
        )

    def render_webhook(self, webhook: Webhook) -> dict[str, Any]:
        """Render the account webhook partial, including its signing secret."""
        data: dict[str, Any] = {
            "id": webhook.id,
            "name": webhook.name,
            "url": webhook.url,
            "account_id": webhook.account_id,
            "subscriptions": list(webhook.subscriptions),
            "secret": webhook.secret,
        }
        inbox = self.inboxes.get(webhook.inbox_id or -1)
        if inbox is not None:
            data["inbox"] = {"id": inbox.id, "name": inbox.name}
        return data

    # ---- events ----------------------------------------------------------------------------------------------

    def _emit(
        self, event: str, payload: dict[str, Any], *, inbox: Inbox | None, message_id: int | None = None
    ) -> None:
        """Queue ``event`` for every subscribed account webhook and, for inbox events, the API inbox URL."""
        if self.sink is None:
            return
        payload = {**payload, "event": event}
        deliveries = [
            Delivery(webhook.url, event, payload, webhook.secret, "account_webhook", webhook.id, message_id)
            for webhook in self.webhooks.values()
            if webhook.account_id == self.account_id and event in webhook.subscriptions
        ]
        if (
            inbox is not None
            and event in INBOX_SCOPED_EVENTS
            and inbox.channel_type == API_CHANNEL
            and inbox.webhook_url
        ):
            deliveries.append(
                Delivery(inbox.webhook_url, event, payload, inbox.secret, "api_inbox", inbox.id, message_id)
            )
        if deliveries:
            self.sink(deliveries)

    def mark_delivery_failed(self, delivery: Delivery, error: str) -> None:
        """Mark a message failed when its API-inbox ``message_created`` delivery failed, as the server does."""
        if delivery.target != "api_inbox" or delivery.message_id is None:
            return
        with self.lock:
            message = self.messages.get(delivery.message_id)
            if message is not None:
                message.status = "failed"
                message.content_attributes["external_error"] = error

    # ---- inboxes ---------------------------------------------------------------------------------------------

    def get_inbox(self, caller: Caller, inbox_id: Any) -> Inbox:
        """Return an inbox of the caller's account.

        :raises SandboxError: 404 when it does not exist there, 401 when an agent is not a member.
        """
        inbox = self.inboxes.get(cast_id(inbox_id) or -1)
        if inbox is None or inbox.account_id != caller.account.id:
            raise not_found()
        if not self._can_see_inbox(caller, inbox):
            raise not_authorized()
        return inbox

    def list_inboxes(self, caller: Caller) -> dict[str, Any]:
        """``GET /inboxes``: the inboxes the caller may see, not paginated."""
        with self.lock:
            return {
                "payload": [
                    self.render_inbox(inbox, admin=caller.is_admin)
                    for inbox in self.inboxes.values()
                    if inbox.account_id == caller.account.id and self._can_see_inbox(caller, inbox)
                ]
            }

    def show_inbox(self, caller: Caller, inbox_id: Any) -> dict[str, Any]:
        """``GET /inboxes/{id}``."""
        with self.lock:
            return self.render_inbox(self.get_inbox(caller, inbox_id), admin=caller.is_admin)

    def _apply_inbox_params(
        self, inbox: Inbox, params: Mapping[str, Any], errors: list[tuple[str, str]]
    ) -> None:
        given = params.get("channel")
        channel: dict[str, Any] = given if isinstance(given, dict) else {}
        if "name" in params:
            name = _scalar_string(params.get("name"))
            if name is None:
                errors.append(("name", "Name can't be blank"))
            elif len(name) > MAX_STRING_LENGTH:
                errors.append(("name", "Name is too long (maximum is 255 characters)"))
            else:
                inbox.name = name
        for key in ("lock_to_single_conversation", "enable_auto_assignment", "greeting_enabled"):
            if key in params and cast_bool(params[key]) is not None:
                setattr(inbox, key, bool(cast_bool(params[key])))
        if "greeting_message" in params:
            inbox.greeting_message = _scalar_string(params["greeting_message"])
        if inbox.channel_type == API_CHANNEL:
            if "webhook_url" in channel:
                url = _scalar_string(channel.get("webhook_url"))
                if url is not None and len(url) > MAX_WEBHOOK_URL_LENGTH:
                    errors.append(("webhook_url", "Webhook url is too long (maximum is 2048 characters)"))
                else:
                    inbox.webhook_url = url
            if "hmac_mandatory" in channel and cast_bool(channel["hmac_mandatory"]) is not None:
                inbox.hmac_mandatory = bool(cast_bool(channel["hmac_mandatory"]))
            if isinstance(channel.get("additional_attributes"), dict):
                inbox.additional_attributes = _copy_json(channel["additional_attributes"])
        elif inbox.channel_type == WEB_CHANNEL and "website_url" in channel:
            inbox.website_url = _scalar_string(channel.get("website_url"))

    def create_inbox(self, caller: Caller, params: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /inboxes``: create an API (``channel.type = "api"``) or website inbox; administrators only."""
        self.require_admin(caller)
        channel = params.get("channel")
        if not isinstance(channel, dict) or not _present(channel.get("type")):
            raise unprocessable("param is missing or the value is empty: channel")
        kinds = {"api": API_CHANNEL, "web_widget": WEB_CHANNEL}
        channel_type = kinds.get(str(channel["type"]))
        if channel_type is None:
            raise unprocessable(
                f"Unsupported channel type: {channel['type']}. The sandbox supports api and web_widget"
            )
        with self.lock:
            now = time.time()
            inbox = Inbox(0, caller.account.id, 0, "", channel_type, now, now)
            if channel_type == API_CHANNEL:
                inbox.secret = _new_token()
            errors: list[tuple[str, str]] = []
            self._apply_inbox_params(inbox, {"name": params.get("name"), **params}, errors)
            if errors:
                raise record_invalid(errors)
            inbox.id = self._id("inbox")
            inbox.channel_id = self._id("channel")
            self.inboxes[inbox.id] = inbox
            self._emit("inbox_created", self._inbox_event_data(inbox), inbox=None)
            return self.render_inbox(inbox, admin=True)

    @staticmethod
    def _inbox_event_data(inbox: Inbox) -> dict[str, Any]:
        """The ``inbox_created`` payload: the inbox and its channel row, credentials in clear as on the server."""
        channel: dict[str, Any] = {"id": inbox.channel_id, "account_id": inbox.account_id}
        if inbox.channel_type == API_CHANNEL:
            channel.update(
                webhook_url=inbox.webhook_url,
                hmac_token=inbox.hmac_token,
                hmac_mandatory=inbox.hmac_mandatory,
                identifier=inbox.inbox_identifier,
                additional_attributes=_copy_json(inbox.additional_attributes),
                secret=inbox.secret,
            )
        else:
            channel.update(
                website_url=inbox.website_url,
                website_token=inbox.website_token,
                hmac_token=inbox.hmac_token,
                hmac_mandatory=inbox.hmac_mandatory,
            )
        return inbox_event_data(
            id=inbox.id,
            account_id=inbox.account_id,
            name=inbox.name,
            channel_type=inbox.channel_type,
            channel=channel,
            created_at=inbox.created_at,
            updated_at=inbox.updated_at,
            greeting_enabled=inbox.greeting_enabled,
        )

    def update_inbox(self, caller: Caller, inbox_id: Any, params: Mapping[str, Any]) -> dict[str, Any]:
        """``PATCH /inboxes/{id}``: name, flags and ``channel.webhook_url``; administrators only."""
        self.require_admin(caller)
        with self.lock:
            inbox = self.get_inbox(caller, inbox_id)
            errors: list[tuple[str, str]] = []
            draft = Inbox(**{name: getattr(inbox, name) for name in inbox.__dataclass_fields__})
            self._apply_inbox_params(draft, params, errors)
            if errors:
                raise record_invalid(errors)
            draft.updated_at = time.time()
            self.inboxes[inbox.id] = draft
            return self.render_inbox(draft, admin=True)

    def set_inbox_webhook(self, inbox_id: int, url: str | None) -> None:
        """Set an API inbox's ``webhook_url`` directly (sandbox convenience, no auth)."""
        with self.lock:
            inbox = self.inboxes.get(inbox_id)
            if inbox is None or inbox.channel_type != API_CHANNEL:
                raise ValueError(f"inbox {inbox_id!r} is not an API inbox of the sandbox")
            inbox.webhook_url = url or None

    def reset_inbox_secret(self, caller: Caller, inbox_id: Any) -> dict[str, Any]:
        """``POST /inboxes/{id}/reset_secret``: new signing secret; 404 with an empty body unless an API inbox."""
        self.require_admin(caller)
        with self.lock:
            inbox = self.get_inbox(caller, inbox_id)
            if inbox.channel_type != API_CHANNEL:
                raise not_found(empty=True)
            inbox.secret = _new_token()
            inbox.updated_at = time.time()
            return self.render_inbox(inbox, admin=True)

    # ---- contacts --------------------------------------------------------------------------------------------

    def get_contact(self, caller: Caller, contact_id: Any) -> Contact:
        """Return a contact of the caller's account or raise the 404."""
        contact = self.contacts.get(cast_id(contact_id) or -1)
        if contact is None or contact.account_id != caller.account.id:
            raise not_found()
        return contact

    def _validate_contact(self, contact: Contact) -> None:
        """Run the contact model's validations, in the order the real server reports them."""
        errors: list[tuple[str, str]] = []
        # ApplicationRecord's generic length check runs before the model's own validations.
        for attribute, label in (
            ("name", "Name"),
            ("email", "Email"),
            ("phone_number", "Phone number"),
            ("identifier", "Identifier"),
        ):
            value = getattr(contact, attribute)
            if value is not None and len(value) > MAX_STRING_LENGTH:
                errors.append((attribute, f"{label} is too long (maximum is 255 characters)"))
        keys = self._unique_keys(contact)

        def taken(attribute: str) -> bool:
            owner = self._unique[attribute].get(keys[attribute] or "")
            return owner is not None and owner != contact.id

        if contact.email is not None:
            if taken("email"):
                errors.append(("email", "Email has already been taken"))
            if not _EMAIL_RE.match(contact.email):
                errors.append(("email", "Email Invalid email"))
        if contact.identifier is not None and taken("identifier"):
            errors.append(("identifier", "Identifier has already been taken"))
        if contact.phone_number is not None:
            if taken("phone_number"):
                errors.append(("phone_number", "Phone number has already been taken"))
            if not _PHONE_RE.search(contact.phone_number):
                errors.append(("phone_number", "Phone number should be in e164 format"))
        if errors:
            raise record_invalid(errors)

    @staticmethod
    def _assign_contact(contact: Contact, params: Mapping[str, Any], *, merge: bool) -> None:
        if "name" in params:
            contact.name = _scalar_string(params.get("name")) or ""
        for attribute in ("email", "phone_number", "identifier"):
            if attribute in params:
                setattr(contact, attribute, _scalar_string(params.get(attribute)))
        if contact.email is not None:
            contact.email = contact.email.lower()
        if "blocked" in params and cast_bool(params["blocked"]) is not None:
            contact.blocked = bool(cast_bool(params["blocked"]))
        if "avatar_url" in params:
            contact.avatar_url = _scalar_string(params.get("avatar_url")) or ""
        for attribute in ("additional_attributes", "custom_attributes"):
            value = params.get(attribute)
            if isinstance(value, dict):
                current = getattr(contact, attribute) if merge else {}
                setattr(contact, attribute, {**current, **_copy_json(value)})

    def _new_source_id(self, inbox: Inbox) -> str:
        return str(uuid.uuid4())

    def _find_or_create_contact_inbox(self, contact: Contact, inbox: Inbox, source_id: Any) -> ContactInbox:
        """Do what ``ContactInboxBuilder`` does: ``first_or_create`` on (contact, inbox, source_id).

        :raises SandboxError: 500, as the real server's unhandled ``RecordNotUnique``, when another contact
            already holds ``source_id`` in this inbox.
        """
        source = _scalar_string(source_id) or self._new_source_id(inbox)
        existing_id = self._source_index.get((inbox.id, source))
        if existing_id is not None:
            existing = self.contact_inboxes[existing_id]
            if existing.contact_id == contact.id:
                return existing
            raise server_error()
        now = time.time()
        item = ContactInbox(self._id("contact_inbox"), contact.id, inbox.id, source, now, now)
        self.contact_inboxes[item.id] = item
        self._source_index[(inbox.id, source)] = item.id
        self._contact_inbox_ids.setdefault(contact.id, []).append(item.id)
        return item

    def create_contact(self, caller: Caller, params: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /contacts``: validate, create, optionally create the contact_inbox; wrapped response."""
        with self.lock:
            inbox: Inbox | None = None
            if _present(params.get("inbox_id")):
                inbox = self.get_inbox(caller, params.get("inbox_id"))
            now = time.time()
            contact = Contact(
                id=0,
                account_id=caller.account.id,
                name="",
                email=None,
                phone_number=None,
                identifier=None,
                blocked=False,
                additional_attributes={},
                custom_attributes={},
                created_at=now,
                updated_at=now,
            )
            self._assign_contact(contact, params, merge=False)
            self._validate_contact(contact)
            source_id = _scalar_string(params.get("source_id"))
            if inbox is not None and source_id is not None and (inbox.id, source_id) in self._source_index:
                # The contact and its contact_inbox are saved in one transaction: the RecordNotUnique
                # rolls both back and ends as a 500.
                raise server_error()
            contact.id = self._id("contact")
            self.contacts[contact.id] = contact
            self._index_contact(contact)
            contact_inbox = None
            if inbox is not None:
                contact_inbox = self._find_or_create_contact_inbox(contact, inbox, params.get("source_id"))
            self._emit("contact_created", self._contact_webhook_data(contact), inbox=None)
            return {
                "payload": {
                    "contact": self.render_contact(contact),
                    "contact_inbox": {
                        "inbox": self._inbox_as_json(inbox) if inbox is not None else None,
                        "source_id": contact_inbox.source_id if contact_inbox is not None else None,
                    },
                }
            }

    def show_contact(
        self, caller: Caller, contact_id: Any, *, with_contact_inboxes: bool = True
    ) -> dict[str, Any]:
        """``GET /contacts/{id}``: ``{"payload": contact}``."""
        with self.lock:
            contact = self.get_contact(caller, contact_id)
            return {"payload": self.render_contact(contact, with_contact_inboxes=with_contact_inboxes)}

    def update_contact(self, caller: Caller, contact_id: Any, params: Mapping[str, Any]) -> dict[str, Any]:
        """``PATCH``/``PUT /contacts/{id}``: attributes merged into the existing ones; ``contact_updated`` on change."""
        with self.lock:
            contact = self.get_contact(caller, contact_id)
            draft = Contact(
                **{name: _copy_json(getattr(contact, name)) for name in contact.__dataclass_fields__}
            )
            self._assign_contact(draft, params, merge=True)
            self._validate_contact(draft)
            tracked = (
                "name",
                "email",
                "phone_number",
                "identifier",
                "blocked",
                "avatar_url",
                "additional_attributes",
                "custom_attributes",
            )
            changes = [
                {name: {"previous_value": getattr(contact, name), "current_value": getattr(draft, name)}}
                for name in tracked
                if getattr(contact, name) != getattr(draft, name)
            ]
            if changes:
                previous_updated_at = contact.updated_at
                draft.updated_at = time.time()
                changes.append(
                    {
                        "updated_at": {
                            "previous_value": iso8601(previous_updated_at),
                            "current_value": iso8601(draft.updated_at),
                        }
                    }
                )
                self._index_contact(contact, remove=True)
                self.contacts[contact.id] = draft
                self._index_contact(draft)
                self._emit(
                    "contact_updated",
                    {**self._contact_webhook_data(draft), "changed_attributes": _copy_json(changes)},
                    inbox=None,
                )
            return {"payload": self.render_contact(self.contacts[contact.id])}

    def delete_contact(self, caller: Caller, contact_id: Any) -> None:
        """``DELETE /contacts/{id}``: the contact with its contact_inboxes, conversations and messages."""
        with self.lock:
            contact = self.get_contact(caller, contact_id)
            for conversation in [
                item for item in self.conversations.values() if item.contact_id == contact.id
            ]:
                for message_id in conversation.message_ids:
                    for attachment in self.messages[message_id].attachments:
                        self.attachments.pop(attachment.id, None)
                    self.messages.pop(message_id, None)
                del self.conversations[conversation.id]
                self._display_index.pop(conversation.display_id, None)
            for item in self._contact_inboxes_of(contact.id):
                del self.contact_inboxes[item.id]
                self._source_index.pop((item.inbox_id, item.source_id), None)
            self._contact_inbox_ids.pop(contact.id, None)
            self._index_contact(contact, remove=True)
            del self.contacts[contact.id]

    def _resolved_contacts(self, account_id: int) -> list[Contact]:
        """Contacts with an email, phone number or identifier: the only ones index/search/filter see."""
        return [
            contact
            for contact in self.contacts.values()
            if contact.account_id == account_id
            and (contact.email or contact.phone_number or contact.identifier)
        ]

    @staticmethod
    def _page(params: Mapping[str, Any]) -> int:
        page = cast_id(params.get("page"))
        return page if page and page > 0 else 1

    def list_contacts(self, caller: Caller, params: Mapping[str, Any]) -> dict[str, Any]:
        """``GET /contacts``: 15 per page; ``meta.count`` is the total."""
        with self.lock:
            contacts = self._resolved_contacts(caller.account.id)
            page = self._page(params)
            chunk = contacts[(page - 1) * CONTACT_RESULTS_PER_PAGE : page * CONTACT_RESULTS_PER_PAGE]
            return {
                "meta": {"count": len(contacts), "current_page": page},
                "payload": [self.render_contact(contact) for contact in chunk],
            }

    def search_contacts(self, caller: Caller, params: Mapping[str, Any]) -> dict[str, Any]:
        """``GET /contacts/search?q=``: substring match, 15 per page, ``meta.count`` of this page + ``has_more``."""
        query = params.get("q")
        page = self._page(params)
        if not _present(query):
            # The real controller's `render ... if q.blank? && return` never renders: an empty page comes back.
            return {"meta": {"count": 0, "current_page": page, "has_more": False}, "payload": []}
        needle = str(query).strip()
        lowered = needle.lower()
        with self.lock:
            matches = [
                contact
                for contact in self._resolved_contacts(caller.account.id)
                if lowered in (contact.name or "").lower()
                or lowered in (contact.email or "").lower()
                or lowered in (contact.phone_number or "").lower()
                or needle in (contact.identifier or "")
            ]
            start = (page - 1) * CONTACT_RESULTS_PER_PAGE
            chunk = matches[start : start + CONTACT_RESULTS_PER_PAGE]
            return {
                "meta": {
                    "count": len(chunk),
                    "current_page": page,
                    "has_more": len(matches) > start + CONTACT_RESULTS_PER_PAGE,
                },
                "payload": [self.render_contact(contact) for contact in chunk],
            }

    @staticmethod
    def _filter_value(attribute: str, value: Any) -> str:
        text = "" if value is None else str(value)
        if attribute == "phone_number":
            return "+" + text.replace("+", "")
        return text.lower()

    def _condition(self, contact: Contact, condition: Mapping[str, Any]) -> bool:
        attribute = condition["attribute_key"]
        operator = condition["filter_operator"]
        raw = getattr(contact, attribute)
        values = condition.get("values")
        if not isinstance(values, list):
            values = [values]
        wanted = [self._filter_value(attribute, value) for value in values if value is not None]
        if raw is None:
            # SQL comparisons with NULL are never true, whatever the operator.
            return False
        actual = self._filter_value(attribute, raw)
        if operator == "equal_to":
            return actual in wanted
        if operator == "not_equal_to":
            return actual not in wanted
        if operator == "contains":
            return any(value.lstrip("+") in actual for value in wanted) if wanted else False
        if operator == "does_not_contain":
            return not any(value.lstrip("+") in actual for value in wanted)
        if operator == "starts_with":
            return any(actual.startswith(value) for value in wanted)
        return False

    def filter_contacts(self, caller: Caller, params: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /contacts/filter``: exact-match conditions chained with ``query_operator``; 15 per page."""
        conditions = params.get("payload")
        if not isinstance(conditions, list) or not conditions:
            raise unprocessable("param is missing or the value is empty: payload")
        for condition in conditions:
            if not isinstance(condition, dict):
                raise unprocessable("Invalid filter: each payload item must be an object")
            attribute = condition.get("attribute_key")
            if attribute not in _FILTER_OPERATORS:
                raise unprocessable(f"Invalid attribute key - {attribute}")
            operator = condition.get("filter_operator")
            allowed = _FILTER_OPERATORS[attribute]
            if operator not in allowed:
                raise unprocessable(
                    f"Invalid operator. The allowed operators for {attribute} are [{','.join(allowed)}]."
                )
            query_operator = condition.get("query_operator")
            if query_operator is not None and str(query_operator).upper() not in ("AND", "OR"):
                raise unprocessable("Invalid query operator. The allowed query operators are [AND,OR].")
        with self.lock:
            matches = []
            for contact in self._resolved_contacts(caller.account.id):
                # SQL precedence: AND binds tighter than OR, so evaluate OR-separated groups of ANDs.
                groups: list[list[bool]] = [[]]
                for index, condition in enumerate(conditions):
                    groups[-1].append(self._condition(contact, condition))
                    joiner = str(condition.get("query_operator") or "AND").upper()
                    if index < len(conditions) - 1 and joiner == "OR":
                        groups.append([])
                if any(all(group) for group in groups):
                    matches.append(contact)
            page = self._page(params)
            chunk = matches[(page - 1) * CONTACT_RESULTS_PER_PAGE : page * CONTACT_RESULTS_PER_PAGE]
            return {
                "meta": {"count": len(matches), "current_page": page},
                "payload": [self.render_contact(contact) for contact in chunk],
            }

    def create_contact_inbox(
        self, caller: Caller, contact_id: Any, params: Mapping[str, Any]
    ) -> dict[str, Any]:
        """``POST /contacts/{id}/contact_inboxes``: flat ``{"source_id", "inbox"}``, first-or-create."""
        with self.lock:
            contact = self.get_contact(caller, contact_id)
            inbox = self.get_inbox(caller, params.get("inbox_id"))
            item = self._find_or_create_contact_inbox(contact, inbox, params.get("source_id"))
            return {"source_id": item.source_id, "inbox": self._slim_inbox(inbox)}

    def contactable_inboxes(self, caller: Caller, contact_id: Any) -> dict[str, Any]:
        """``GET /contacts/{id}/contactable_inboxes``: API inboxes (existing or fresh source id), widgets in use."""
        with self.lock:
            contact = self.get_contact(caller, contact_id)
            payload = []
            for inbox in self.inboxes.values():
                if inbox.account_id != caller.account.id or not self._can_see_inbox(caller, inbox):
                    continue
                existing = [
                    item for item in self._contact_inboxes_of(contact.id) if item.inbox_id == inbox.id
                ]
                if inbox.channel_type == API_CHANNEL:
                    source_id = existing[-1].source_id if existing else self._new_source_id(inbox)
                elif existing:
                    source_id = existing[-1].source_id
                else:
                    continue
                payload.append({"source_id": source_id, "inbox": self._slim_inbox(inbox)})
            return {"payload": payload}

    def contact_conversations(self, caller: Caller, contact_id: Any) -> dict[str, Any]:
        """``GET /contacts/{id}/conversations``: the last 20 by activity, not paginated."""
        with self.lock:
            contact = self.get_contact(caller, contact_id)
            conversations = sorted(
                (item for item in self.conversations.values() if item.contact_id == contact.id),
                key=lambda item: (item.last_activity_at, item.id),
                reverse=True,
            )[:20]
            return {"payload": [self.render_conversation(item) for item in conversations]}

    def filter_contact_inboxes(self, caller: Caller, params: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /contact_inboxes/filter``: the flat contact owning (inbox_id, source_id), or an empty 404."""
        with self.lock:
            inbox_id = cast_id(params.get("inbox_id"))
            source_id = _scalar_string(params.get("source_id"))
            for item in self.contact_inboxes.values():
                if item.inbox_id == inbox_id and item.source_id == source_id:
                    contact = self.contacts.get(item.contact_id)
                    if contact is not None and contact.account_id == caller.account.id:
                        return self.render_contact(contact)
            raise not_found(empty=True)

    # ---- conversations ---------------------------------------------------------------------------------------

    def get_conversation(self, caller: Caller, display_id: Any) -> Conversation:
        """Return a conversation by its display id, or raise the 404 (or 401 for an agent outside its inbox)."""
        conversation = self._conversation_by_display_id(cast_id(display_id) or -1)
        if conversation.account_id != caller.account.id:
            raise not_found()
        if not self._can_see_inbox(caller, self.inboxes[conversation.inbox_id]):
            raise not_authorized()
        return conversation

    def _conversation_by_display_id(self, display_id: int) -> Conversation:
        conversation = self.conversations.get(self._display_index.get(display_id, -1))
        if conversation is None:
            raise not_found()
        return conversation

    def create_conversation(self, caller: Caller, params: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /conversations``: by (inbox_id, contact_id), or the legacy lookup by ``source_id`` alone."""
        with self.lock:
            inbox = (
                self.get_inbox(caller, params.get("inbox_id")) if _present(params.get("inbox_id")) else None
            )
            contact = (
                self.get_contact(caller, params.get("contact_id"))
                if _present(params.get("contact_id"))
                else None
            )
            if inbox is not None and contact is not None:
                contact_inbox = self._find_or_create_contact_inbox_for_conversation(contact, inbox, params)
            else:
                source_id = _scalar_string(params.get("source_id"))
                # find_by!(source_id:) alone: the oldest contact_inbox with that source id, in any inbox.
                candidates = [
                    self._source_index[(inbox_id, source_id)]
                    for inbox_id in self.inboxes
                    if source_id is not None and (inbox_id, source_id) in self._source_index
                ]
                match = self.contact_inboxes[min(candidates)] if candidates else None
                if match is None:
                    raise not_found()
                contact_inbox = match
                inbox = self.inboxes[match.inbox_id]
                contact = self.contacts[match.contact_id]
                if inbox.account_id != caller.account.id:
                    raise not_found()
                if not self._can_see_inbox(caller, inbox):
                    raise not_authorized()
            status = params.get("status")
            if _present(status) and status not in CONVERSATION_STATUSES:
                # An unknown enum value raises ArgumentError, which nothing handles.
                raise server_error()
            message_params = params.get("message") if _present(params.get("message")) else None
            if message_params is not None:
                if not isinstance(message_params, dict):
                    raise server_error()
                # Conversation and first message share one transaction: a bad message creates nothing.
                try:
                    self._message_draft(caller, inbox, message_params, uploads=())
                except SandboxError as exc:
                    raise server_error() from exc
            if inbox.lock_to_single_conversation:
                existing = [
                    item for item in self.conversations.values() if item.contact_inbox_id == contact_inbox.id
                ]
                if existing:
                    return self.render_conversation(existing[-1])
            now = time.time()
            if contact.blocked:
                status = "resolved"
            elif not _present(status):
                status = "open"
            assignee_id = cast_id(params.get("assignee_id"))
            conversation = Conversation(
                id=self._id("conversation"),
                display_id=self._id("display"),
                account_id=caller.account.id,
                inbox_id=inbox.id,
                contact_id=contact.id,
                contact_inbox_id=contact_inbox.id,
                status=str(status),
                created_at=now,
                updated_at=now,
                last_activity_at=now,
                additional_attributes=_copy_json(params["additional_attributes"])
                if isinstance(params.get("additional_attributes"), dict)
                else {},
                custom_attributes=_copy_json(params["custom_attributes"])
                if isinstance(params.get("custom_attributes"), dict)
                else {},
                assignee_id=assignee_id if assignee_id in self.users else None,
                team_id=cast_id(params.get("team_id")),
            )
            self.conversations[conversation.id] = conversation
            self._display_index[conversation.display_id] = conversation.id
            message = None
            if message_params is not None:
                message = self._store_message(
                    conversation, self._message_draft(caller, inbox, message_params, uploads=()), caller.user
                )
            self._emit("conversation_created", self._conversation_webhook_data(conversation), inbox=inbox)
            if message is not None:
                self._after_message(conversation, message, from_api=True)
            return self.render_conversation(conversation)

    def _find_or_create_contact_inbox_for_conversation(
        self, contact: Contact, inbox: Inbox, params: Mapping[str, Any]
    ) -> ContactInbox:
        try:
            return self._find_or_create_contact_inbox(contact, inbox, params.get("source_id"))
        except SandboxError:
            # ConversationsController rescues RecordNotUnique here, unlike the contact_inboxes endpoint.
            raise unprocessable("source_id should be unique") from None

    def list_conversations(self, caller: Caller, params: Mapping[str, Any]) -> dict[str, Any]:
        """``GET /conversations``: ``{"data": {"meta": counts, "payload": [...]}}``, 25 per page, open by default."""
        status = params.get("status") or "open"
        assignee_type = params.get("assignee_type") or "all"
        inbox_id = cast_id(params.get("inbox_id"))
        with self.lock:
            visible = [
                item
                for item in self.conversations.values()
                if item.account_id == caller.account.id
                and self._can_see_inbox(caller, self.inboxes[item.inbox_id])
                and (status == "all" or item.status == status)
                and (inbox_id is None or item.inbox_id == inbox_id)
            ]
            mine = [item for item in visible if item.assignee_id == caller.user.id]
            assigned = [item for item in visible if item.assignee_id is not None]
            unassigned = [item for item in visible if item.assignee_id is None]
            chosen = {"me": mine, "assigned": assigned, "unassigned": unassigned}.get(assignee_type, visible)
            chosen = sorted(chosen, key=lambda item: (item.last_activity_at, item.id), reverse=True)
            page = self._page(params)
            chunk = chosen[(page - 1) * CONVERSATION_RESULTS_PER_PAGE : page * CONVERSATION_RESULTS_PER_PAGE]
            return {
                "data": {
                    "meta": {
                        "mine_count": len(mine),
                        "assigned_count": len(assigned),
                        "unassigned_count": len(unassigned),
                        "all_count": len(visible),
                    },
                    "payload": [self.render_conversation(item) for item in chunk],
                }
            }

    def show_conversation(self, caller: Caller, display_id: Any) -> dict[str, Any]:
        """``GET /conversations/{display_id}``: the flat conversation."""
        with self.lock:
            return self.render_conversation(self.get_conversation(caller, display_id))

    def _set_status(
        self, conversation: Conversation, status: str, snoozed_until: float | None = None
    ) -> None:
        """Change the status and fire ``conversation_status_changed`` and ``conversation_updated``."""
        previous = conversation.status
        previous_snooze = conversation.snoozed_until
        conversation.status = status
        conversation.snoozed_until = snoozed_until if status == "snoozed" else None
        if previous == status and previous_snooze == conversation.snoozed_until:
            return
        conversation.updated_at = time.time()
        changes: list[dict[str, Any]] = []
        if previous != status:
            changes.append({"status": {"previous_value": previous, "current_value": status}})
        if previous_snooze != conversation.snoozed_until:
            changes.append(
                {
                    "snoozed_until": {
                        "previous_value": iso8601(previous_snooze),
                        "current_value": iso8601(conversation.snoozed_until),
                    }
                }
            )
        inbox = self.inboxes[conversation.inbox_id]
        data = self._conversation_webhook_data(conversation)
        if previous != status:
            self._emit("conversation_status_changed", {**data, "changed_attributes": changes}, inbox=inbox)
        self._emit("conversation_updated", {**data, "changed_attributes": _copy_json(changes)}, inbox=inbox)

    def toggle_status(self, caller: Caller, display_id: Any, params: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /conversations/{id}/toggle_status``: set ``status``, or toggle open↔resolved without one."""
        with self.lock:
            conversation = self.get_conversation(caller, display_id)
            status = params.get("status")
            snoozed_until: float | None = None
            if _present(status):
                if status not in CONVERSATION_STATUSES:
                    raise server_error()
                raw_snooze = params.get("snoozed_until")
                if _present(raw_snooze):
                    snoozed_until = _parse_time(raw_snooze)
            else:
                status = "resolved" if conversation.status == "open" else "open"
            self._set_status(conversation, str(status), snoozed_until)
            return {
                "meta": {},
                "payload": {
                    "success": True,
                    "conversation_id": conversation.display_id,
                    "current_status": conversation.status,
                    # toggle_status.json.jbuilder renders the time itself: ISO 8601, as the conversation does.
                    "snoozed_until": iso8601(conversation.snoozed_until),
                },
            }

    # ---- messages --------------------------------------------------------------------------------------------

    def _message_draft(
        self, caller: Caller | None, inbox: Inbox, params: Mapping[str, Any], *, uploads: Iterable[Upload]
    ) -> dict[str, Any]:
        """Validate message parameters the way ``Messages::MessageBuilder`` and the model do.

        :raises SandboxError: 422 ``{"error": ...}`` (messages#create rescues every StandardError).
        """
        raw_type = params.get("message_type")
        if raw_type is None or raw_type == "":
            message_type = MESSAGE_TYPES["outgoing"]
        elif (
            isinstance(raw_type, int)
            and not isinstance(raw_type, bool)
            and raw_type in MESSAGE_TYPES.values()
        ):
            message_type = raw_type
        elif isinstance(raw_type, str) and raw_type in MESSAGE_TYPES:
            message_type = MESSAGE_TYPES[raw_type]
        else:
            raise unprocessable(f"'{raw_type}' is not a valid message_type")
        if inbox.channel_type != API_CHANNEL and message_type == MESSAGE_TYPES["incoming"]:
            raise unprocessable("Incoming messages are only allowed in Api inboxes")
        content = params.get("content")
        if content is not None and not isinstance(content, str):
            content = json.dumps(content) if isinstance(content, dict | list) else str(content)
        if content is not None and len(content) > MAX_CONTENT_LENGTH:
            raise unprocessable("Validation failed: Content is too long (maximum is 150000 characters)")
        content_type = params.get("content_type") or "text"
        if content_type not in CONTENT_TYPES:
            raise unprocessable(f"'{content_type}' is not a valid content_type")
        content_attributes = params.get("content_attributes")
        if isinstance(content_attributes, str):
            if content_attributes.strip():
                try:
                    content_attributes = json.loads(content_attributes)
                except ValueError:
                    raise unprocessable("content_attributes is not valid JSON") from None
            else:
                content_attributes = {}
        if content_attributes is None:
            content_attributes = {}
        if not isinstance(content_attributes, dict):
            raise unprocessable("content_attributes must be a JSON object")
        additional_attributes: dict[str, Any] = {}
        template_params = params.get("template_params")
        if isinstance(template_params, str) and template_params.strip():
            try:
                template_params = json.loads(template_params)
            except ValueError:
                raise unprocessable("template_params is not valid JSON") from None
        if _present(template_params):
            additional_attributes["template_params"] = _copy_json(template_params)
        if _present(params.get("external_created_at")):
            content_attributes["external_created_at"] = params.get("external_created_at")
        files = list(uploads)
        if len(files) > MAX_ATTACHMENTS:
            raise unprocessable("Validation failed: Attachments exceeded maximum allowed")
        return {
            "message_type": message_type,
            "content": content,
            "content_type": content_type,
            "content_attributes": _copy_json(content_attributes),
            "additional_attributes": additional_attributes,
            "private": bool(cast_bool(params.get("private"))),
            "source_id": _scalar_string(params.get("source_id")),
            "uploads": files,
        }

    def _store_message(
        self, conversation: Conversation, draft: Mapping[str, Any], user: User | None
    ) -> Message:
        now = time.time()
        message_type = draft["message_type"]
        if message_type == MESSAGE_TYPES["outgoing"] and user is not None:
            sender_type, sender_id = "User", user.id
        elif message_type == MESSAGE_TYPES["activity"]:
            sender_type, sender_id = None, None
        else:
            # The builder attributes anything that is not outgoing to the conversation's contact.
            sender_type, sender_id = "Contact", conversation.contact_id
        message = Message(
            id=self._id("message"),
            account_id=conversation.account_id,
            inbox_id=conversation.inbox_id,
            conversation_id=conversation.id,
            message_type=message_type,
            content=draft["content"],
            content_type=draft["content_type"],
            content_attributes=draft["content_attributes"],
            additional_attributes=draft["additional_attributes"],
            private=draft["private"],
            sender_type=sender_type,
            sender_id=sender_id,
            created_at=now,
            updated_at=now,
            source_id=draft["source_id"],
        )
        for upload in draft["uploads"]:
            attachment = Attachment(
                id=self._id("attachment"),
                message_id=message.id,
                account_id=message.account_id,
                file_type=_file_type(upload.content_type),
                filename=upload.filename or "file",
                content_type=upload.content_type or "application/octet-stream",
                data=upload.data,
            )
            message.attachments.append(attachment)
            self.attachments[attachment.id] = attachment
        self.messages[message.id] = message
        conversation.message_ids.append(message.id)
        if message_type != MESSAGE_TYPES["activity"]:
            conversation.last_activity_at = now
            conversation.updated_at = now
        if message_type == MESSAGE_TYPES["incoming"]:
            contact = self.contacts.get(conversation.contact_id)
            if contact is not None:
                contact.last_activity_at = now
            if conversation.waiting_since is None:
                conversation.waiting_since = now
        elif message_type == MESSAGE_TYPES["outgoing"] and not message.private:
            if conversation.first_reply_created_at is None:
                conversation.first_reply_created_at = now
            conversation.waiting_since = None
        return message

    def _after_message(self, conversation: Conversation, message: Message, *, from_api: bool) -> None:
        """Fire the webhooks of a new message and, for an API agent reply, schedule the auto-reply."""
        inbox = self.inboxes[conversation.inbox_id]
        if (
            message.message_type == MESSAGE_TYPES["incoming"]
            and conversation.status in ("resolved", "snoozed")
            and not conversation.muted
        ):
            self._set_status(conversation, "open")
        if message.message_type != MESSAGE_TYPES["activity"]:
            # Private notes fire too: they are outgoing messages with private=true.
            self._emit(
                "message_created", self._message_webhook_data(message), inbox=inbox, message_id=message.id
            )
        if from_api and message.message_type == MESSAGE_TYPES["outgoing"] and not message.private:
            self._schedule_auto_reply(conversation)

    def create_message(
        self,
        caller: Caller,
        display_id: Any,
        params: Mapping[str, Any],
        *,
        uploads: Iterable[Upload] = (),
    ) -> dict[str, Any]:
        """``POST /conversations/{id}/messages``: the flat REST message (integer ``message_type``)."""
        with self.lock:
            conversation = self.get_conversation(caller, display_id)
            inbox = self.inboxes[conversation.inbox_id]
            draft = self._message_draft(caller, inbox, params, uploads=uploads)
            message = self._store_message(conversation, draft, caller.user)
            self._after_message(conversation, message, from_api=True)
            return self.render_message(message, echo_id=params.get("echo_id"))

    def list_messages(self, caller: Caller, display_id: Any, params: Mapping[str, Any]) -> dict[str, Any]:
        """``GET /conversations/{id}/messages``: latest 20; ``before`` 20 older; ``after`` 100 newer; both 1000."""
        with self.lock:
            conversation = self.get_conversation(caller, display_id)
            messages = [self.messages[message_id] for message_id in conversation.message_ids]
            if _present(params.get("filter_internal_messages")):
                messages = [
                    item
                    for item in messages
                    if not item.private and item.message_type != MESSAGE_TYPES["activity"]
                ]
            after = _to_i(params.get("after")) if _present(params.get("after")) else None
            before = _to_i(params.get("before")) if _present(params.get("before")) else None
            if after is not None and before is not None:
                chosen = [item for item in messages if after <= item.id < before][:1000]
            elif before is not None:
                chosen = [item for item in messages if item.id < before][-20:]
            elif after is not None:
                chosen = [item for item in messages if item.id > after][:100]
            else:
                chosen = messages[-20:]
            contact = self.contacts[conversation.contact_id]
            meta: dict[str, Any] = {
                "labels": list(conversation.labels),
                "additional_attributes": _copy_json(conversation.additional_attributes),
                "contact": self._contact_push_data(contact),
                "agent_last_seen_at": iso8601(conversation.agent_last_seen_at),
                "assignee_last_seen_at": iso8601(conversation.assignee_last_seen_at),
            }
            assignee = self._assignee_data(conversation)
            if assignee is not None:
                meta["assignee"] = assignee
            return {"meta": meta, "payload": [self.render_message(item) for item in chosen]}

    def reply(self, display_id: int, content: str) -> dict[str, Any]:
        """Make the conversation's contact write ``content`` (an incoming message); fires ``message_created``."""
        with self.lock:
            conversation = self._conversation_by_display_id(cast_id(display_id) or -1)
            draft = {
                "message_type": MESSAGE_TYPES["incoming"],
                "content": content,
                "content_type": "text",
                "content_attributes": {},
                "additional_attributes": {},
                "private": False,
                "source_id": None,
                "uploads": [],
            }
            message = self._store_message(conversation, draft, None)
            self._after_message(conversation, message, from_api=False)
            return self.render_message(message)

    def attachment(self, attachment_id: int) -> Attachment | None:
        """Return a stored attachment (served by the sandbox's ``data_url``)."""
        with self.lock:
            return self.attachments.get(attachment_id)

    # ---- account webhooks ------------------------------------------------------------------------------------

    def _webhook_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Unwrap ``{"webhook": {...}}`` or take the flat body (``wrap_parameters`` does the same)."""
        wrapped = params.get("webhook")
        if isinstance(wrapped, dict):
            return dict(wrapped)
        fields = {key: params[key] for key in ("url", "name", "subscriptions", "inbox_id") if key in params}
        if not fields:
            raise unprocessable("param is missing or the value is empty: webhook")
        return fields

    def _validate_webhook(self, webhook: Webhook) -> None:
        errors: list[tuple[str, str]] = []
        if any(
            other.url == webhook.url and other.account_id == webhook.account_id and other.id != webhook.id
            for other in self.webhooks.values()
        ):
            errors.append(("url", "Url has already been taken"))
        if not isinstance(webhook.url, str) or not _URL_RE.search(webhook.url):
            errors.append(("url", "Url is invalid"))
        subscriptions = webhook.subscriptions
        if (
            not isinstance(subscriptions, list)
            or not subscriptions
            or any(item not in ALLOWED_WEBHOOK_EVENTS for item in subscriptions)
        ):
            errors.append(("subscriptions", "Subscriptions Invalid events"))
        if errors:
            raise record_invalid(errors)

    def _assign_webhook(self, webhook: Webhook, fields: Mapping[str, Any]) -> None:
        if "url" in fields:
            webhook.url = _scalar_string(fields.get("url")) or ""
        if "name" in fields:
            webhook.name = _scalar_string(fields.get("name"))
        # Rails' permit(subscriptions: []) drops a null: the webhook keeps what it had (on create, the default).
        if fields.get("subscriptions") is not None:
            value = fields["subscriptions"]
            webhook.subscriptions = list(value) if isinstance(value, list) else value
        if "inbox_id" in fields:
            inbox_id = cast_id(fields.get("inbox_id"))
            webhook.inbox_id = inbox_id if inbox_id in self.inboxes else None

    def list_webhooks(self, caller: Caller) -> dict[str, Any]:
        """``GET /webhooks``: ``{"payload": {"webhooks": [...]}}``; administrators only."""
        self.require_admin(caller)
        with self.lock:
            return {
                "payload": {
                    "webhooks": [
                        self.render_webhook(item)
                        for item in self.webhooks.values()
                        if item.account_id == caller.account.id
                    ]
                }
            }

    def create_webhook(self, caller: Caller, params: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /webhooks``: url unique per account, subscriptions validated, server-generated secret."""
        self.require_admin(caller)
        fields = self._webhook_params(params)
        return self.add_webhook(
            fields.get("url"),
            subscriptions=fields.get("subscriptions"),
            name=fields.get("name"),
            inbox_id=fields.get("inbox_id"),
            account_id=caller.account.id,
        )

    def add_webhook(
        self,
        url: Any,
        *,
        secret: str | None = None,
        subscriptions: Any = None,
        name: Any = None,
        inbox_id: Any = None,
        account_id: int | None = None,
        default_subscriptions: bool = False,
    ) -> dict[str, Any]:
        """Create an account webhook; ``secret`` may be chosen here (the real API always generates it).

        :param default_subscriptions: subscribe to every event when ``subscriptions`` is omitted; otherwise
            an omitted ``subscriptions`` gets the real server's default, :data:`DEFAULT_WEBHOOK_SUBSCRIPTIONS`.
        :return: ``{"payload": {"webhook": {...}}}``.
        """
        if subscriptions is None:
            subscriptions = list(
                ALLOWED_WEBHOOK_EVENTS if default_subscriptions else DEFAULT_WEBHOOK_SUBSCRIPTIONS
            )
        if secret is not None and (not isinstance(secret, str) or not secret):
            raise unprocessable("secret must be a non-empty string")
        with self.lock:
            webhook = Webhook(0, account_id or self.account_id, "", [], secret or _new_token())
            self._assign_webhook(
                webhook, {"url": url, "name": name, "subscriptions": subscriptions, "inbox_id": inbox_id}
            )
            self._validate_webhook(webhook)
            webhook.id = self._id("webhook")
            self.webhooks[webhook.id] = webhook
            return {"payload": {"webhook": self.render_webhook(webhook)}}

    def _get_webhook(self, caller: Caller, webhook_id: Any) -> Webhook:
        webhook = self.webhooks.get(cast_id(webhook_id) or -1)
        if webhook is None or webhook.account_id != caller.account.id:
            raise not_found()
        return webhook

    def update_webhook(self, caller: Caller, webhook_id: Any, params: Mapping[str, Any]) -> dict[str, Any]:
        """``PATCH /webhooks/{id}``: same fields and validations as create; the secret is kept."""
        self.require_admin(caller)
        with self.lock:
            webhook = self._get_webhook(caller, webhook_id)
            fields = self._webhook_params(params)
            draft = Webhook(
                **{name: _copy_json(getattr(webhook, name)) for name in webhook.__dataclass_fields__}
            )
            self._assign_webhook(draft, fields)
            self._validate_webhook(draft)
            self.webhooks[webhook.id] = draft
            return {"payload": {"webhook": self.render_webhook(draft)}}

    def delete_webhook(self, caller: Caller, webhook_id: Any) -> None:
        """``DELETE /webhooks/{id}``: 200 with an empty body."""
        self.require_admin(caller)
        with self.lock:
            del self.webhooks[self._get_webhook(caller, webhook_id).id]


def _to_i(value: Any) -> int:
    """Ruby's ``String#to_i``: leading digits, else 0."""
    match = re.match(r"\s*([+-]?\d+)", str(value))
    return int(match.group(1)) if match else 0


def _parse_time(value: Any) -> float | None:
    """Parse a unix time or an ISO 8601 string (``snoozed_until``)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip()
    if text.replace(".", "", 1).isdigit():
        return float(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _web_widget_script(website_token: str) -> str:
    """The widget's embed snippet, as ``Channel::WebWidget#web_widget_script`` renders it (abridged)."""
    return (
        "<script>(function(d,t){var g=d.createElement(t);g.src='/packs/js/sdk.js';g.onload=function(){"
        f"window.chatwootSDK.run({{websiteToken:'{website_token}',baseUrl:''}})}};"
        "d.body.appendChild(g)})(document,'script');</script>"
    )


def _file_type(content_type: str | None) -> str:
    """Map a MIME type to Chatwoot's attachment ``file_type``."""
    major = (content_type or "").split("/", 1)[0]
    return major if major in ("image", "audio", "video") else "file"
