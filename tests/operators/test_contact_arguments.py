"""The contact operator's arguments next to Airflow's own: none of them takes over a BaseOperator argument."""

from __future__ import annotations

import inspect

from airflow.sdk import BaseOperator

from neoleads_provider.operators import NeoleadsCreateContactOperator


def test_the_contact_s_email_never_becomes_airflow_s_alert_address() -> None:
    # BaseOperator's `email` is where Airflow sends failure alerts, and default_args often set it.
    from airflow.sdk import DAG

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
    import neoleads_provider.operators as operators
    from neoleads_provider.sensors.webhook import NeoleadsWebhookSensor

    airflow_own = set(inspect.signature(BaseOperator.__init__).parameters) | set(dir(BaseOperator))
    classes = [getattr(operators, name) for name in operators.__all__ if name.endswith("Operator")]
    for cls in [*classes, NeoleadsWebhookSensor]:
        own = set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}
        assert own & airflow_own == set(), cls.__name__
