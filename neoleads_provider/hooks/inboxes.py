"""The hook's API inboxes: list, show, create, point the webhook, reset the signing secret."""

from __future__ import annotations

from typing import Any

from neoleads_provider.hooks.base import NeoleadsHookBase, without_none


class InboxesApi(NeoleadsHookBase):
    """Inboxes of the connection's account (``/inboxes``)."""

    def list_inboxes(self) -> list[dict[str, Any]]:
        """All inboxes the token can see. API inboxes have ``channel_type == "Channel::Api"``."""
        return list(self.request("GET", "inboxes")["payload"])

    def get_inbox(self, inbox_id: int) -> dict[str, Any]:
        """One inbox."""
        with self._naming_what_is_missing(inbox_id=inbox_id):
            return dict(self.request("GET", f"inboxes/{int(inbox_id)}"))

    def create_api_inbox(self, name: str, webhook_url: str | None = None) -> dict[str, Any]:
        """Create an API inbox (``POST /inboxes``); needs an administrator's token.

        Neoleads posts every inbox-scoped event (messages, conversations, typing) to ``webhook_url``,
        signed with the inbox's own ``secret``. A create that may have reached the server is not replayed.

        :return: the inbox: ``id``, ``inbox_identifier``, ``webhook_url`` and the signing ``secret``
            (servers from 4.13 on).
        :raises NeoleadsAuthError: the token is refused; when it is not an administrator's, the message says so
            and names the user's role.
        """
        channel = without_none(type="api", webhook_url=webhook_url)
        body = {"name": name, "channel": channel}
        return dict(self._as_administrator("create an API inbox", "POST", "inboxes", json=body))

    def update_inbox_webhook(self, inbox_id: int, webhook_url: str | None) -> dict[str, Any]:
        """Point an API inbox's webhook at ``webhook_url`` (``PATCH /inboxes/{id}``); administrators only.

        :param webhook_url: the new URL; None clears it, and Neoleads then delivers nothing for the inbox.
        :return: the inbox, with its signing ``secret``.
        :raises NeoleadsAuthError: as :meth:`create_api_inbox`.
        """
        return dict(
            self._as_administrator(
                "change an inbox's webhook_url",
                "PATCH",
                f"inboxes/{int(inbox_id)}",
                json={"channel": {"webhook_url": webhook_url}},
                idempotent=True,
            )
        )

    def reset_inbox_secret(self, inbox_id: int) -> dict[str, Any]:
        """Give an API inbox a new signing secret (``POST /inboxes/{id}/reset_secret``); administrators only.

        Neoleads signs with the new secret at once, so the receiver must accept it before the next event.

        :return: the inbox, with the new ``secret``.
        :raises NeoleadsNotFoundError: the inbox does not exist, or is not an API inbox.
        :raises NeoleadsAuthError: as :meth:`create_api_inbox`.
        """
        # Replaying is harmless: each reset only replaces the secret, and the answer we act on carries the
        # one that is current when it returns.
        return dict(
            self._as_administrator(
                "reset an inbox's signing secret",
                "POST",
                f"inboxes/{int(inbox_id)}/reset_secret",
                idempotent=True,
            )
        )
