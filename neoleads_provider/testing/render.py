# mypy: disable-error-code="misc"
# The mixin's methods name their real receiver, SandboxState, as their self type, so that calls into the
# other mixins are checked; mypy reports such a self type as "not a supertype of its class" [misc].
"""The renderers: each record as the real server's views and presenters show it, keys in their order.

``render_*`` are the REST partials (jbuilder views); ``_*_push_data`` and ``_*_webhook_data`` are the model
methods behind conversation lists and webhook payloads, built with :mod:`neoleads_provider.events.build`.
Renderers read the state and never change it; callers hold the lock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from neoleads_provider.events.build import (
    account_data,
    contact_inbox_data,
    contact_push_data,
    contact_webhook_data,
    conversation_meta,
    conversation_webhook_data,
    iso8601,
    message_webhook_data,
    user_webhook_data,
)
from neoleads_provider.events.names import MESSAGE_TYPES as MESSAGE_TYPE_NAMES
from neoleads_provider.testing.models import (
    API_CHANNEL,
    MESSAGE_TYPES,
    WEB_CHANNEL,
    Attachment,
    Contact,
    Conversation,
    Inbox,
    Message,
    User,
    Webhook,
)
from neoleads_provider.testing.values import copy_json, unix, unix0

if TYPE_CHECKING:
    from neoleads_provider.testing.state import SandboxState


class RenderMixin:
    """The renderers of :class:`~neoleads_provider.testing.state.SandboxState`."""

    def _account_data(self: SandboxState, account_id: int) -> dict[str, Any]:
        account = self.accounts[account_id]
        return account_data(account.id, account.name)

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

    def render_inbox(self: SandboxState, inbox: Inbox, *, admin: bool) -> dict[str, Any]:
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
            data["additional_attributes"] = copy_json(inbox.additional_attributes)
        data["provider"] = None
        return data

    def _inbox_as_json(self: SandboxState, inbox: Inbox) -> dict[str, Any]:
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

    def render_contact(
        self: SandboxState, contact: Contact, *, with_contact_inboxes: bool = True
    ) -> dict[str, Any]:
        """Render the contact partial."""
        data: dict[str, Any] = {
            "additional_attributes": copy_json(contact.additional_attributes),
            "availability_status": "offline",
            "email": contact.email,
            "id": contact.id,
            "name": contact.name,
            "phone_number": contact.phone_number,
            "blocked": contact.blocked,
            "identifier": contact.identifier,
            "thumbnail": contact.avatar_url,
            "custom_attributes": copy_json(contact.custom_attributes),
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
            "additional_attributes": copy_json(contact.additional_attributes),
            "custom_attributes": copy_json(contact.custom_attributes),
            "blocked": contact.blocked,
        }

    def _contact_push_data(self: SandboxState, contact: Contact) -> dict[str, Any]:
        return contact_push_data(thumbnail=contact.avatar_url, **self._contact_fields(contact))

    def _contact_webhook_data(self: SandboxState, contact: Contact) -> dict[str, Any]:
        return contact_webhook_data(
            account=self._account_data(contact.account_id),
            avatar=contact.avatar_url,
            **self._contact_fields(contact),
        )

    def _attachment_data(self: SandboxState, attachment: Attachment) -> dict[str, Any]:
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

    def _sender_push_data(self: SandboxState, message: Message) -> dict[str, Any] | None:
        if message.sender_type == "Contact" and message.sender_id in self.contacts:
            return self._contact_push_data(self.contacts[message.sender_id])
        if message.sender_type == "User" and message.sender_id in self.users:
            return self._user_push_data(self.users[message.sender_id])
        return None

    def _message_push_data(self: SandboxState, message: Message) -> dict[str, Any]:
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
            "content_attributes": copy_json(message.content_attributes),
            "sender_type": message.sender_type,
            "sender_id": message.sender_id,
            "external_source_ids": {},
            "additional_attributes": copy_json(message.additional_attributes),
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

    def render_message(self: SandboxState, message: Message, *, echo_id: Any = None) -> dict[str, Any]:
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
            "content_attributes": copy_json(message.content_attributes),
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

    def _unread_count(self: SandboxState, conversation: Conversation) -> int:
        seen = conversation.agent_last_seen_at or 0.0
        return sum(
            1
            for message_id in conversation.message_ids
            if self.messages[message_id].message_type == MESSAGE_TYPES["incoming"]
            and self.messages[message_id].created_at > seen
        )

    def _last_message(self: SandboxState, conversation: Conversation, *, chat_only: bool) -> Message | None:
        for message_id in reversed(conversation.message_ids):
            message = self.messages[message_id]
            if not chat_only:
                return message
            if not message.private and message.message_type != MESSAGE_TYPES["activity"]:
                return message
        return None

    def _assignee_data(self: SandboxState, conversation: Conversation) -> dict[str, Any] | None:
        user = self.users.get(conversation.assignee_id or -1)
        return self._user_push_data(user) if user is not None else None

    def _agent_data(self: SandboxState, conversation: Conversation) -> dict[str, Any] | None:
        """The REST conversation's assignee: ``_agent.json.jbuilder``, with the agent's email and role."""
        user = self.users.get(conversation.assignee_id or -1)
        if user is None:
            return None
        return {
            "id": user.id,
            "account_id": conversation.account_id,
            "availability_status": "online",
            "auto_offline": True,
            "confirmed": True,
            "email": user.email,
            "provider": "email",
            "available_name": user.name,
            "name": user.name,
            "role": user.roles.get(conversation.account_id, "agent"),
            "thumbnail": "",
        }

    def render_conversation(self: SandboxState, conversation: Conversation) -> dict[str, Any]:
        """Render the REST conversation partial: flat, ``id`` is the display id."""
        contact = self.contacts[conversation.contact_id]
        inbox = self.inboxes[conversation.inbox_id]
        contact_inbox = self.contact_inboxes.get(conversation.contact_inbox_id)
        meta: dict[str, Any] = {
            "sender": self.render_contact(contact, with_contact_inboxes=False),
            "channel": inbox.channel_type,
            "hmac_verified": bool(contact_inbox and contact_inbox.hmac_verified),
        }
        assignee = self._agent_data(conversation)
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
            "additional_attributes": copy_json(conversation.additional_attributes),
            "agent_last_seen_at": unix0(conversation.agent_last_seen_at),
            "assignee_last_seen_at": unix0(conversation.assignee_last_seen_at),
            "can_reply": True,
            "contact_last_seen_at": unix0(conversation.contact_last_seen_at),
            "custom_attributes": copy_json(conversation.custom_attributes),
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

    def _conversation_webhook_data(self: SandboxState, conversation: Conversation) -> dict[str, Any]:
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
            additional_attributes=copy_json(conversation.additional_attributes),
            custom_attributes=copy_json(conversation.custom_attributes),
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

    def _message_webhook_data(self: SandboxState, message: Message) -> dict[str, Any]:
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
            content_attributes=copy_json(message.content_attributes),
            additional_attributes=copy_json(message.additional_attributes),
            attachments=[self._attachment_data(item) for item in message.attachments],
        )

    def render_webhook(self: SandboxState, webhook: Webhook) -> dict[str, Any]:
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


def _web_widget_script(website_token: str) -> str:
    """The widget's embed snippet, as ``Channel::WebWidget#web_widget_script`` renders it (abridged)."""
    return (
        "<script>(function(d,t){var g=d.createElement(t);g.src='/packs/js/sdk.js';g.onload=function(){"
        f"window.chatwootSDK.run({{websiteToken:'{website_token}',baseUrl:''}})}};"
        "d.body.appendChild(g)})(document,'script');</script>"
    )
