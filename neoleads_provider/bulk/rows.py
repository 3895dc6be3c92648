"""The bulk send's input: rows from a list or a CSV file, each validated into a :class:`BulkRow`.

What a row means (its contact's fields, the key it is recorded under, its message) is decided here, before
anything is sent: a row that cannot be sent says why, naming where it is in the user's input.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from neoleads_provider.exceptions import NeoleadsConfigError

if TYPE_CHECKING:
    import string

__all__ = ["CONTACT_FIELDS", "BulkRow", "load_rows", "prepare_rows", "read_rows_csv"]

CONTACT_FIELDS = ("name", "email", "phone_number", "identifier")
CUSTOM_ATTRIBUTE_PREFIX = "custom_attributes."
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def read_rows_csv(path: str | Path, lines: list[int] | None = None) -> list[dict[str, str]]:
    """Read a CSV file with a header line into a list of dicts (UTF-8, a byte-order mark is ignored).

    :param lines: if given, filled with each row's line number in the file (its last line, for a cell that
        spans several; blank lines are skipped as the reader skips them).
    :raises NeoleadsConfigError: the file is missing or has no header.
    """
    path = Path(path)
    if not path.is_file():
        raise NeoleadsConfigError(f"rows: CSV file {str(path)!r} does not exist")
    rows: list[dict[str, str]] = []
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames:
            raise NeoleadsConfigError(f"rows: CSV file {str(path)!r} has no header line")
        for row in reader:
            # Extra cells beyond the header land under the key None; they have no column name to mean anything.
            rows.append({key: value for key, value in row.items() if key is not None})
            if lines is not None:
                lines.append(reader.line_num)
    return rows


@dataclass
class BulkRow:
    """One input row, validated: what to find or create, what to send, or why it cannot be sent."""

    index: int
    #: Where the row is in the user's input: ``line 702 of contacts.csv``, or ``rows[700]``.
    where: str = ""
    row_key: str | None = None
    contact: dict[str, Any] = field(default_factory=dict)
    content: str | None = None
    error: str | None = None
    #: Where the earlier row with the same row_key is.
    duplicate_of: str | None = None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _contact_fields(row: Mapping[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {name: _text(row.get(name)) for name in CONTACT_FIELDS}
    custom: dict[str, Any] = {}
    raw = row.get("custom_attributes")
    if isinstance(raw, str) and raw.strip():
        try:
            raw = json.loads(raw)
        except ValueError:
            raise ValueError("custom_attributes is not a JSON object") from None
    if isinstance(raw, dict):
        custom.update(raw)
    elif raw not in (None, ""):
        raise ValueError("custom_attributes must be an object")
    for key, value in row.items():
        if isinstance(key, str) and key.startswith(CUSTOM_ATTRIBUTE_PREFIX) and value not in (None, ""):
            custom[key[len(CUSTOM_ATTRIBUTE_PREFIX) :]] = value
    fields["custom_attributes"] = custom or None
    return fields


def _identity_key(contact: Mapping[str, Any]) -> str | None:
    """The contact's identity as the server dedupes it: identifier, else email, else phone number."""
    if contact.get("identifier"):
        return "identifier:" + contact["identifier"]
    if contact.get("email"):
        return "email:" + contact["email"].lower()
    if contact.get("phone_number"):
        return "phone:+" + contact["phone_number"].replace("+", "")
    return None


def _short_key(key: str) -> str:
    # The record's row_key column holds 255 characters; longer keys keep a readable head and a digest.
    if len(key) <= 255:
        return key
    return key[:180] + "#sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


def _template_variables(row: Mapping[str, Any], contact: Mapping[str, Any]) -> dict[str, str]:
    variables: dict[str, str] = {}
    for source in (contact.get("custom_attributes") or {}, row):
        for key, value in source.items():
            if isinstance(key, str) and _IDENTIFIER.match(key):
                variables[key] = "" if value is None else str(value)
    return variables


def load_rows(rows: Any, dag_folder: Path | None) -> tuple[list[Mapping[str, Any]], list[str]]:
    """The input rows, and where each is in the user's input (``line 702 of contacts.csv``, ``rows[7]``).

    :param rows: a list of dicts, or a CSV file path (relative paths are taken from ``dag_folder``).
    """
    if isinstance(rows, str | Path):
        path = Path(str(rows).strip())
        if not path.is_absolute() and dag_folder is not None:
            path = dag_folder / path
        lines: list[int] = []
        csv_rows: list[Mapping[str, Any]] = list(read_rows_csv(path, lines))
        return csv_rows, [f"line {line} of {path.name}" for line in lines]
    if isinstance(rows, dict) or not hasattr(rows, "__iter__"):
        raise NeoleadsConfigError(
            f"rows must be a list of dicts or a CSV file path; got {type(rows).__name__}"
        )
    rows = list(rows)
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise NeoleadsConfigError(f"rows[{index}] must be a dict; got {type(row).__name__}")
    return rows, [f"rows[{index}]" for index in range(len(rows))]


def prepare_rows(
    raw_rows: list[Mapping[str, Any]], wheres: list[str], template: string.Template | None
) -> list[BulkRow]:
    """Validate each row into a :class:`BulkRow`: its contact, its key, its message, or why it cannot be sent."""
    prepared: list[BulkRow] = []
    first_by_key: dict[str, int] = {}
    for index, raw in enumerate(raw_rows):
        row = BulkRow(index=index, where=wheres[index])
        prepared.append(row)
        try:
            row.contact = _contact_fields(raw)
        except ValueError as exc:
            row.error = str(exc)
            continue
        explicit = _text(raw.get("row_key"))
        key = explicit or _identity_key(row.contact)
        if key is None:
            row.error = (
                "the row's identifier, email and phone_number are all empty or missing: the contact "
                "cannot be found or created without one of them"
            )
            continue
        row.row_key = _short_key(key)
        content = _text(raw.get("content"))
        if content is None and template is not None:
            try:
                content = template.substitute(_template_variables(raw, row.contact)) or None
            except KeyError as exc:
                row.error = f"message_template needs ${exc.args[0]}, and the row has no such column"
                continue
        if content is None:
            row.error = "no message: the row has no content and the operator no message_template"
            continue
        row.content = content
        earlier = first_by_key.setdefault(row.row_key, index)
        if earlier != index:
            row.duplicate_of = wheres[earlier]
    return prepared
