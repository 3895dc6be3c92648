"""`airflow dags test` of the example neoleads_bulk_outreach DAG against the sandbox, with a retry."""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from neoleads_provider.store.engine import get_engine
from neoleads_provider.store.sends import SendKey, count_by_state

REPO = Path(__file__).resolve().parents[2]
AIRFLOW = str(Path(sys.executable).parent / "airflow")

pytestmark = pytest.mark.dagrun


@pytest.fixture(scope="session")
def migrated_airflow_db(airflow_home):
    subprocess.run([AIRFLOW, "db", "migrate"], check=True, capture_output=True, env=os.environ.copy())
    return airflow_home


@pytest.fixture(scope="module")
def dags_folder(tmp_path_factory) -> Path:
    # Only this DAG and its data: other example DAGs in dags/ register asset triggers whose encrypted
    # kwargs another `airflow` process of this session may not be able to read back.
    folder = tmp_path_factory.mktemp("bulk_dags")
    shutil.copy(REPO / "dags" / "neoleads_bulk_outreach.py", folder)
    shutil.copytree(REPO / "dags" / "data", folder / "data")
    return folder


def dags_test(sandbox, dags_folder: Path) -> str:
    env = os.environ.copy()
    env.update(sandbox.connection_env("neoleads_default"))
    env["AIRFLOW__CORE__DAGS_FOLDER"] = str(dags_folder)
    command = [AIRFLOW, "dags", "test", "neoleads_bulk_outreach"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    return output


def test_bulk_outreach_dag_resumes_on_its_retry(migrated_airflow_db, neoleads_sandbox, dags_folder) -> None:
    with (REPO / "dags" / "data" / "contacts.csv").open(encoding="utf-8") as handle:
        contacts = list(csv.DictReader(handle))
    # The server stores one message but answers 500: the first try fails, the retry finds the message.
    neoleads_sandbox.inject(500, after_commit=True, method="POST", path="/messages", count=1)

    output = dags_test(neoleads_sandbox, dags_folder)

    state = neoleads_sandbox.state
    assert len(state.contacts) == len(contacts)
    assert len(state.messages) == len(contacts)
    per_contact = Counter(state.conversations[m.conversation_id].contact_id for m in state.messages.values())
    assert set(per_contact.values()) == {1}
    contents = {m.content for m in state.messages.values()}
    assert (
        "Hello Ada Lovelace! Your gold plan has new features this month. Reply to this message to book a walkthrough."
        in contents
    )
    assert contacts[-1]["content"] in contents
    # The retry sent nothing new: the four rows the first try sent are skipped, the fifth found in the API.
    assert f"NEOLEADS BULK total={len(contacts)} sent=0 skipped={len(contacts)} failed=0" in output
    assert "sandbox-token" not in output
    posts = [p for m, p, _ in neoleads_sandbox.requests if m == "POST" and p.endswith("/messages")]
    assert len(posts) == len(contacts)

    # The first try failed on that row and the second try finished the same run.
    assert "1 of 5 rows failed" in output
    run_id = re.search(r"DagRun Finished: dag_id=neoleads_bulk_outreach, .*?run_id=([^,]+),", output).group(1)
    with get_engine().connect() as conn:
        records = count_by_state(conn, SendKey("neoleads_bulk_outreach", run_id, "send_to_all", -1))
    assert records == {"sent": len(contacts)}
