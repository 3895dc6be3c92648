"""The standalone receiver's access log: lines as logging wrote them, written off the event loop, in batches."""

from __future__ import annotations

import io
import logging
import os
import threading
import time

import httpx
import pytest

from neoleads_provider.webhooks import access_log as access_log_module
from neoleads_provider.webhooks.access_log import AccessLog
from tests._helpers import free_port, standalone_receiver

WHEN = 1777636800.25  # 2026-05-01T12:00:00.250Z


class CountingStream(io.StringIO):
    """Counts write() calls: one per flush, never one per line."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.writers: set[str] = set()

    def write(self, text: str) -> int:
        self.writes += 1
        self.writers.add(threading.current_thread().name)
        return super().write(text)


def test_a_line_reads_as_logging_would_have_written_it() -> None:
    stream = io.StringIO()
    log = AccessLog(stream, clock=lambda: WHEN)
    log.record("10.0.0.7", "POST", "/neoleads/webhooks/neoleads_default", 200, 1.44)
    log.close()
    record = logging.LogRecord(
        "neoleads_provider.webhooks.access", logging.INFO, __file__, 1, '%s "%s %s" %s %.1f ms', None, None
    )
    record.created, record.msecs = WHEN, 250.0
    record.args = ("10.0.0.7", "POST", "/neoleads/webhooks/neoleads_default", 200, 1.44)
    expected = logging.Formatter("%(asctime)s [%(levelname)s] %(name)s: %(message)s").format(record)
    assert stream.getvalue() == expected + "\n"


def test_each_line_carries_its_own_time_to_the_millisecond() -> None:
    times = iter([WHEN, WHEN + 0.125, WHEN + 1.5])
    stream = io.StringIO()
    log = AccessLog(stream, clock=lambda: next(times))
    for status in (200, 401, 408):
        log.record("-", "POST", "/p", status, 0.0)
    log.close()
    stamps = [line.split(" [INFO]")[0][-3:] for line in stream.getvalue().splitlines()]
    assert stamps == ["250", "375", "750"]
    assert [line.split('"')[2].split()[0] for line in stream.getvalue().splitlines()] == ["200", "401", "408"]


def test_a_path_cannot_forge_a_second_line() -> None:
    stream = io.StringIO()
    log = AccessLog(stream)
    log.record("-", "POST", "/neoleads/webhooks/x\r\n2026-05-01 [INFO] forged", 404, 0.1)
    log.close()
    assert len(stream.getvalue().splitlines()) == 1
    assert "\\r\\n" in stream.getvalue()


def test_lines_are_written_in_one_piece_per_interval_from_a_thread_of_their_own() -> None:
    stream = CountingStream()
    log = AccessLog(stream, interval=0.05)
    for number in range(500):
        log.record("-", "POST", f"/p/{number}", 200, 0.1)
    deadline = time.monotonic() + 5
    while len(stream.getvalue().splitlines()) < 500 and time.monotonic() < deadline:
        time.sleep(0.01)
    log.close()
    assert len(stream.getvalue().splitlines()) == 500
    assert stream.writes <= 3
    assert stream.writers <= {"neoleads-access-log", threading.current_thread().name}
    assert "neoleads-access-log" in stream.writers


def test_lines_recorded_from_many_threads_are_all_written_once() -> None:
    stream = io.StringIO()
    log = AccessLog(stream, interval=0.001)

    def record(thread: int) -> None:
        for number in range(2000):
            log.record("-", "POST", f"/p/{thread}/{number}", 200, 0.1)

    threads = [threading.Thread(target=record, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == len(set(lines)) == 8000


def test_a_stream_that_cannot_keep_up_bounds_the_queue_and_says_how_many_were_dropped(monkeypatch) -> None:
    monkeypatch.setattr(access_log_module, "MAX_PENDING_LINES", 10)
    stream = io.StringIO()
    log = AccessLog(stream, interval=3600)
    for number in range(25):
        log.record("-", "POST", f"/p/{number}", 200, 0.1)
    log.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 11
    assert lines[-1] == "(15 access lines were dropped: the log stream was not keeping up)"


def test_a_broken_stream_is_not_the_callers_problem() -> None:
    stream = io.StringIO()
    stream.close()
    log = AccessLog(stream)
    log.record("-", "POST", "/p", 200, 0.1)
    log.close()  # no exception


@pytest.mark.parametrize(("flags", "expected"), [((), True), (("--log-level", "warning"), False)])
def test_the_standalone_server_writes_access_lines_to_stderr_unless_quieter(
    tmp_path, flags, expected
) -> None:
    """A real ``neoleads webhooks serve``: the line appears on its standard error within the interval."""
    port = free_port()
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__UNIT_TEST_MODE": "True"}
    db_url = f"sqlite:///{tmp_path / 'events.db'}"
    log_path = tmp_path / "server.log"
    with standalone_receiver(port=port, db_url=db_url, env=env, log_path=log_path, args=flags):
        httpx.post(f"http://127.0.0.1:{port}/neoleads/webhooks/nobody?token=t0p-s3cret", content=b"{}")
        time.sleep(access_log_module.FLUSH_INTERVAL_SECONDS * 3)
    stderr = log_path.read_text()
    lines = [line for line in stderr.splitlines() if "neoleads_provider.webhooks.access" in line]
    assert bool(lines) is expected, stderr
    if expected:
        assert all(line.endswith(" ms") for line in lines)
        assert any('"POST /neoleads/webhooks/nobody" 404 ' in line for line in lines), lines
    assert "t0p-s3cret" not in stderr
