"""The receiver under load and SIGKILL: every acknowledged delivery is stored, each exactly once.

A careful sender (as a webhook platform's delivery worker is) posts 10,000 signed deliveries over loopback
with 32 in flight, and retries each on any non-2xx answer, timeout or broken connection, keeping its
delivery id and signing each attempt afresh. Meanwhile the ``neoleads webhooks serve`` process is killed
with SIGKILL twice and restarted on the same port. Afterwards the store must hold exactly the set of
deliveries that were acknowledged, each once, with the body that was sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
import uuid
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import create_engine, func, select

from neoleads_provider.store.schema import webhook_events
from neoleads_provider.webhooks.verify import signed_headers

pytestmark = pytest.mark.reliability

DELIVERIES = 10_000
CONCURRENCY = 32
# SIGKILL (then restart) once this share of the deliveries has been acknowledged.
KILL_AT = (0.3, 0.65)
ATTEMPT_TIMEOUT = 10.0
RUN_DEADLINE_SECONDS = 240.0
SECRET = "rel-whsec-7c1e0f5a9b3d4e2f"  # the receiver_factory connection's secret


def _payload(index: int) -> dict[str, Any]:
    conversation = 7000 + index % 50
    return {
        "event": "message_created",
        "id": 500_000 + index,
        "content": f"load message {index} \u2014 ünïcödé ✓",
        "message_type": "incoming",
        "private": False,
        "sender": {"id": 300 + index % 50, "name": "Load Tester"},
        "account": {"id": 1, "name": "Acme"},
        "inbox": {"id": 1, "name": "API"},
        "conversation": {
            "id": conversation,
            "inbox_id": 1,
            "contact_inbox": {"contact_id": 300 + index % 50},
        },
    }


class LeanConnection:
    """One keep-alive HTTP/1.1 connection, written by hand.

    The sender shares two cores with the receiver it loads; a full HTTP client costs more CPU per request
    than the receiver does, so this one only writes a request and reads a ``Content-Length`` answer.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def post(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Length: {len(body)}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
        self.writer.write(head.encode("latin-1") + body)
        await self.writer.drain()
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.split(b"\r\n")
        status = int(lines[0].split()[1])
        length, close = 0, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        answer = await self.reader.readexactly(length)
        if close:
            self.close()
        return status, answer


class CarefulSender:
    """Posts every delivery until it is acknowledged with a 2xx, keeping the delivery id across attempts."""

    def __init__(self, url: str, deliveries: list[tuple[str, bytes]], *, deadline: float) -> None:
        parts = urlsplit(url)
        self.host, self.port, self.path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path
        self.deliveries = deliveries
        self.deadline = deadline
        self.acked: dict[str, str] = {}
        self.attempts = 0
        self.outcomes: Counter[str] = Counter()
        self.ack_event = asyncio.Event()

    async def _deliver(self, connection: LeanConnection, delivery_id: str, body: bytes) -> None:
        failures = 0
        while time.monotonic() < self.deadline:
            headers = signed_headers(SECRET, body, timestamp=int(time.time()), delivery_id=delivery_id)
            self.attempts += 1
            try:
                status, answer = await asyncio.wait_for(
                    connection.post(self.path, headers, body), timeout=ATTEMPT_TIMEOUT
                )
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError) as exc:
                # Refused while the receiver restarts, reset or cut short when it is killed, or too slow.
                connection.close()
                self.outcomes[type(exc).__name__] += 1
            else:
                self.outcomes[str(status)] += 1
                if 200 <= status < 300:
                    ack = json.loads(answer)
                    assert ack["delivery_id"] == delivery_id
                    self.acked[delivery_id] = ack["status"]
                    self.ack_event.set()
                    return
            failures += 1
            # Jittered exponential back-off, capped low so the test stays short.
            await asyncio.sleep(random.uniform(0, min(1.0, 0.02 * 2**failures)))

    async def run(self) -> None:
        queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        for item in self.deliveries:
            queue.put_nowait(item)

        async def worker() -> None:
            connection = LeanConnection(self.host, self.port)
            try:
                while True:
                    try:
                        delivery_id, body = queue.get_nowait()
                    except asyncio.QueueEmpty:
                        return
                    await self._deliver(connection, delivery_id, body)
            finally:
                connection.close()

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


async def _kill_and_restart(receiver: Any, sender: CarefulSender, total: int) -> list[dict[str, Any]]:
    kills = []
    for share in KILL_AT:
        while len(sender.acked) < share * total and time.monotonic() < sender.deadline:
            sender.ack_event.clear()
            await asyncio.wait_for(sender.ack_event.wait(), timeout=30)
        acked_before = len(sender.acked)
        await asyncio.to_thread(receiver.kill)
        killed_at = time.monotonic()
        await asyncio.to_thread(receiver.start, wait=True)
        kills.append(
            {"acked_before_kill": acked_before, "restart_seconds": round(time.monotonic() - killed_at, 2)}
        )
    return kills


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_every_acknowledged_delivery_is_stored_exactly_once(
    backend, request, tmp_path, receiver_factory, figures
):
    if backend == "sqlite":
        db_url = f"sqlite:///{tmp_path / 'events.db'}"
    else:
        db_url = request.getfixturevalue("fresh_pg_database")
    # Warnings only: two log lines per delivery would cost the receiver more than storing it.
    receiver = receiver_factory(db_url, log_level="warning")
    receiver.start()

    deliveries = []
    for index in range(DELIVERIES):
        body = json.dumps(_payload(index), ensure_ascii=False, separators=(",", ":")).encode()
        deliveries.append((f"rel-{uuid.uuid4()}", body))
    sent_digest = {delivery_id: hashlib.sha256(body).hexdigest() for delivery_id, body in deliveries}

    started = time.monotonic()
    sender = CarefulSender(receiver.url(), deliveries, deadline=started + RUN_DEADLINE_SECONDS)

    async def main() -> list[dict[str, Any]]:
        send = asyncio.create_task(sender.run())
        kills = await _kill_and_restart(receiver, sender, DELIVERIES)
        await send
        return kills

    kills = asyncio.run(main())
    elapsed = time.monotonic() - started
    receiver.stop()

    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            counts = dict(
                conn.execute(
                    select(webhook_events.c.delivery_id, func.count()).group_by(webhook_events.c.delivery_id)
                ).all()
            )
            bodies = dict(conn.execute(select(webhook_events.c.delivery_id, webhook_events.c.body)).all())
    finally:
        engine.dispose()

    acked = set(sender.acked)
    stored = set(counts)
    lost = acked - stored
    duplicated = {delivery_id for delivery_id, count in counts.items() if count != 1}
    unknown = stored - set(sent_digest)
    altered = [
        delivery_id
        for delivery_id, body in bodies.items()
        if hashlib.sha256(body.encode()).hexdigest() != sent_digest.get(delivery_id)
    ]
    figures.record(
        f"receiver_load_{backend}",
        {
            "backend": backend,
            "deliveries_sent": DELIVERIES,
            "concurrency": CONCURRENCY,
            "http_attempts": sender.attempts,
            "acknowledged": len(acked),
            "acknowledged_as_duplicate": sum(1 for status in sender.acked.values() if status == "duplicate"),
            "stored": len(stored),
            "stored_rows": sum(counts.values()),
            "lost": len(lost),
            "duplicated": len(duplicated),
            "stored_but_never_sent": len(unknown),
            "bodies_altered": len(altered),
            "sigkills_survived": receiver.kills,
            "kills": kills,
            "attempt_outcomes": dict(sender.outcomes),
            "seconds": round(elapsed, 1),
        },
    )
    assert receiver.kills >= 2
    assert not lost, f"{len(lost)} acknowledged deliveries are not stored, e.g. {sorted(lost)[:3]}"
    assert not duplicated, f"{len(duplicated)} deliveries stored more than once"
    assert not unknown
    assert not altered
    # The careful sender never gives up before the deadline, so everything ends up acknowledged.
    assert len(acked) == DELIVERIES, f"only {len(acked)} of {DELIVERIES} acknowledged in {elapsed:.0f} s"
    assert stored == acked
