"""docs/getting-started.md, run as written: every fenced command, in order, against the Neoleads sandbox and a
real ``airflow api-server``.

The commands are extracted from the page, not copied here, so the page cannot drift from what works. Only
what a test cannot do as a user would is handled specially, and each such rule is listed in ``_run``:
``pip install`` is checked but not run (the package is installed already), the ``export`` lines get the
sandbox's values, ``airflow api-server`` and ``airflow dags test`` run in the background (a user leaves them
running in a terminal), and the customer's answer is sent once the DAG has asked its question.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from neoleads_provider.testing import NeoleadsSandbox

pytestmark = pytest.mark.dagrun

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "docs" / "getting-started.md"
BIN = Path(sys.executable).parent
QUESTION = "Hello Ada, would a demo next Tuesday suit you?"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _blocks() -> list[tuple[str, str]]:
    return [(lang, body) for lang, body in FENCE.findall(PAGE.read_text())]


def _commands(body: str) -> list[str]:
    """The commands of a bash block: continuation lines joined, comment-only and blank lines dropped."""
    commands, current = [], ""
    for line in body.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        commands.append(current + line)
        current = ""
    assert not current, "a bash block ends with a continuation line"
    return commands


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(process: subprocess.Popen[bytes]) -> None:
    # Each background process runs in its own session: this stops it and its children, nothing else.
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


class _Walkthrough:
    def __init__(self, sandbox: NeoleadsSandbox, home: Path) -> None:
        self.sandbox = sandbox
        self.home = home
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        # Only what a user's shell would have: no test-mode settings (unit-test mode makes a fernet key per
        # process, and then the API server could not read the connection that the CLI wrote).
        self.env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("AIRFLOW_CONN_", "AIRFLOW__", "AIRFLOW_HOME"))
        }
        self.env.update(
            PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            AIRFLOW_HOME=str(home),
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            # `airflow api-server` as written, but on a free loopback port.
            AIRFLOW__API__HOST="127.0.0.1",
            AIRFLOW__API__PORT=str(self.port),
        )
        self.exports = {
            "NEOLEADS_URL": sandbox.url,
            "NEOLEADS_TOKEN": sandbox.token,
            "NEOLEADS_ACCOUNT_ID": str(sandbox.account_id),
            "AIRFLOW__API__BASE_URL": self.base_url,
        }
        self.outputs: dict[str, str] = {}
        self.background: list[subprocess.Popen[bytes]] = []
        self.dag_run: subprocess.Popen[bytes] | None = None
        self.ran: list[str] = []

    def log(self, name: str) -> Path:
        return self.home / f"{name}.log"

    def _start(self, name: str, command: str) -> subprocess.Popen[bytes]:
        with self.log(name).open("wb") as log_file:
            process = subprocess.Popen(
                ["bash", "-c", f"exec {command}"],
                env=self.env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.background.append(process)
        return process

    def _run(self, command: str) -> None:
        words = command.split()
        self.ran.append(
            f"export {words[1].split('=', 1)[0]}" if words[0] == "export" else " ".join(words[:3])
        )
        if words[:2] == ["pip", "install"]:
            assert words[2:] == ["airflow-provider-neoleads"], command
            return
        if words[0] == "export":
            name = words[1].split("=", 1)[0]
            if name == "CONVERSATION_ID":
                self.env[name] = str(self._wait_for_the_question())
                return
            assert name in self.exports, f"no sandbox value for {name}; teach the test about it"
            self.env[name] = self.exports[name]
            return
        if self.dag_run is not None and words[0] == "airflow":
            self._finish_dag_run()
        if words[:2] == ["airflow", "api-server"]:
            process = self._start("api-server", command)
            self._wait_for(f"{self.base_url}/neoleads/_health", process, "api-server")
            return
        if words[:3] == ["airflow", "dags", "test"]:
            self.dag_run = self._start("dags-test", command)
            return
        result = subprocess.run(
            ["bash", "-ec", command], env=self.env, capture_output=True, text=True, timeout=300, check=False
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"{command}\n{output[-6000:]}"
        self.outputs[" ".join(words[:4])] = output

    def _wait_for(self, url: str, process: subprocess.Popen[bytes], name: str) -> None:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{name} did not come up:\n{self.log(name).read_text()[-4000:]}")
            time.sleep(0.25)

    def _wait_for_the_question(self) -> int:
        """The DAG asked its question: the conversation id a user would read in the log."""
        assert self.dag_run is not None, "the answer comes while `airflow dags test` waits"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if any(message.content == QUESTION for message in list(self.sandbox.state.messages.values())):
                [conversation] = self.sandbox.state.conversations.values()
                log = self.log("dags-test").read_text()
                assert f"Opened conversation {conversation.display_id}" in log
                return conversation.display_id
            if self.dag_run.poll() is not None:
                break
            time.sleep(0.25)
        raise AssertionError(
            "the DAG did not ask its question:\n" + self.log("dags-test").read_text()[-6000:]
        )

    def _finish_dag_run(self) -> None:
        assert self.dag_run is not None
        try:
            self.dag_run.wait(300)
        except subprocess.TimeoutExpired:
            _stop(self.dag_run)
        log = self.log("dags-test").read_text()
        assert self.dag_run.returncode == 0, log[-6000:]
        self.outputs["airflow dags test"] = log
        self.dag_run = None

    def walk(self) -> None:
        for lang, body in _blocks():
            if lang == "bash":
                for command in _commands(body):
                    self._run(command)
            elif lang == "python":
                first, _, _ = body.partition("\n")
                assert first.startswith("# $AIRFLOW_HOME/"), "a python block must say where it is saved"
                path = self.home / first.removeprefix("# $AIRFLOW_HOME/").strip()
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(body)
                self.ran.append(f"write {path.relative_to(self.home)}")
            else:
                raise AssertionError(f"a {lang!r} block in {PAGE.name}: the test does not know how to run it")
        if self.dag_run is not None:
            self._finish_dag_run()

    def close(self) -> None:
        for process in self.background:
            _stop(process)


def test_the_getting_started_page_works_as_written(neoleads_sandbox: NeoleadsSandbox, tmp_path: Path) -> None:
    home = tmp_path / "airflow"
    home.mkdir()
    # A fresh AIRFLOW_HOME: the page's own `airflow db migrate` creates the metadata database.
    walkthrough = _Walkthrough(neoleads_sandbox, home)
    try:
        walkthrough.walk()
    finally:
        walkthrough.close()

    assert walkthrough.ran == [
        "pip install airflow-provider-neoleads",
        "export NEOLEADS_URL",
        "export NEOLEADS_TOKEN",
        "export NEOLEADS_ACCOUNT_ID",
        "export AIRFLOW__API__BASE_URL",
        "airflow db migrate",
        "airflow connections add",
        "airflow neoleads events",
        "airflow neoleads inboxes",
        "airflow api-server",
        "airflow neoleads doctor",
        "write dags/neoleads_ask_and_wait.py",
        "airflow dags test",
        "export CONVERSATION_ID",
        "curl -sS --fail",
        "airflow neoleads events",  # list
    ]
    sandbox = neoleads_sandbox
    receiver = f"{walkthrough.base_url}/neoleads/webhooks/neoleads_default"
    [inbox] = [inbox for inbox in sandbox.state.inboxes.values() if inbox.name == "Airflow"]
    assert inbox.webhook_url == receiver

    created = walkthrough.outputs["airflow neoleads inboxes create"]
    assert f"  inbox id:       {inbox.id}" in created
    assert f"  signing secret: {inbox.secret}" in created
    assert "Connection 'neoleads_default' updated in the metadata database" in created

    doctor = walkthrough.outputs["airflow neoleads doctor"]
    assert "FAIL" not in doctor
    for name in (
        "connection",
        "token",
        "account",
        "role",
        "inbox",
        "signing secret",
        "receiver",
        "event store",
    ):
        assert re.search(rf"^PASS  {name} ", doctor, re.MULTILINE), name
    assert re.search(
        r"^WARN  last delivery +no delivery for 'neoleads_default' stored yet", doctor, re.MULTILINE
    )

    # The answer came back through the inbox's webhook, signed with its own secret, into the API server.
    [conversation] = sandbox.state.conversations.values()
    assert conversation.inbox_id == inbox.id
    assert "The customer answered: Yes, Tuesday works" in walkthrough.outputs["airflow dags test"]
    # What step 8 says the log shows while the sensor waits.
    assert (
        "Waiting up to 3600 s (deferred to the triggerer) for message_created (incoming) in conversation"
        in walkthrough.outputs["airflow dags test"]
    )
    deliveries = [d for d in sandbox.deliveries if d["url"] == receiver]
    assert {d["status_code"] for d in deliveries} == {200}
    assert {d["event"] for d in deliveries} >= {"conversation_created", "message_created"}
    events = walkthrough.outputs["airflow neoleads events list"]
    assert re.search(rf"neoleads_default\s+message_created\s+{conversation.display_id}\s", events)

    # No secret reached a log.
    for name in ("api-server", "dags-test"):
        text = walkthrough.log(name).read_text()
        assert inbox.secret not in text
        assert sandbox.token not in text
