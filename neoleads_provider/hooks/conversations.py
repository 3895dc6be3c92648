"""The hook's conversations and their messages."""

from __future__ import annotations

import json
import mimetypes
from pathlib import Path
from typing import TYPE_CHECKING, Any

from neoleads_provider.exceptions import NeoleadsConfigError
from neoleads_provider.hooks.base import (
    CONVERSATION_STATUSES,
    MAX_ATTACHMENTS,
    MESSAGE_TYPES,
    NeoleadsHookBase,
    without_none,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping


class ConversationsApi(NeoleadsHookBase):
    """Conversations (by display id) and their messages."""

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
        body = without_none(
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
        body = without_none(status=status, snoozed_until=snoozed_until)
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
        fields = without_none(
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
        params = without_none(after=after, before=before)
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


def _check_status(status: str | None) -> None:
    if status is not None and status not in CONVERSATION_STATUSES:
        raise NeoleadsConfigError(f"status must be one of {', '.join(CONVERSATION_STATUSES)}; got {status!r}")


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
