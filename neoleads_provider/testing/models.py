"""The sandbox's records and constants: default ids and tokens, first ids, limits, channels and enums.

The dataclasses are the rows the real server keeps (accounts, users, inboxes, contacts, contact_inboxes,
conversations, messages with their attachments, account webhooks), plus what passes between the layers: a
:class:`Delivery` to post, an :class:`Upload` received, the :class:`Caller` of a request.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from neoleads_provider.events.names import MESSAGE_TYPES as MESSAGE_TYPE_NAMES
from neoleads_provider.events.names import WEBHOOK_EVENTS
from neoleads_provider.testing.values import new_token

# The real server's name for the list (Chatwoot's Webhook::ALLOWED_WEBHOOK_EVENTS).
ALLOWED_WEBHOOK_EVENTS = WEBHOOK_EVENTS

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
    pubsub_token: str = field(default_factory=new_token, repr=False)


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
    inbox_identifier: str = field(default_factory=new_token)
    secret: str | None = field(default=None, repr=False)
    hmac_token: str = field(default_factory=new_token, repr=False)
    website_url: str | None = None
    website_token: str = field(default_factory=new_token)
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
    pubsub_token: str = field(default_factory=new_token, repr=False)


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
    pubsub_token: str = field(default_factory=new_token, repr=False)


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
