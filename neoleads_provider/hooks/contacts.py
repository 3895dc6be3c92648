"""The hook's contacts: create, find, update, and their contact inboxes (the ``source_id``s)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, TypedDict

from neoleads_provider.exceptions import (
    NeoleadsConfigError,
    NeoleadsServerError,
    NeoleadsTransportError,
    NeoleadsValidationError,
)
from neoleads_provider.hooks.base import NeoleadsHookBase, without_none

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping


# One logger for the whole hook, as before it was split.
log = logging.getLogger("neoleads_provider.hooks.neoleads")


class ContactLookup(TypedDict):
    """The keys ``find_contact`` looks a contact up by."""

    identifier: str | None
    email: str | None
    phone_number: str | None


class ContactFields(ContactLookup):
    """The keyword arguments ``get_or_create_contact`` takes, which ``create_contact`` takes too."""

    name: str | None
    inbox_id: int | None
    custom_attributes: Mapping[str, Any] | None
    additional_attributes: Mapping[str, Any] | None


class ContactsApi(NeoleadsHookBase):
    """Contacts of the connection's account (``/contacts``)."""

    def create_contact(
        self,
        *,
        name: str | None = None,
        email: str | None = None,
        phone_number: str | None = None,
        identifier: str | None = None,
        inbox_id: int | None = None,
        source_id: str | None = None,
        custom_attributes: Mapping[str, Any] | None = None,
        additional_attributes: Mapping[str, Any] | None = None,
        avatar_url: str | None = None,
    ) -> dict[str, Any]:
        """Create a contact (``POST /contacts``); with ``inbox_id`` also its contact inbox.

        :return: ``{"contact": {...}, "contact_inbox": {"inbox": ..., "source_id": ...}}``.
        :raises NeoleadsValidationError: e.g. "Email has already been taken" (``attributes`` names the fields).
        """
        body = without_none(
            name=name,
            email=email,
            phone_number=phone_number,
            identifier=identifier,
            inbox_id=inbox_id,
            source_id=source_id,
            custom_attributes=dict(custom_attributes) if custom_attributes else None,
            additional_attributes=dict(additional_attributes) if additional_attributes else None,
            avatar_url=avatar_url,
        )
        with self._naming_what_is_missing(inbox_id=inbox_id):
            return dict(self.request("POST", "contacts", json=body)["payload"])

    def get_contact(self, contact_id: int) -> dict[str, Any]:
        """One contact, with its ``contact_inboxes``."""
        return dict(self.request("GET", f"contacts/{int(contact_id)}")["payload"])

    def update_contact(self, contact_id: int, **fields: Any) -> dict[str, Any]:
        """Update a contact; custom and additional attributes are merged by the server."""
        return dict(
            self.request("PUT", f"contacts/{int(contact_id)}", json=without_none(**fields))["payload"]
        )

    def find_contact(
        self,
        *,
        identifier: str | None = None,
        email: str | None = None,
        phone_number: str | None = None,
    ) -> dict[str, Any] | None:
        """Find a contact by exact identifier, email or phone (``POST /contacts/filter``).

        When several contacts match different keys, the identifier wins, then the email, then the phone,
        as the server itself does when it finds or creates contacts for the Client API.
        """
        keys = [("identifier", identifier), ("email", email), ("phone_number", phone_number)]
        conditions = [(key, str(value)) for key, value in keys if value not in (None, "")]
        if not conditions:
            raise NeoleadsConfigError("find_contact needs at least one of identifier, email or phone_number")
        payload = [
            {
                "attribute_key": key,
                "filter_operator": "equal_to",
                "values": [value],
                "query_operator": "OR" if index < len(conditions) - 1 else None,
            }
            for index, (key, value) in enumerate(conditions)
        ]
        candidates = list(
            self.request("POST", "contacts/filter", json={"payload": payload}, idempotent=True)["payload"]
        )
        for key, value in conditions:
            for contact in candidates:
                if _same_contact_key(key, contact.get(key), value):
                    return dict(contact)
        return None

    def create_contact_inbox(
        self, contact_id: int, inbox_id: int, source_id: str | None = None
    ) -> dict[str, Any]:
        """Give a contact an inbox (``POST /contacts/{id}/contact_inboxes``); returns ``{"source_id", "inbox"}``.

        Replayed only with an explicit ``source_id``, which makes the server's create idempotent.
        """
        body = without_none(inbox_id=int(inbox_id), source_id=source_id)
        with self._naming_what_is_missing(contact_id=contact_id, inbox_id=inbox_id):
            return dict(
                self.request(
                    "POST",
                    f"contacts/{int(contact_id)}/contact_inboxes",
                    json=body,
                    idempotent=source_id is not None,
                )
            )

    def get_or_create_contact(
        self,
        *,
        name: str | None = None,
        email: str | None = None,
        phone_number: str | None = None,
        identifier: str | None = None,
        inbox_id: int | None = None,
        custom_attributes: Mapping[str, Any] | None = None,
        additional_attributes: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Reuse the contact with the same identifier, email or phone, or create it.

        A create that may have reached the server (timeout, 5xx) is reconciled by looking the contact up
        before anything is sent again, so it never leaves a duplicate.

        :return: ``{"contact": {...}, "source_id": str | None, "inbox_id": int | None, "created": bool}``;
            ``source_id`` is the contact's in ``inbox_id`` (created there when missing).
        """
        lookup: ContactLookup = {"identifier": identifier, "email": email, "phone_number": phone_number}
        can_reconcile = any(value not in (None, "") for value in lookup.values())
        fields: ContactFields = {
            "name": name,
            "custom_attributes": custom_attributes,
            "additional_attributes": additional_attributes,
            "inbox_id": inbox_id,
            **lookup,
        }
        try:
            return _created_contact_result(self.create_contact(**fields), inbox_id)
        except NeoleadsValidationError as exc:
            if not can_reconcile or not exc.server_message or "already been taken" not in exc.server_message:
                raise
            log.info("A contact with the same %s exists; reusing it", ", ".join(exc.attributes) or "key")
        except (NeoleadsTransportError, NeoleadsServerError) as exc:
            if not can_reconcile or (isinstance(exc, NeoleadsTransportError) and not exc.maybe_delivered):
                raise
            log.warning("Creating the contact may or may not have succeeded (%s); looking it up first", exc)

        contact = self.find_contact(**lookup)
        if contact is None:
            # The earlier create did not land: it is now safe to send it again, once.
            return _created_contact_result(self.create_contact(**fields), inbox_id)
        source_id = self.ensure_contact_inbox(contact, inbox_id) if inbox_id else None
        return {"contact": contact, "source_id": source_id, "inbox_id": inbox_id, "created": False}

    def ensure_contact_inbox(self, contact: Mapping[str, Any], inbox_id: int) -> str:
        """The contact's ``source_id`` in ``inbox_id``, creating the contact inbox only when it has none."""
        contact_inboxes = contact.get("contact_inboxes")
        if contact_inboxes is None:
            contact_inboxes = self.get_contact(contact["id"]).get("contact_inboxes") or []
        source_id = _source_id_in(contact_inboxes, inbox_id)
        if source_id is not None:
            return source_id
        try:
            return str(self.create_contact_inbox(contact["id"], inbox_id)["source_id"])
        except (NeoleadsTransportError, NeoleadsServerError):
            # It may have been created; the contact's inboxes say for sure.
            source_id = _source_id_in(self.get_contact(contact["id"]).get("contact_inboxes") or [], inbox_id)
            if source_id is None:
                raise
            return source_id


def _same_contact_key(key: str, found: Any, wanted: str) -> bool:
    if found in (None, ""):
        return False
    if key == "email":
        return str(found).lower() == wanted.lower()
    if key == "phone_number":
        return "+" + str(found).replace("+", "") == "+" + wanted.replace("+", "")
    return str(found) == wanted


def _created_contact_result(created: Mapping[str, Any], inbox_id: int | None) -> dict[str, Any]:
    """What :meth:`NeoleadsHook.get_or_create_contact` returns for a contact it created."""
    source_id = (created.get("contact_inbox") or {}).get("source_id") if inbox_id else None
    return {"contact": created["contact"], "source_id": source_id, "inbox_id": inbox_id, "created": True}


def _source_id_in(contact_inboxes: Iterable[Mapping[str, Any]], inbox_id: int) -> str | None:
    """The contact's ``source_id`` in ``inbox_id``, from its ``contact_inboxes``; None when it has none there."""
    for contact_inbox in contact_inboxes:
        if (contact_inbox.get("inbox") or {}).get("id") == int(inbox_id) and contact_inbox.get("source_id"):
            return str(contact_inbox["source_id"])
    return None
