"""Real Airflow runs (`airflow dags test`) of the example DAGs and operator checks against the sandbox."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
AIRFLOW = str(Path(sys.executable).parent / "airflow")

pytestmark = pytest.mark.dagrun


@pytest.fixture(scope="session")
def migrated_db(airflow_home):
    subprocess.run([AIRFLOW, "db", "migrate"], check=True, capture_output=True, env=os.environ.copy())
    return airflow_home


def dags_test(dag_id: str, sandbox, *, dags_folder: Path, conf: dict | None = None, **extra) -> str:
    env = os.environ.copy()
    env.update(sandbox.connection_env("neoleads_default", **extra))
    env["AIRFLOW__CORE__DAGS_FOLDER"] = str(dags_folder)
    command = [AIRFLOW, "dags", "test", dag_id]
    if conf:
        command += ["--conf", json.dumps(conf)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    return output


def test_send_message_dag_end_to_end(migrated_db, neoleads_sandbox):
    output = dags_test(
        "neoleads_send_message",
        neoleads_sandbox,
        dags_folder=REPO / "dags",
        conf={"name": "Run Test", "email": "run.test@example.com", "message": "Hi from the test"},
    )
    line = next(line for line in output.splitlines() if "NEOLEADS RESULT" in line)
    state = neoleads_sandbox.state
    [contact] = state.contacts.values()
    [conversation] = state.conversations.values()
    [message] = state.messages.values()
    assert contact.email == "run.test@example.com"
    assert message.content == "Hi from the test"
    assert f"contact_id={contact.id}" in line
    assert f"conversation_id={conversation.display_id}" in line
    assert f"message_id={message.id}" in line
    assert "sandbox-token" not in output


def test_a_retried_send_never_sends_twice(migrated_db, neoleads_sandbox):
    # The first try's POST is stored, but its answer comes after the client's timeout.
    neoleads_sandbox.inject(delay=2.0, after_commit=True, method="POST", path="/messages", count=1)
    output = dags_test(
        "neoleads_retry_send", neoleads_sandbox, dags_folder=REPO / "tests" / "dag_files", timeout=0.5
    )
    contents = [m.content for m in neoleads_sandbox.state.messages.values()]
    assert contents == ["exactly once"], output[-3000:]
    assert "already delivered by an earlier try" in output


def test_templated_ids_and_first_message(migrated_db, neoleads_sandbox):
    dags_test("neoleads_templated_ids", neoleads_sandbox, dags_folder=REPO / "tests" / "dag_files")
    [conversation] = neoleads_sandbox.state.conversations.values()
    assert conversation.status == "pending"
    messages = sorted(neoleads_sandbox.state.messages.values(), key=lambda m: m.id)
    assert [(m.content, m.private) for m in messages] == [("first message", False), ("note for agents", True)]
