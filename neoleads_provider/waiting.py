"""What the sensor and both triggers share to wait for Neoleads events: looks, errors and the outage policy.

:class:`~neoleads_provider.sensors.webhook.NeoleadsWebhookSensor` (poke), its
:class:`~neoleads_provider.triggers.webhook.NeoleadsWebhookTrigger` (deferred) and the asset watchers'
:class:`~neoleads_provider.triggers.events.NeoleadsEventTrigger` look through the same functions, so every
mode matches the same events and rides out a store outage the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from neoleads_provider.events.build import message_event_from_api
from neoleads_provider.events.fields import COLUMN_NAMES, read_event

if TYPE_CHECKING:
    from neoleads_provider.events.filter import EventFilter
    from neoleads_provider.hooks.neoleads import NeoleadsHook

__all__ = [
    "API_MAX_PAGES",
    "API_PAGE_SIZE",
    "MAX_OUTAGE_BACKOFF",
    "OUTAGE_LOG_EVERY",
    "STILL_WAITING_LOG_EVERY",
    "OutagePolicy",
    "found_summary",
    "is_transient_api_error",
    "look_in_api",
    "look_in_store",
    "receiving_problem",
    "repr_without_password",
    "timeout_message",
]

# While the store (or the API) is down the wait between looks doubles up to this, so a long outage costs
# little and a short one is over within half a minute of its end.
MAX_OUTAGE_BACKOFF = 30.0
# An outage is logged when it starts and then at most this often, not on every look.
OUTAGE_LOG_EVERY = 60.0
# A wait says that it is still waiting at most this often (poke mode and the trigger alike).
STILL_WAITING_LOG_EVERY = 300.0
# GET .../messages?after=<id> returns at most this many newer messages per call.
API_PAGE_SIZE = 100
# Pages read per API look; a conversation with more unread traffic than this is looked at again next time.
API_MAX_PAGES = 10


@dataclass
class OutagePolicy:
    """The one back-off for a failing store: double the wait per failed look, up to :data:`MAX_OUTAGE_BACKOFF`.

    :param interval: the normal wait between looks; the back-off never goes below it.
    """

    interval: float
    failures: int = 0
    _last_log: float = float("-inf")

    def failed(self, now: float) -> tuple[float, bool]:
        """Count a failed look; return the wait before the next one, and whether to log this failure."""
        self.failures += 1
        delay = min(self.interval * 2 ** min(self.failures, 10), max(self.interval, MAX_OUTAGE_BACKOFF))
        log_it = now - self._last_log >= OUTAGE_LOG_EVERY
        if log_it:
            self._last_log = now
        return delay, log_it

    def recovered(self) -> int:
        """Count a successful look; return how many failed looks it ends (0: there was no outage)."""
        failures, self.failures = self.failures, 0
        return failures


def look_in_store(events_db_url: str | None, flt: EventFilter) -> dict[str, Any] | None:
    """Look once in the event store; return the oldest match as an XCom dict (``source: "webhook"``) or None.

    Blocking: call it from a worker thread in async code.

    :param events_db_url: the store's SQLAlchemy URL; None reads ``[neoleads] events_db_url``.
    :raises EventStoreSchemaError: the store has no (or an old) schema; the message says to migrate it.
    :raises EventStoreError: the store failed; ``transient`` says whether to wait it out.
    """
    from neoleads_provider.store.queries import find_first_event

    found = find_first_event(events_db_url, flt)
    return None if found is None else {**found.to_xcom(), "source": "webhook"}


def is_transient_api_error(exc: BaseException) -> bool:
    """Whether an API error may go away by itself (network, 429, 5xx) rather than needing a fix."""
    from neoleads_provider.exceptions import (
        NeoleadsRateLimitError,
        NeoleadsServerError,
        NeoleadsTransportError,
    )

    return isinstance(exc, NeoleadsTransportError | NeoleadsRateLimitError | NeoleadsServerError)


def _api_event(conn_id: str, payload: dict[str, Any]) -> dict[str, Any]:
    """The XCom dict for a message found through the API: the stored-event keys, with no store ids."""
    fields = read_event(payload)
    return {
        "source": "api",
        "event_id": None,
        "conn_id": conn_id,
        "delivery_id": None,
        **{name: getattr(fields, name) for name in COLUMN_NAMES},
        "received_at": None,
        "payload": payload,
    }


def look_in_api(
    hook: NeoleadsHook, flt: EventFilter, *, max_pages: int = API_MAX_PAGES
) -> dict[str, Any] | None:
    """Read the conversation's messages after the watermark and return the first that ``flt`` matches.

    Only ``message_created`` can be recovered this way (the API has no history of other events), and only
    for a filter on one conversation. The message is reshaped as a webhook payload first, so every
    criterion means what it means for stored events. Blocking: call it from a worker thread in async code.

    :return: an XCom dict with ``source: "api"``, or None.
    :raises NeoleadsError: the API call failed; see :func:`is_transient_api_error`.
    """
    if "message_created" not in flt.events or flt.conversation_id is None:
        return None
    # The hook's account, not the filter's: a display id only means something within its account.
    account_id = hook.account_id
    after = flt.after_message_id
    for _ in range(max_pages):
        page = [m for m in hook.list_messages(flt.conversation_id, after=after) if isinstance(m, Mapping)]
        ids = [m["id"] for m in page if isinstance(m.get("id"), int)]
        for message in sorted(page, key=lambda m: m["id"] if isinstance(m.get("id"), int) else 0):
            payload = message_event_from_api(message, account_id=account_id)
            if flt.matches(payload):
                return _api_event(flt.conn_id, payload)
        # Without a cursor the API only returns the latest page; with one, a short page is the last.
        if after is None or len(page) < API_PAGE_SIZE or not ids:
            return None
        after = max(ids)
    return None


def repr_without_password(trigger: Any) -> str:
    """A trigger's repr, with the store URL's password hidden: the triggerer logs triggers by repr."""
    classpath, kwargs = trigger.serialize()
    if kwargs.get("events_db_url"):
        from neoleads_provider.store.engine import safe_url

        kwargs["events_db_url"] = safe_url(kwargs["events_db_url"])
    return trigger.repr(classpath, kwargs)


def found_summary(found: Mapping[str, Any]) -> str:
    """One line for the log about a matched event: what and where, never the message or the contact."""
    where = "event store" if found.get("source") == "webhook" else "API"
    event_id = f" (stored event {found['event_id']})" if found.get("event_id") is not None else ""
    return (
        f"Matched {found.get('event')} (message {found.get('message_id')}) in conversation "
        f"{found.get('conversation_id')}, found through the {where}{event_id}"
    )


def timeout_message(flt: EventFilter, timeout: float) -> str:
    """Why a wait ended without a match, and the two commands that tell why (the same in every mode)."""
    conversation = f" --conversation-id {flt.conversation_id}" if flt.conversation_id is not None else ""
    return (
        f"No matching Neoleads event arrived within the sensor's timeout of {timeout:g} s: waited for "
        f"{flt.describe()}. Next: `neoleads events list --conn-id {flt.conn_id}{conversation}` lists what was "
        f"stored for it; `neoleads doctor --conn-id {flt.conn_id}` checks the connection and the receiver"
    )


def receiving_problem(settings: Any) -> str | None:
    """Why the receiver refuses every delivery for this connection, or None when it can receive them.

    :param settings: the connection's :class:`~neoleads_provider.connection.NeoleadsConnectionSettings`.
    """
    if settings.webhook_secrets or settings.webhook_allow_unsigned:
        return None
    return (
        f"connection {settings.conn_id!r} has no 'webhook_secrets' (and does not allow unsigned deliveries), "
        "so the receiver refuses every delivery for it. Set 'webhook_secrets' to the secret Neoleads signs "
        "with (`neoleads webhooks register` prints it)"
    )
