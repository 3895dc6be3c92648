"""Tell the ops team in Neoleads when a pipeline task fails, and when the run succeeds.

``NeoleadsNotifier`` posts a templated private note (agents see it, the contact does not) into an ops
conversation: here one this DAG opens for itself, in practice the id of your team's conversation. Trigger it
with ``{"fail": true}`` to see the failure note; ``make demo`` and the tests run it both ways.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param, task

from neoleads_provider.notifications import NeoleadsNotifier
from neoleads_provider.operators import NeoleadsCreateContactOperator, NeoleadsCreateConversationOperator

OPS_CONVERSATION = "{{ ti.xcom_pull(task_ids='ops_conversation', key='conversation_id') }}"

with DAG(
    dag_id="neoleads_notify_on_failure",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["neoleads", "example"],
    doc_md=__doc__,
    params={"fail": Param(False, type="boolean", title="Make the load fail")},
) as dag:
    ops_contact = NeoleadsCreateContactOperator(
        task_id="ops_contact", name="Airflow alerts", identifier="airflow-ops-alerts", inbox_id=1
    )
    ops_conversation = NeoleadsCreateConversationOperator(
        task_id="ops_conversation", source_id=ops_contact.output["source_id"]
    )

    @task(
        on_failure_callback=NeoleadsNotifier(
            conversation_id=OPS_CONVERSATION,
            content="Task {{ ti.task_id }} of {{ dag.dag_id }} failed on try {{ ti.try_number }} "
            "(run {{ run_id }}): {{ exception }}",
            private=True,
        ),
        on_success_callback=NeoleadsNotifier(
            conversation_id=OPS_CONVERSATION,
            content="{{ dag.dag_id }}: the nightly load of run {{ run_id }} is done.",
            private=True,
        ),
    )
    def nightly_load(**context) -> int:
        if context["params"]["fail"]:
            raise RuntimeError("the warehouse refused the load (simulated)")
        return 42

    ops_conversation >> nightly_load()
