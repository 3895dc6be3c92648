# mypy: disable-error-code="misc"
# The mixin's methods name their real receiver, SandboxState, as their self type, so that calls into the
# other mixins are checked; mypy reports such a self type as "not a supertype of its class" [misc].
"""Contacts and their contact_inboxes: ``/contacts`` (CRUD, search, filter) and ``/contact_inboxes``."""

from __future__ import annotations

import re
import time
import uuid
from typing import TYPE_CHECKING, Any

from neoleads_provider.events.build import iso8601
from neoleads_provider.testing.errors import not_found, record_invalid, server_error, unprocessable
from neoleads_provider.testing.models import (
    API_CHANNEL,
    CONTACT_RESULTS_PER_PAGE,
    MAX_STRING_LENGTH,
    Caller,
    Contact,
    ContactInbox,
    Inbox,
)
from neoleads_provider.testing.values import cast_bool, cast_id, copy_json, present, scalar_string

if TYPE_CHECKING:
    from collections.abc import Mapping

    from starlette.requests import Request
    from starlette.responses import Response

    from neoleads_provider.testing.routing import RouteContext, SandboxRouter
    from neoleads_provider.testing.state import SandboxState

# Devise.email_regexp (Chatwoot keeps Devise's default).
_EMAIL_RE = re.compile(r"\A[^@\s]+@[^@\s]+\Z")
# Chatwoot's /\+[1-9]\d{1,14}\z/ is anchored only at the end, so it is searched, not full-matched.
_PHONE_RE = re.compile(r"\+[1-9]\d{1,14}\Z")

_FILTER_OPERATORS = {
    "name": ("equal_to", "not_equal_to", "contains", "does_not_contain"),
    "email": ("equal_to", "not_equal_to", "contains", "does_not_contain"),
    "phone_number": ("equal_to", "not_equal_to", "contains", "does_not_contain", "starts_with"),
    "identifier": ("equal_to", "not_equal_to"),
}


class ContactsMixin:
    """The contacts of :class:`~neoleads_provider.testing.state.SandboxState`."""

    def _contact_inboxes_of(self: SandboxState, contact_id: int) -> list[ContactInbox]:
        return [self.contact_inboxes[item_id] for item_id in self._contact_inbox_ids.get(contact_id, ())]

    @staticmethod
    def _unique_keys(contact: Contact) -> dict[str, str | None]:
        return {
            "email": contact.email.lower() if contact.email is not None else None,
            "identifier": contact.identifier,
            "phone_number": contact.phone_number,
        }

    def _index_contact(self: SandboxState, contact: Contact, *, remove: bool = False) -> None:
        for attribute, key in self._unique_keys(contact).items():
            if key is None:
                continue
            if remove:
                if self._unique[attribute].get(key) == contact.id:
                    del self._unique[attribute][key]
            else:
                self._unique[attribute].setdefault(key, contact.id)

    def get_contact(self: SandboxState, caller: Caller, contact_id: Any) -> Contact:
        """Return a contact of the caller's account or raise the 404."""
        contact = self.contacts.get(cast_id(contact_id) or -1)
        if contact is None or contact.account_id != caller.account.id:
            raise not_found()
        return contact

    def _validate_contact(self: SandboxState, contact: Contact) -> None:
        """Run the contact model's validations, in the order the real server reports them."""
        # ApplicationRecord's generic length check runs before the model's own validations.
        errors = self._contact_length_errors(contact)
        keys = self._unique_keys(contact)

        def taken(attribute: str) -> bool:
            owner = self._unique[attribute].get(keys[attribute] or "")
            return owner is not None and owner != contact.id

        if contact.email is not None:
            if taken("email"):
                errors.append(("email", "Email has already been taken"))
            if not _EMAIL_RE.match(contact.email):
                errors.append(("email", "Email Invalid email"))
        if contact.identifier is not None and taken("identifier"):
            errors.append(("identifier", "Identifier has already been taken"))
        if contact.phone_number is not None:
            if taken("phone_number"):
                errors.append(("phone_number", "Phone number has already been taken"))
            if not _PHONE_RE.search(contact.phone_number):
                errors.append(("phone_number", "Phone number should be in e164 format"))
        if errors:
            raise record_invalid(errors)

    @staticmethod
    def _contact_length_errors(contact: Contact) -> list[tuple[str, str]]:
        """ApplicationRecord's generic check: a string column holds at most 255 characters."""
        errors: list[tuple[str, str]] = []
        for attribute, label in (
            ("name", "Name"),
            ("email", "Email"),
            ("phone_number", "Phone number"),
            ("identifier", "Identifier"),
        ):
            value = getattr(contact, attribute)
            if value is not None and len(value) > MAX_STRING_LENGTH:
                errors.append((attribute, f"{label} is too long (maximum is 255 characters)"))
        return errors

    @staticmethod
    def _assign_contact(contact: Contact, params: Mapping[str, Any], *, merge: bool) -> None:
        if "name" in params:
            contact.name = scalar_string(params.get("name")) or ""
        for attribute in ("email", "phone_number", "identifier"):
            if attribute in params:
                setattr(contact, attribute, scalar_string(params.get(attribute)))
        if contact.email is not None:
            contact.email = contact.email.lower()
        if "blocked" in params and cast_bool(params["blocked"]) is not None:
            contact.blocked = bool(cast_bool(params["blocked"]))
        # avatar_url is not saved: the server fetches the image in a background job (which the sandbox has
        # no image to imitate with), so the answer's thumbnail stays "".
        for attribute in ("additional_attributes", "custom_attributes"):
            value = params.get(attribute)
            if isinstance(value, dict):
                current = getattr(contact, attribute) if merge else {}
                setattr(contact, attribute, {**current, **copy_json(value)})

    def _new_source_id(self: SandboxState, inbox: Inbox) -> str:
        return str(uuid.uuid4())

    def _find_or_create_contact_inbox(
        self: SandboxState, contact: Contact, inbox: Inbox, source_id: Any
    ) -> ContactInbox:
        """Do what ``ContactInboxBuilder`` does: ``first_or_create`` on (contact, inbox, source_id).

        :raises SandboxError: 500, as the real server's unhandled ``RecordNotUnique``, when another contact
            already holds ``source_id`` in this inbox.
        """
        source = scalar_string(source_id) or self._new_source_id(inbox)
        existing_id = self._source_index.get((inbox.id, source))
        if existing_id is not None:
            existing = self.contact_inboxes[existing_id]
            if existing.contact_id == contact.id:
                return existing
            raise server_error()
        now = time.time()
        item = ContactInbox(self._id("contact_inbox"), contact.id, inbox.id, source, now, now)
        self.contact_inboxes[item.id] = item
        self._source_index[(inbox.id, source)] = item.id
        self._contact_inbox_ids.setdefault(contact.id, []).append(item.id)
        return item

    def create_contact(self: SandboxState, caller: Caller, params: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /contacts``: validate, create, optionally create the contact_inbox; wrapped response."""
        with self.lock:
            inbox: Inbox | None = None
            if present(params.get("inbox_id")):
                inbox = self.get_inbox(caller, params.get("inbox_id"))
            now = time.time()
            contact = Contact(
                id=0,
                account_id=caller.account.id,
                name="",
                email=None,
                phone_number=None,
                identifier=None,
                blocked=False,
                additional_attributes={},
                custom_attributes={},
                created_at=now,
                updated_at=now,
            )
            self._assign_contact(contact, params, merge=False)
            self._validate_contact(contact)
            source_id = scalar_string(params.get("source_id"))
            if inbox is not None and source_id is not None and (inbox.id, source_id) in self._source_index:
                # The contact and its contact_inbox are saved in one transaction: the RecordNotUnique
                # rolls both back and ends as a 500.
                raise server_error()
            contact.id = self._id("contact")
            self.contacts[contact.id] = contact
            self._index_contact(contact)
            contact_inbox = None
            if inbox is not None:
                contact_inbox = self._find_or_create_contact_inbox(contact, inbox, params.get("source_id"))
            self._emit("contact_created", self._contact_webhook_data(contact), inbox=None)
            return {
                "payload": {
                    "contact": self.render_contact(contact),
                    "contact_inbox": {
                        "inbox": self._inbox_as_json(inbox) if inbox is not None else None,
                        "source_id": contact_inbox.source_id if contact_inbox is not None else None,
                    },
                }
            }

    def show_contact(
        self: SandboxState, caller: Caller, contact_id: Any, *, with_contact_inboxes: bool = True
    ) -> dict[str, Any]:
        """``GET /contacts/{id}``: ``{"payload": contact}``."""
        with self.lock:
            contact = self.get_contact(caller, contact_id)
            return {"payload": self.render_contact(contact, with_contact_inboxes=with_contact_inboxes)}

    def update_contact(
        self: SandboxState, caller: Caller, contact_id: Any, params: Mapping[str, Any]
    ) -> dict[str, Any]:
        """``PATCH``/``PUT /contacts/{id}``: attributes merged into the existing ones; ``contact_updated`` on change."""
        with self.lock:
            contact = self.get_contact(caller, contact_id)
            draft = Contact(
                **{name: copy_json(getattr(contact, name)) for name in contact.__dataclass_fields__}
            )
            self._assign_contact(draft, params, merge=True)
            self._validate_contact(draft)
            tracked = (
                "name",
                "email",
                "phone_number",
                "identifier",
                "blocked",
                "avatar_url",
                "additional_attributes",
                "custom_attributes",
            )
            changes = [
                {name: {"previous_value": getattr(contact, name), "current_value": getattr(draft, name)}}
                for name in tracked
                if getattr(contact, name) != getattr(draft, name)
            ]
            if changes:
                previous_updated_at = contact.updated_at
                draft.updated_at = time.time()
                changes.append(
                    {
                        "updated_at": {
                            "previous_value": iso8601(previous_updated_at),
                            "current_value": iso8601(draft.updated_at),
                        }
                    }
                )
                self._index_contact(contact, remove=True)
                self.contacts[contact.id] = draft
                self._index_contact(draft)
                self._emit(
                    "contact_updated",
                    {**self._contact_webhook_data(draft), "changed_attributes": copy_json(changes)},
                    inbox=None,
                )
            return {"payload": self.render_contact(self.contacts[contact.id])}

    def delete_contact(self: SandboxState, caller: Caller, contact_id: Any) -> None:
        """``DELETE /contacts/{id}``: the contact with its contact_inboxes, conversations and messages."""
        with self.lock:
            contact = self.get_contact(caller, contact_id)
            for conversation in [
                item for item in self.conversations.values() if item.contact_id == contact.id
            ]:
                for message_id in conversation.message_ids:
                    for attachment in self.messages[message_id].attachments:
                        self.attachments.pop(attachment.id, None)
                    self.messages.pop(message_id, None)
                del self.conversations[conversation.id]
                self._display_index.pop(conversation.display_id, None)
            for item in self._contact_inboxes_of(contact.id):
                del self.contact_inboxes[item.id]
                self._source_index.pop((item.inbox_id, item.source_id), None)
            self._contact_inbox_ids.pop(contact.id, None)
            self._index_contact(contact, remove=True)
            del self.contacts[contact.id]

    def _resolved_contacts(self: SandboxState, account_id: int) -> list[Contact]:
        """Contacts with an email, phone number or identifier: the only ones index/search/filter see."""
        return [
            contact
            for contact in self.contacts.values()
            if contact.account_id == account_id
            and (contact.email or contact.phone_number or contact.identifier)
        ]

    @staticmethod
    def _page(params: Mapping[str, Any]) -> int:
        page = cast_id(params.get("page"))
        return page if page and page > 0 else 1

    def list_contacts(self: SandboxState, caller: Caller, params: Mapping[str, Any]) -> dict[str, Any]:
        """``GET /contacts``: 15 per page; ``meta.count`` is the total."""
        with self.lock:
            contacts = self._resolved_contacts(caller.account.id)
            page = self._page(params)
            chunk = contacts[(page - 1) * CONTACT_RESULTS_PER_PAGE : page * CONTACT_RESULTS_PER_PAGE]
            return {
                "meta": {"count": len(contacts), "current_page": page},
                "payload": [self.render_contact(contact) for contact in chunk],
            }

    def search_contacts(self: SandboxState, caller: Caller, params: Mapping[str, Any]) -> dict[str, Any]:
        """``GET /contacts/search?q=``: substring match, 15 per page, ``meta.count`` of this page + ``has_more``."""
        query = params.get("q")
        page = self._page(params)
        if not present(query):
            # The real controller's `render ... if q.blank? && return` never renders: an empty page comes back.
            return {"meta": {"count": 0, "current_page": page, "has_more": False}, "payload": []}
        needle = str(query).strip()
        lowered = needle.lower()
        with self.lock:
            matches = [
                contact
                for contact in self._resolved_contacts(caller.account.id)
                if lowered in (contact.name or "").lower()
                or lowered in (contact.email or "").lower()
                or lowered in (contact.phone_number or "").lower()
                or needle in (contact.identifier or "")
            ]
            start = (page - 1) * CONTACT_RESULTS_PER_PAGE
            chunk = matches[start : start + CONTACT_RESULTS_PER_PAGE]
            return {
                "meta": {
                    "count": len(chunk),
                    "current_page": page,
                    "has_more": len(matches) > start + CONTACT_RESULTS_PER_PAGE,
                },
                "payload": [self.render_contact(contact) for contact in chunk],
            }

    @staticmethod
    def _filter_value(attribute: str, value: Any) -> str:
        text = "" if value is None else str(value)
        if attribute == "phone_number":
            return "+" + text.replace("+", "")
        return text.lower()

    def _condition(self: SandboxState, contact: Contact, condition: Mapping[str, Any]) -> bool:
        attribute = condition["attribute_key"]
        operator = condition["filter_operator"]
        raw = getattr(contact, attribute)
        values = condition.get("values")
        if not isinstance(values, list):
            values = [values]
        wanted = [self._filter_value(attribute, value) for value in values if value is not None]
        if raw is None:
            # SQL comparisons with NULL are never true, whatever the operator.
            return False
        actual = self._filter_value(attribute, raw)
        if operator == "equal_to":
            return actual in wanted
        if operator == "not_equal_to":
            return actual not in wanted
        if operator == "contains":
            return any(value.lstrip("+") in actual for value in wanted) if wanted else False
        if operator == "does_not_contain":
            return not any(value.lstrip("+") in actual for value in wanted)
        if operator == "starts_with":
            return any(actual.startswith(value) for value in wanted)
        return False

    @staticmethod
    def _filter_conditions(params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Return ``payload``, the filter's conditions, or raise the 422 naming the first invalid one."""
        conditions = params.get("payload")
        if not isinstance(conditions, list) or not conditions:
            raise unprocessable("param is missing or the value is empty: payload")
        for condition in conditions:
            if not isinstance(condition, dict):
                raise unprocessable("Invalid filter: each payload item must be an object")
            attribute = condition.get("attribute_key")
            if attribute not in _FILTER_OPERATORS:
                raise unprocessable(f"Invalid attribute key - {attribute}")
            operator = condition.get("filter_operator")
            allowed = _FILTER_OPERATORS[attribute]
            if operator not in allowed:
                raise unprocessable(
                    f"Invalid operator. The allowed operators for {attribute} are [{','.join(allowed)}]."
                )
            query_operator = condition.get("query_operator")
            if query_operator is not None and str(query_operator).upper() not in ("AND", "OR"):
                raise unprocessable("Invalid query operator. The allowed query operators are [AND,OR].")
        return conditions

    def _matches_filter(self: SandboxState, contact: Contact, conditions: list[dict[str, Any]]) -> bool:
        # SQL precedence: AND binds tighter than OR, so evaluate OR-separated groups of ANDs.
        groups: list[list[bool]] = [[]]
        for index, condition in enumerate(conditions):
            groups[-1].append(self._condition(contact, condition))
            joiner = str(condition.get("query_operator") or "AND").upper()
            if index < len(conditions) - 1 and joiner == "OR":
                groups.append([])
        return any(all(group) for group in groups)

    def filter_contacts(self: SandboxState, caller: Caller, params: Mapping[str, Any]) -> dict[str, Any]:
        """``POST /contacts/filter``: exact-match conditions chained with ``query_operator``; 15 per page."""
        conditions = self._filter_conditions(params)
        with self.lock:
            matches = [
                contact
                for contact in self._resolved_contacts(caller.account.id)
                if self._matches_filter(contact, conditions)
            ]
            page = self._page(params)
            chunk = matches[(page - 1) * CONTACT_RESULTS_PER_PAGE : page * CONTACT_RESULTS_PER_PAGE]
            return {
                "meta": {"count": len(matches), "current_page": page},
                "payload": [self.render_contact(contact) for contact in chunk],
            }

    def create_contact_inbox(
        self: SandboxState, caller: Caller, contact_id: Any, params: Mapping[str, Any]
    ) -> dict[str, Any]:
        """``POST /contacts/{id}/contact_inboxes``: flat ``{"source_id", "inbox"}``, first-or-create."""
        with self.lock:
            contact = self.get_contact(caller, contact_id)
            inbox = self.get_inbox(caller, params.get("inbox_id"))
            item = self._find_or_create_contact_inbox(contact, inbox, params.get("source_id"))
            return {"source_id": item.source_id, "inbox": self._slim_inbox(inbox)}

    def contactable_inboxes(self: SandboxState, caller: Caller, contact_id: Any) -> dict[str, Any]:
        """``GET /contacts/{id}/contactable_inboxes``: API inboxes (existing or fresh source id), widgets in use."""
        with self.lock:
            contact = self.get_contact(caller, contact_id)
            payload = []
            for inbox in self.inboxes.values():
                if inbox.account_id != caller.account.id or not self._can_see_inbox(caller, inbox):
                    continue
                existing = [
                    item for item in self._contact_inboxes_of(contact.id) if item.inbox_id == inbox.id
                ]
                if inbox.channel_type == API_CHANNEL:
                    source_id = existing[-1].source_id if existing else self._new_source_id(inbox)
                elif existing:
                    source_id = existing[-1].source_id
                else:
                    continue
                payload.append({"source_id": source_id, "inbox": self._slim_inbox(inbox)})
            return {"payload": payload}

    def contact_conversations(self: SandboxState, caller: Caller, contact_id: Any) -> dict[str, Any]:
        """``GET /contacts/{id}/conversations``: the last 20 by activity, not paginated."""
        with self.lock:
            contact = self.get_contact(caller, contact_id)
            conversations = sorted(
                (item for item in self.conversations.values() if item.contact_id == contact.id),
                key=lambda item: (item.last_activity_at, item.id),
                reverse=True,
            )[:20]
            return {"payload": [self.render_conversation(item) for item in conversations]}

    def filter_contact_inboxes(
        self: SandboxState, caller: Caller, params: Mapping[str, Any]
    ) -> dict[str, Any]:
        """``POST /contact_inboxes/filter``: the flat contact owning (inbox_id, source_id), or an empty 404."""
        with self.lock:
            inbox_id = cast_id(params.get("inbox_id"))
            source_id = scalar_string(params.get("source_id"))
            for item in self.contact_inboxes.values():
                if item.inbox_id == inbox_id and item.source_id == source_id:
                    contact = self.contacts.get(item.contact_id)
                    if contact is not None and contact.account_id == caller.account.id:
                        return self.render_contact(contact)
            raise not_found(empty=True)


def router(context: RouteContext) -> SandboxRouter:
    """The contact and contact_inbox routes, below the account."""
    state = context.state
    account = context.router()
    account.add("GET", "/contacts", ContactsMixin.list_contacts, params="query")
    account.add("POST", "/contacts", ContactsMixin.create_contact, params="body")
    # Before /contacts/{contact_id}, which would match it too.
    account.add("GET", "/contacts/search", ContactsMixin.search_contacts, params="query")
    account.add("POST", "/contacts/filter", ContactsMixin.filter_contacts, params="body")

    @account.handler("GET", "/contacts/{contact_id}")
    async def show_contact(request: Request, account_id: str, contact_id: str) -> Response:
        include = cast_bool(request.query_params.get("include_contact_inboxes"))
        return context.json(
            state.show_contact(
                context.caller(request, account_id), contact_id, with_contact_inboxes=include is not False
            )
        )

    account.add(["PATCH", "PUT"], "/contacts/{contact_id}", ContactsMixin.update_contact, params="body")
    account.add("DELETE", "/contacts/{contact_id}", ContactsMixin.delete_contact)
    account.add(
        "POST", "/contacts/{contact_id}/contact_inboxes", ContactsMixin.create_contact_inbox, params="body"
    )
    account.add("GET", "/contacts/{contact_id}/contactable_inboxes", ContactsMixin.contactable_inboxes)
    account.add("GET", "/contacts/{contact_id}/conversations", ContactsMixin.contact_conversations)
    account.add("POST", "/contact_inboxes/filter", ContactsMixin.filter_contact_inboxes, params="body")
    return account
