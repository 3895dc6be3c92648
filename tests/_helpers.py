"""Helpers shared by test modules: connections in the environment, webhook payloads stored the way the
receiver stores them, receivers on loopback (in a thread or as a process), signed posts, and the CLI.

Test modules import it as ``tests._helpers``: pytest's importlib mode (like ``python -m pytest`` from the
repository) resolves ``tests`` as a namespace package. The fixtures built on these are in ``tests/conftest.py``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from neoleads_provider.cli.main import main
from neoleads_provider.events import event_identity, read_event
from neoleads_provider.events.build import message_webhook_data
from neoleads_provider.events.fields import COLUMN_NAMES
from neoleads_provider.store.engine import get_engine
from neoleads_provider.store.repository import NewEvent, insert_event
from neoleads_provider.store.schema import webhook_events
from neoleads_provider.webhooks.verify import signed_headers

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence
    from pathlib import Path

    import pytest
    from sqlalchemy import Connection, Engine

    from neoleads_provider.testing import NeoleadsSandbox

DEFAULT_CONN_ID = "neoleads_default"
# Nothing listens on port 1: a connection for tests that must never reach the Neoleads API.
UNREACHABLE_HOST = "http://127.0.0.1:1"

# --------------------------------------------------------------------------- connections


def connection_env(
    conn_id: str, *, host: str = UNREACHABLE_HOST, password: str | None = None, **extra: Any
) -> dict[str, str]:
    """``{"AIRFLOW_CONN_<ID>": <JSON>}`` defining a ``neoleads`` connection; ``extra`` is its whole extra.

    The connection is for account 1 unless ``account_id`` says otherwise (``account_id=None``: no account).
    """
    value: dict[str, Any] = {"conn_type": "neoleads", "host": host}
    if password is not None:
        value["password"] = password
    extra.setdefault("account_id", 1)
    if extra["account_id"] is None:
        del extra["account_id"]
    if extra:
        value["extra"] = extra
    return {f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(value)}


def set_env(monkeypatch: pytest.MonkeyPatch, env: Mapping[str, str]) -> None:
    """Set environment variables for one test (monkeypatch restores them afterwards)."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def use_connection(
    monkeypatch: pytest.MonkeyPatch,
    conn_id: str,
    *,
    host: str = UNREACHABLE_HOST,
    password: str | None = None,
    **extra: Any,
) -> None:
    """Define ``conn_id`` for one test, by default on a host nothing listens on (see :func:`connection_env`)."""
    set_env(monkeypatch, connection_env(conn_id, host=host, password=password, **extra))


def use_sandbox_connection(
    monkeypatch: pytest.MonkeyPatch,
    sandbox: NeoleadsSandbox,
    conn_id: str = DEFAULT_CONN_ID,
    *,
    token: str | None = None,
    **extra: Any,
) -> None:
    """Point ``conn_id`` at the sandbox for one test; ``token`` replaces its API token (e.g. the agent's)."""
    env = sandbox.connection_env(conn_id, **extra)
    if token is not None:
        name = f"AIRFLOW_CONN_{conn_id.upper()}"
        env[name] = json.dumps({**json.loads(env[name]), "password": token})
    set_env(monkeypatch, env)


def child_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of an Airflow child process with a home of its own.

    This session's connections and settings are left out, so the child sees only what its home defines.
    """
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("AIRFLOW_CONN_", "AIRFLOW__"))
    }
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__NEOLEADS__EVENTS_DB_URL=f"sqlite:///{home / 'events.db'}",
        **extra,
    )
    return env


# --------------------------------------------------------------------------- webhook payloads in the store

CONTACT = {"id": 55, "name": "Ada", "email": "ada@example.com", "account": {"id": 1, "name": "Acme"}}
AGENT = {"id": 3, "name": "Agent", "email": "agent@example.com", "type": "user"}
BOT = {"id": 9, "name": "Bot", "type": "agent_bot"}


def message_payload(
    message_id: int,
    *,
    conversation_id: int = 7,
    account_id: int = 1,
    inbox_id: int = 1,
    message_type: str = "incoming",
    private: bool = False,
    content: str | None = "hello",
    sender: dict[str, Any] | None = None,
    event_name: str = "message_created",
) -> dict[str, Any]:
    """A message webhook body shaped like Chatwoot's ``Message#webhook_data``.

    The sender is the contact for incoming messages and an agent otherwise, unless ``sender`` says.
    """
    if sender is None:
        sender = CONTACT if message_type == "incoming" else AGENT
    payload = message_webhook_data(
        account={"id": account_id, "name": "Acme"},
        id=message_id,
        content=content,
        message_type=message_type,
        private=private,
        created_at="2026-06-01T10:00:00.000Z",
        inbox={"id": inbox_id, "name": "API"},
        conversation={"id": conversation_id, "inbox_id": inbox_id, "status": "open"},
        sender=sender,
    )
    return {"event": event_name, **payload}


def new_event(
    payload: dict[str, Any],
    *,
    conn_id: str = DEFAULT_CONN_ID,
    delivery_id: str | None = None,
    received_at: datetime | None = None,
) -> NewEvent:
    """The row the receiver would store for ``payload``, received (by default now) as a new delivery."""
    body = json.dumps(payload)
    fields = read_event(payload)
    return NewEvent(
        conn_id=conn_id,
        delivery_id=delivery_id or str(uuid.uuid4()),
        event_key=event_identity(fields, body.encode()),
        fields=fields,
        body=body,
        received_at=received_at or datetime.now(UTC),
    )


def store_payloads(
    store: Engine | str,
    *payloads: dict[str, Any],
    conn_id: str = DEFAULT_CONN_ID,
) -> list[int]:
    """Store webhook payloads the way the receiver does, each as a new delivery; return their row ids.

    :param store: an engine, or an event store URL (through the process's cached engine).
    """
    engine = get_engine(store) if isinstance(store, str) else store
    ids = []
    with engine.begin() as conn:
        for payload in payloads:
            row_id, inserted = insert_event(conn, new_event(payload, conn_id=conn_id))
            assert inserted, f"a copy of this event is stored already: {payload}"
            ids.append(row_id)
    return ids


def insert_with_id(
    conn: Connection,
    event_id: int,
    payload: dict[str, Any],
    *,
    received_at: datetime,
    conn_id: str = DEFAULT_CONN_ID,
) -> None:
    """Insert a row with a chosen id (a receiver that took that id and commits now), in ``conn``'s transaction."""
    new = new_event(payload, conn_id=conn_id, received_at=received_at)
    conn.execute(
        webhook_events.insert().values(
            id=event_id,
            conn_id=new.conn_id,
            delivery_id=new.delivery_id,
            event_key=new.event_key,
            **{name: getattr(new.fields, name) for name in COLUMN_NAMES},
            received_at=received_at,
            body=new.body,
        )
    )


def later(seconds: float, action: Callable[[], Any]) -> threading.Timer:
    """Run ``action`` on another thread after ``seconds`` (a delivery arriving while something waits)."""
    timer = threading.Timer(seconds, action)
    timer.start()
    return timer


# --------------------------------------------------------------------------- receivers and signed posts


def free_port() -> int:
    """A loopback port nothing listens on right now (the kernel's choice)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on a free loopback port in a thread; yield its base URL."""
    import uvicorn

    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", access_log=False, lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)


def wait_until_healthy(
    base_url: str, process: subprocess.Popen[bytes], log_path: Path, *, name: str, timeout: float
) -> None:
    """Wait for ``{base_url}/neoleads/_health`` to answer 200.

    :raises RuntimeError: with the tail of the process's log, if it exits or ``timeout`` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{base_url}/neoleads/_health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not start:\n" + log_path.read_text()[-3000:])
        time.sleep(0.1)


def stop_process_group(process: subprocess.Popen[bytes], first: signal.Signals) -> None:
    """Stop a process started with ``start_new_session=True``: ``first`` to its group, SIGKILL after 20 s."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, first)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


@contextmanager
def standalone_receiver(
    *,
    port: int,
    db_url: str,
    env: Mapping[str, str],
    log_path: Path,
    host: str | None = None,
    args: Sequence[str] = (),
    open_files: int | None = None,
    ready: Literal["health", "port"] = "health",
) -> Iterator[subprocess.Popen[bytes]]:
    """``neoleads webhooks serve`` as a child process, healthy on ``port``; stopped with SIGINT afterwards.

    Its output goes to ``log_path``; the caller may check ``returncode`` once the block has ended.

    :param args: more command-line arguments.
    :param open_files: the server's open-file limit, soft and hard (it raises its soft one to the hard one).
    :param ready: wait for ``/neoleads/_health`` to answer, or only for the port to accept (nothing sent
        through the app first).
    """
    argv = [sys.executable, "-m", "neoleads_provider.cli", "webhooks", "serve"]
    if host is not None:
        argv += ["--host", host]
    argv += ["--port", str(port), "--db-url", db_url, *args]

    def limit_open_files() -> None:
        import resource

        if open_files is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            argv,
            env=dict(env),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=limit_open_files if open_files is not None else None,
        )
        try:
            if ready == "health":
                wait_until_healthy(f"http://127.0.0.1:{port}", process, log_path, name="serve", timeout=60)
            else:
                _wait_until_accepting(port, process, log_path)
            yield process
        finally:
            stop_process_group(process, signal.SIGINT)


def _wait_until_accepting(port: int, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, log_path.read_text()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"nothing accepted on port {port}: {log_path.read_text()}"
            time.sleep(0.02)


def signed_now(secret: str, body: bytes, delivery_id: str) -> dict[str, str]:
    """The headers Neoleads sends with ``body``: signed with ``secret``, stamped with the current time."""
    return signed_headers(secret, body, timestamp=int(time.time()), delivery_id=delivery_id)


def post_webhook(url: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
    """POST a delivery over HTTP; return the status and the JSON answer, errors included."""
    request = urllib.request.Request(url, data=body, headers=dict(headers), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


# --------------------------------------------------------------------------- the neoleads CLI


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``neoleads <argv>`` in this process; return its exit status, stdout and stderr."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err
