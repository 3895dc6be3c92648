"""NeoleadsBulkMessageOperator against the sandbox over TCP, with the event store on a real SQLite file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from typing import TYPE_CHECKING, Any

import pytest

from neoleads_provider.hooks.neoleads import NeoleadsHook
from neoleads_provider.operators import NeoleadsBulkMessageOperator
from neoleads_provider.operators.bulk import NeoleadsBulkSendError, bulk_source_id
from neoleads_provider.store.engine import get_engine
from neoleads_provider.store.sends import SendKey, count_by_state, load_records

if TYPE_CHECKING:
    from pathlib import Path

INBOX = 1


class StubTI:
    """The task instance attributes the operator reads, and an XCom it can push to."""

    def __init__(self, run_id: str, *, dag_id: str = "bulk_test", task_id: str = "send", map_index: int = -1):
        self.dag_id = dag_id
        self.run_id = run_id
        self.task_id = task_id
        self.map_index = map_index
        self.try_number = 1
        self.xcom: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        json.dumps(value)  # XCom values must be JSON-serialisable
        self.xcom[key] = value


class StubDag:
    def __init__(self, fileloc: Path) -> None:
        self.fileloc = str(fileloc)


@pytest.fixture
def run_id() -> str:
    # A fresh task instance per test: the event store file is shared by the whole session.
    return f"manual__{uuid.uuid4().hex}"


def rows_for(count: int, prefix: str = "c") -> list[dict[str, Any]]:
    return [
        {"name": f"Contact {i}", "email": f"{prefix}{i}@example.com", "plan": "gold"} for i in range(count)
    ]


def make(rows: Any, **kwargs: Any) -> NeoleadsBulkMessageOperator:
    kwargs.setdefault("message_template", "Hi $name, your $plan plan")
    kwargs.setdefault("requests_per_minute", None)
    return NeoleadsBulkMessageOperator(task_id="send", rows=rows, inbox_id=INBOX, **kwargs)


def message_posts(sandbox) -> int:
    return sum(1 for method, path, _ in sandbox.requests if method == "POST" and path.endswith("/messages"))


def messages_by_contact(sandbox) -> Counter:
    state = sandbox.state
    return Counter(state.conversations[m.conversation_id].contact_id for m in state.messages.values())


def test_sends_one_message_per_row(neoleads_sandbox, neoleads_connection, run_id) -> None:
    rows = rows_for(12)
    rows[3]["content"] = "A personal note"
    ti = StubTI(run_id)
    result = make(rows, concurrency=4).execute({"ti": ti})

    assert {k: result[k] for k in ("total", "sent", "skipped", "failed", "not_started")} == {
        "total": 12,
        "sent": 12,
        "skipped": 0,
        "failed": 0,
        "not_started": 0,
    }
    assert result["rows_complete"] is True
    state = neoleads_sandbox.state
    assert len(state.contacts) == 12
    assert len(state.conversations) == 12
    assert set(messages_by_contact(neoleads_sandbox).values()) == {1}
    key = SendKey("bulk_test", run_id, "send", -1)
    by_content = {m.content: m for m in state.messages.values()}
    assert "Hi Contact 0, your gold plan" in by_content
    assert "A personal note" in by_content
    for outcome in result["rows"]:
        message = state.messages[outcome["message_id"]]
        assert message.source_id == bulk_source_id(key, outcome["row_key"])
        assert outcome["outcome"] == "sent"
    with get_engine().connect() as conn:
        assert count_by_state(conn, key) == {"sent": 12}
    json.dumps(result)


def test_a_rerun_sends_nothing_and_makes_no_api_calls_for_sent_rows(
    neoleads_sandbox, neoleads_connection, run_id
) -> None:
    rows = rows_for(5)
    make(rows).execute({"ti": StubTI(run_id)})
    before = len(neoleads_sandbox.requests)
    result = make(rows).execute({"ti": StubTI(run_id)})
    assert (result["sent"], result["skipped"]) == (0, 5)
    assert {o["reason"] for o in result["rows"]} == {"already sent"}
    # Only the inbox check at the start.
    assert [path for _, path, _ in neoleads_sandbox.requests[before:]] == ["/api/v1/accounts/1/inboxes/1"]
    assert len(neoleads_sandbox.state.messages) == 5
    # Another run of the same DAG is another task instance: it sends again, into the open conversations.
    other = make(rows).execute({"ti": StubTI(run_id + "-2")})
    assert other["sent"] == 5
    assert len(neoleads_sandbox.state.conversations) == 5
    assert set(messages_by_contact(neoleads_sandbox).values()) == {2}


def test_a_lost_answer_is_found_through_the_api_on_the_retry(
    neoleads_sandbox, neoleads_connection, run_id
) -> None:
    rows = rows_for(5)
    # The server stores the message but the client gets a 500: the row stays pending.
    neoleads_sandbox.inject(500, after_commit=True, method="POST", path="/messages", count=1)
    ti = StubTI(run_id)
    with pytest.raises(NeoleadsBulkSendError, match=r"1 of 5 rows failed"):
        make(rows, concurrency=1).execute({"ti": ti})
    failed = [o for o in ti.xcom["bulk_result"]["rows"] if o["outcome"] == "failed"]
    assert len(failed) == 1
    assert "500" in failed[0]["reason"]
    assert len(neoleads_sandbox.state.messages) == 5

    retry = make(rows, concurrency=1).execute({"ti": StubTI(run_id)})
    assert (retry["sent"], retry["skipped"], retry["failed"]) == (0, 5, 0)
    assert Counter(o["reason"] for o in retry["rows"]) == {"already sent": 4, "sent by an earlier try": 1}
    assert message_posts(neoleads_sandbox) == 5
    assert len(neoleads_sandbox.state.messages) == 5
    with get_engine().connect() as conn:
        assert count_by_state(conn, SendKey("bulk_test", run_id, "send", -1)) == {"sent": 5}


def test_a_pending_row_whose_post_never_landed_is_sent_on_the_retry(
    neoleads_sandbox, neoleads_connection, run_id
) -> None:
    rows = rows_for(3)
    # Refused before it is stored: the retry's API check finds nothing and sends it.
    neoleads_sandbox.inject(500, method="POST", path="/messages", count=1)
    with pytest.raises(NeoleadsBulkSendError):
        make(rows, concurrency=1).execute({"ti": StubTI(run_id)})
    assert len(neoleads_sandbox.state.messages) == 2
    retry = make(rows, concurrency=1).execute({"ti": StubTI(run_id)})
    assert (retry["sent"], retry["skipped"]) == (1, 2)
    assert set(messages_by_contact(neoleads_sandbox).values()) == {1}
    assert len(neoleads_sandbox.state.conversations) == 3


def test_killed_mid_run_then_rerun_sends_nothing_twice(
    neoleads_sandbox, neoleads_connection, run_id, tmp_path
) -> None:
    """A worker killed (SIGKILL) in the middle of a send, then the task run again: every row once."""
    rows = rows_for(60, prefix="kill")
    rows_file = tmp_path / "rows.json"
    rows_file.write_text(json.dumps(rows))
    # Two messages are stored while the client sees a 500, so some pending rows hold a sent message.
    neoleads_sandbox.inject(500, after_commit=True, method="POST", path="/messages", count=2)
    script = textwrap.dedent(
        f"""
        import json, sys
        from neoleads_provider.operators import NeoleadsBulkMessageOperator

        class TI:
            dag_id, run_id, task_id, map_index, try_number = "bulk_test", {run_id!r}, "send", -1, 1
            def xcom_push(self, key, value):
                pass

        rows = json.loads(open(sys.argv[1]).read())
        # 20 requests/s: about 7 rows/s, so the kill lands mid-run.
        operator = NeoleadsBulkMessageOperator(
            task_id="send", rows=rows, inbox_id=1, message_template="Hi $name",
            requests_per_minute=1200, concurrency=4, max_failures=60,
        )
        operator.execute({{"ti": TI()}})
        print("FINISHED", flush=True)
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script, str(rows_file)],
        env=os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while len(neoleads_sandbox.state.messages) < 15:
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            assert time.monotonic() < deadline, "the first run never got going"
            time.sleep(0.02)
        process.kill()
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
    assert "FINISHED" not in (process.stdout.read() if process.stdout else "")
    sent_before = len(neoleads_sandbox.state.messages)
    assert 15 <= sent_before < 60
    key = SendKey("bulk_test", run_id, "send", -1)
    with get_engine().connect() as conn:
        states = count_by_state(conn, key)
    assert states.get("pending", 0) >= 2  # at least the two whose answer was a 500

    result = make(rows, concurrency=8, message_template="Hi $name").execute({"ti": StubTI(run_id)})

    assert result["failed"] == 0
    assert result["sent"] + result["skipped"] == 60
    assert result["sent"] == 60 - sent_before
    reasons = Counter(o.get("reason") for o in result["rows"] if o["outcome"] == "skipped")
    assert reasons["sent by an earlier try"] >= 2
    state = neoleads_sandbox.state
    assert len(state.contacts) == 60
    assert len(state.messages) == 60
    assert set(messages_by_contact(neoleads_sandbox).values()) == {1}
    source_ids = [m.source_id for m in state.messages.values()]
    assert len(set(source_ids)) == 60
    with get_engine().connect() as conn:
        records = load_records(conn, key)
    assert {r.state for r in records.values()} == {"sent"}
    assert sorted(r.message_id for r in records.values()) == sorted(state.messages)


def test_reuses_the_open_conversation_of_an_existing_contact(
    neoleads_sandbox, neoleads_connection, run_id
) -> None:
    hook = NeoleadsHook()
    found = hook.get_or_create_contact(name="Old", email="old@example.com", inbox_id=INBOX)
    conversation = hook.create_conversation(
        source_id=found["source_id"], inbox_id=INBOX, contact_id=found["contact"]["id"]
    )
    result = make([{"email": "OLD@example.com", "name": "Old"}], message_template="Welcome back").execute(
        {"ti": StubTI(run_id)}
    )
    [outcome] = result["rows"]
    assert outcome["conversation_id"] == conversation["id"]
    assert len(neoleads_sandbox.state.contacts) == 1
    assert len(neoleads_sandbox.state.conversations) == 1

    fresh = make([{"email": "old@example.com"}], message_template="Again", reuse_conversation=False).execute(
        {"ti": StubTI(run_id + "-new")}
    )
    assert fresh["rows"][0]["conversation_id"] != conversation["id"]
    assert len(neoleads_sandbox.state.conversations) == 2


def test_reads_a_csv_relative_to_the_dag_file(
    neoleads_sandbox, neoleads_connection, run_id, tmp_path
) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "people.csv").write_text(
        "\ufeffname,identifier,custom_attributes.plan,content\n"
        "Ada,crm-1,gold,\n"
        'Grace,crm-2,silver,"Hi Grace, personally"\n',
        encoding="utf-8",
    )
    context = {"ti": StubTI(run_id), "dag": StubDag(tmp_path / "my_dag.py")}
    result = make("data/people.csv", message_template="Hello $name on $plan").execute(context)
    assert result["sent"] == 2
    contents = sorted(m.content for m in neoleads_sandbox.state.messages.values())
    assert contents == ["Hello Ada on gold", "Hi Grace, personally"]
    plans = sorted(c.custom_attributes.get("plan") for c in neoleads_sandbox.state.contacts.values())
    assert plans == ["gold", "silver"]


def test_bad_rows_fail_alone_and_duplicates_are_skipped(
    neoleads_sandbox, neoleads_connection, run_id
) -> None:
    rows = [
        {"name": "No key at all"},
        {"email": "dup@example.com", "name": "First"},
        {"email": "DUP@example.com", "name": "Second"},
        {"email": "x@example.com"},  # no $name for the template
        {"email": "y@example.com", "name": "Y", "custom_attributes": "not json"},
        {"email": "two@example.com", "name": "Two", "row_key": "two-a"},
        {"email": "two@example.com", "name": "Two", "row_key": "two-b", "content": "second message"},
    ]
    ti = StubTI(run_id)
    result = make(rows, message_template="Hi $name", max_failures=3).execute({"ti": ti})
    outcomes = {o["row"]: o for o in result["rows"]}
    assert outcomes[0]["outcome"] == "failed"
    assert "identifier, email and phone_number are all empty or missing" in outcomes[0]["reason"]
    assert outcomes[2] == {
        "row": 2,
        "where": "rows[2]",
        "row_key": "email:dup@example.com",
        "outcome": "skipped",
        "reason": "same row_key as the row at rows[1]",
    }
    assert "needs $name" in outcomes[3]["reason"]
    assert "custom_attributes" in outcomes[4]["reason"]
    assert (result["sent"], result["skipped"], result["failed"]) == (3, 1, 3)
    assert messages_by_contact(neoleads_sandbox).most_common(1)[0][1] == 2  # two row keys, one contact


def test_a_refused_token_stops_the_send(neoleads_sandbox, neoleads_connection, run_id) -> None:
    neoleads_sandbox.inject(401, method="POST", path="/contacts", count=1)
    ti = StubTI(run_id)
    with pytest.raises(NeoleadsBulkSendError, match="stopped early"):
        make(rows_for(20), concurrency=1).execute({"ti": ti})
    summary = ti.xcom["bulk_result"]
    assert (summary["failed"], summary["not_started"]) == (1, 19)
    assert summary["rows_complete"] is False
    assert len(neoleads_sandbox.state.messages) == 0
    assert "sandbox-token" not in json.dumps(summary)


def test_the_xcom_lists_only_unsent_rows_above_max_xcom_rows(
    neoleads_sandbox, neoleads_connection, run_id
) -> None:
    rows = [*rows_for(4), {"name": "keyless"}]
    result = make(rows, max_xcom_rows=2, max_failures=1).execute({"ti": StubTI(run_id)})
    assert result["rows_complete"] is False
    assert [o["outcome"] for o in result["rows"]] == ["failed"]
    assert (result["total"], result["sent"]) == (5, 4)


def test_the_rate_limit_holds(neoleads_sandbox, neoleads_connection, run_id) -> None:
    # 1200/min = 20 requests/s with a burst of 20: 1 inbox check + 3 requests x 10 rows = 31 requests.
    started = time.monotonic()
    result = make(rows_for(10), requests_per_minute=1200, concurrency=8).execute({"ti": StubTI(run_id)})
    assert result["sent"] == 10
    assert time.monotonic() - started >= (31 - 20) / 20 - 0.05


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"concurrency": 0}, "concurrency"),
        ({"concurrency": 33}, "concurrency"),
        ({"requests_per_minute": 0}, "requests_per_minute"),
        ({"max_failures": -1}, "max_failures"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message) -> None:
    with pytest.raises(Exception, match=message):
        make([], **kwargs)


def test_a_bad_template_or_inbox_fails_before_any_row(neoleads_sandbox, neoleads_connection, run_id) -> None:
    with pytest.raises(Exception, match=r"invalid \$ placeholder"):
        make(rows_for(1), message_template="costs $5").execute({"ti": StubTI(run_id)})
    with pytest.raises(Exception, match="404"):
        NeoleadsBulkMessageOperator(
            task_id="send", rows=rows_for(1), inbox_id=999, message_template="x", requests_per_minute=None
        ).execute({"ti": StubTI(run_id)})
    assert neoleads_sandbox.state.contacts == {}


def test_a_pending_row_whose_conversation_is_gone_starts_over(
    neoleads_sandbox, neoleads_connection, run_id
) -> None:
    from neoleads_provider.store.migrate import migrate
    from neoleads_provider.store.sends import mark_pending

    key = SendKey("bulk_test", run_id, "send", -1)
    engine = get_engine()
    migrate(engine)
    with engine.begin() as conn:
        mark_pending(
            conn,
            key,
            "email:c0@example.com",
            source_id=bulk_source_id(key, "email:c0@example.com"),
            contact_id=None,
            conversation_id=987654,
        )
    result = make(rows_for(1)).execute({"ti": StubTI(run_id)})
    assert (result["sent"], result["failed"]) == (1, 0)
    [message] = neoleads_sandbox.state.messages.values()
    assert result["rows"][0]["conversation_id"] != 987654
    assert message.source_id == bulk_source_id(key, "email:c0@example.com")


def test_the_operator_can_be_deep_copied_before_and_after_it_made_its_hook(neoleads_connection) -> None:
    # Airflow deep-copies operators for DAG subsets and mapped tasks.
    import copy

    operator = make(rows_for(2))
    copy.deepcopy(operator)
    assert operator.hook.rate_limiter is None
    limited = make(rows_for(2), requests_per_minute=600)
    assert limited.hook.rate_limiter is not None
    twin = copy.deepcopy(limited)
    assert twin.task_id == "send"


def test_rows_a_retry_cannot_fix_fail_the_task_without_its_retries_and_name_their_csv_lines(
    neoleads_sandbox, neoleads_connection, run_id, tmp_path, caplog, capfd
) -> None:
    from neoleads_provider.operators.bulk import NeoleadsBulkRowsInvalidError
    from neoleads_provider.version_compat import AirflowFailException

    (tmp_path / "people.csv").write_text(
        "name,email\nAda,ada@example.com\nNo Email,\nGrace,grace@example.com\n", encoding="utf-8"
    )
    ti = StubTI(run_id)
    with pytest.raises(NeoleadsBulkRowsInvalidError) as raised:
        make(str(tmp_path / "people.csv"), message_template="Hi $name").execute({"ti": ti})
    # A row without an email fails the same way on every try: the task fails without spending its retries.
    assert isinstance(raised.value, AirflowFailException)
    assert "a reason a retry cannot fix" in str(raised.value)
    [failed] = [o for o in ti.xcom["bulk_result"]["rows"] if o["outcome"] == "failed"]
    # Numbered as the user's file: the header is line 1, so data row 1 is line 3.
    assert (failed["row"], failed["where"]) == (1, "line 3 of people.csv")
    out, err = capfd.readouterr()
    text = out + err + caplog.text
    assert "Row at line 3 of people.csv failed: the row's identifier, email and phone_number" in text
    assert "Row at line 3 of people.csv (None)" not in text


def test_a_failure_a_retry_may_fix_keeps_the_task_retryable(
    neoleads_sandbox, neoleads_connection, run_id
) -> None:
    from neoleads_provider.operators.bulk import NeoleadsBulkRowsInvalidError

    neoleads_sandbox.inject(500, method="POST", path="/messages", count=1)
    with pytest.raises(NeoleadsBulkSendError) as raised:
        make(rows_for(3), concurrency=1).execute({"ti": StubTI(run_id)})
    assert not isinstance(raised.value, NeoleadsBulkRowsInvalidError)


def test_the_start_line_states_the_rate_cap_and_progress_counts_rate_and_eta(
    neoleads_sandbox, neoleads_connection, run_id, monkeypatch, caplog, capfd
) -> None:
    from neoleads_provider.bulk import runner

    monkeypatch.setattr(runner, "PROGRESS_LOG_SECONDS", 0.0)
    neoleads_sandbox.inject(delay=0.4, method="POST", path="/messages", count=4)
    make(rows_for(4), concurrency=1, requests_per_minute=2400).execute({"ti": StubTI(run_id)})
    out, err = capfd.readouterr()
    text = out + err + caplog.text
    assert "at most 2400 requests/min (requests_per_minute): about 13 rows/s for new contacts" in text
    progress = [line for line in text.splitlines() if "Bulk send progress:" in line]
    assert progress, text[-2000:]
    assert " sent, " in progress[0]
    assert " skipped, " in progress[0]
    assert " failed), " in progress[0]
    assert "rows/s" in progress[0]


def test_csv_rows_are_numbered_by_their_line_in_the_file_blank_and_multi_line_cells_included(
    tmp_path,
) -> None:
    from neoleads_provider.operators.bulk import read_rows_csv

    path = tmp_path / "people.csv"
    path.write_text('name,note\nAda,one\n\nGrace,"two\nlines"\nLinus,three\n', encoding="utf-8")
    lines: list[int] = []
    rows = read_rows_csv(path, lines)
    assert [row["name"] for row in rows] == ["Ada", "Grace", "Linus"]
    # Ada is on line 2; the blank line 3 is skipped; Grace's cell spans lines 4-5; Linus is on line 6.
    assert lines == [2, 5, 6]
