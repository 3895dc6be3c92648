# mypy: disable-error-code="misc"
# The mixin's methods name their real receiver, SandboxState, as their self type, so that calls into the
# other mixins are checked; mypy reports such a self type as "not a supertype of its class" [misc].
"""Inboxes: ``/inboxes`` (list, show, create, update, ``reset_secret``) and the ``inbox_created`` event."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from neoleads_provider.events.build import inbox_event_data
from neoleads_provider.testing.errors import not_authorized, not_found, record_invalid, unprocessable
from neoleads_provider.testing.models import (
    API_CHANNEL,
    MAX_STRING_LENGTH,
    MAX_WEBHOOK_URL_LENGTH,
    WEB_CHANNEL,
    Caller,
    Inbox,
)
from neoleads_provider.testing.values import cast_bool, cast_id, copy_json, new_token, present, scalar_string

if TYPE_CHECKING:
    from collections.abc import Mapping

    from neoleads_provider.testing.routing import RouteContext, SandboxRouter
    from neoleads_provider.testing.state import SandboxState


class InboxesMixin:
    """The inboxes of :class:`~neoleads_provider.testing.state.SandboxState`."""

    def get_inbox(self: SandboxState, caller: Caller, inbox_id: Any) -> Inbox:
        """Return an inbox of the caller's account.

        :raises SandboxError: 404 when it does not exist there, 401 when an agent is not a member.
        """
        inbox = self.inboxes.get(cast_id(inbox_id) or -1)
        if inbox is None or inbox.account_id != caller.account.id:
            raise not_found()
        if not self._can_see_inbox(caller, inbox):
            raise not_authorized()
        return inbox

    def list_inboxes(self: SandboxState, caller: Caller) -> dict[str, Any]:
        """``GET /inboxes``: the inboxes the caller may see, not paginated."""
        with self.lock:
            return {
                "payload": [
                    self.render_inbox(inbox, admin=caller.is_admin)
                    for inbox in self.inboxes.values()
                    if inbox.account_id == caller.account.id and self._can_see_inbox(caller, inbox)
                ]
            }

    def show_inbox(self: SandboxState, caller: Caller, inbox_id: Any) -> dict[str, Any]:
        """``GET /inboxes/{id}``."""
        with self.lock:
            return self.render_inbox(self.get_inbox(caller, inbox_id), admin=caller.is_admin)

    def _apply_inbox_params(
        self: SandboxState, inbox: Inbox, params: Mapping[str, Any], errors: list[tuple[str, str]]
    ) -> None:
        given = params.get("channel")
        channel: dict[str, Any] = given if isinstance(given, dict) else {}
        if "name" in params:
            name = scalar_string(params.get("name"))
            if name is None:
                errors.append(("name", "Name can't be blank"))
            elif len(name) > MAX_STRING_LENGTH:
                errors.append(("name", "Name is too long (maximum is 255 characters)"))
            else:
                inbox.name = name
        for key in ("lock_to_single_conversation", "enable_auto_assignment", "greeting_enabled"):
            if key in params and cast_bool(params[key]) is not None:
                setattr(inbox, key, bool(cast_bool(params[key])))
        if "greeting_message" in params:
            inbox.greeting_message = scalar_string(params["greeting_message"])
        if inbox.channel_type == API_CHANNEL:
            self._apply_api_channel_params(inbox, channel, errors)
        elif inbox.channel_type == WEB_CHANNEL and "website_url" in channel:
            inbox.website_url = scalar_string(channel.get("website_url"))

    @staticmethod
    def _apply_api_channel_params(
        inbox: Inbox, channel: Mapping[str, Any], errors: list[tuple[str, str]]
    ) -> None:
        """Apply the API channel's parameters (``params["channel"]``): webhook URL, HMAC, attributes."""
        if "webhook_url" in channel:
            url = scalar_string(channel.get("webhook_url"))
            if url is not None and len(url) > MAX_WEBHOOK_URL_LENGTH:
                errors.append(("webhook_url", "Webhook url is too long (maximum is 2048 characters)"))
            else:
                inbox.webhook_url = url
        if "hmac_mandatory" in channel and cast_bool(channel["hmac_mandatory"]) is not None:
            inbox.hmac_mandatory = bool(cast_bool(channel["hmac_mandatory"]))
        if isinstance(channel.get("additional_attributes"), dict):
            inbox.additional_attributes = copy_json(channel["additional_attributes"])

    def create_inbox(self: SandboxState, caller: Caller, params: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /inboxes``: create an API (``channel.type = "api"``) or website inbox; administrators only."""
        self.require_admin(caller)
        channel = params.get("channel")
        if not isinstance(channel, dict) or not present(channel.get("type")):
            raise unprocessable("param is missing or the value is empty: channel")
        kinds = {"api": API_CHANNEL, "web_widget": WEB_CHANNEL}
        channel_type = kinds.get(str(channel["type"]))
        if channel_type is None:
            raise unprocessable(
                f"Unsupported channel type: {channel['type']}. The sandbox supports api and web_widget"
            )
        with self.lock:
            now = time.time()
            inbox = Inbox(0, caller.account.id, 0, "", channel_type, now, now)
            if channel_type == API_CHANNEL:
                inbox.secret = new_token()
            errors: list[tuple[str, str]] = []
            self._apply_inbox_params(inbox, {"name": params.get("name"), **params}, errors)
            if errors:
                raise record_invalid(errors)
            inbox.id = self._id("inbox")
            inbox.channel_id = self._id("channel")
            self.inboxes[inbox.id] = inbox
            if self.inbox_events:
                self._emit("inbox_created", self._inbox_event_data(inbox), inbox=None)
            return self.render_inbox(inbox, admin=True)

    @staticmethod
    def _inbox_event_data(inbox: Inbox) -> dict[str, Any]:
        """The ``inbox_created`` payload: the inbox and its channel row, credentials in clear as on the server."""
        channel: dict[str, Any] = {"id": inbox.channel_id, "account_id": inbox.account_id}
        if inbox.channel_type == API_CHANNEL:
            channel.update(
                webhook_url=inbox.webhook_url,
                hmac_token=inbox.hmac_token,
                hmac_mandatory=inbox.hmac_mandatory,
                identifier=inbox.inbox_identifier,
                additional_attributes=copy_json(inbox.additional_attributes),
                secret=inbox.secret,
            )
        else:
            channel.update(
                website_url=inbox.website_url,
                website_token=inbox.website_token,
                hmac_token=inbox.hmac_token,
                hmac_mandatory=inbox.hmac_mandatory,
            )
        return inbox_event_data(
            id=inbox.id,
            account_id=inbox.account_id,
            name=inbox.name,
            channel_type=inbox.channel_type,
            channel=channel,
            created_at=inbox.created_at,
            updated_at=inbox.updated_at,
            greeting_enabled=inbox.greeting_enabled,
        )

    def update_inbox(
        self: SandboxState, caller: Caller, inbox_id: Any, params: Mapping[str, Any]
    ) -> dict[str, Any]:
        """``PATCH /inboxes/{id}``: name, flags and ``channel.webhook_url``; administrators only."""
        self.require_admin(caller)
        with self.lock:
            inbox = self.get_inbox(caller, inbox_id)
            errors: list[tuple[str, str]] = []
            draft = Inbox(**{name: getattr(inbox, name) for name in inbox.__dataclass_fields__})
            self._apply_inbox_params(draft, params, errors)
            if errors:
                raise record_invalid(errors)
            draft.updated_at = time.time()
            self.inboxes[inbox.id] = draft
            return self.render_inbox(draft, admin=True)

    def set_inbox_webhook(self: SandboxState, inbox_id: int, url: str | None) -> None:
        """Set an API inbox's ``webhook_url`` directly (sandbox convenience, no auth)."""
        with self.lock:
            inbox = self.inboxes.get(inbox_id)
            if inbox is None or inbox.channel_type != API_CHANNEL:
                raise ValueError(f"inbox {inbox_id!r} is not an API inbox of the sandbox")
            inbox.webhook_url = url or None

    def reset_inbox_secret(self: SandboxState, caller: Caller, inbox_id: Any) -> dict[str, Any]:
        """``POST /inboxes/{id}/reset_secret``: new signing secret; 404 with an empty body unless an API inbox."""
        self.require_admin(caller)
        with self.lock:
            inbox = self.get_inbox(caller, inbox_id)
            if inbox.channel_type != API_CHANNEL:
                raise not_found(empty=True)
            inbox.secret = new_token()
            inbox.updated_at = time.time()
            return self.render_inbox(inbox, admin=True)


def router(context: RouteContext) -> SandboxRouter:
    """The inbox routes, below the account."""
    account = context.router()
    account.add("GET", "/inboxes", InboxesMixin.list_inboxes)
    account.add("POST", "/inboxes", InboxesMixin.create_inbox, params="body")
    account.add("GET", "/inboxes/{inbox_id}", InboxesMixin.show_inbox)
    account.add(["PATCH", "PUT"], "/inboxes/{inbox_id}", InboxesMixin.update_inbox, params="body")
    account.add("POST", "/inboxes/{inbox_id}/reset_secret", InboxesMixin.reset_inbox_secret)
    return account
