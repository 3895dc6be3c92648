"""The sandbox's in-memory Neoleads: accounts, users, inboxes, contacts, conversations, messages, webhooks.

Everything here mirrors how the real server (Chatwoot's Application API) behaves, as recorded in the
project's API notes: the same validations and error bodies, the same wrappers, the same id kinds. Ids of
different kinds start far apart (contacts 301, conversation display ids 7001, messages 90001, account
webhooks 11) so that a client mixing them up fails loudly in tests instead of hitting the wrong row.

One re-entrant lock guards all of it: the HTTP handlers, the auto-reply timers and the delivery worker
(which marks failed API-inbox messages) all come in from different threads.
Webhook events are computed under the lock, as payload snapshots, and handed to ``sink``: the delivery
worker posts them later, as the real server's job queue does.

This module holds the core of :class:`SandboxState`: its records and indexes, ids, the lock, auto-replies,
authentication and event emission. The rest comes from mixins: one per resource in ``resources/`` (its
operations and validations, next to its HTTP router) and the renderers in ``render.py``; the records are
the dataclasses of ``models.py``.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from typing import TYPE_CHECKING, Any

from neoleads_provider.events.names import INBOX_SCOPED_EVENTS
from neoleads_provider.testing.errors import SandboxError, not_authorized, not_found
from neoleads_provider.testing.models import (
    API_CHANNEL,
    DEFAULT_ACCOUNT_ID,
    DEFAULT_ACCOUNT_NAME,
    DEFAULT_ADMIN_USER_ID,
    DEFAULT_AGENT_TOKEN,
    DEFAULT_AGENT_USER_ID,
    DEFAULT_API_INBOX_ID,
    DEFAULT_API_INBOX_SECRET,
    DEFAULT_TOKEN,
    DEFAULT_WEB_INBOX_ID,
    FIRST_ATTACHMENT_ID,
    FIRST_CHANNEL_ID,
    FIRST_CONTACT_ID,
    FIRST_CONTACT_INBOX_ID,
    FIRST_CONVERSATION_DISPLAY_ID,
    FIRST_CONVERSATION_ID,
    FIRST_INBOX_ID,
    FIRST_MESSAGE_ID,
    FIRST_WEBHOOK_ID,
    WEB_CHANNEL,
    Account,
    Attachment,
    Caller,
    Contact,
    ContactInbox,
    Conversation,
    Delivery,
    Inbox,
    Message,
    User,
    Webhook,
)
from neoleads_provider.testing.render import RenderMixin
from neoleads_provider.testing.resources.contacts import ContactsMixin
from neoleads_provider.testing.resources.conversations import ConversationsMixin
from neoleads_provider.testing.resources.inboxes import InboxesMixin
from neoleads_provider.testing.resources.messages import MessagesMixin
from neoleads_provider.testing.resources.profile import ProfileMixin
from neoleads_provider.testing.resources.webhooks import WebhooksMixin
from neoleads_provider.testing.values import cast_id

if TYPE_CHECKING:
    from collections.abc import Callable


class SandboxState(
    ProfileMixin,
    InboxesMixin,
    ContactsMixin,
    ConversationsMixin,
    MessagesMixin,
    WebhooksMixin,
    RenderMixin,
):
    """The whole in-memory server: data, validations, renderers and webhook event generation.

    The resource and renderer methods come from the mixins this class is composed of; this class body is the
    core they share.

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
        inbox_events: bool = False,
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
        #: Fire inbox_created, as a server with ENABLE_INBOX_EVENTS does (off by default there too).
        self.inbox_events = inbox_events
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
