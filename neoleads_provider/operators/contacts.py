"""Create (or reuse) a Neoleads contact and give it an inbox."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from neoleads_provider.exceptions import NeoleadsConfigError
from neoleads_provider.links import CONTACT_URL_KEY, NeoleadsContactLink
from neoleads_provider.operators.base import NeoleadsBaseOperator, as_id

if TYPE_CHECKING:
    from airflow.sdk import Context

    from neoleads_provider.hooks.neoleads import ContactFields

IF_EXISTS_CHOICES = ("reuse", "fail")


class NeoleadsCreateContactOperator(NeoleadsBaseOperator):
    """Create a contact, or reuse the one with the same identifier, email or phone number.

    With ``inbox_id`` (an API inbox) the contact gets a contact inbox there, whose ``source_id`` opens
    conversations. A reused contact that has no contact inbox in ``inbox_id`` is given one.

    .. seealso:: ``docs/operators.md``

    :param name: display name. (templated)
    :param contact_email: the contact's email address, unique per account. (templated) Not ``email``: that
        is Airflow's own argument, the address its failure alerts go to, and ``default_args`` often sets it.
    :param phone_number: E.164 phone number (``+`` and digits), unique per account. (templated)
    :param identifier: your system's id for the contact, unique per account. (templated)
    :param inbox_id: inbox to create the contact inbox in. (templated)
    :param custom_attributes: custom attributes. (templated)
    :param additional_attributes: additional attributes (company, city, ...). (templated)
    :param if_exists: ``"reuse"`` (default) finds the existing contact instead of failing on the
        server's "has already been taken"; ``"fail"`` raises it.
    :return: ``{"contact_id", "source_id", "inbox_id", "created"}``.
    """

    template_fields = (
        *NeoleadsBaseOperator.template_fields,
        "name",
        "contact_email",
        "phone_number",
        "identifier",
        "inbox_id",
        "custom_attributes",
        "additional_attributes",
        "if_exists",
    )
    template_fields_renderers = {"custom_attributes": "json", "additional_attributes": "json"}
    operator_extra_links = (NeoleadsContactLink(),)

    def __init__(
        self,
        *,
        name: str | None = None,
        contact_email: str | None = None,
        phone_number: str | None = None,
        identifier: str | None = None,
        inbox_id: int | str | None = None,
        custom_attributes: dict[str, Any] | None = None,
        additional_attributes: dict[str, Any] | None = None,
        if_exists: str = "reuse",
        **kwargs: Any,
    ) -> None:
        if contact_email is None and isinstance(kwargs.get("email"), str):
            # `email` is Airflow's own argument (failure alerts): an address meant for the contact would send
            # them to the customer, and the contact would be created without it.
            raise NeoleadsConfigError(
                f"{type(self).__name__}(task_id={kwargs.get('task_id')!r}): email={kwargs['email']!r} is "
                "Airflow's address for this task's failure alerts; pass the contact's address as "
                "contact_email=... (for alerts to one address and no contact email, pass email as a list)"
            )
        super().__init__(**kwargs)
        self.name = name
        self.contact_email = contact_email
        self.phone_number = phone_number
        self.identifier = identifier
        self.inbox_id = inbox_id
        self.custom_attributes = custom_attributes
        self.additional_attributes = additional_attributes
        self.if_exists = if_exists

    def execute(self, context: Context) -> dict[str, Any]:
        if self.if_exists not in IF_EXISTS_CHOICES:
            raise NeoleadsConfigError(f"if_exists must be 'reuse' or 'fail'; got {self.if_exists!r}")
        inbox_id = as_id("inbox_id", self.inbox_id, required=False)
        fields: ContactFields = {
            "name": self.name or None,
            "email": self.contact_email or None,
            "phone_number": self.phone_number or None,
            "identifier": str(self.identifier) if self.identifier not in (None, "") else None,
            "inbox_id": inbox_id,
            "custom_attributes": self.custom_attributes or None,
            "additional_attributes": self.additional_attributes or None,
        }
        if self.if_exists == "fail":
            created = self.hook.create_contact(**fields)
            contact = created["contact"]
            source_id = (created.get("contact_inbox") or {}).get("source_id")
            was_created = True
        else:
            result = self.hook.get_or_create_contact(**fields)
            contact, source_id, was_created = result["contact"], result["source_id"], result["created"]
        contact_id = int(contact["id"])
        self.log.info(
            "%s contact %s%s",
            "Created" if was_created else "Reused",
            contact_id,
            f" with source_id {source_id} in inbox {inbox_id}" if inbox_id else "",
        )
        self.push_link(context, CONTACT_URL_KEY, self.hook.settings.contact_url(contact_id))
        return {
            "contact_id": contact_id,
            "source_id": source_id,
            "inbox_id": inbox_id,
            "created": was_created,
        }
