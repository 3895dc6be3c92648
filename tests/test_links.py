"""Extra links: read from the operator that ran, so a task that failed before it had a URL logs nothing."""

from __future__ import annotations

import logging
from typing import Any

from neoleads_provider.links import CONTACT_URL_KEY, NeoleadsContactLink
from neoleads_provider.operators import NeoleadsCreateContactOperator


class RecordingTaskInstance:
    def __init__(self) -> None:
        self.pushed: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value


def test_the_link_is_the_url_the_operator_found_and_it_is_in_xcom_too() -> None:
    operator = NeoleadsCreateContactOperator(task_id="contact", name="Ada", inbox_id=1)
    ti = RecordingTaskInstance()
    operator.push_link({"ti": ti}, CONTACT_URL_KEY, "https://app.example.com/app/accounts/1/contacts/5")
    link = NeoleadsContactLink().get_link(operator, ti_key=None)  # type: ignore[arg-type]
    assert link == "https://app.example.com/app/accounts/1/contacts/5"
    assert ti.pushed == {CONTACT_URL_KEY: link}


def test_a_task_that_never_found_its_url_has_an_empty_link_and_logs_nothing(caplog) -> None:
    caplog.set_level(logging.DEBUG)
    operator = NeoleadsCreateContactOperator(task_id="contact", name="Ada", inbox_id=1)
    assert NeoleadsContactLink().get_link(operator, ti_key=None) == ""  # type: ignore[arg-type]
    assert caplog.records == []
