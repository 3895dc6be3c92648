# mypy: disable-error-code="misc"
# The mixin's methods name their real receiver, SandboxState, as their self type, so that calls into the
# other mixins are checked; mypy reports such a self type as "not a supertype of its class" [misc].
"""Account webhooks: ``/webhooks`` (list, create, update, delete); admins only, server-generated secrets."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from neoleads_provider.testing.errors import not_found, record_invalid, unprocessable
from neoleads_provider.testing.models import (
    ALLOWED_WEBHOOK_EVENTS,
    DEFAULT_WEBHOOK_SUBSCRIPTIONS,
    Caller,
    Webhook,
)
from neoleads_provider.testing.values import cast_id, copy_json, new_token, scalar_string

if TYPE_CHECKING:
    from collections.abc import Mapping

    from neoleads_provider.testing.routing import RouteContext, SandboxRouter
    from neoleads_provider.testing.state import SandboxState

_URL_RE = re.compile(r"https?://[^\s/$.?#][^\s]*", re.IGNORECASE)


class WebhooksMixin:
    """The account webhooks of :class:`~neoleads_provider.testing.state.SandboxState`."""

    def _webhook_params(self: SandboxState, params: Mapping[str, Any]) -> dict[str, Any]:
        """Unwrap ``{"webhook": {...}}`` or take the flat body (``wrap_parameters`` does the same)."""
        wrapped = params.get("webhook")
        if isinstance(wrapped, dict):
            return dict(wrapped)
        fields = {key: params[key] for key in ("url", "name", "subscriptions", "inbox_id") if key in params}
        if not fields:
            raise unprocessable("param is missing or the value is empty: webhook")
        return fields

    def _validate_webhook(self: SandboxState, webhook: Webhook) -> None:
        errors: list[tuple[str, str]] = []
        if any(
            other.url == webhook.url and other.account_id == webhook.account_id and other.id != webhook.id
            for other in self.webhooks.values()
        ):
            errors.append(("url", "Url has already been taken"))
        if not isinstance(webhook.url, str) or not _URL_RE.search(webhook.url):
            errors.append(("url", "Url is invalid"))
        subscriptions = webhook.subscriptions
        if (
            not isinstance(subscriptions, list)
            or not subscriptions
            or any(item not in ALLOWED_WEBHOOK_EVENTS for item in subscriptions)
        ):
            errors.append(("subscriptions", "Subscriptions Invalid events"))
        if errors:
            raise record_invalid(errors)

    def _assign_webhook(self: SandboxState, webhook: Webhook, fields: Mapping[str, Any]) -> None:
        if "url" in fields:
            webhook.url = scalar_string(fields.get("url")) or ""
        if "name" in fields:
            webhook.name = scalar_string(fields.get("name"))
        # Rails' permit(subscriptions: []) drops a null: the webhook keeps what it had (on create, the default).
        if fields.get("subscriptions") is not None:
            value = fields["subscriptions"]
            webhook.subscriptions = list(value) if isinstance(value, list) else value
        if "inbox_id" in fields:
            inbox_id = cast_id(fields.get("inbox_id"))
            webhook.inbox_id = inbox_id if inbox_id in self.inboxes else None

    def list_webhooks(self: SandboxState, caller: Caller) -> dict[str, Any]:
        """``GET /webhooks``: ``{"payload": {"webhooks": [...]}}``; administrators only."""
        self.require_admin(caller)
        with self.lock:
            return {
                "payload": {
                    "webhooks": [
                        self.render_webhook(item)
                        for item in self.webhooks.values()
                        if item.account_id == caller.account.id
                    ]
                }
            }

    def create_webhook(self: SandboxState, caller: Caller, params: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /webhooks``: url unique per account, subscriptions validated, server-generated secret."""
        self.require_admin(caller)
        fields = self._webhook_params(params)
        return self.add_webhook(
            fields.get("url"),
            subscriptions=fields.get("subscriptions"),
            name=fields.get("name"),
            inbox_id=fields.get("inbox_id"),
            account_id=caller.account.id,
        )

    def add_webhook(
        self: SandboxState,
        url: Any,
        *,
        secret: str | None = None,
        subscriptions: Any = None,
        name: Any = None,
        inbox_id: Any = None,
        account_id: int | None = None,
        default_subscriptions: bool = False,
    ) -> dict[str, Any]:
        """Create an account webhook; ``secret`` may be chosen here (the real API always generates it).

        :param default_subscriptions: subscribe to every event when ``subscriptions`` is omitted; otherwise
            an omitted ``subscriptions`` gets the real server's default, :data:`DEFAULT_WEBHOOK_SUBSCRIPTIONS`.
        :return: ``{"payload": {"webhook": {...}}}``.
        """
        if subscriptions is None:
            subscriptions = list(
                ALLOWED_WEBHOOK_EVENTS if default_subscriptions else DEFAULT_WEBHOOK_SUBSCRIPTIONS
            )
        if secret is not None and (not isinstance(secret, str) or not secret):
            raise unprocessable("secret must be a non-empty string")
        with self.lock:
            webhook = Webhook(0, account_id or self.account_id, "", [], secret or new_token())
            self._assign_webhook(
                webhook, {"url": url, "name": name, "subscriptions": subscriptions, "inbox_id": inbox_id}
            )
            self._validate_webhook(webhook)
            webhook.id = self._id("webhook")
            self.webhooks[webhook.id] = webhook
            return {"payload": {"webhook": self.render_webhook(webhook)}}

    def _get_webhook(self: SandboxState, caller: Caller, webhook_id: Any) -> Webhook:
        webhook = self.webhooks.get(cast_id(webhook_id) or -1)
        if webhook is None or webhook.account_id != caller.account.id:
            raise not_found()
        return webhook

    def update_webhook(
        self: SandboxState, caller: Caller, webhook_id: Any, params: Mapping[str, Any]
    ) -> dict[str, Any]:
        """``PATCH /webhooks/{id}``: same fields and validations as create; the secret is kept."""
        self.require_admin(caller)
        with self.lock:
            webhook = self._get_webhook(caller, webhook_id)
            fields = self._webhook_params(params)
            draft = Webhook(
                **{name: copy_json(getattr(webhook, name)) for name in webhook.__dataclass_fields__}
            )
            self._assign_webhook(draft, fields)
            self._validate_webhook(draft)
            self.webhooks[webhook.id] = draft
            return {"payload": {"webhook": self.render_webhook(draft)}}

    def delete_webhook(self: SandboxState, caller: Caller, webhook_id: Any) -> None:
        """``DELETE /webhooks/{id}``: 200 with an empty body."""
        self.require_admin(caller)
        with self.lock:
            del self.webhooks[self._get_webhook(caller, webhook_id).id]


def router(context: RouteContext) -> SandboxRouter:
    """The account webhook routes, below the account."""
    account = context.router()
    account.add("GET", "/webhooks", WebhooksMixin.list_webhooks)
    account.add("POST", "/webhooks", WebhooksMixin.create_webhook, params="body", admin=True)
    account.add(
        ["PATCH", "PUT"], "/webhooks/{webhook_id}", WebhooksMixin.update_webhook, params="body", admin=True
    )
    account.add("DELETE", "/webhooks/{webhook_id}", WebhooksMixin.delete_webhook)
    return account
