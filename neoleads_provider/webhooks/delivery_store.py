"""The writer thread's side of a delivery: read the verified body into a row, and commit a batch of them.

:class:`DeliveryStore` runs on the receiver's writer thread (``webhooks/batching.py`` hands it what arrived
while the previous batch committed); :class:`~neoleads_provider.store.writer.EventWriter` does the SQL.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, NamedTuple

from neoleads_provider.events.fields import PayloadError, event_identity
from neoleads_provider.events.redact import may_carry_secrets
from neoleads_provider.store.errors import EventStoreError
from neoleads_provider.store.writer import RowRefusedError
from neoleads_provider.webhooks.answers import Refusal
from neoleads_provider.webhooks.body import parse_event_body

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import datetime

    from neoleads_provider.store.repository import NewEvent
    from neoleads_provider.store.writer import EventWriter
    from neoleads_provider.webhooks.answers import LogThrottle

__all__ = ["STORE_RETRY_AFTER_SECONDS", "Delivery", "DeliveryStore"]

log = logging.getLogger("neoleads_provider.webhooks.app")

STORE_RETRY_AFTER_SECONDS = 30


class Delivery(NamedTuple):
    """A verified delivery on its way to the writer thread."""

    conn_id: str
    #: The connection's Neoleads account: a payload naming another one is refused.
    account_id: int
    delivery_id: str
    body: bytes
    received_at: datetime


def _identity_bytes(event: str, text: str, body: bytes) -> bytes:
    # A body that may have had credentials redacted is identified by what is stored, not by what came.
    return text.encode("utf-8") if may_carry_secrets(event, body) else body


def _parse_delivery(delivery: Delivery) -> NewEvent:
    """Read a verified delivery into the row to store, or raise the refusal that answers it."""
    from neoleads_provider.store.repository import NewEvent

    try:
        text, fields = parse_event_body(delivery.body)
    except PayloadError as exc:
        raise Refusal(400, str(exc)) from None
    except Exception:
        # A parser bug must cost this delivery alone, not the whole batch.
        log.exception(
            "Neoleads webhook %r: delivery %s could not be parsed", delivery.conn_id, delivery.delivery_id
        )
        raise Refusal(400, "the body could not be read as a webhook event", logged=True) from None
    if fields.account_id is not None and fields.account_id != delivery.account_id:
        # Signed with this connection's secret but about another account: a misrouted webhook, or one
        # tenant's credential aimed at another's sensors. Never stored, so it can match nothing.
        log.warning(
            "Neoleads webhook %r refused delivery %s: its payload is for account %s, the connection's "
            "account_id is %s",
            delivery.conn_id,
            delivery.delivery_id,
            fields.account_id,
            delivery.account_id,
        )
        raise Refusal(
            422, f"the payload's account {fields.account_id} is not this endpoint's account", logged=True
        )
    return NewEvent(
        conn_id=delivery.conn_id,
        delivery_id=delivery.delivery_id,
        # From the stored text: a body whose credentials were redacted leaves no digest of them behind.
        event_key=event_identity(
            fields,
            _identity_bytes(fields.event, text, delivery.body),
            received_at=delivery.received_at.timestamp(),
        ),
        fields=fields,
        body=text,
        received_at=delivery.received_at,
    )


class DeliveryStore:
    """Parse and commit deliveries on the writer thread; one ``(status, event_id)`` or refusal each."""

    def __init__(self, writer: EventWriter, throttle: LogThrottle) -> None:
        self.writer = writer
        self._throttle = throttle

    def _unavailable(self, conn_id: str, exc: BaseException) -> Refusal:
        suppressed = self._throttle.check(f"store:{type(exc.__cause__ or exc).__name__}")
        if suppressed is not None:
            more = f" ({suppressed} similar errors not logged)" if suppressed else ""
            # The error text names the table or the failing statement, never the payload's secrets
            # (the body holds no credentials) and never the database password.
            log.error(
                "Neoleads event store unavailable; answering 503 to webhook %r: %s%s", conn_id, exc, more
            )
        return Refusal(
            503,
            "event store unavailable",
            headers={"Retry-After": str(STORE_RETRY_AFTER_SECONDS)},
            logged=True,
        )

    def save_batch(self, deliveries: Sequence[Delivery]) -> list[Any]:
        """Runs on the writer thread. A body that does not parse is refused alone (400), as is a row the
        database refuses; a store outage refuses the whole batch with 503."""
        outcomes: list[Any] = [None] * len(deliveries)
        parsed: list[tuple[int, NewEvent]] = []
        for index, delivery in enumerate(deliveries):
            try:
                parsed.append((index, _parse_delivery(delivery)))
            except Refusal as refusal:
                outcomes[index] = refusal
        if not parsed:
            return outcomes
        try:
            results = self.writer.write([new for _, new in parsed])
        except EventStoreError as exc:
            unavailable = self._unavailable(parsed[0][1].conn_id, exc)
            for index, _ in parsed:
                outcomes[index] = unavailable
            return outcomes
        for (index, new), result in zip(parsed, results, strict=True):
            if isinstance(result, RowRefusedError):
                outcomes[index] = Refusal(400, "the event store refused the delivery's values")
            elif isinstance(result, EventStoreError):
                outcomes[index] = self._unavailable(new.conn_id, result)
            else:
                event_id, inserted = result
                outcomes[index] = ("stored" if inserted else "duplicate", event_id)
        return outcomes
