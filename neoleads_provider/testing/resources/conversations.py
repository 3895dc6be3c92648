# mypy: disable-error-code="misc"
# The mixin's methods name their real receiver, SandboxState, as their self type, so that calls into the
# other mixins are checked; mypy reports such a self type as "not a supertype of its class" [misc].
"""Conversations: ``/conversations`` (list, show, create, ``toggle_status``) and their status events."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from neoleads_provider.events.build import iso8601
from neoleads_provider.testing.errors import (
    SandboxError,
    not_authorized,
    not_found,
    record_invalid,
    server_error,
    unprocessable,
)
from neoleads_provider.testing.models import (
    CONVERSATION_RESULTS_PER_PAGE,
    CONVERSATION_STATUSES,
    Caller,
    Contact,
    ContactInbox,
    Conversation,
    Inbox,
)
from neoleads_provider.testing.values import cast_id, copy_json, parse_time, present, scalar_string

if TYPE_CHECKING:
    from collections.abc import Mapping

    from neoleads_provider.testing.routing import RouteContext, SandboxRouter
    from neoleads_provider.testing.state import SandboxState


# How the message model's content validation fails (messages.py): the one a first message can fail.
CONTENT_INVALID = "Validation failed: Content "


class ConversationsMixin:
    """The conversations of :class:`~neoleads_provider.testing.state.SandboxState`."""

    def get_conversation(self: SandboxState, caller: Caller, display_id: Any) -> Conversation:
        """Return a conversation by its display id, or raise the 404 (or 401 for an agent outside its inbox)."""
        conversation = self._conversation_by_display_id(cast_id(display_id) or -1)
        if conversation.account_id != caller.account.id:
            raise not_found()
        if not self._can_see_inbox(caller, self.inboxes[conversation.inbox_id]):
            raise not_authorized()
        return conversation

    def _conversation_by_display_id(self: SandboxState, display_id: int) -> Conversation:
        conversation = self.conversations.get(self._display_index.get(display_id, -1))
        if conversation is None:
            raise not_found()
        return conversation

    def create_conversation(self: SandboxState, caller: Caller, params: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /conversations``: by (inbox_id, contact_id), or the legacy lookup by ``source_id`` alone."""
        with self.lock:
            inbox, contact, contact_inbox = self._conversation_parties(caller, params)
            status = params.get("status")
            if present(status) and status not in CONVERSATION_STATUSES:
                # An unknown enum value raises ArgumentError, which nothing handles.
                raise server_error()
            message_params = self._first_message_params(caller, inbox, params)
            if inbox.lock_to_single_conversation:
                existing = [
                    item for item in self.conversations.values() if item.contact_inbox_id == contact_inbox.id
                ]
                if existing:
                    # The builder hands back the contact's last conversation, and the controller still adds
                    # the first message to it (conversations_controller#create).
                    conversation = existing[-1]
                    if message_params is not None:
                        draft = self._message_draft(caller, inbox, message_params, uploads=())
                        added = self._store_message(conversation, draft, caller.user)
                        self._after_message(conversation, added, from_api=True)
                    return self.render_conversation(conversation)
            if contact.blocked:
                status = "resolved"
            elif not present(status):
                status = "open"
            conversation = self._new_conversation(caller, inbox, contact, contact_inbox, str(status), params)
            message = None
            if message_params is not None:
                message = self._store_message(
                    conversation, self._message_draft(caller, inbox, message_params, uploads=()), caller.user
                )
            self._emit("conversation_created", self._conversation_webhook_data(conversation), inbox=inbox)
            if message is not None:
                self._after_message(conversation, message, from_api=True)
            return self.render_conversation(conversation)

    def _conversation_parties(
        self: SandboxState, caller: Caller, params: Mapping[str, Any]
    ) -> tuple[Inbox, Contact, ContactInbox]:
        """The inbox, contact and contact_inbox a new conversation belongs to."""
        inbox = self.get_inbox(caller, params.get("inbox_id")) if present(params.get("inbox_id")) else None
        contact = (
            self.get_contact(caller, params.get("contact_id")) if present(params.get("contact_id")) else None
        )
        if inbox is not None and contact is not None:
            return inbox, contact, self._find_or_create_contact_inbox_for_conversation(contact, inbox, params)
        contact_inbox = self._contact_inbox_by_source_id(params.get("source_id"))
        inbox = self.inboxes[contact_inbox.inbox_id]
        if inbox.account_id != caller.account.id:
            raise not_found()
        if not self._can_see_inbox(caller, inbox):
            raise not_authorized()
        return inbox, self.contacts[contact_inbox.contact_id], contact_inbox

    def _contact_inbox_by_source_id(self: SandboxState, value: Any) -> ContactInbox:
        source_id = scalar_string(value)
        # find_by!(source_id:) alone: the oldest contact_inbox with that source id, in any inbox.
        candidates = [
            self._source_index[(inbox_id, source_id)]
            for inbox_id in self.inboxes
            if source_id is not None and (inbox_id, source_id) in self._source_index
        ]
        if not candidates:
            raise not_found()
        return self.contact_inboxes[min(candidates)]

    def _first_message_params(
        self: SandboxState, caller: Caller, inbox: Inbox, params: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """The ``message`` to create with the conversation, if any, once it is known to be valid."""
        message_params = params.get("message") if present(params.get("message")) else None
        if message_params is not None:
            if not isinstance(message_params, dict):
                raise server_error()
            # Conversation and first message share one transaction: a bad message creates nothing. A failed
            # model validation is the app-wide RecordInvalid 422; anything else the controller lets become a 500.
            try:
                self._message_draft(caller, inbox, message_params, uploads=())
            except SandboxError as exc:
                error = str((exc.body or {}).get("error") or "")
                if error.startswith(CONTENT_INVALID):
                    raise record_invalid([("content", error.removeprefix("Validation failed: "))]) from exc
                raise server_error() from exc
        return message_params

    def _new_conversation(
        self: SandboxState,
        caller: Caller,
        inbox: Inbox,
        contact: Contact,
        contact_inbox: ContactInbox,
        status: str,
        params: Mapping[str, Any],
    ) -> Conversation:
        """Store a new conversation (no message yet) and index its display id."""
        now = time.time()
        assignee_id = cast_id(params.get("assignee_id"))
        conversation = Conversation(
            id=self._id("conversation"),
            display_id=self._id("display"),
            account_id=caller.account.id,
            inbox_id=inbox.id,
            contact_id=contact.id,
            contact_inbox_id=contact_inbox.id,
            status=status,
            created_at=now,
            updated_at=now,
            last_activity_at=now,
            additional_attributes=copy_json(params["additional_attributes"])
            if isinstance(params.get("additional_attributes"), dict)
            else {},
            custom_attributes=copy_json(params["custom_attributes"])
            if isinstance(params.get("custom_attributes"), dict)
            else {},
            assignee_id=assignee_id if assignee_id in self.users else None,
            team_id=cast_id(params.get("team_id")),
        )
        self.conversations[conversation.id] = conversation
        self._display_index[conversation.display_id] = conversation.id
        return conversation

    def _find_or_create_contact_inbox_for_conversation(
        self: SandboxState, contact: Contact, inbox: Inbox, params: Mapping[str, Any]
    ) -> ContactInbox:
        try:
            return self._find_or_create_contact_inbox(contact, inbox, params.get("source_id"))
        except SandboxError:
            # ConversationsController rescues RecordNotUnique here, unlike the contact_inboxes endpoint.
            raise unprocessable("source_id should be unique") from None

    def list_conversations(self: SandboxState, caller: Caller, params: Mapping[str, Any]) -> dict[str, Any]:
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

    def show_conversation(self: SandboxState, caller: Caller, display_id: Any) -> dict[str, Any]:
        """``GET /conversations/{display_id}``: the flat conversation."""
        with self.lock:
            return self.render_conversation(self.get_conversation(caller, display_id))

    def _set_status(
        self: SandboxState, conversation: Conversation, status: str, snoozed_until: float | None = None
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
        self._emit("conversation_updated", {**data, "changed_attributes": copy_json(changes)}, inbox=inbox)

    def toggle_status(
        self: SandboxState, caller: Caller, display_id: Any, params: Mapping[str, Any]
    ) -> dict[str, Any]:
        """``POST /conversations/{id}/toggle_status``: set ``status``, or toggle open↔resolved without one."""
        with self.lock:
            conversation = self.get_conversation(caller, display_id)
            status = params.get("status")
            snoozed_until: float | None = None
            if present(status):
                if status not in CONVERSATION_STATUSES:
                    raise server_error()
                raw_snooze = params.get("snoozed_until")
                if present(raw_snooze):
                    snoozed_until = parse_time(raw_snooze)
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


def router(context: RouteContext) -> SandboxRouter:
    """The conversation routes, below the account (their messages are in ``messages.py``)."""
    account = context.router()
    account.add("GET", "/conversations", ConversationsMixin.list_conversations, params="query")
    account.add("POST", "/conversations", ConversationsMixin.create_conversation, params="body")
    account.add("GET", "/conversations/{conversation_id}", ConversationsMixin.show_conversation)
    account.add(
        "POST",
        "/conversations/{conversation_id}/toggle_status",
        ConversationsMixin.toggle_status,
        params="body",
    )
    return account
