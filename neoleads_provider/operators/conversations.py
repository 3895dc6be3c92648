"""Open a Neoleads conversation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from neoleads_provider.exceptions import NeoleadsConfigError
from neoleads_provider.links import CONVERSATION_URL_KEY, NeoleadsConversationLink
from neoleads_provider.operators.base import NeoleadsBaseOperator, as_id

if TYPE_CHECKING:
    from airflow.sdk import Context


class NeoleadsCreateConversationOperator(NeoleadsBaseOperator):
    """Open a conversation from a contact's ``source_id`` (or from ``inbox_id`` + ``contact_id``).

    :param source_id: the contact inbox's source id, e.g. ``create_contact.output["source_id"]``. (templated)
    :param inbox_id: with ``contact_id``, instead of ``source_id``. (templated)
    :param contact_id: with ``inbox_id``, instead of ``source_id``. (templated)
    :param status: ``open`` (default on the server), ``pending``, ``resolved`` or ``snoozed``. (templated)
    :param assignee_id: agent to assign. (templated)
    :param team_id: team to assign. (templated)
    :param custom_attributes: conversation custom attributes. (templated)
    :param additional_attributes: conversation additional attributes. (templated)
    :param message: optional first message: its text, or a dict with ``content`` and optionally
        ``message_type``, ``private``, ``content_attributes``. (templated)
    :return: ``{"conversation_id", "inbox_id", "contact_id", "status"}``; ``conversation_id`` is the
        display id that API paths and webhooks use.
    """

    template_fields = (
        *NeoleadsBaseOperator.template_fields,
        "source_id",
        "inbox_id",
        "contact_id",
        "status",
        "assignee_id",
        "team_id",
        "custom_attributes",
        "additional_attributes",
        "message",
    )
    template_fields_renderers = {
        "custom_attributes": "json",
        "additional_attributes": "json",
        "message": "json",
    }
    operator_extra_links = (NeoleadsConversationLink(),)

    def __init__(
        self,
        *,
        source_id: str | None = None,
        inbox_id: int | str | None = None,
        contact_id: int | str | None = None,
        status: str | None = None,
        assignee_id: int | str | None = None,
        team_id: int | str | None = None,
        custom_attributes: dict[str, Any] | None = None,
        additional_attributes: dict[str, Any] | None = None,
        message: str | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.source_id = source_id
        self.inbox_id = inbox_id
        self.contact_id = contact_id
        self.status = status
        self.assignee_id = assignee_id
        self.team_id = team_id
        self.custom_attributes = custom_attributes
        self.additional_attributes = additional_attributes
        self.message = message

    def _first_message(self) -> dict[str, Any] | None:
        if self.message in (None, ""):
            return None
        if isinstance(self.message, str):
            return {"content": self.message}
        if isinstance(self.message, dict) and self.message.get("content"):
            return dict(self.message)
        raise NeoleadsConfigError(f"message must be text or a dict with 'content'; got {self.message!r}")

    def execute(self, context: Context) -> dict[str, Any]:
        source_id = str(self.source_id).strip() if self.source_id not in (None, "") else None
        inbox_id = as_id("inbox_id", self.inbox_id, required=False)
        contact_id = as_id("contact_id", self.contact_id, required=False)
        if not source_id and not (inbox_id and contact_id):
            raise NeoleadsConfigError(
                "NeoleadsCreateConversationOperator needs source_id, or both inbox_id and contact_id"
            )
        conversation = self.hook.create_conversation(
            source_id=source_id,
            inbox_id=inbox_id,
            contact_id=contact_id,
            status=self.status or None,
            assignee_id=as_id("assignee_id", self.assignee_id, required=False),
            team_id=as_id("team_id", self.team_id, required=False),
            custom_attributes=self.custom_attributes or None,
            additional_attributes=self.additional_attributes or None,
            message=self._first_message(),
        )
        conversation_id = int(conversation["id"])
        sender = (conversation.get("meta") or {}).get("sender") or {}
        self.log.info("Opened conversation %s (status %s)", conversation_id, conversation.get("status"))
        self.push_link(context, CONVERSATION_URL_KEY, self.hook.settings.conversation_url(conversation_id))
        return {
            "conversation_id": conversation_id,
            "inbox_id": conversation.get("inbox_id"),
            "contact_id": sender.get("id", contact_id),
            "status": conversation.get("status"),
        }
