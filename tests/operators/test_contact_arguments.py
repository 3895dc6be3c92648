"""The contact operator's arguments next to Airflow's own: none of them takes over a BaseOperator argument."""

from __future__ import annotations

import inspect

import pytest
from airflow.sdk import DAG, BaseOperator

import neoleads_provider.operators as operators
from neoleads_provider.exceptions import NeoleadsConfigError
from neoleads_provider.operators import NeoleadsCreateContactOperator
from neoleads_provider.sensors.webhook import NeoleadsWebhookSensor


def test_the_contact_s_email_never_becomes_airflow_s_alert_address() -> None:
    # BaseOperator's `email` is where Airflow sends failure alerts, and default_args often set it.
    with DAG("alerts", default_args={"email": ["ops@example.com"], "email_on_failure": True}, schedule=None):
        by_default = NeoleadsCreateContactOperator(task_id="a", name="Ada", inbox_id=1)
        explicit = NeoleadsCreateContactOperator(
            task_id="b", name="Ada", contact_email="ada@example.com", inbox_id=1
        )
    assert by_default.contact_email is None
    assert by_default.email == ["ops@example.com"]
    assert explicit.contact_email == "ada@example.com"
    assert explicit.email == ["ops@example.com"]
    assert "contact_email" in explicit.template_fields


def test_no_operator_argument_shadows_one_of_base_operator() -> None:
    airflow_own = set(inspect.signature(BaseOperator.__init__).parameters) | set(dir(BaseOperator))
    classes = [getattr(operators, name) for name in operators.__all__ if name.endswith("Operator")]
    for cls in [*classes, NeoleadsWebhookSensor]:
        own = set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}
        assert own & airflow_own == set(), cls.__name__


def test_the_old_email_argument_is_refused_with_what_to_write_instead() -> None:
    with pytest.raises(
        NeoleadsConfigError, match=r"email='ada@example.com' is Airflow's address .* contact_email="
    ):
        NeoleadsCreateContactOperator(task_id="c", name="Ada", email="ada@example.com", inbox_id=1)
    # Alerts to a list, with the contact's address where it belongs: both fine.
    both = NeoleadsCreateContactOperator(
        task_id="d", name="Ada", contact_email="ada@example.com", email="ops@example.com", inbox_id=1
    )
    assert (both.contact_email, both.email) == ("ada@example.com", "ops@example.com")
    NeoleadsCreateContactOperator(task_id="e", name="Ada", email=["ops@example.com"], inbox_id=1)


def test_contact_email_reaches_the_server_as_the_contact_s_email(
    neoleads_sandbox, neoleads_connection
) -> None:
    operator = NeoleadsCreateContactOperator(
        task_id="f", name="Grace", contact_email="grace@example.com", inbox_id=1
    )

    class TaskInstance:
        def xcom_push(self, key: str, value: object) -> None:
            pass

    result = operator.execute({"ti": TaskInstance()})  # type: ignore[arg-type]
    with neoleads_sandbox.state.lock:
        assert neoleads_sandbox.state.contacts[result["contact_id"]].email == "grace@example.com"
