"""The Neoleads (Chatwoot) webhook event, in one place: its names, reading a payload, filters, building payloads.

Stdlib only and cheap to import (DAG files import the sensor, which imports this). Nothing else in the
provider reads or writes payload shapes:

- :mod:`~neoleads_provider.events.names`: event names, message events, message types.
- :mod:`~neoleads_provider.events.fields`: :func:`read_event` → :class:`EventFields`, and
  :func:`event_identity`, the key that makes every copy of one logical event one stored event.
- :mod:`~neoleads_provider.events.filter`: :class:`EventFilter`, what a sensor or trigger waits for.
- :mod:`~neoleads_provider.events.text`: text a database cannot store (NUL, lone surrogates).
- :mod:`~neoleads_provider.events.build`: payloads shaped like the server's (sandbox, samples, API messages).
"""

from __future__ import annotations

from neoleads_provider.events.fields import EventFields, PayloadError, event_identity, read_event
from neoleads_provider.events.filter import EventFilter
from neoleads_provider.events.names import (
    KNOWN_EVENTS,
    MESSAGE_EVENTS,
    MESSAGE_TYPES,
    WEBHOOK_EVENTS,
)

__all__ = [
    "KNOWN_EVENTS",
    "MESSAGE_EVENTS",
    "MESSAGE_TYPES",
    "WEBHOOK_EVENTS",
    "EventFields",
    "EventFilter",
    "PayloadError",
    "event_identity",
    "read_event",
]
