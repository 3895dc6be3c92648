# mypy: disable-error-code="misc"
# The mixin's methods name their real receiver, SandboxState, as their self type, so that calls into the
# other mixins are checked; mypy reports such a self type as "not a supertype of its class" [misc].
"""Messages: ``/conversations/{id}/messages`` (list, create with attachments), contact replies, files."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from neoleads_provider.events.build import iso8601
from neoleads_provider.testing.errors import unprocessable
from neoleads_provider.testing.models import (
    API_CHANNEL,
    CONTENT_TYPES,
    MAX_ATTACHMENTS,
    MAX_CONTENT_LENGTH,
    MESSAGE_TYPES,
    Attachment,
    Caller,
    Conversation,
    Inbox,
    Message,
    Upload,
    User,
)
from neoleads_provider.testing.values import (
    cast_bool,
    cast_id,
    copy_json,
    file_type,
    present,
    scalar_string,
    to_i,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from starlette.requests import Request
    from starlette.responses import Response

    from neoleads_provider.testing.routing import RouteContext, SandboxRouter
    from neoleads_provider.testing.state import SandboxState


class MessagesMixin:
    """The messages of :class:`~neoleads_provider.testing.state.SandboxState`."""

    def _message_draft(
        self: SandboxState,
        caller: Caller | None,
        inbox: Inbox,
        params: Mapping[str, Any],
        *,
        uploads: Iterable[Upload],
    ) -> dict[str, Any]:
        """Validate message parameters the way ``Messages::MessageBuilder`` and the model do.

        :raises SandboxError: 422 ``{"error": ...}`` (messages#create rescues every StandardError).
        """
        message_type = _message_type(inbox, params.get("message_type"))
        content = _message_content(params.get("content"))
        content_type = params.get("content_type") or "text"
        if content_type not in CONTENT_TYPES:
            raise unprocessable(f"'{content_type}' is not a valid content_type")
        content_attributes = _content_attributes(params.get("content_attributes"))
        additional_attributes = _additional_attributes(params.get("template_params"))
        if present(params.get("external_created_at")):
            content_attributes["external_created_at"] = params.get("external_created_at")
        files = list(uploads)
        if len(files) > MAX_ATTACHMENTS:
            raise unprocessable("Validation failed: Attachments exceeded maximum allowed")
        return {
            "message_type": message_type,
            "content": content,
            "content_type": content_type,
            "content_attributes": copy_json(content_attributes),
            "additional_attributes": additional_attributes,
            "private": bool(cast_bool(params.get("private"))),
            "source_id": scalar_string(params.get("source_id")),
            "uploads": files,
        }

    def _store_message(
        self: SandboxState, conversation: Conversation, draft: Mapping[str, Any], user: User | None
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
                file_type=file_type(upload.content_type),
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

    def _after_message(
        self: SandboxState, conversation: Conversation, message: Message, *, from_api: bool
    ) -> None:
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
        self: SandboxState,
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

    def list_messages(
        self: SandboxState, caller: Caller, display_id: Any, params: Mapping[str, Any]
    ) -> dict[str, Any]:
        """``GET /conversations/{id}/messages``: latest 20; ``before`` 20 older; ``after`` 100 newer; both 1000."""
        with self.lock:
            conversation = self.get_conversation(caller, display_id)
            messages = [self.messages[message_id] for message_id in conversation.message_ids]
            if present(params.get("filter_internal_messages")):
                messages = [
                    item
                    for item in messages
                    if not item.private and item.message_type != MESSAGE_TYPES["activity"]
                ]
            after = to_i(params.get("after")) if present(params.get("after")) else None
            before = to_i(params.get("before")) if present(params.get("before")) else None
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
                "additional_attributes": copy_json(conversation.additional_attributes),
                "contact": self._contact_push_data(contact),
                "agent_last_seen_at": iso8601(conversation.agent_last_seen_at),
                "assignee_last_seen_at": iso8601(conversation.assignee_last_seen_at),
            }
            assignee = self._assignee_data(conversation)
            if assignee is not None:
                meta["assignee"] = assignee
            return {"meta": meta, "payload": [self.render_message(item) for item in chosen]}

    def reply(self: SandboxState, display_id: int, content: str) -> dict[str, Any]:
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

    def attachment(self: SandboxState, attachment_id: int) -> Attachment | None:
        """Return a stored attachment (served by the sandbox's ``data_url``)."""
        with self.lock:
            return self.attachments.get(attachment_id)


def _message_type(inbox: Inbox, raw_type: Any) -> int:
    """The ``message_type`` parameter as its integer (outgoing when omitted), allowed in ``inbox``."""
    if raw_type is None or raw_type == "":
        message_type = MESSAGE_TYPES["outgoing"]
    elif isinstance(raw_type, int) and not isinstance(raw_type, bool) and raw_type in MESSAGE_TYPES.values():
        message_type = raw_type
    elif isinstance(raw_type, str) and raw_type in MESSAGE_TYPES:
        message_type = MESSAGE_TYPES[raw_type]
    else:
        raise unprocessable(f"'{raw_type}' is not a valid message_type")
    if inbox.channel_type != API_CHANNEL and message_type == MESSAGE_TYPES["incoming"]:
        raise unprocessable("Incoming messages are only allowed in Api inboxes")
    return message_type


def _message_content(content: Any) -> str | None:
    """The ``content`` parameter as the string column stores it (JSON for an object or a list)."""
    if content is not None and not isinstance(content, str):
        content = json.dumps(content) if isinstance(content, dict | list) else str(content)
    if content is not None and len(content) > MAX_CONTENT_LENGTH:
        raise unprocessable("Validation failed: Content is too long (maximum is 150000 characters)")
    return content


def _content_attributes(content_attributes: Any) -> dict[str, Any]:
    """The ``content_attributes`` parameter: an object, possibly sent as a JSON string (``{}`` when blank)."""
    if isinstance(content_attributes, str):
        if content_attributes.strip():
            try:
                content_attributes = json.loads(content_attributes)
            except ValueError:
                # MessageBuilder#safe_parse_json: text that is not JSON is read as no attributes.
                content_attributes = {}
        else:
            content_attributes = {}
    if content_attributes is None:
        content_attributes = {}
    if not isinstance(content_attributes, dict):
        raise unprocessable("content_attributes must be a JSON object")
    return content_attributes


def _additional_attributes(template_params: Any) -> dict[str, Any]:
    """The message's ``additional_attributes``: the ``template_params`` parameter, possibly a JSON string."""
    additional_attributes: dict[str, Any] = {}
    if isinstance(template_params, str) and template_params.strip():
        try:
            template_params = json.loads(template_params)
        except ValueError:
            raise unprocessable("template_params is not valid JSON") from None
    if present(template_params):
        additional_attributes["template_params"] = copy_json(template_params)
    return additional_attributes


def router(context: RouteContext) -> SandboxRouter:
    """The message routes of a conversation, below the account."""
    state = context.state
    account = context.router()
    account.add(
        "GET", "/conversations/{conversation_id}/messages", MessagesMixin.list_messages, params="query"
    )

    @account.handler("POST", "/conversations/{conversation_id}/messages")
    async def create_message(request: Request, account_id: str, conversation_id: str) -> Response:
        who = context.caller(request, account_id)
        params, uploads = await context.read_params(request)
        # Signed blob ids sent as strings stand for uploads the sandbox never received: nothing to attach.
        return context.json(state.create_message(who, conversation_id, params, uploads=uploads))

    return account
