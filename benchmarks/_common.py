"""Shared helpers for the benchmarks: the machine, servers in subprocesses, a lean HTTP load client, output.

Every benchmark prints exactly one JSON line on stdout (its figures, its baseline's figures and the
machine); progress goes to stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

# stdout carries the one JSON line and nothing else: Airflow logs to stdout once imported, so everything
# printed or logged goes to stderr and emit() alone writes to the real stdout.
_RESULT_STREAM = sys.stdout
sys.stdout = sys.stderr


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    """The machine the figures come from, and how busy it was when they were taken."""
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_gb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gb": memory_gb,
        "python": platform.python_version(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def emit(name: str, figures: dict[str, Any]) -> None:
    """Print the benchmark's one JSON line."""
    print(json.dumps({"benchmark": name, **figures, "machine": machine()}), file=_RESULT_STREAM, flush=True)


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile (0..1) by nearest rank; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def base_env(home: Path) -> dict[str, str]:
    """An environment for child processes with a throwaway AIRFLOW_HOME."""
    env = os.environ.copy()
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__UNIT_TEST_MODE": "True",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


@contextlib.contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=prefix) as path:
        yield Path(path)


def wait_http(url: str, process: subprocess.Popen[Any], timeout: float = 60.0) -> None:
    """Wait until ``url`` answers (any status), or fail if the process exits or the time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer within {timeout} s") from None
            time.sleep(0.1)


@contextlib.contextmanager
def server_process(
    args: Sequence[str], env: dict[str, str], ready_url: str, log_path: Path
) -> Iterator[subprocess.Popen[Any]]:
    """Run a server in its own process group; kill the group on exit."""
    with log_path.open("wb") as output:
        process = subprocess.Popen(
            list(args), env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            wait_http(ready_url, process)
            yield process
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)


def postgres_cpu_seconds() -> float:
    """CPU time used so far by every PostgreSQL server process on this machine (0.0 if none is running)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            if stat[stat.index("(") + 1 : stat.rindex(")")] in ("postgres", "postmaster"):
                total += cpu_seconds(int(entry.name))
    return total


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process (all its threads) has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- PostgreSQL


def pg_schema_url(base: str) -> tuple[str, str]:
    """Create an empty schema in the PostgreSQL database at ``base``; return a URL using it, and its name."""
    schema = f"nl_bench_{uuid.uuid4().hex[:10]}"
    from sqlalchemy import create_engine, text

    admin = create_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    admin.dispose()
    separator = "&" if "?" in base else "?"
    return f"{base}{separator}options={quote(f'-csearch_path={schema}')}", schema


def drop_pg_schema(base: str, schema: str) -> None:
    """Drop a schema made by :func:`pg_schema_url`, with everything in it."""
    from sqlalchemy import create_engine, text

    admin = create_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


# --------------------------------------------------------------------------- payloads


# The time every sample payload's stamps show (2026-05-01T12:00:00Z), so the bodies are the same on every run.
PAYLOAD_NOW = 1777636800.0


def message_payload(
    *,
    conversation_id: int,
    message_id: int,
    content: str = "Yes, next Tuesday works for me.",
    contact_id: int = 1,
) -> dict[str, Any]:
    """A ``message_created`` delivery shaped like Neoleads' (Chatwoot's ``Message#webhook_data``)."""
    from neoleads_provider.events.build import sample_event

    return sample_event(
        "message_created",
        conversation_id=conversation_id,
        message_id=message_id,
        content=content,
        contact_id=contact_id,
        now=PAYLOAD_NOW,
    )


def signed_delivery(
    secret: str, payload: dict[str, Any], *, now: float | None = None
) -> tuple[bytes, dict[str, str]]:
    from neoleads_provider.webhooks.verify import signed_headers

    body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
    headers = signed_headers(
        secret, body, timestamp=int(now if now is not None else time.time()), delivery_id=str(uuid.uuid4())
    )
    return body, headers


# --------------------------------------------------------------------------- a lean load client


def raw_post(host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    """Serialise one HTTP/1.1 keep-alive POST."""
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if length:
        await reader.readexactly(length)
    return status


async def _load(
    host: str, port: int, requests: Sequence[bytes], concurrency: int
) -> tuple[float, list[float], dict[int, int]]:
    queue = iter(requests)
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def sender() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for request in queue:
                started = time.perf_counter()
                writer.write(request)
                status = await _read_response(reader)
                latencies.append(time.perf_counter() - started)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    started = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(concurrency)))
    return time.perf_counter() - started, latencies, statuses


def run_load(host: str, port: int, requests: Sequence[bytes], concurrency: int) -> dict[str, Any]:
    """Send pre-serialised requests over ``concurrency`` keep-alive connections; return rate and latencies.

    A minimal asyncio HTTP/1.1 client rather than httpx: it spends a few microseconds per request, so the
    servers, not the load generator, set the pace (httpx costs several times more CPU per request, which on
    a small machine would be taken from the server under test).
    """
    elapsed, latencies, statuses = asyncio.run(_load(host, port, requests, concurrency))
    return {
        "requests": len(requests),
        "seconds": round(elapsed, 3),
        "per_second": round(len(requests) / elapsed, 1),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "statuses": {str(code): count for code, count in sorted(statuses.items())},
    }
