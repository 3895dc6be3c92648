"""Extra links from a task (an operator, or the sensor) to the contact or conversation it touched in the Neoleads web app."""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey

CONVERSATION_URL_KEY = "neoleads_conversation_url"
CONTACT_URL_KEY = "neoleads_contact_url"


#: Where an operator keeps the URLs it found while it ran, by XCom key (see :func:`remember_link`).
LINKS_ATTRIBUTE = "_neoleads_links"


def remember_link(operator: BaseOperator, key: str, url: str) -> None:
    """Keep ``url`` on the running operator for its extra link (it is pushed to XCom under ``key`` too)."""
    operator.__dict__.setdefault(LINKS_ATTRIBUTE, {})[key] = url


class _XComUrlLink(BaseOperatorLink):
    """A link to the URL the operator found under ``url_key`` while it ran.

    Airflow asks for the link once, in the task's own process when it finishes, and keeps the answer for the
    UI. So the URL is read from the operator itself rather than XCom: a task that failed before it had a URL
    then has no link, quietly, where reading the missing XCom logged an error that looked like a second fault.
    """

    url_key = ""

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        url = operator.__dict__.get(LINKS_ATTRIBUTE, {}).get(self.url_key)
        return url if isinstance(url, str) else ""


class NeoleadsConversationLink(_XComUrlLink):
    """Open the conversation in Neoleads."""

    name = "Neoleads conversation"
    url_key = CONVERSATION_URL_KEY


class NeoleadsContactLink(_XComUrlLink):
    """Open the contact in Neoleads."""

    name = "Neoleads contact"
    url_key = CONTACT_URL_KEY
