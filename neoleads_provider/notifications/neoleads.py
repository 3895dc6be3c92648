"""``NeoleadsNotifier``: a templated message or private note into a Neoleads conversation.

For anything Airflow notifies through: ``on_failure_callback`` / ``on_success_callback`` of a task or a DAG
run, Deadline Alerts (run in the triggerer, through :meth:`NeoleadsNotifier.async_notify`), and the
``notifiers=`` of Airflow's human-in-the-loop operators. An ops team that lives in Neoleads sees a failed
pipeline in its own conversation, as a private note (agents only) or as a message.
"""

from __future__ import annotations

import asyncio
from functools import cached_property
from typing import TYPE_CHECKING

from airflow.sdk import BaseNotifier

from neoleads_provider.connection import DEFAULT_CONN_ID
from neoleads_provider.exceptions import NeoleadsConfigError
from neoleads_provider.whole_numbers import parse_whole_number

if TYPE_CHECKING:
    from airflow.sdk import Context

    from neoleads_provider.hooks.neoleads import NeoleadsHook

__all__ = ["NeoleadsNotifier", "send_neoleads_notification"]


class NeoleadsNotifier(BaseNotifier):
    """Post ``content`` into conversation ``conversation_id`` when Airflow notifies.

    .. code-block:: python

        from neoleads_provider.notifications import NeoleadsNotifier

        load = BashOperator(
            task_id="load",
            bash_command="...",
            on_failure_callback=NeoleadsNotifier(
                conversation_id=7001,
                content="{{ dag.dag_id }}.{{ ti.task_id }} failed (try {{ ti.try_number }}): {{ exception }}",
                private=True,
            ),
        )

    :param conversation_id: the conversation's display id (the number in its web-app URL). (templated)
    :param content: the text; a Jinja template rendered with the callback's context. (templated)
    :param private: post a private note, seen by agents only, instead of a message the contact receives.
    :param neoleads_conn_id: the ``neoleads`` connection. (templated)
    """

    template_fields = ("conversation_id", "content", "neoleads_conn_id")

    def __init__(
        self,
        *,
        conversation_id: int | str,
        content: str,
        private: bool = False,
        neoleads_conn_id: str = DEFAULT_CONN_ID,
    ) -> None:
        super().__init__()
        self.conversation_id = conversation_id
        self.content = content
        self.private = private
        self.neoleads_conn_id = neoleads_conn_id

    @cached_property
    def hook(self) -> NeoleadsHook:
        from neoleads_provider.hooks.neoleads import NeoleadsHook

        return NeoleadsHook(self.neoleads_conn_id)

    def notify(self, context: Context) -> None:
        """Post the rendered content (the callback's own thread: the task runner or the DAG processor)."""
        conversation_id = parse_whole_number(self.conversation_id, "conversation_id", minimum=1)
        content = str(self.content or "").strip()
        if not content:
            raise NeoleadsConfigError("NeoleadsNotifier needs content: it rendered to an empty text")
        message = self.hook.send_message(conversation_id, content, private=self.private)
        # Ids only: the content may quote an exception or customer data.
        self.log.info(
            "Posted a Neoleads %s (message %s) into conversation %s",
            "private note" if self.private else "message",
            message.get("id"),
            conversation_id,
        )

    async def async_notify(self, context: Context) -> None:
        """The same, for the triggerer (Deadline Alerts): the HTTP call runs in a worker thread."""
        await asyncio.to_thread(self.notify, context)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(conversation_id={self.conversation_id!r}, private={self.private!r}, "
            f"neoleads_conn_id={self.neoleads_conn_id!r})"
        )


#: The functional name, as other providers offer it (``send_slack_notification``).
send_neoleads_notification = NeoleadsNotifier
