"""Run the example DAGs end to end against the built-in Neoleads sandbox: `make demo`.

Starts the sandbox and the standalone webhook receiver on free loopback ports, points the sandbox's
webhook at the receiver, then runs both example DAGs with `airflow dags test` in a throwaway
AIRFLOW_HOME under .demo/. Nothing needs installing by hand; everything stops when it ends.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".demo"
BIN = Path(sys.executable).parent
SANDBOX_TOKEN = "sandbox-token"
WEBHOOK_SECRET = "demo-webhook-secret-change-me"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen[bytes], headers: dict[str, str] | None = None) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{process.args[0]} exited early with status {process.returncode}")
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"{url} did not come up within 60 s")


def run_dag(dag_id: str, env: dict[str, str], marker: str) -> tuple[str, str]:
    """Run ``dag_id`` with ``airflow dags test``; return the line after ``marker``, and the whole log."""
    print(f"==> airflow dags test {dag_id}", flush=True)
    result = subprocess.run(
        [str(BIN / "airflow"), "dags", "test", dag_id],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    log = WORK / f"{dag_id}.log"
    log.write_text(result.stdout + result.stderr)
    lines = [line for line in (result.stdout + result.stderr).splitlines() if marker in line]
    if result.returncode != 0 or not lines:
        print((result.stdout + result.stderr)[-4000:])
        raise SystemExit(f"{dag_id} failed (exit {result.returncode}); full log: {log}")
    found = re.search(re.escape(marker) + r".*", lines[-1])
    assert found is not None
    return found.group(0), result.stdout + result.stderr


def main() -> int:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir()
    sandbox_port, receiver_port = free_port(), free_port()
    receiver_url = f"http://127.0.0.1:{receiver_port}/neoleads/webhooks/neoleads_default"
    env = dict(os.environ)
    env.update(
        AIRFLOW_HOME=str(WORK / "airflow"),
        AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "dags"),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__NEOLEADS__EVENTS_DB_URL=f"sqlite:///{WORK / 'neoleads_events.db'}",
        AIRFLOW_CONN_NEOLEADS_DEFAULT=json.dumps(
            {
                "conn_type": "neoleads",
                "host": f"http://127.0.0.1:{sandbox_port}",
                "password": SANDBOX_TOKEN,
                "extra": {"account_id": 1, "webhook_secrets": [WEBHOOK_SECRET]},
            }
        ),
    )
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with (
            (WORK / "sandbox.log").open("wb") as sandbox_log,
            (WORK / "receiver.log").open("wb") as receiver_log,
        ):
            sandbox = subprocess.Popen(
                [
                    str(BIN / "neoleads"),
                    "sandbox",
                    "--port",
                    str(sandbox_port),
                    "--webhook-url",
                    receiver_url,
                    "--webhook-secret",
                    WEBHOOK_SECRET,
                    "--auto-reply",
                    "Yes please!",
                ],
                env=env,
                stdout=sandbox_log,
                stderr=subprocess.STDOUT,
            )
            processes.append(sandbox)
            receiver = subprocess.Popen(
                [str(BIN / "neoleads"), "webhooks", "serve", "--port", str(receiver_port)],
                env=env,
                stdout=receiver_log,
                stderr=subprocess.STDOUT,
            )
            processes.append(receiver)
            wait_until_up(
                f"http://127.0.0.1:{sandbox_port}/api/v1/profile",
                sandbox,
                {"api_access_token": SANDBOX_TOKEN},
            )
            wait_until_up(f"http://127.0.0.1:{receiver_port}/neoleads/_health", receiver)
            print(f"Sandbox on :{sandbox_port}, webhook receiver on :{receiver_port}", flush=True)

            print("==> airflow db migrate", flush=True)
            subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=env, check=True, capture_output=True)

            sent, _ = run_dag("neoleads_send_message", env, "NEOLEADS RESULT")
            replied, wait_log = run_dag("neoleads_wait_for_reply", env, "NEOLEADS REPLY")
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
    fields = dict(re.findall(r"(\w+)=(\S+)", sent))
    print(
        "\nThe send flow created a contact in the sandbox's API inbox, opened a conversation and sent a message:"
    )
    for key in ("contact_id", "source_id", "conversation_id", "message_id"):
        print(f"  {key:16} {fields.get(key)}")
    waiting = re.search(r"Waiting up to .*? for (.*?); looking", wait_log)
    if waiting:
        print(
            f"\nThe wait-for-reply sensor deferred to the triggerer (no worker slot held), waiting for\n  {waiting.group(1)}"
        )
    print(
        "\nThe sandbox's auto-reply answered as the customer. Neoleads (the sandbox) signed the message_created "
        "webhook and\nposted it to the receiver, which verified and stored it; the trigger found it and the DAG "
        f"went on:\n  {replied}"
    )
    print(
        f"\nLogs of every step: {WORK}\n"
        "\nNext:\n"
        "  make airflow                      a real Airflow with the UI, the receiver and the sandbox\n"
        "  docs/getting-started.md           the same flow against your own Neoleads server\n"
        f"  neoleads events list --db-url sqlite:///{WORK / 'neoleads_events.db'}   what the receiver stored"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
