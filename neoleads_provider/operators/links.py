"""Extra links from a task to the contact or conversation it touched in the Neoleads web app."""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

CONVERSATION_URL_KEY = "neoleads_conversation_url"
CONTACT_URL_KEY = "neoleads_contact_url"


class _XComUrlLink(BaseOperatorLink):
    """A link whose URL the operator pushed to XCom under ``url_key`` while it ran."""

    url_key = ""

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        url = XCom.get_value(ti_key=ti_key, key=self.url_key)
        return url if isinstance(url, str) else ""


class NeoleadsConversationLink(_XComUrlLink):
    """Open the conversation in Neoleads."""

    name = "Neoleads conversation"
    url_key = CONVERSATION_URL_KEY


class NeoleadsContactLink(_XComUrlLink):
    """Open the contact in Neoleads."""

    name = "Neoleads contact"
    url_key = CONTACT_URL_KEY
