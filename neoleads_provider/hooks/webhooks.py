"""The hook's account webhooks (``/webhooks``); administrators only."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from neoleads_provider.events.names import WEBHOOK_EVENTS
from neoleads_provider.exceptions import NeoleadsConfigError
from neoleads_provider.hooks.base import NeoleadsHookBase, without_none

if TYPE_CHECKING:
    from collections.abc import Sequence


class WebhooksApi(NeoleadsHookBase):
    """Account webhooks, signed with a server-generated secret."""

    def list_webhooks(self) -> list[dict[str, Any]]:
        """The account's webhooks (administrator token), each with its signing ``secret``."""
        return list(self.request("GET", "webhooks")["payload"]["webhooks"])

    def create_webhook(
        self, url: str, subscriptions: Sequence[str], *, name: str | None = None
    ) -> dict[str, Any]:
        """Create an account webhook; the response carries the server-generated signing ``secret``."""
        body = without_none(url=url, subscriptions=_checked_events(subscriptions), name=name)
        return dict(self.request("POST", "webhooks", json=body)["payload"]["webhook"])

    def update_webhook(
        self,
        webhook_id: int,
        *,
        url: str | None = None,
        subscriptions: Sequence[str] | None = None,
        name: str | None = None,
    ) -> dict[str, Any]:
        """Change an account webhook's URL, events or name."""
        body = without_none(
            url=url,
            subscriptions=_checked_events(subscriptions) if subscriptions is not None else None,
            name=name,
        )
        return dict(
            self.request("PATCH", f"webhooks/{int(webhook_id)}", json=body, idempotent=True)["payload"][
                "webhook"
            ]
        )

    def delete_webhook(self, webhook_id: int) -> None:
        """Delete an account webhook."""
        self.request("DELETE", f"webhooks/{int(webhook_id)}")


def _checked_events(events: Sequence[str]) -> list[str]:
    events = [events] if isinstance(events, str) else list(events)
    unknown = [event for event in events if event not in WEBHOOK_EVENTS]
    if not events or unknown:
        raise NeoleadsConfigError(
            f"subscriptions must be a non-empty list drawn from {', '.join(WEBHOOK_EVENTS)}; unknown: {unknown}"
        )
    return events
