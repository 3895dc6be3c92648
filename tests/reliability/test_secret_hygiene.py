"""Secret hygiene: run the DAGs and the receiver with known token and secret values, then look for them
everywhere they could leak: the captured output, the task logs under AIRFLOW_HOME/logs, every table of the
Airflow metadata database (XCom values, rendered template fields, trigger rows...), the receiver's logs,
the event store, and the text of the errors the provider raises.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
import traceback
import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, select

from neoleads_provider.store.schema import webhook_events
from neoleads_provider.webhooks.verify import sign, signed_headers

pytestmark = [pytest.mark.reliability, pytest.mark.dagrun]

REPO = Path(__file__).resolve().parents[2]
AIRFLOW = str(Path(sys.executable).parent / "airflow")
TOKEN = "rel-hygiene-api-token-3e9f1c7b5a2d"
SECRET = "rel-hygiene-whsec-8d4b2f6a1c9e"
WRONG_SECRET = "rel-hygiene-wrong-secret-77aa01"
WRONG_TOKEN = "rel-hygiene-wrong-token-5b6c7d"
EMAIL = f"hygiene-{uuid.uuid4().hex[:8]}@example.com"
SIGNATURE_RE = re.compile(r"sha256=[0-9a-f]{64}")


def _metadata_db_dump(airflow_home: Path) -> tuple[str, dict[str, int]]:
    """Every row of every table of the SQLite metadata database, as text; and the row count per table."""
    rows: list[str] = []
    counts: dict[str, int] = {}
    with sqlite3.connect(airflow_home / "airflow.db") as conn:
        tables = [name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            table_rows = conn.execute(f'SELECT * FROM "{table}"').fetchall()
            counts[table] = len(table_rows)
            for row in table_rows:
                rows.append(
                    table
                    + ": "
                    + " | ".join(
                        value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
                        for value in row
                    )
                )
    return "\n".join(rows), counts


def _task_logs(airflow_home: Path) -> str:
    logs = airflow_home / "logs"
    if not logs.exists():
        return ""
    return "\n".join(path.read_text(errors="replace") for path in logs.rglob("*") if path.is_file())


def test_no_secret_leaks_anywhere(migrated_airflow_db, receiver_factory, tmp_path, figures):
    from neoleads_provider.testing import NeoleadsSandbox

    airflow_home = migrated_airflow_db
    events_db = f"sqlite:///{tmp_path / 'events.db'}"
    with NeoleadsSandbox(token=TOKEN, auto_reply="yes please", auto_reply_delay=1.0) as sandbox:
        conn_env = sandbox.connection_env("neoleads_default", webhook_secrets=[SECRET])
        receiver = receiver_factory(events_db, env=conn_env)
        receiver.start()
        sandbox.add_webhook(receiver.url("neoleads_default"), secret=SECRET)

        env = os.environ.copy()
        env.update(conn_env)
        env["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
        env["AIRFLOW__NEOLEADS__EVENTS_DB_URL"] = events_db
        result = subprocess.run(
            [AIRFLOW, "dags", "test", "neoleads_wait_for_reply", "--conf", json.dumps({"email": EMAIL})],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        output = result.stdout + result.stderr
        assert "NEOLEADS REPLY" in output, output[-5000:]
        sandbox.wait_for_deliveries(timeout=10)

        # Refused deliveries: a wrong secret and a tampered body; their signatures must not be logged either.
        body = json.dumps({"event": "message_created", "id": 1}).encode()
        refused_signatures = []
        for secret, sent_body in ((WRONG_SECRET, body), (SECRET, body + b" ")):
            headers = signed_headers(
                secret, body, timestamp=int(time.time()), delivery_id=f"bad-{uuid.uuid4()}"
            )
            refused_signatures.append(headers["X-Chatwoot-Signature"])
            answer = httpx.post(
                receiver.url("neoleads_default"), content=sent_body, headers=headers, timeout=10
            )
            assert answer.status_code == 401
            assert SECRET not in answer.text
            assert WRONG_SECRET not in answer.text
        receiver.stop()

        # Errors the provider raises, as a task log would show them (message, repr, traceback).
        errors = _provoke_errors(sandbox)

    metadata_text, table_counts = _metadata_db_dump(airflow_home)
    task_logs = _task_logs(airflow_home)
    engine = create_engine(events_db)
    with engine.connect() as conn:
        store_text = "\n".join(str(tuple(row)) for row in conn.execute(select(webhook_events)))
    engine.dispose()
    receiver_logs = receiver.logs()

    places = {
        "dags test output": output,
        "task logs": task_logs,
        "metadata database": metadata_text,
        "receiver logs": receiver_logs,
        "event store": store_text,
        "exception texts": errors,
    }
    # Each place must really hold what it is said to hold, or finding nothing in it proves nothing.
    assert EMAIL in metadata_text, "the rendered template fields were not scanned"
    assert table_counts.get("xcom", 0) > 0
    assert table_counts.get("rendered_task_instance_fields", 0) > 0
    assert "yes please" in store_text, "the reply was not stored"
    assert "refused with 401" in receiver_logs
    assert "NeoleadsAuthError" in errors
    assert "NeoleadsTransportError" in errors

    secrets = {
        "api token": TOKEN,
        "webhook secret": SECRET,
        "wrong secret": WRONG_SECRET,
        "wrong token": WRONG_TOKEN,
    }
    secrets.update({f"refused signature {n}": signature for n, signature in enumerate(refused_signatures)})
    leaks = [
        f"{what} in {where}"
        for where, text in places.items()
        for what, value in secrets.items()
        if value in text
    ]
    logged_signatures = {
        where: SIGNATURE_RE.findall(text) for where, text in places.items() if where != "exception texts"
    }
    figures.record(
        "secret_hygiene",
        {
            "secrets_checked": len(secrets),
            "places_scanned": {where: len(text) for where, text in places.items()},
            "metadata_tables_scanned": len(table_counts),
            "leaks": len(leaks),
            "signatures_in_logs": sum(len(found) for found in logged_signatures.values()),
        },
    )
    assert not leaks, leaks
    assert not any(logged_signatures.values()), logged_signatures


def _provoke_errors(sandbox) -> str:
    """Raise the provider's errors with known secrets in play; return their texts as a log would carry them."""
    from neoleads_provider.exceptions import NeoleadsError
    from neoleads_provider.hooks.neoleads import NeoleadsHook

    texts = []

    def record(call) -> None:
        try:
            call()
        except NeoleadsError as exc:
            texts.append(str(exc))
            texts.append(repr(exc))
            texts.append("".join(traceback.format_exception(exc)))
        else:
            raise AssertionError("expected a NeoleadsError")

    saved = {key: os.environ.get(key) for key in ("AIRFLOW_CONN_NEOLEADS_DEFAULT",)}
    try:
        os.environ.update(sandbox.connection_env("neoleads_default"))
        os.environ["AIRFLOW_CONN_NEOLEADS_DEFAULT"] = os.environ["AIRFLOW_CONN_NEOLEADS_DEFAULT"].replace(
            TOKEN, WRONG_TOKEN
        )
        with NeoleadsHook() as hook:
            record(hook.list_inboxes)
            texts.append(repr(hook))
            texts.append(str(hook.test_connection()))
        dead = json.loads(os.environ["AIRFLOW_CONN_NEOLEADS_DEFAULT"])
        dead["host"] = "http://127.0.0.1:9"
        dead["password"] = TOKEN
        os.environ["AIRFLOW_CONN_NEOLEADS_DEFAULT"] = json.dumps(dead)
        with NeoleadsHook(max_retries=0) as hook:
            record(lambda: hook.send_message(1, "x"))
            texts.append(repr(hook.settings))
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    # The verifier's errors too: what the receiver would log for a bad signature.
    from neoleads_provider.webhooks.verify import WebhookVerificationError, verify

    for headers in (
        {
            "X-Chatwoot-Signature": sign(WRONG_SECRET, int(time.time()), b"{}"),
            "X-Chatwoot-Timestamp": str(int(time.time())),
        },
        {"X-Chatwoot-Signature": "sha256=" + SECRET, "X-Chatwoot-Timestamp": "1"},
    ):
        try:
            verify([SECRET], headers, b"{}", now=time.time())
        except WebhookVerificationError as exc:
            texts.append(str(exc))
    return "\n".join(texts)
