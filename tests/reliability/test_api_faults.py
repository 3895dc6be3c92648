"""The API side under faults: 429 storms, 5xx bursts, slow answers and dropped connections, injected by the
sandbox while real DAG runs (``airflow dags test``) and direct hook calls go on.

Every run must end either with the work done exactly once (one contact, one message) or with a clear
error, across the hook's own retries and Airflow's task retries.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from neoleads_provider.exceptions import NeoleadsApiError, NeoleadsError

pytestmark = [pytest.mark.reliability, pytest.mark.dagrun]

HERE = Path(__file__).resolve().parent
AIRFLOW = str(Path(sys.executable).parent / "airflow")
DAG_ID = "neoleads_rel_send_under_faults"

# name -> (faults, extra connection settings); each fault is NeoleadsSandbox.inject's keyword arguments,
# applied first-match-first to the requests as they come.
SCENARIOS: dict[str, tuple[list[dict], dict]] = {
    # A 429 storm over every endpoint, then 5xx bursts: before a create commits, after a send commits,
    # and on the reads a retried send makes to find out whether its message already went.
    "throttled-and-failing": (
        [
            {"status": 429, "count": 12, "retry_after": 0},
            {"status": 503, "count": 2, "method": "GET"},
            {"status": 500, "count": 1, "method": "POST", "path": "/contacts"},
            {"status": 502, "count": 1, "method": "POST", "path": "/messages", "after_commit": True},
            {"status": 500, "count": 1, "method": "GET", "path": "/messages"},
        ],
        {},
    ),
    # Dropped connections (before and after the commit), then a send the server commits 4 s after the
    # client (timeout 1 s) gave up on it: the try that sent it must find it rather than a retry resend it.
    "dropped-and-slow": (
        [
            {"drop": True, "count": 1, "method": "POST", "path": "/contacts", "after_commit": True},
            {"delay": 2.5, "count": 1, "method": "POST", "path": "/conversations", "after_commit": True},
            {"drop": True, "count": 1, "method": "POST", "path": "/messages"},
            {"drop": True, "count": 1, "method": "GET", "path": "/messages"},
            {"delay": 4, "count": 1, "method": "POST", "path": "/messages"},
        ],
        {"timeout": 1},
    ),
}


def _dags_test(sandbox, conf: dict, **extra) -> tuple[int, str]:
    env = os.environ.copy()
    env.update(sandbox.connection_env("neoleads_default", **extra))
    env["AIRFLOW__CORE__DAGS_FOLDER"] = str(HERE / "dag_files")
    result = subprocess.run(
        [AIRFLOW, "dags", "test", DAG_ID, "--conf", json.dumps(conf)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return result.returncode, result.stdout + result.stderr


@pytest.fixture(scope="module")
def api_figures(figures):
    results: dict[str, dict] = {}
    yield results
    figures.record("api_faults", {"scenarios": results})


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_send_flow_under_faults_is_exactly_once(scenario, migrated_airflow_db, neoleads_sandbox, api_figures):
    faults, extra = SCENARIOS[scenario]
    for fault in faults:
        neoleads_sandbox.inject(**fault)
    email = f"{scenario}@example.com"
    content = f"exactly once under {scenario}"
    started = time.monotonic()
    _returncode, output = _dags_test(neoleads_sandbox, {"email": email, "message": content}, **extra)
    state = neoleads_sandbox.state
    contacts = [c for c in state.contacts.values() if c.email == email]
    messages = [m for m in state.messages.values() if m.content == content]
    faults_left = neoleads_sandbox.faults
    api_figures[scenario] = {
        "faults_injected": sum(f.get("count", 1) for f in faults),
        "faults_unused": sum(f["count"] for f in faults_left),
        "contacts": len(contacts),
        "messages": len(messages),
        "conversations": len(state.conversations),
        # `dags test` logs each try of each of the four tasks as it starts it.
        "airflow_task_tries": output.count("[DAG TEST] starting task_id="),
        "dag_succeeded": "NEOLEADS FAULTS RESULT" in output,
        "seconds": round(time.monotonic() - started, 1),
    }
    assert len(contacts) == 1, f"{len(contacts)} contacts\n{output[-4000:]}"
    assert len(messages) == 1, f"{len(messages)} messages sent\n{output[-4000:]}"
    assert "NEOLEADS FAULTS RESULT" in output, output[-6000:]
    assert sum(f["count"] for f in faults_left) < sum(f.get("count", 1) for f in faults) / 2, faults_left
    assert neoleads_sandbox.token not in output


def test_persistent_failures_fail_clearly_and_send_nothing(neoleads_sandbox, api_figures, monkeypatch):
    """A send the server keeps refusing, and a 429 storm longer than the connection allows: clear errors."""
    from neoleads_provider.exceptions import NeoleadsRateLimitError, NeoleadsServerError
    from neoleads_provider.hooks.neoleads import NeoleadsHook

    for name, value in neoleads_sandbox.connection_env("neoleads_default", rate_limit_max_wait=1).items():
        monkeypatch.setenv(name, value)
    hook = NeoleadsHook(backoff_base=0.05)
    conversation_id = int(
        hook.create_conversation(
            source_id=hook.get_or_create_contact(name="Down", email="down@example.com", inbox_id=1)[
                "source_id"
            ]
        )["id"]
    )
    neoleads_sandbox.inject(status=500, count=1000, method="POST", path="/messages")
    with pytest.raises(NeoleadsServerError) as server_error:
        hook.send_message(conversation_id, "never delivered", source_id="rel-persistent")
    neoleads_sandbox.clear_faults()
    neoleads_sandbox.inject(status=429, count=1000, retry_after=0.2)
    started = time.monotonic()
    with pytest.raises(NeoleadsRateLimitError) as throttled:
        hook.send_message(conversation_id, "never delivered", source_id="rel-persistent")
    waited = time.monotonic() - started
    neoleads_sandbox.clear_faults()
    hook.close()
    messages = [m for m in neoleads_sandbox.state.messages.values() if m.content == "never delivered"]
    api_figures["persistent-failures"] = {
        "messages": len(messages),
        "rate_limited_for_seconds": round(waited, 1),
    }
    assert not messages
    # The error names the call and the server's answer, and nothing secret.
    assert "POST /api/v1/accounts/1/conversations/" in str(server_error.value)
    assert "500" in str(server_error.value)
    assert "429" in str(throttled.value)
    assert waited < 10
    for error in (server_error.value, throttled.value):
        assert neoleads_sandbox.token not in str(error)
        assert neoleads_sandbox.token not in repr(error)


def test_concurrent_get_or_create_under_a_429_storm_leaves_no_duplicate(
    neoleads_sandbox, neoleads_connection, api_figures
):
    """Twenty workers find-or-create the same five contacts while the API throttles and fails."""
    from neoleads_provider.hooks.neoleads import NeoleadsHook

    neoleads_sandbox.inject(status=429, count=40, retry_after=0)
    neoleads_sandbox.inject(status=500, count=3, method="POST", path="/contacts", after_commit=True)
    neoleads_sandbox.inject(drop=True, count=3, method="POST", path="/contacts", after_commit=True)
    emails = [f"storm{n}@example.com" for n in range(5)]

    def work(index: int) -> int:
        hook = NeoleadsHook(neoleads_conn_id=neoleads_connection, backoff_base=0.05)
        try:
            for _ in range(5):
                try:
                    return int(
                        hook.get_or_create_contact(name="Storm", email=emails[index % 5], inbox_id=1)[
                            "contact"
                        ]["id"]
                    )
                except (NeoleadsApiError, NeoleadsError):
                    # What an Airflow task retry would do: run the whole find-or-create again.
                    continue
            raise AssertionError("five tries were not enough")
        finally:
            hook.close()

    with ThreadPoolExecutor(max_workers=20) as pool:
        ids = list(pool.map(work, range(20)))
    contacts = [c for c in neoleads_sandbox.state.contacts.values() if c.email in emails]
    api_figures["concurrent-429-storm"] = {
        "workers": 20,
        "contacts_wanted": 5,
        "contacts": len(contacts),
        "faults_unused": sum(f["count"] for f in neoleads_sandbox.faults),
    }
    assert len(contacts) == 5
    assert len(set(ids)) == 5
