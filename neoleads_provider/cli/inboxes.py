"""``neoleads inboxes ...``: the API inboxes whose webhook feeds the receiver.

An API inbox posts every inbox-scoped event (messages, conversations) to its own ``webhook_url``, signed
with its own secret. These commands create one pointing at the receiver, re-point one, or rotate its secret,
and print the secret with the connection setting that makes the receiver accept it:

- ``list``: the inboxes, which of them deliver to this connection's receiver, and whether the connection
  accepts their signatures (no secret is ever shown).
- ``create --name NAME [--webhook-url URL]``: a new API inbox.
- ``set-webhook --inbox-id N [--url URL]``: point an existing API inbox at the receiver.
- ``reset-secret --inbox-id N``: give an API inbox a new signing secret.

The URL defaults to the receiver on the Airflow API server, ``{[api] base_url}/neoleads/webhooks/{conn_id}``.
With ``--apply`` the connection's row in the metadata database gets ``inbox_id`` and the secret directly.
Only the new secret is printed: the ones the connection already lists appear as placeholders.
Exit status 0 on success, 1 when Neoleads or the connection refused, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import hmac
import json
import sys
from typing import TYPE_CHECKING, Any, TypedDict

from neoleads_provider.cli.events import http_url, positive_int, with_logs_on_stderr

if TYPE_CHECKING:
    from collections.abc import Mapping

    from neoleads_provider.hooks.neoleads import NeoleadsHook

__all__ = ["API_CHANNEL", "parse_inbox_id", "register"]

API_CHANNEL = "Channel::Api"
DEFAULT_CONN_ID = "neoleads_default"


def _url_argument(text: str) -> str:
    url = http_url(text)
    if len(url) > 2048:
        raise argparse.ArgumentTypeError("Neoleads accepts webhook URLs of at most 2048 characters")
    return url


def parse_inbox_id(text: str) -> int:
    """The argument type of ``--inbox-id`` (here and in ``neoleads doctor``)."""
    return positive_int(text, kind="an inbox id (a whole number)")


def _name(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("the inbox name must not be empty")
    if len(text.strip()) > 255:
        raise argparse.ArgumentTypeError("Neoleads accepts inbox names of at most 255 characters")
    return text.strip()


def register(subparsers: Any) -> None:
    """Add the ``inboxes`` command group to the ``neoleads`` parser."""
    inboxes = subparsers.add_parser(
        "inboxes",
        help="create and configure the API inboxes that deliver webhooks to the receiver",
        description="List, create and configure the Neoleads API inboxes whose webhook feeds the receiver.",
    )
    commands = inboxes.add_subparsers(dest="inboxes_command", metavar="COMMAND", required=True)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--conn-id", default=DEFAULT_CONN_ID, help=f"Airflow connection (default {DEFAULT_CONN_ID})"
    )
    common.add_argument("--json", action="store_true", help="print the result as JSON")

    setup = argparse.ArgumentParser(add_help=False)
    setup.add_argument(
        "--apply",
        action="store_true",
        help="also write inbox_id and the secret into the connection's row in the metadata database",
    )

    list_ = commands.add_parser(
        "list",
        parents=[common],
        help="list the inboxes and which of them deliver to this connection's receiver",
        description="List the account's inboxes, whether each delivers to this connection's receiver, and "
        "whether the connection accepts its signatures. Secrets are never shown.",
    )
    list_.set_defaults(func=with_logs_on_stderr(_list))

    url_help = (
        "where Neoleads posts the inbox's events (default: the receiver on the API server, "
        "{[api] base_url}/neoleads/webhooks/<conn_id>)"
    )
    create = commands.add_parser(
        "create",
        parents=[common, setup],
        help="create an API inbox that posts its events to the receiver; print its signing secret",
        description="Create an API inbox whose webhook_url is the receiver, and print its id and signing "
        "secret with the connection setting that makes the receiver accept it. Needs an administrator token.",
    )
    create.add_argument("--name", required=True, type=_name, help="the inbox name shown in Neoleads")
    create.add_argument("--webhook-url", type=_url_argument, metavar="URL", help=url_help)
    create.set_defaults(func=with_logs_on_stderr(_create))

    set_webhook = commands.add_parser(
        "set-webhook",
        parents=[common, setup],
        help="point an API inbox's webhook_url at the receiver; print its signing secret",
        description="Set an API inbox's webhook_url, and print its signing secret with the connection setting "
        "that makes the receiver accept it. Needs an administrator token.",
    )
    set_webhook.add_argument("--inbox-id", required=True, type=parse_inbox_id, help="the API inbox id")
    set_webhook.add_argument("--url", type=_url_argument, metavar="URL", help=url_help)
    set_webhook.set_defaults(func=with_logs_on_stderr(_set_webhook))

    reset = commands.add_parser(
        "reset-secret",
        parents=[common, setup],
        help="give an API inbox a new signing secret and print it",
        description="Replace an API inbox's signing secret and print the new one with the connection setting "
        "(the old secrets kept) that makes the receiver accept it. Neoleads signs with the new secret at "
        "once and never retries a refused delivery: use --apply, or update the connection right away.",
    )
    reset.add_argument("--inbox-id", required=True, type=parse_inbox_id, help="the API inbox id")
    reset.set_defaults(func=with_logs_on_stderr(_reset_secret))


# --------------------------------------------------------------------------- helpers


def _error(message: object) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _channel(inbox: Mapping[str, Any]) -> str:
    return str(inbox.get("channel_type") or "-").removeprefix("Channel::")


def _accepted(secret: str | None, secrets: tuple[str, ...]) -> bool:
    if not secret:
        return False
    return any(hmac.compare_digest(secret.encode(), known.encode()) for known in secrets)


def _no_url() -> int:
    print(
        "error: no webhook URL: give one, or set [api] base_url (AIRFLOW__API__BASE_URL) to the URL at which "
        "Neoleads reaches the Airflow API server; the receiver is then at "
        "{base_url}/neoleads/webhooks/<conn_id>",
        file=sys.stderr,
    )
    return 2


def _check_apply_possible(conn_id: str) -> str | None:
    """Why ``--apply`` cannot write the connection, or None when it can; asked before changing anything."""
    from neoleads_provider.cli._connections import connection_source

    source = connection_source(conn_id)
    if source == "metadata database":
        return None
    where = "is not defined" if source == "undefined" else f"comes from the {source}"
    return (
        f"--apply needs connection {conn_id!r} in the metadata database, but it {where}; "
        "run without --apply and set the printed values where the connection is defined"
    )


def _url_to_set(args: argparse.Namespace, given: str | None) -> tuple[str, list[str]] | int:
    """The webhook URL to set (``given``, else the receiver's) and its warnings, which are printed.

    :return: the exit status instead when there is no URL, or when ``--apply`` could not write the connection
        (asked before anything changes).
    """
    from neoleads_provider.cli._connections import receiver_url, url_warnings

    url = given or receiver_url(args.conn_id)
    if not url:
        return _no_url()
    warnings = url_warnings(url)
    for warning in warnings:
        _warn(warning)
    if args.apply and (problem := _check_apply_possible(args.conn_id)):
        return _error(problem)
    return url, warnings


# --------------------------------------------------------------------------- list


class _InboxRow(TypedDict):
    """One inbox of ``neoleads inboxes list`` (``--json`` prints these as they are)."""

    id: Any  # the API's values, as the server sent them
    name: Any
    channel_type: Any
    webhook_url: str | None
    inbox_identifier: Any
    delivers_to_receiver: bool
    secret_accepted: bool | None
    connection_inbox: bool


def _list(args: argparse.Namespace) -> int:
    from neoleads_provider.cli._connections import hook_for, points_at_receiver, receiver_url, shown_url
    from neoleads_provider.exceptions import NeoleadsError

    try:
        hook = hook_for(args.conn_id)
        inboxes = hook.list_inboxes()
    except NeoleadsError as exc:
        return _error(exc)
    settings = hook.settings
    expected = receiver_url(args.conn_id)
    rows: list[_InboxRow] = []
    for inbox in inboxes:
        is_api = inbox.get("channel_type") == API_CHANNEL
        webhook_url = inbox.get("webhook_url") if is_api else None
        rows.append(
            {
                "id": inbox.get("id"),
                "name": inbox.get("name"),
                "channel_type": inbox.get("channel_type"),
                "webhook_url": shown_url(webhook_url) or None,
                "inbox_identifier": inbox.get("inbox_identifier"),
                "delivers_to_receiver": points_at_receiver(webhook_url, args.conn_id, expected),
                # None: not an API inbox, or a token that may not see the secret.
                "secret_accepted": (
                    _accepted(inbox.get("secret"), settings.webhook_secrets)
                    if is_api and "secret" in inbox
                    else None
                ),
                "connection_inbox": inbox.get("id") == settings.inbox_id,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"No inboxes in account {settings.account_id}.")
        return 0
    header = ("ID", "NAME", "CHANNEL", "WEBHOOK_URL", "RECEIVER", "SIGNATURES")
    table = [
        (
            f"{row['id']}{'*' if row['connection_inbox'] else ''}",
            str(row["name"]),
            _channel(row),
            row["webhook_url"] or "-",
            "yes" if row["delivers_to_receiver"] else "-",
            {True: "accepted", False: "refused", None: "-"}[row["secret_accepted"]],
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in (header, *table)) for i in range(len(header))]
    for line in (header, *table):
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
    print()
    print(
        f"RECEIVER: the webhook_url is the receiver of connection {args.conn_id!r} "
        f"({expected or 'path /neoleads/webhooks/' + args.conn_id}). SIGNATURES: whether the connection's "
        "webhook_secrets hold the inbox's signing secret."
    )
    if settings.inbox_id is not None:
        print(f"* the connection's inbox_id ({settings.inbox_id}).")
    if any(row["channel_type"] == API_CHANNEL and row["secret_accepted"] is None for row in rows):
        print("Signing secrets are shown to administrators only, so SIGNATURES is unknown for this token.")
    return 0


# --------------------------------------------------------------------------- create, set-webhook, reset-secret


def _create(args: argparse.Namespace) -> int:
    from neoleads_provider.cli._connections import hook_for, shown_url
    from neoleads_provider.exceptions import NeoleadsError

    target = _url_to_set(args, args.webhook_url)
    if isinstance(target, int):
        return target
    url, warnings = target
    try:
        hook = hook_for(args.conn_id)
        same_name = [
            inbox
            for inbox in hook.list_inboxes()
            if inbox.get("channel_type") == API_CHANNEL and inbox.get("name") == args.name
        ]
        if same_name:
            # Neoleads allows two inboxes with one name; a second one is nearly always a re-run by mistake.
            inbox_id = same_name[0].get("id")
            return _error(
                f'an API inbox named "{args.name}" exists already (id {inbox_id}). To point it at the receiver: '
                f"neoleads inboxes set-webhook --conn-id {args.conn_id} --inbox-id {inbox_id} --url {shown_url(url)}"
            )
        inbox = hook.create_api_inbox(args.name, url)
    except NeoleadsError as exc:
        return _error(exc)
    return _report(args, hook, inbox, action="created", warnings=warnings)


def _set_webhook(args: argparse.Namespace) -> int:
    from neoleads_provider.cli._connections import hook_for
    from neoleads_provider.exceptions import NeoleadsError, NeoleadsNotFoundError

    target = _url_to_set(args, args.url)
    if isinstance(target, int):
        return target
    url, warnings = target
    try:
        hook = hook_for(args.conn_id)
        try:
            inbox = hook.get_inbox(args.inbox_id)
        except NeoleadsNotFoundError:
            return _error(
                f"account {hook.account_id} has no inbox {args.inbox_id} "
                f"(`neoleads inboxes list --conn-id {args.conn_id}` shows them)"
            )
        if inbox.get("channel_type") != API_CHANNEL:
            return _error(
                f'inbox {args.inbox_id} ("{inbox.get("name")}") is a {_channel(inbox)} inbox; only API inboxes '
                f"post their events to a webhook_url. Create one: neoleads inboxes create --conn-id "
                f'{args.conn_id} --name "Airflow"'
            )
        if inbox.get("webhook_url") == url and "secret" in inbox:
            action = "unchanged"
        else:
            # Also for an unchanged URL without a visible secret: the update answers with the secret, or
            # says the token is not an administrator's.
            inbox = hook.update_inbox_webhook(args.inbox_id, url)
            action = "updated"
    except NeoleadsError as exc:
        return _error(exc)
    return _report(args, hook, inbox, action=action, warnings=warnings)


def _reset_secret(args: argparse.Namespace) -> int:
    from neoleads_provider.cli._connections import hook_for
    from neoleads_provider.exceptions import NeoleadsError, NeoleadsNotFoundError

    if args.apply and (problem := _check_apply_possible(args.conn_id)):
        return _error(problem)
    try:
        hook = hook_for(args.conn_id)
    except NeoleadsError as exc:
        return _error(exc)
    try:
        inbox = hook.reset_inbox_secret(args.inbox_id)
    except NeoleadsNotFoundError:
        return _error(
            f"account {hook.account_id} has no API inbox {args.inbox_id} (only API inboxes have a signing "
            f"secret; `neoleads inboxes list --conn-id {args.conn_id}` shows them)"
        )
    except NeoleadsError as exc:
        return _error(exc)
    return _report(args, hook, inbox, action="reset", warnings=[])


_HEADLINES = {
    "created": "API inbox {id} ({name}) created. Neoleads signs its events with the inbox's own secret and "
    "posts them to",
    "updated": "API inbox {id} ({name}) now posts its events, signed with the inbox's own secret, to",
    "unchanged": "API inbox {id} ({name}) already posts its events, signed with the inbox's own secret, to",
    "reset": "API inbox {id} ({name}) has a new signing secret; Neoleads signs with it from now on. It posts to",
}


def _report(
    args: argparse.Namespace,
    hook: NeoleadsHook,
    inbox: dict[str, Any],
    *,
    action: str,
    warnings: list[str],
) -> int:
    """Print the inbox, its secret and the connection setting; apply the setting with ``--apply``."""
    from neoleads_provider.cli._connections import ConnectionNotStoredError, shown_url, update_stored_extra
    from neoleads_provider.cli._output import merge_secrets, print_connection_setting

    settings = hook.settings
    inbox_id = int(inbox["id"])
    secret = str(inbox.get("secret") or "")
    current = list(settings.webhook_secrets)
    merged = merge_secrets(current, secret)
    already = _accepted(secret, settings.webhook_secrets) and settings.inbox_id == inbox_id
    others_kept = len([value for value in merged if value != secret])
    applied = False
    apply_error = None
    if args.apply and secret and not already:
        try:
            update_stored_extra(args.conn_id, {"inbox_id": inbox_id, "webhook_secrets": merged})
            applied = True
        except ConnectionNotStoredError as exc:
            apply_error = str(exc)
        except Exception as exc:
            # Reported after the secret is printed: the inbox exists now, and its secret must not be lost.
            from neoleads_provider.store.errors import error_text

            apply_error = error_text(exc)

    if args.json:
        print(
            json.dumps(
                {
                    "action": action,
                    "inbox_id": inbox_id,
                    "name": inbox.get("name"),
                    "webhook_url": shown_url(inbox.get("webhook_url")) or None,
                    "inbox_identifier": inbox.get("inbox_identifier"),
                    "secret": secret or None,
                    "conn_id": args.conn_id,
                    "already_configured": already,
                    "applied": applied,
                    "other_secrets_kept": others_kept,
                    "warnings": warnings,
                },
                indent=2,
            )
        )
        if apply_error:
            return _error(f"the connection was not updated: {apply_error}")
        return 0

    print(_HEADLINES[action].format(id=inbox_id, name=json.dumps(inbox.get("name"))))
    print(
        f"  {shown_url(inbox.get('webhook_url')) or '(no webhook_url: Neoleads delivers nothing for this inbox)'}"
    )
    print(f"  inbox id:       {inbox_id}")
    if not secret:
        print("  This Neoleads server returned no signing secret (it predates v4.13 and sends unsigned inbox")
        print("  webhooks). Accept unsigned deliveries with a URL token instead: set the connection's extra")
        print('    "webhook_allow_unsigned": true, "webhook_url_token": "<a long random string>"')
        print(f'    "inbox_id": {inbox_id}')
        print(
            f"  and point the inbox at the URL with ?token=<that string> appended: neoleads inboxes set-webhook "
            f"--conn-id {args.conn_id} --inbox-id {inbox_id} --url '<URL>?token=<that string>'"
        )
        return 0
    print(f"  signing secret: {secret}")
    print()
    if already:
        print(
            f"Connection {args.conn_id!r} already accepts this secret for inbox {inbox_id}; nothing to change."
        )
        return 0
    if applied:
        print(
            f"Connection {args.conn_id!r} updated in the metadata database: inbox_id {inbox_id}, and the secret "
            f"added to webhook_secrets (the {others_kept} other secret(s) kept)."
        )
        print("The receiver accepts this inbox's deliveries from now on.")
        return 0
    print_connection_setting(
        args.conn_id,
        base_url=settings.base_url,
        account_id=settings.account_id,
        secret=secret,
        current_secrets=current,
        updates={"inbox_id": inbox_id},
    )
    if action == "reset":
        print()
        print("Neoleads already signs with the new secret and does not retry a refused delivery: update the")
        print("connection now. Remove the old secret once no delivery signed with it can still arrive.")
    if apply_error:
        print()
        return _error(f"the connection was not updated: {apply_error}")
    if action in ("created", "updated"):
        print()
        print(
            "Or let this tool set both fields in a connection stored in the metadata database: "
            "neoleads inboxes set-webhook "
            f"--conn-id {args.conn_id} --inbox-id {inbox_id} --url {shown_url(inbox.get('webhook_url'))} --apply"
        )
    return 0
