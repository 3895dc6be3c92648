"""Print the connection setting that makes the webhook receiver accept a signing secret.

Shared by ``neoleads webhooks register`` (account webhooks) and ``neoleads inboxes ...`` (API inboxes): both
end with a secret Neoleads will sign with, which the connection's ``webhook_secrets`` must list, next to
the secrets it already has so that rotating never refuses a delivery.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = ["SECRET_EXTRA_FIELDS", "current_extra", "merge_secrets", "print_connection_setting"]

# Extra fields whose values are secrets; shown as placeholders unless the caller asks for them.
SECRET_EXTRA_FIELDS = ("webhook_secrets", "webhook_url_token")


def current_extra(conn_id: str) -> dict[str, Any] | None:
    """The connection's extra as stored, to show a merged copy; None if it cannot be read here."""
    from neoleads_provider.cli._connections import resolve_connection

    try:
        conn = resolve_connection(conn_id)
    except Exception:
        return None
    return dict(conn.extra_dejson or {}) if conn is not None else None


def merge_secrets(current: Sequence[str], secret: str) -> list[str]:
    """``current`` with ``secret`` appended unless it is already there (or empty)."""
    return list(current) if not secret or secret in current else [*current, secret]


def _placeholder(index: int) -> str:
    return f"<current secret {index}>"


def print_connection_setting(
    conn_id: str,
    *,
    base_url: str,
    account_id: int,
    secret: str,
    current_secrets: Sequence[str],
    updates: Mapping[str, Any] | None = None,
    show_current_secrets: bool = False,
) -> None:
    """Print the extra that makes connection ``conn_id`` accept ``secret``, in every form Airflow takes it.

    :param secret: the new signing secret; always printed.
    :param current_secrets: the secrets the connection lists now; kept in the merged list.
    :param updates: more extra fields to set alongside, e.g. ``{"inbox_id": 12}``.
    :param show_current_secrets: print the current secrets (and the URL token) themselves instead of
        ``<current secret N>`` placeholders.
    """
    updates = dict(updates or {})
    merged = merge_secrets(current_secrets, secret)
    shown = (
        merged
        if show_current_secrets
        else [value if value == secret else _placeholder(index) for index, value in enumerate(merged, 1)]
    )
    # The connection as Airflow stores it, so the printed extra can replace it whole; if it cannot be read
    # here (a secrets backend only the workers reach), the essentials.
    extra = current_extra(conn_id) or {"account_id": account_id}
    merged_extra = {**extra, **updates, "webhook_secrets": shown}
    for key in ("webhook_secrets", *updates):
        merged_extra.pop(f"extra__neoleads__{key}", None)
    hidden = any(value != secret for value in shown) and not show_current_secrets
    if not show_current_secrets:
        for key in SECRET_EXTRA_FIELDS[1:]:
            for name in (key, f"extra__neoleads__{key}"):
                if merged_extra.get(name):
                    merged_extra[name] = f"<current {key}>"
                    hidden = True

    if updates:
        print(f"Set these fields in connection {conn_id!r} (extra). Keep the old webhook secrets listed")
        print("until Neoleads no longer signs with them; several are accepted at once.")
    else:
        print(f'Add the secret to connection {conn_id!r} (extra field "webhook_secrets"). Keep the old')
        print("secrets listed until Neoleads no longer signs with them; several are accepted at once.")
    print()
    for key, value in updates.items():
        print(f"  {json.dumps(key)}: {json.dumps(value)}")
    print(f'  "webhook_secrets": {json.dumps(shown)}')
    print()
    if hidden:
        print('Each "<current ...>" stands for a value the connection has now, not shown here: keep it.')
        print()
    print("The connection's whole extra, with the secret merged in:")
    print(f"  {json.dumps(merged_extra)}")
    print()
    print("For a connection in an environment variable (fill in your API token):")
    env_name = "AIRFLOW_CONN_" + conn_id.upper()
    env_value = {
        "conn_type": "neoleads",
        "host": base_url,
        "password": "<API access token>",
        "extra": merged_extra,
    }
    print(f"  export {env_name}='{json.dumps(env_value)}'")
    print()
    print("For a connection in the metadata database, edit it in the Airflow UI, or re-create it:")
    print(f"  airflow connections delete {conn_id}")
    print(
        f"  airflow connections add {conn_id} --conn-type neoleads --conn-host {base_url} "
        f"--conn-password '<API access token>' --conn-extra '{json.dumps(merged_extra)}'"
    )
