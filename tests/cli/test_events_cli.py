"""``neoleads events ...`` through ``main()`` and as a real subprocess, on SQLite files."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import func, select

from neoleads_provider.cli.events import parse_duration, parse_since
from neoleads_provider.cli.main import main
from neoleads_provider.store.engine import get_engine
from neoleads_provider.store.migrate import migrate
from neoleads_provider.store.repository import insert_event
from neoleads_provider.store.schema import SCHEMA_VERSION, webhook_events
from tests._helpers import new_event

if TYPE_CHECKING:
    from sqlalchemy import Engine


pytestmark = pytest.mark.usefixtures("fresh_engines")


@pytest.fixture
def db_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'events.db'}"


@pytest.fixture
def engine(db_url: str) -> Engine:
    engine = get_engine(db_url)
    migrate(engine)
    return engine


def store(
    engine: Engine,
    *,
    event: str = "message_created",
    conversation_id: int = 7,
    age: timedelta = timedelta(0),
    conn_id: str = "neoleads_default",
    delivery_id: str | None = None,
    content: str = "hello",
) -> str:
    payload = {
        "event": event,
        # Each a message of its own: a second copy of one message would not be stored again.
        "id": next(_message_ids),
        "content": content,
        "message_type": "incoming",
        "private": False,
        "account": {"id": 1},
        "inbox": {"id": 2},
        "conversation": {"id": conversation_id, "inbox_id": 2},
        "sender": {"id": 5, "name": "Ada"},
    }
    if not event.startswith("message_"):
        payload = {"event": event, "id": conversation_id, "inbox_id": 2, "account": {"id": 1}}
        payload["nonce"] = str(uuid.uuid4())  # another body: another logical event
    delivery_id = delivery_id or str(uuid.uuid4())
    row = new_event(payload, conn_id=conn_id, delivery_id=delivery_id)
    with engine.begin() as conn:
        _, inserted = insert_event(conn, dataclasses.replace(row, received_at=datetime.now(UTC) - age))
    assert inserted
    return delivery_id


_message_ids = itertools.count(100)


def count(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(webhook_events)).scalar_one()


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------- argument parsing


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("15m", 900),
        ("12h", 43_200),
        ("7d", 604_800),
        ("2w", 1_209_600),
        ("1d12h", 129_600),
        ("7D", 604_800),
        (" 90m ", 5400),
    ],
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    "text", ["7", "d", "7 days", "7x", "", "-1d", "1.5h", "0s", "0d0h", "99999999999999w"]
)
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError) as info:
        parse_duration(text)
    assert repr(text) in str(info.value)


def test_parse_since() -> None:
    assert abs(parse_since("2h") - (datetime.now(UTC) - timedelta(hours=2))) < timedelta(seconds=5)
    assert parse_since("2026-05-01T12:00:00") == datetime(2026, 5, 1, 12, tzinfo=UTC)
    assert parse_since("2026-05-01T14:00:00+02:00") == datetime(2026, 5, 1, 12, tzinfo=UTC)
    with pytest.raises(argparse.ArgumentTypeError, match="neither a duration"):
        parse_since("yesterday")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["events", "purge", "--older-than", "7 days"], "argument --older-than: '7 days' is not a duration"),
        (["events", "purge", "--older-than", "0s"], "must be longer than zero"),
        (["events", "purge"], "--older-than"),
        (["events", "list", "--limit", "0"], "argument --limit"),
        (["events", "list", "--limit", "ten"], "argument --limit"),
        (["events", "list", "--since", "last tuesday"], "argument --since"),
        (["events", "list", "--conversation-id", "x"], "argument --conversation-id"),
        (["events"], "COMMAND"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(capsys, argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


# --------------------------------------------------------------------------- migrate


def test_migrate_then_again(capsys, db_url: str) -> None:
    code, out, _ = run(capsys, "events", "migrate", "--db-url", db_url)
    assert code == 0
    assert f"migrated from schema version 0 to {SCHEMA_VERSION}" in out
    code, out, _ = run(capsys, "events", "migrate", "--db-url", db_url)
    assert code == 0
    assert f"already at schema version {SCHEMA_VERSION}" in out


def test_migrate_uses_the_configured_url(capsys, monkeypatch, tmp_path) -> None:
    path = tmp_path / "configured.db"
    monkeypatch.setenv("AIRFLOW__NEOLEADS__EVENTS_DB_URL", f"sqlite:///{path}")
    assert run(capsys, "events", "migrate")[0] == 0
    assert path.exists()


def test_store_errors_exit_1(capsys, tmp_path) -> None:
    code, _, err = run(
        capsys, "events", "migrate", "--db-url", f"sqlite:///{tmp_path / 'no' / 'dir' / 'x.db'}"
    )
    assert code == 1
    assert "cannot use the event store" in err
    code, _, err = run(capsys, "events", "list", "--db-url", "not a url at all")
    assert code == 1
    assert "cannot use the event store" in err


def test_password_is_hidden_in_errors(capsys) -> None:
    url = "postgresql+psycopg://user:pw-hidden-123@127.0.0.1:1/events?connect_timeout=2"
    code, out, err = run(capsys, "events", "list", "--db-url", url)
    assert code == 1
    assert "pw-hidden-123" not in out + err
    assert "***" in err


@pytest.mark.parametrize("command", [["list"], ["show", "1"], ["purge", "--older-than", "1d"]])
def test_unmigrated_store_says_how_to_fix_it(capsys, db_url: str, command: list[str]) -> None:
    code, _, err = run(capsys, "events", *command, "--db-url", db_url)
    assert code == 1
    assert "run `neoleads events migrate`" in err


# --------------------------------------------------------------------------- list / show


def test_list_table_and_json(capsys, db_url: str, engine: Engine) -> None:
    first = store(engine, conversation_id=7, age=timedelta(hours=3))
    second = store(engine, event="conversation_status_changed", conversation_id=8, age=timedelta(hours=1))
    third = store(engine, conversation_id=7, conn_id="other_conn")

    # One connection's events by default (neoleads_default), every connection's on request.
    code, out, _ = run(capsys, "events", "list", "--db-url", db_url)
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].split()[:4] == ["ID", "RECEIVED", "(UTC)", "CONN_ID"]
    assert [line.split()[-1] for line in lines[1:]] == [second, first]
    code, out, _ = run(capsys, "events", "list", "--db-url", db_url, "--all-connections")
    assert code == 0
    assert [line.split()[-1] for line in out.strip().splitlines()[1:]] == [third, second, first]

    code, out, _ = run(capsys, "events", "list", "--db-url", db_url, "--json", "--all-connections")
    listed = json.loads(out)
    assert [item["delivery_id"] for item in listed] == [third, second, first]
    assert listed[0]["conversation_id"] == 7
    assert listed[0]["conn_id"] == "other_conn"
    assert {item["conn_id"] for item in listed[1:]} == {"neoleads_default"}
    assert "payload" not in listed[0]

    def ids(*filters: str) -> list[str]:
        code, out, _ = run(capsys, "events", "list", "--db-url", db_url, "--json", *filters)
        assert code == 0
        return [item["delivery_id"] for item in json.loads(out)]

    assert ids() == [second, first]
    assert ids("--conn-id", "other_conn") == [third]
    assert ids("--conn-id", "nobody") == []
    # --all-connections wins over --conn-id.
    assert ids("--conn-id", "other_conn", "--all-connections") == [third, second, first]
    assert ids("--event", "conversation_status_changed") == [second]
    assert ids("--conversation-id", "7") == [first]
    assert ids("--conversation-id", "7", "--all-connections") == [third, first]
    assert ids("--since", "2h", "--all-connections") == [third, second]
    assert ids("--since", "2h") == [second]
    assert ids("--limit", "1", "--all-connections") == [third]
    assert ids("--limit", "1") == [second]
    assert ids("--since", (datetime.now(UTC) - timedelta(minutes=30)).isoformat(), "--all-connections") == [
        third
    ]
    assert ids("--event", "nothing_like_it", "--all-connections") == []


def test_list_empty(capsys, db_url: str, engine: Engine) -> None:
    assert run(capsys, "events", "list", "--db-url", db_url) == (0, "No events.\n", "")


def test_show_by_id_and_by_delivery_id(capsys, db_url: str, engine: Engine) -> None:
    delivery_id = store(engine, content="show me")
    code, out, _ = run(capsys, "events", "show", delivery_id, "--db-url", db_url, "--json")
    assert code == 0
    shown = json.loads(out)
    assert shown["delivery_id"] == delivery_id
    assert shown["payload"]["content"] == "show me"

    code, out, _ = run(capsys, "events", "show", str(shown["event_id"]), "--db-url", db_url)
    assert code == 0
    assert f"delivery_id:     {delivery_id}" in out
    assert '"content": "show me"' in out


def test_show_a_numeric_delivery_id(capsys, db_url: str, engine: Engine) -> None:
    store(engine, delivery_id="424242")
    code, out, _ = run(capsys, "events", "show", "424242", "--db-url", db_url, "--json")
    assert code == 0
    assert json.loads(out)["delivery_id"] == "424242"


def test_show_unknown(capsys, db_url: str, engine: Engine) -> None:
    code, _, err = run(capsys, "events", "show", "no-such-delivery", "--db-url", db_url)
    assert code == 1
    assert "no stored event of connection 'neoleads_default' has id or delivery id 'no-such-delivery'" in err


def test_show_is_scoped_to_a_connection(capsys, db_url: str, engine: Engine) -> None:
    # A delivery id is unique per connection only: the same one can be stored for two connections.
    store(engine, delivery_id="shared-delivery", content="ours")
    store(engine, delivery_id="shared-delivery", content="theirs", conn_id="other_conn")
    theirs_only = store(engine, content="only theirs", conn_id="other_conn")

    def show(*argv: str) -> tuple[int, dict, str]:
        code, out, err = run(capsys, "events", "show", *argv, "--db-url", db_url, "--json")
        return code, (json.loads(out) if code == 0 else {}), err

    code, shown, _ = show("shared-delivery")
    assert (code, shown["conn_id"], shown["payload"]["content"]) == (0, "neoleads_default", "ours")
    code, shown, _ = show("shared-delivery", "--conn-id", "other_conn")
    assert (code, shown["conn_id"], shown["payload"]["content"]) == (0, "other_conn", "theirs")
    theirs_id = shown["event_id"]

    # Another connection's event is not found through this one, by delivery id or by event id.
    code, _, err = show(theirs_only)
    assert code == 1
    assert f"no stored event of connection 'neoleads_default' has id or delivery id {theirs_only!r}" in err
    code, _, err = show(str(theirs_id))
    assert code == 1
    assert "of connection 'neoleads_default'" in err
    # An event id is unique across connections: --all-connections finds it.
    code, shown, _ = show(str(theirs_id), "--all-connections")
    assert (code, shown["event_id"], shown["conn_id"]) == (0, theirs_id, "other_conn")


# --------------------------------------------------------------------------- purge


def test_purge_dry_run_then_for_real(capsys, db_url: str, engine: Engine) -> None:
    old = [store(engine, age=timedelta(days=8)) for _ in range(3)]
    recent = store(engine, age=timedelta(days=6))
    code, out, _ = run(capsys, "events", "purge", "--older-than", "7d", "--dry-run", "--db-url", db_url)
    assert code == 0
    assert "Would delete 3 event(s)" in out
    assert count(engine) == 4

    code, out, _ = run(capsys, "events", "purge", "--older-than", "7d", "--db-url", db_url)
    assert code == 0
    assert "Deleted 3 event(s)" in out
    code, out, _ = run(capsys, "events", "list", "--db-url", db_url, "--json")
    assert [item["delivery_id"] for item in json.loads(out)] == [recent]
    assert not set(old) & {item["delivery_id"] for item in json.loads(out)}


def test_purge_in_several_batches(capsys, db_url: str, engine: Engine) -> None:
    old = datetime.now(UTC) - timedelta(weeks=3)
    rows = [
        {
            "delivery_id": f"bulk-{i}",
            "event_key": f"legacy:bulk-{i}",
            "conn_id": "c",
            "event": "message_created",
            "received_at": old,
            "body": "{}",
        }
        for i in range(2_345)
    ]
    with engine.begin() as conn:
        conn.execute(webhook_events.insert(), rows)
    store(engine)
    code, out, _ = run(capsys, "events", "purge", "--older-than", "2w", "--db-url", db_url)
    assert code == 0
    assert "Deleted 2345 event(s)" in out
    assert count(engine) == 1


# --------------------------------------------------------------------------- real processes


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, **extra}


def test_real_subprocesses(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'subprocess.db'}"
    migrate_run = subprocess.run(
        [sys.executable, "-m", "neoleads_provider.cli", "events", "migrate", "--db-url", url],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(),
    )
    assert migrate_run.returncode == 0, migrate_run.stderr
    assert f"migrated from schema version 0 to {SCHEMA_VERSION}" in migrate_run.stdout

    engine = get_engine(url)
    delivery_id = store(engine)
    console_script = os.path.join(os.path.dirname(sys.executable), "neoleads")
    listed = subprocess.run(
        [console_script, "events", "list", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(AIRFLOW__NEOLEADS__EVENTS_DB_URL=url),
    )
    assert listed.returncode == 0, listed.stderr
    assert [item["delivery_id"] for item in json.loads(listed.stdout)] == [delivery_id]

    bad = subprocess.run(
        [console_script, "events", "purge", "--older-than", "soon"],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(),
    )
    assert bad.returncode == 2
    assert "'soon' is not a duration" in bad.stderr
