"""The stored event as the rest of the provider sees it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from neoleads_provider.events.fields import COLUMN_NAMES
from neoleads_provider.events.text import neutralise_text

if TYPE_CHECKING:
    from datetime import datetime

    from sqlalchemy import Row


@dataclass(frozen=True)
class StoredEvent:
    """One stored webhook delivery (the first copy of its logical event)."""

    id: int
    conn_id: str
    delivery_id: str
    event_key: str
    event: str
    account_id: int | None
    inbox_id: int | None
    conversation_id: int | None
    message_id: int | None
    contact_id: int | None
    message_type: str | None
    private: bool | None
    sender_type: str | None
    received_at: datetime
    body: str

    @classmethod
    def from_row(cls, row: Row[Any]) -> StoredEvent:
        return cls(**row._asdict())

    @property
    def payload(self) -> dict[str, Any]:
        """The delivery's JSON body, parsed."""
        return json.loads(self.body)

    def to_xcom(self) -> dict[str, Any]:
        """A JSON-safe summary plus the full payload, as sensors and triggers hand it to the DAG.

        Text the metadata database cannot hold (NUL, lone surrogates) is replaced by U+FFFD: the receiver
        refuses such bodies, but a row stored before it did must not fail every sensor that matches it.
        """
        return {
            "event_id": self.id,
            "conn_id": self.conn_id,
            "delivery_id": self.delivery_id,
            **{name: getattr(self, name) for name in COLUMN_NAMES},
            "received_at": self.received_at.isoformat(),
            "payload": neutralise_text(self.payload),
        }
