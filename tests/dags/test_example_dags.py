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


def dags_test(
    dag_id: str, sandbox, *, dags_folder: Path, conf: dict | None = None, succeed: bool = True, **extra
) -> str:
    env = os.environ.copy()
    env.update(sandbox.connection_env("neoleads_default", **extra))
    env["AIRFLOW__CORE__DAGS_FOLDER"] = str(dags_folder)
    command = [AIRFLOW, "dags", "test", dag_id]
    if conf:
        command += ["--conf", json.dumps(conf)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    output = result.stdout + result.stderr
    assert (result.returncode == 0) is succeed, output[-6000:]
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


def test_first_hour_failures_say_what_is_wrong_and_nothing_else(migrated_db, neoleads_sandbox):
    from neoleads_provider.store.engine import get_engine
    from neoleads_provider.store.migrate import migrate

    migrate(get_engine(os.environ["AIRFLOW__NEOLEADS__EVENTS_DB_URL"]))
    output = dags_test(
        "neoleads_first_hour_failures",
        neoleads_sandbox,
        dags_folder=REPO / "tests" / "dag_files",
        succeed=False,
        max_retries=0,
    )
    # The error names the field, its value, the account and the connection.
    assert "inbox_id 99 was not found in account 1 (connection 'neoleads_default')" in output
    # A failed task's extra link is quietly empty: no second error that looks like another fault.
    assert "XCom not found" not in output
    # The sensor says what it waits for, that it cannot succeed through the receiver, and on its timeout
    # the two commands to run next.
    assert (
        "Waiting up to 2 s (poke mode) for message_created (incoming) in conversation 4242 of account 1 after "
        "message 1, on connection neoleads_default; looking in the event store sqlite:///" in output
    )
    assert (
        "This sensor can only succeed if an event is already stored: connection 'neoleads_default' has no"
        in output
    )
    assert "No matching Neoleads event arrived within the sensor's timeout of 2 s" in output
    assert "`neoleads events list --conn-id neoleads_default --conversation-id 4242`" in output


def test_templated_ids_and_first_message(migrated_db, neoleads_sandbox):
    dags_test("neoleads_templated_ids", neoleads_sandbox, dags_folder=REPO / "tests" / "dag_files")
    [conversation] = neoleads_sandbox.state.conversations.values()
    assert conversation.status == "pending"
    messages = sorted(neoleads_sandbox.state.messages.values(), key=lambda m: m.id)
    assert [(m.content, m.private) for m in messages] == [("first message", False), ("note for agents", True)]


@pytest.fixture
def receiver_url():
    """The standalone webhook receiver, served by uvicorn on a free loopback port in this process."""
    import socket
    import threading

    import uvicorn

    from neoleads_provider.store.engine import get_engine
    from neoleads_provider.store.migrate import migrate
    from neoleads_provider.webhooks.server import create_server_app

    migrate(get_engine())
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_server_app(), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        thread.join(0.05)
    yield f"http://127.0.0.1:{port}/neoleads/webhooks/neoleads_default"
    server.should_exit = True
    thread.join(10)


def test_wait_for_reply_dag_end_to_end(migrated_db, neoleads_sandbox, receiver_url, monkeypatch):
    """The sandbox's signed webhook reaches the receiver, is stored, and ends the deferred sensor."""
    secret = "e2e-webhook-secret-0123456789"
    # The receiver in this process resolves the same connection the DAG run uses.
    monkeypatch.setenv(
        "AIRFLOW_CONN_NEOLEADS_DEFAULT",
        neoleads_sandbox.connection_env("neoleads_default", webhook_secrets=[secret])[
            "AIRFLOW_CONN_NEOLEADS_DEFAULT"
        ],
    )
    neoleads_sandbox.add_webhook(receiver_url, secret=secret)
    neoleads_sandbox.set_auto_reply("yes, next Tuesday works", delay=1.0)

    output = dags_test(
        "neoleads_wait_for_reply",
        neoleads_sandbox,
        dags_folder=REPO / "dags",
        conf={"email": "e2e@example.com"},
        webhook_secrets=[secret],
    )

    line = next(line for line in output.splitlines() if "NEOLEADS REPLY" in line)
    assert "yes, next Tuesday works" in line
    assert "deferred" in output.lower() or "running trigger in line" in output.lower()
    messages = sorted(neoleads_sandbox.state.messages.values(), key=lambda m: m.id)
    # The sandbox's contact auto-replies to the DAG's final answer too, hence a fourth message.
    assert [(m.message_type, m.content) for m in messages][:3] == [
        (1, "Would you like a demo next week? Reply yes or no."),
        (0, "yes, next Tuesday works"),
        (1, "Great, our team will send you an invitation today."),
    ]
    assert secret not in output
    neoleads_sandbox.wait_for_deliveries(timeout=10)
    assert all(delivery.get("status_code") == 200 for delivery in neoleads_sandbox.deliveries), (
        neoleads_sandbox.deliveries
    )


@pytest.mark.parametrize("fail", [False, True], ids=["succeeds", "fails"])
def test_notify_dag_posts_a_private_note_into_the_ops_conversation(migrated_db, neoleads_sandbox, fail):
    output = dags_test(
        "neoleads_notify_on_failure",
        neoleads_sandbox,
        dags_folder=REPO / "dags",
        conf={"fail": fail},
        succeed=not fail,
    )
    with neoleads_sandbox.state.lock:
        notes = [m.content for m in neoleads_sandbox.state.messages.values() if m.private]
    assert len(notes) == 1, output[-4000:]
    if fail:
        assert notes[0].startswith("Task nightly_load of neoleads_notify_on_failure failed on try 1 (run ")
        assert notes[0].endswith("): the warehouse refused the load (simulated)")
    else:
        assert notes[0].startswith("neoleads_notify_on_failure: the nightly load of run ")
    assert "Posted a Neoleads private note" in output
