"""Start a real Airflow 3 deployment on loopback with the Neoleads sandbox: ``make airflow``.

What runs, all on 127.0.0.1:

* PostgreSQL (``scripts/start-postgres.sh``, or the server named by ``--pg-url`` / ``NEOLEADS_PG_URL``): a fresh
  database holds both Airflow's metadata and the Neoleads event store;
* ``airflow api-server`` (the UI and REST API, with the provider's webhook receiver mounted at
  ``/neoleads``), ``airflow scheduler`` (LocalExecutor), ``airflow dag-processor`` and ``airflow triggerer``,
  each in its own process group;
* the Neoleads sandbox (in this process), whose account webhook posts signed deliveries to
  ``/neoleads/webhooks/neoleads_default`` on the API server.

The ``neoleads_default`` connection is created through the REST API, and the DAGs in ``dags/`` are unpaused on
creation, so the auto-reply watcher starts at once. Ctrl-C (or SIGTERM) stops every process it started and
drops the database. The deployment test (``tests/deployment``) starts the same deployment through
:class:`Deployment`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from neoleads_provider.testing import NeoleadsSandbox

ROOT = Path(__file__).resolve().parent.parent
CONN_ID = "neoleads_default"
ADMIN_USER = "admin"
SERVICES = ("api-server", "scheduler", "dag-processor", "triggerer")
# Every process this deployment starts (and their children) carries this variable, so that stop() can find
# any that left their process group (task processes make groups of their own).
MARKER_VARIABLE = "NEOLEADS_DEPLOYMENT_ID"
STARTUP_TIMEOUT = 180.0


def free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def processes_with_marker(marker: str, sessions: frozenset[int] | set[int] = frozenset()) -> list[int]:
    """Return the ids of live processes started by one deployment.

    A process belongs to it when its environment carries ``MARKER_VARIABLE=marker`` or when it runs in one
    of ``sessions`` (each service is started as a session leader; task processes make process groups of
    their own but stay in the session). Both are needed: ``setproctitle`` (the API server's workers) writes
    over the environment that ``/proc`` shows, and a process can start a session of its own.
    """
    needle = f"{MARKER_VARIABLE}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, session = fields[0], int(fields[3])
        # A zombie has already exited; its parent (one of ours, also stopped) reaps it.
        if state != "Z" and (session in sessions or needle in environ.split(b"\0")):
            found.append(int(entry.name))
    return found


class ApiError(RuntimeError):
    """An Airflow REST API call answered with an error status."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:500]}")
        self.status = status
        self.body = body


class Deployment:
    """A real Airflow deployment plus the Neoleads sandbox, started and stopped as one.

    :param pg_server_url: a SQLAlchemy URL of any database on the PostgreSQL server; the role must be allowed
        to create databases. A fresh database is created next to it and dropped by :meth:`stop`.
    :param api_port: the API server's port (0: a free one).
    :param admin_password: the UI/REST password of user ``admin`` (default: a random one).
    :param log: where progress lines go.
    """

    def __init__(
        self,
        *,
        pg_server_url: str,
        api_port: int = 0,
        admin_password: str | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.pg_server_url = pg_server_url
        self.api_port = api_port or free_port()
        self.admin_user = ADMIN_USER
        self.admin_password = admin_password or secrets.token_urlsafe(12)
        self.webhook_secret = secrets.token_urlsafe(24)
        self.marker = uuid.uuid4().hex
        self.database = f"neoleads_airflow_{self.marker[:12]}"
        self.home = Path(tempfile.mkdtemp(prefix="neoleads-airflow-"))
        self.log = log
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        # Every session a service was started in, including services since stopped.
        self.sessions: set[int] = set()
        self._terminated: set[str] = set()
        self.sandbox: NeoleadsSandbox | None = None
        self._database_created = False
        self._token: str | None = None
        self._token_at = 0.0

    # -- addresses ------------------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The API server (UI and REST API)."""
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def webhook_url(self) -> str:
        """Where the sandbox posts its webhooks: the receiver the plugin mounts on the API server."""
        return f"{self.base_url}/neoleads/webhooks/{CONN_ID}"

    @property
    def db_url(self) -> str:
        """The fresh database: Airflow's metadata and the Neoleads event store."""
        from sqlalchemy.engine import make_url

        url = make_url(self.pg_server_url)
        if url.drivername in ("postgresql", "postgres"):
            url = url.set(drivername="postgresql+psycopg")
        return url.set(database=self.database).render_as_string(hide_password=False)

    def log_path(self, service: str) -> Path:
        """The combined stdout/stderr of one service."""
        return self.home / f"{service}.log"

    # -- lifecycle ------------------------------------------------------------------------------------------

    def start(self) -> Deployment:
        """Create the database, start the sandbox and every Airflow service, and wait until all are healthy."""
        started = time.monotonic()
        try:
            self._create_database()
            self._start_sandbox()
            self._write_config()
            self._migrate()
            for service in SERVICES:
                self.start_service(service)
            self._wait_until_healthy()
            self._create_connection()
            assert self.sandbox is not None
            self.sandbox.add_webhook(self.webhook_url, secret=self.webhook_secret)
        except BaseException:
            self.stop()
            raise
        self.log(f"Airflow is up after {time.monotonic() - started:.0f} s")
        return self

    def __enter__(self) -> Deployment:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, *, keep_home: bool = False) -> None:
        """Stop every process this deployment started, then the sandbox; drop the database. Idempotent.

        :param keep_home: keep ``AIRFLOW_HOME`` (the service logs) instead of deleting it.
        """
        # All at once: each takes a few seconds to shut down gracefully.
        for service in self.processes:
            self._terminate(service)
        for service in reversed(list(self.processes)):
            self.stop_service(service)
        # Task processes run in process groups of their own: find any that outlived their parents.
        for _ in range(3):
            leftovers = self.leftovers()
            if not leftovers:
                break
            for pid in leftovers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
        if self.sandbox is not None:
            self.sandbox.stop()
            self.sandbox = None
        self._drop_database()
        if not keep_home:
            shutil.rmtree(self.home, ignore_errors=True)

    def leftovers(self) -> list[int]:
        """The ids of processes of this deployment that are still alive."""
        return processes_with_marker(self.marker, self.sessions)

    def _terminate(self, service: str) -> None:
        """Send SIGTERM to a service's leader, which stops its own children.

        Only once: Airflow services take a second SIGTERM as an order to exit at once.
        """
        process = self.processes.get(service)
        if process is not None and process.poll() is None and service not in self._terminated:
            self._terminated.add(service)
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGTERM)

    def stop_service(self, service: str, *, timeout: float = 20.0) -> None:
        """Stop one service and its whole process group: SIGTERM, then SIGKILL after ``timeout`` seconds."""
        self._terminate(service)
        process = self.processes.pop(service, None)
        self._terminated.discard(service)
        if process is None:
            return
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        # Children that were still shutting down when the leader exited.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)

    def restart_service(self, service: str) -> None:
        """Stop a service and start it again (e.g. the triggerer, to show the cursor survives)."""
        self.stop_service(service)
        self.start_service(service)

    # -- steps ----------------------------------------------------------------------------------------------

    def _admin_engine(self) -> Any:
        from sqlalchemy import create_engine

        from neoleads_provider.store.engine import safe_url

        self.log(f"PostgreSQL: {safe_url(self.pg_server_url)}")
        return create_engine(self.pg_server_url.replace("postgresql://", "postgresql+psycopg://", 1))

    def _create_database(self) -> None:
        from sqlalchemy import text

        engine = self._admin_engine()
        try:
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text(f'CREATE DATABASE "{self.database}"'))
        finally:
            engine.dispose()
        self._database_created = True

    def _drop_database(self) -> None:
        if not self._database_created:
            return
        from sqlalchemy import text

        from neoleads_provider.store.engine import dispose_engines

        # Pooled connections of this process (the test reads the store) would block the drop.
        dispose_engines()
        engine = self._admin_engine()
        try:
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)'))
        finally:
            engine.dispose()
        self._database_created = False

    def _start_sandbox(self) -> None:
        from neoleads_provider.testing import NeoleadsSandbox

        self.sandbox = NeoleadsSandbox().start()

    def _write_config(self) -> None:
        from cryptography.fernet import Fernet

        passwords = self.home / "simple_auth_manager_passwords.json"
        passwords.write_text(json.dumps({self.admin_user: self.admin_password}))
        passwords.chmod(0o600)
        env = {
            key: value
            for key, value in os.environ.items()
            # Nothing from the caller's Airflow setup (a test session sets unit-test mode, SQLite, ...).
            if not key.startswith(("AIRFLOW", "_AIRFLOW"))
        }
        env.update(
            {
                MARKER_VARIABLE: self.marker,
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                # Two cores: a few task processes at a time are plenty for the example DAGs.
                "AIRFLOW__CORE__PARALLELISM": "4",
                # The auto-reply DAG's watcher is registered only for an unpaused DAG.
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{self.admin_user}:admin",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
                # The connection form's Test button calls the hook's test_connection().
                "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.db_url,
                # Airflow would derive asyncpg for its async engine; psycopg 3 does async itself.
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": self.db_url.replace(
                    "postgresql+psycopg://", "postgresql+psycopg_async://", 1
                ),
                "AIRFLOW__API__BASE_URL": self.base_url,
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
                "AIRFLOW__NEOLEADS__EVENTS_DB_URL": self.db_url,
                # Re-parse the DAG files soon after a change, not after the default 30 s.
                "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "10",
                # And see a new DAG file within 10 s, not the default 5 minutes.
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
                # The API server reads a running or deferred task's log from the scheduler's and the
                # triggerer's log servers ("Could not read served logs" without them). They listen on every
                # interface, so on free ports rather than 8793/8794; each request needs a token signed with
                # this deployment's [api] secret_key.
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            }
        )
        self.env = env

    def _run(self, name: str, *args: str) -> None:
        with self.log_path(name).open("wb") as out:
            result = subprocess.run(
                [sys.executable, *args], env=self.env, stdout=out, stderr=subprocess.STDOUT, check=False
            )
        if result.returncode != 0:
            raise RuntimeError(
                f"{name} failed (exit {result.returncode}):\n{self.log_path(name).read_text()[-4000:]}"
            )

    def _migrate(self) -> None:
        self.log("Migrating the metadata database and the Neoleads event store...")
        failures: list[BaseException] = []

        def events() -> None:
            try:
                self._run("events-migrate", "-m", "neoleads_provider.cli", "events", "migrate")
            except BaseException as exc:
                failures.append(exc)

        # Separate tables with separate advisory locks: the two migrations can run side by side.
        thread = threading.Thread(target=events)
        thread.start()
        try:
            self._run("db-migrate", "-m", "airflow", "db", "migrate")
        finally:
            thread.join()
        if failures:
            raise failures[0]

    def start_service(self, service: str) -> None:
        """Start one service (``api-server``, ``scheduler``, ``dag-processor`` or ``triggerer``)."""
        command = [sys.executable, "-m", "airflow", service]
        if service == "api-server":
            command += ["--host", "127.0.0.1", "--port", str(self.api_port), "--workers", "1"]
        out = self.log_path(service).open("ab")
        try:
            # Its own session, so stop_service() can signal the service and its children as one group.
            process = subprocess.Popen(
                command, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        finally:
            out.close()
        self.processes[service] = process
        self.sessions.add(process.pid)

    def _get_json(self, url: str) -> Any:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read() or b"null")

    def _wait_until_healthy(self) -> None:
        self.log("Waiting for the API server, scheduler, DAG processor and triggerer...")
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            for service, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(
                        f"airflow {service} exited with status {process.returncode}:\n"
                        + self.log_path(service).read_text()[-4000:]
                    )
            try:
                health = self._get_json(f"{self.base_url}/api/v2/monitor/health")
                receiver = self._get_json(f"{self.base_url}/neoleads/_health")
            except (OSError, ValueError):
                health = receiver = None
            if health and receiver is not None:
                components = ("metadatabase", "scheduler", "triggerer", "dag_processor")
                if all((health.get(name) or {}).get("status") == "healthy" for name in components):
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"Airflow did not become healthy within {STARTUP_TIMEOUT:.0f} s: {health}")
            time.sleep(0.5)

    def _create_connection(self) -> None:
        assert self.sandbox is not None
        self.api(
            "POST",
            "/api/v2/connections",
            {
                "connection_id": CONN_ID,
                "conn_type": "neoleads",
                "host": self.sandbox.url,
                "password": self.sandbox.token,
                "extra": json.dumps(
                    {"account_id": self.sandbox.account_id, "webhook_secrets": [self.webhook_secret]}
                ),
            },
        )

    # -- the REST API ---------------------------------------------------------------------------------------

    def token(self) -> str:
        """A JWT for the admin user from ``POST /auth/token`` (renewed every 10 minutes)."""
        if self._token is None or time.monotonic() - self._token_at > 600:
            request = urllib.request.Request(
                f"{self.base_url}/auth/token",
                data=json.dumps({"username": self.admin_user, "password": self.admin_password}).encode(),
                headers={"Content-Type": "application/json"},
                method="POST",
            )
            with urllib.request.urlopen(request, timeout=30) as response:
                self._token = json.loads(response.read())["access_token"]
            self._token_at = time.monotonic()
        return self._token

    def api(self, method: str, path: str, body: Any = None) -> Any:
        """Call the public REST API as the admin user; return the decoded JSON answer.

        :raises ApiError: on an error status.
        """
        request = urllib.request.Request(
            f"{self.base_url}{path}",
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.token()}", "Content-Type": "application/json"},
            method=method,
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                data = response.read()
        except urllib.error.HTTPError as exc:
            raise ApiError(exc.code, exc.read().decode(errors="replace")) from None
        return json.loads(data) if data else None


def _pg_server_url(given: str | None) -> str:
    url = given or os.environ.get("NEOLEADS_PG_URL") or os.environ.get("NEOLEADS_TEST_PG_URL")
    if url:
        return url
    print("No --pg-url: starting the local PostgreSQL with scripts/start-postgres.sh", flush=True)
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "start-postgres.sh")], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise SystemExit(
            "Could not start PostgreSQL (scripts/start-postgres.sh needs root and Debian's packages):\n"
            f"{result.stderr[-2000:]}\nPass --pg-url postgresql+psycopg://user:pass@host:5432/db instead."
        )
    return result.stdout.strip().splitlines()[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--pg-url",
        help="any database on the PostgreSQL server to use (its role must be allowed to create databases); "
        "default: $NEOLEADS_PG_URL, else scripts/start-postgres.sh",
    )
    parser.add_argument("--port", type=int, default=8080, help="the UI/API port (default 8080; 0: any free)")
    parser.add_argument("--password", default="admin", help="the password of user admin (default: admin)")
    args = parser.parse_args(argv)

    stop = threading.Event()
    serving = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()
        if not serving.is_set():
            # Still starting: abandon the start (start() stops what it started so far).
            raise KeyboardInterrupt

    # SIGINT explicitly too: a shell starting this in the background would otherwise leave it ignored.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    deployment = Deployment(
        pg_server_url=_pg_server_url(args.pg_url),
        api_port=args.port,
        admin_password=args.password,
        log=lambda line: print(line, flush=True),
    )
    try:
        deployment.start()
        serving.set()
        sandbox = deployment.sandbox
        assert sandbox is not None
        print(
            f"""
Airflow UI:        {deployment.base_url}/   (user {deployment.admin_user}, password {deployment.admin_password})
Neoleads sandbox:  {sandbox.url}   (token {sandbox.token}, account {sandbox.account_id}, API inbox {sandbox.api_inbox_id})
Webhooks:          sandbox -> {deployment.webhook_url}
Logs:              {deployment.home}/*.log   (removed on exit)
Your own DAGs:     save them in {ROOT / "dags"}; the DAG processor picks a new file up within 10 s

Try it:
  1. Trigger neoleads_wait_for_reply (its form shows the params). It sends the question and waits, deferred.
  2. Make the contact answer (the conversation id is in the run's create_conversation XCom; the first is 7001):
       curl -X POST {sandbox.url}/_sandbox/conversations/<conversation id>/reply \\
            -H 'Content-Type: application/json' -d '{{"content": "Yes please!"}}'
     The webhook reaches the receiver on the API server, the sensor wakes up, the run answers; and
     neoleads_auto_reply starts for that incoming message and answers it too.
  3. Admin > Connections > neoleads_default shows the provider's connection form.

Ctrl-C stops everything.""",
            flush=True,
        )
        while not stop.wait(1):
            for service, process in deployment.processes.items():
                if process.poll() is not None:
                    print(
                        f"airflow {service} exited ({process.returncode}); see {deployment.log_path(service)}"
                    )
                    stop.set()
    except KeyboardInterrupt:
        pass
    finally:
        print("\nStopping Airflow and the sandbox...", flush=True)
        # A second Ctrl-C while stopping would leave processes behind: finish the job first.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        deployment.stop()
        print("Stopped.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
