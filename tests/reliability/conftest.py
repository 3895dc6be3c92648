"""Shared machinery for the reliability group: receiver processes, PostgreSQL databases, figures.

Everything here runs on 127.0.0.1 only and cleans up after itself: every process started is killed by
its pid, every database created is dropped, every throwaway PostgreSQL instance is stopped.

Test modules cannot import each other under ``--import-mode=importlib``, so the helpers are handed out
as fixtures (classes and functions), not imported.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
NEOLEADS = str(BIN / "neoleads")
AIRFLOW = str(BIN / "airflow")
ARTIFACT = REPO / "artifacts" / "reliability.json"

# Known values, so the secret-hygiene scans can look for them anywhere.
RECEIVER_CONN_ID = "neoleads_rel"
RECEIVER_SECRET = "rel-whsec-7c1e0f5a9b3d4e2f"
RECEIVER_API_TOKEN = "rel-api-token-5e8d2c7a1f90"


def free_port() -> int:
    """A port nothing listens on right now (the kernel's choice)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- figures


class Figures:
    """The numbers the tests produce, merged section by section into ``artifacts/reliability.json``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def record(self, section: str, values: dict[str, Any]) -> None:
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                data = json.loads(self.path.read_text())
            except (OSError, ValueError):
                data = {}
            data.setdefault("sections", {})[section] = {
                **values,
                "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            data["updated_at"] = datetime.now(UTC).isoformat(timespec="seconds")
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
            tmp.replace(self.path)


@pytest.fixture(scope="session")
def figures() -> Figures:
    return Figures(ARTIFACT)


# --------------------------------------------------------------------------- the receiver process


def receiver_connection_env(
    conn_id: str = RECEIVER_CONN_ID, secret: str = RECEIVER_SECRET, **extra: Any
) -> dict[str, str]:
    value = {
        "conn_type": "neoleads",
        "host": "http://127.0.0.1:1",
        "password": RECEIVER_API_TOKEN,
        "extra": {"account_id": 1, "webhook_secrets": [secret], **extra},
    }
    return {f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(value)}


class ReceiverProcess:
    """``neoleads webhooks serve`` as a child process on a fixed port, which can be SIGKILLed and restarted.

    Every incarnation's stderr goes to its own file under ``log_dir``, so the logs can be scanned afterwards.
    """

    def __init__(
        self,
        db_url: str,
        log_dir: Path,
        *,
        port: int | None = None,
        env: dict[str, str] | None = None,
        log_level: str = "info",
    ) -> None:
        self.db_url = db_url
        self.log_level = log_level
        self.port = port or free_port()
        self.log_dir = log_dir
        self.env = {**os.environ, **receiver_connection_env(), **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills = 0
        self._log_files: list[Path] = []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, conn_id: str = RECEIVER_CONN_ID) -> str:
        return f"{self.base_url}/neoleads/webhooks/{conn_id}"

    def start(self, *, wait: bool = True, timeout: float = 60.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        log_path = self.log_dir / f"receiver-{self.port}-{self.starts}.log"
        self._log_files.append(log_path)
        with open(log_path, "wb") as log_file:
            self.proc = subprocess.Popen(
                [
                    NEOLEADS,
                    "webhooks",
                    "serve",
                    "--port",
                    str(self.port),
                    "--db-url",
                    self.db_url,
                    "--log-level",
                    self.log_level,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        if wait:
            self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 60.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"the receiver exited with {self.proc.returncode}:\n{self.logs()[-3000:]}")
            try:
                if httpx.get(f"{self.base_url}/neoleads/_health", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"the receiver did not answer within {timeout} s:\n{self.logs()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs, in-flight requests and transactions die with the process."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self.kills += 1

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def logs(self) -> str:
        return "".join(path.read_text(errors="replace") for path in self._log_files if path.exists())


@pytest.fixture
def receiver_factory(tmp_path: Path) -> Iterator[Any]:
    """Build receiver processes; every one built is stopped at the end of the test."""
    made: list[ReceiverProcess] = []

    def make(db_url: str, **kwargs: Any) -> ReceiverProcess:
        receiver = ReceiverProcess(db_url, tmp_path, **kwargs)
        made.append(receiver)
        return receiver

    yield make
    for receiver in made:
        receiver.stop()


# --------------------------------------------------------------------------- PostgreSQL


@pytest.fixture
def fresh_pg_database(pg_url: str) -> Iterator[str]:
    """A new, empty database on the shared PostgreSQL server for this test only; dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from neoleads_provider.store.engine import dispose_engines

    name = f"neoleads_rel_{uuid.uuid4().hex[:12]}"
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(pg_url).set(database=name).render_as_string(hide_password=False)
    finally:
        dispose_engines()
        with admin.connect() as conn:
            conn.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :name"),
                {"name": name},
            )
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


def _pg_bindir() -> Path | None:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: p.parent.parent.name)
    usable = [path.parent for path in candidates if (path.parent / "initdb").exists()]
    return usable[-1] if usable else None


class ThrowawayPostgres:
    """A private PostgreSQL instance (initdb in a temp dir, pg_ctl on a free port) that tests may stop.

    The machine's shared cluster is never touched. initdb refuses to run as root, so as root the
    commands run as the ``postgres`` user, which owns the data directory.
    """

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="neoleads-rel-pg-"))
        self.data = self.root / "data"
        self.logfile = self.root / "postgres.log"
        self.as_user: str | None = "postgres" if os.geteuid() == 0 else None
        self.running = False
        self.stops = 0

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/neoleads"

    def _run(self, *args: str, timeout: float = 60) -> None:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self.as_user:
            command = ["runuser", "-u", self.as_user, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")

    def init(self) -> None:
        if self.as_user:
            shutil.chown(self.root, user=self.as_user)
        self.root.chmod(0o700)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        self.start()
        from sqlalchemy import create_engine, text

        admin = create_engine(
            f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres", isolation_level="AUTOCOMMIT"
        )
        with admin.connect() as conn:
            conn.execute(text("CREATE DATABASE neoleads"))
        admin.dispose()

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.logfile), "-o", options, "-w", "-t", "60", "start"
        )
        self.running = True

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server; ``immediate`` is a crash as far as clients and recovery are concerned."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")
        self.running = False
        self.stops += 1

    def destroy(self) -> None:
        if self.running:
            with contextlib.suppress(Exception):
                self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def throwaway_pg() -> Iterator[ThrowawayPostgres]:
    """A PostgreSQL instance of this module's own, which its tests may stop and start at will."""
    bindir = _pg_bindir()
    if bindir is None or (os.geteuid() == 0 and shutil.which("runuser") is None):
        if os.environ.get("NEOLEADS_REQUIRE_PG") == "1":
            pytest.fail(
                "NEOLEADS_REQUIRE_PG=1 but no PostgreSQL server binaries under /usr/lib/postgresql/*/bin"
            )
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) under /usr/lib/postgresql/*/bin")
    instance = ThrowawayPostgres(bindir)
    try:
        instance.init()
        yield instance
    finally:
        from neoleads_provider.store.engine import dispose_engines

        dispose_engines()
        instance.destroy()


# --------------------------------------------------------------------------- Airflow runs


@pytest.fixture(scope="session")
def migrated_airflow_db(airflow_home: Path) -> Path:
    """The session's Airflow metadata database, migrated once."""
    subprocess.run(
        [AIRFLOW, "db", "migrate"], check=True, capture_output=True, env=os.environ.copy(), timeout=300
    )
    return airflow_home
