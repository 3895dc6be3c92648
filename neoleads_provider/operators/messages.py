"""Send a message into a Neoleads conversation, at most once per task instance."""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING, Any

from neoleads_provider.exceptions import NeoleadsConfigError, NeoleadsError, NeoleadsTransportError
from neoleads_provider.links import CONVERSATION_URL_KEY, NeoleadsConversationLink
from neoleads_provider.operators.base import NeoleadsBaseOperator, as_id

if TYPE_CHECKING:
    from airflow.sdk import Context


def task_source_id(context: Context) -> str:
    """A message ``source_id`` unique to this task instance, the same on every try."""
    ti = context["ti"]
    key = "|".join(str(part) for part in (ti.dag_id, ti.run_id, ti.task_id, getattr(ti, "map_index", -1)))
    return "airflow-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


class NeoleadsSendMessageOperator(NeoleadsBaseOperator):
    """Send a message into a conversation.

    Each message carries a ``source_id`` derived from the task instance. When the task runs again
    (a retry, or a cleared task), it first looks for a message with that ``source_id`` in the
    conversation and, if the earlier try delivered it, returns it instead of sending it twice.

    :param conversation_id: the conversation's display id, e.g. ``create_conversation.output["conversation_id"]``. (templated)
    :param content: the text. (templated)
    :param message_type: ``outgoing`` (default, from the agent) or ``incoming`` (as the contact; API inboxes only). (templated)
    :param private: a private note, visible to agents only. (templated)
    :param content_type: e.g. ``input_select`` or ``cards``; default text. (templated)
    :param content_attributes: structured content for rich content types. (templated)
    :param template_params: WhatsApp template: ``name``, ``category``, ``language``, ``processed_params``. (templated)
    :param attachments: local file paths, sent as multipart (at most 15). (templated)
    :param source_id: your own external id for the message; default: one derived from the task instance. (templated)
    :param reconcile_timeout: when the send's outcome is unknown (a timeout or a dropped connection after the
        request left), keep looking for the message this many seconds before failing the try, so that a
        retry never resends a message the server is still committing. 0 leaves it to the retry.
    :return: ``{"message_id", "conversation_id"}``.
    """

    template_fields = (
        *NeoleadsBaseOperator.template_fields,
        "conversation_id",
        "content",
        "message_type",
        "private",
        "content_type",
        "content_attributes",
        "template_params",
        "attachments",
        "source_id",
    )
    template_fields_renderers = {"content_attributes": "json", "template_params": "json"}
    operator_extra_links = (NeoleadsConversationLink(),)

    def __init__(
        self,
        *,
        conversation_id: int | str,
        content: str | None = None,
        message_type: str = "outgoing",
        private: bool = False,
        content_type: str | None = None,
        content_attributes: dict[str, Any] | None = None,
        template_params: dict[str, Any] | None = None,
        attachments: list[str] | None = None,
        source_id: str | None = None,
        reconcile_timeout: float = 60.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.conversation_id = conversation_id
        self.content = content
        self.message_type = message_type
        self.private = private
        self.content_type = content_type
        self.content_attributes = content_attributes
        self.template_params = template_params
        self.attachments = attachments
        self.source_id = source_id
        self.reconcile_timeout = reconcile_timeout

    def execute(self, context: Context) -> dict[str, Any]:
        conversation_id = as_id("conversation_id", self.conversation_id)
        assert conversation_id is not None
        source_id = self.source_id or task_source_id(context)
        self.push_link(context, CONVERSATION_URL_KEY, self.hook.settings.conversation_url(conversation_id))
        if context["ti"].try_number > 1:
            earlier = self.hook.find_message_by_source_id(conversation_id, source_id)
            if earlier is not None:
                self.log.info(
                    "Message %s was already delivered by an earlier try; not sending it again", earlier["id"]
                )
                return {"message_id": int(earlier["id"]), "conversation_id": conversation_id}
        try:
            message = self.hook.send_message(
                conversation_id,
                self.content or None,
                message_type=self.message_type,
                private=_as_bool("private", self.private),
                content_type=self.content_type or None,
                content_attributes=self.content_attributes or None,
                template_params=self.template_params or None,
                attachments=list(self.attachments or ()),
                source_id=source_id,
            )
        except NeoleadsTransportError as exc:
            if not exc.maybe_delivered:
                raise
            # The server may still be committing it: a retry looking right away would not see it and send
            # it again. Wait here, where the time of the send is known, for it to show up.
            earlier = self._reconcile(conversation_id, source_id)
            if earlier is None:
                raise
            self.log.warning("The send's answer was lost, but message %s was delivered", earlier["id"])
            return {"message_id": int(earlier["id"]), "conversation_id": conversation_id}
        self.log.info("Sent message %s into conversation %s", message["id"], conversation_id)
        return {"message_id": int(message["id"]), "conversation_id": conversation_id}

    def _reconcile(self, conversation_id: int, source_id: str) -> dict[str, Any] | None:
        """Look for the message every few seconds, for at most ``reconcile_timeout`` seconds."""
        if self.reconcile_timeout <= 0:
            return None
        deadline = time.monotonic() + max(0.0, float(self.reconcile_timeout))
        pause = 1.0
        while True:
            try:
                found = self.hook.find_message_by_source_id(conversation_id, source_id)
            except NeoleadsError as exc:
                self.log.warning("Looking for the message failed; will look again: %s", exc)
                found = None
            if found is not None or time.monotonic() + pause > deadline:
                return found
            time.sleep(pause)
            pause = min(pause * 2, 5.0)


def _as_bool(name: str, value: Any) -> bool:
    # A templated boolean renders to the string "True" or "False".
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no", ""):
            return False
        raise NeoleadsConfigError(f"{name} must be true or false; got {value!r}")
    return bool(value)
