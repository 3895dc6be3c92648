"""``neoleads webhooks ...``: run the receiver, register it with Neoleads, and send it a test delivery.

- ``serve``: the standalone receiver (``/neoleads/webhooks/<conn_id>``), migrating the store first.
- ``register``: create the account webhook for a URL, or adopt the existing one, and print its signing
  secret with the connection setting that makes the receiver accept it.
- ``send-test``: post one correctly signed sample delivery, shaped like the real server's, to any URL.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from neoleads_provider.cli.events import http_url, positive_int, with_logs_on_stderr
from neoleads_provider.events.names import WEBHOOK_EVENTS
from neoleads_provider.webhooks import DEFAULT_HEADER_PREFIX

__all__ = ["DEFAULT_EVENTS", "WEBHOOK_EVENTS", "register"]

# What the sensors and triggers wait for: replies and conversation state. Typing and contact events are
# chatty and rarely worth a row each.
DEFAULT_EVENTS = (
    "message_created",
    "message_updated",
    "conversation_created",
    "conversation_updated",
    "conversation_status_changed",
)


def _events(text: str) -> list[str]:
    events = [part.strip() for part in text.replace(" ", ",").split(",") if part.strip()]
    unknown = [event for event in events if event not in WEBHOOK_EVENTS]
    if not events or unknown:
        raise argparse.ArgumentTypeError(
            f"unknown event(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(WEBHOOK_EVENTS)}"
        )
    return list(dict.fromkeys(events))


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0 to 65535)")
    return port


def register(subparsers: Any) -> None:
    """Add the ``webhooks`` command group to the ``neoleads`` parser."""
    webhooks = subparsers.add_parser(
        "webhooks",
        help="run, register and test the webhook receiver",
        description="Run the webhook receiver, register it with Neoleads, and send it test deliveries.",
    )
    commands = webhooks.add_subparsers(dest="webhooks_command", metavar="COMMAND", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the standalone receiver at /neoleads/webhooks/<conn_id> (migrates the store first)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=8082, help="port to listen on (default 8082)")
    serve.add_argument("--db-url", metavar="URL", help="event store URL (default: [neoleads] events_db_url)")
    serve.add_argument(
        "--log-level",
        default="info",
        choices=("critical", "error", "warning", "info", "debug"),
        help="log level",
    )
    serve.add_argument(
        "--no-access-log",
        dest="access_log",
        action="store_false",
        help="do not write a line per request to standard error (the store records every accepted "
        "delivery, and refusals are logged either way)",
    )
    serve.add_argument(
        "--conn-id",
        dest="warm_conn_ids",
        action="append",
        default=[],
        metavar="CONN_ID",
        help="a connection to look up before the port opens, so its first delivery is answered at once "
        "(repeatable; neoleads_default always is)",
    )
    serve.set_defaults(func=with_logs_on_stderr(_serve))

    reg = commands.add_parser(
        "register",
        help="create (or adopt) the Neoleads account webhook for a URL and print its signing secret",
    )
    reg.add_argument("--conn-id", default="neoleads_default", help="Airflow connection (administrator token)")
    reg.add_argument(
        "--url",
        required=True,
        type=http_url,
        help="the receiver URL, e.g. https://airflow.example.com/neoleads/webhooks/neoleads_default",
    )
    reg.add_argument(
        "--events",
        type=_events,
        default=list(DEFAULT_EVENTS),
        metavar="EVENT[,EVENT...]",
        help=f"events to subscribe to (default {','.join(DEFAULT_EVENTS)})",
    )
    reg.add_argument("--name", help="a name for the webhook in Neoleads")
    reg.add_argument("--json", action="store_true", help="print the result as JSON")
    reg.set_defaults(func=with_logs_on_stderr(_register))

    test = commands.add_parser("send-test", help="post one signed sample delivery to a receiver URL")
    test.add_argument("--url", required=True, type=http_url, help="the receiver URL")
    test.add_argument("--secret", help="the signing secret (one of the connection's webhook_secrets)")
    test.add_argument("--event", default="message_created", choices=WEBHOOK_EVENTS, help="event to send")
    test.add_argument(
        "--conversation-id", type=positive_int, default=1, help="conversation display id (default 1)"
    )
    test.add_argument("--account-id", type=positive_int, default=1, help="account id (default 1)")
    test.add_argument("--inbox-id", type=positive_int, default=1, help="inbox id (default 1)")
    test.add_argument(
        "--content", default="Test message from neoleads webhooks send-test", help="message text"
    )
    test.add_argument(
        "--message-type", default="incoming", choices=("incoming", "outgoing"), help="for message events"
    )
    test.add_argument(
        "--header-prefix", default=DEFAULT_HEADER_PREFIX, help="header prefix (default X-Chatwoot-)"
    )
    test.add_argument("--delivery-id", help="delivery id header (default: a new uuid)")
    test.add_argument("--unsigned", action="store_true", help="send no signature (needs --token)")
    test.add_argument("--token", help="with --unsigned: the connection's webhook_url_token, sent as ?token=")
    test.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait for the answer (default 10)"
    )
    test.set_defaults(func=_send_test)


# --------------------------------------------------------------------------- serve


def _serve(args: argparse.Namespace) -> int:
    from neoleads_provider.store.errors import EventStoreError, translate_errors
    from neoleads_provider.webhooks.server import serve

    try:
        with translate_errors():
            serve(
                args.host, args.port, db_url=args.db_url, log_level=args.log_level, access_log=args.access_log
            )
    except EventStoreError as exc:
        print(f"error: cannot open or migrate the event store: {exc}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------- register


def _register(args: argparse.Namespace) -> int:
    from neoleads_provider.cli._connections import hook_for
    from neoleads_provider.cli._output import merge_secrets, print_connection_setting
    from neoleads_provider.exceptions import NeoleadsError, NeoleadsValidationError

    try:
        # Looked up like the receiver does, so a connection in the metadata database is found too.
        hook = hook_for(args.conn_id)
        try:
            webhook = hook.create_webhook(args.url, args.events, name=args.name)
            action = "created"
        except NeoleadsValidationError as exc:
            if "url" not in exc.attributes and "already been taken" not in exc.server_message.lower():
                raise
            existing = next((hook_ for hook_ in hook.list_webhooks() if hook_.get("url") == args.url), None)
            if existing is None:
                raise
            same_events = sorted(existing.get("subscriptions") or []) == sorted(args.events)
            same_name = args.name is None or existing.get("name") == args.name
            if same_events and same_name:
                webhook, action = existing, "adopted"
            else:
                webhook = hook.update_webhook(existing["id"], subscriptions=args.events, name=args.name)
                action = "updated"
        current_secrets = list(hook.settings.webhook_secrets)
    except NeoleadsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    secret = webhook.get("secret") or ""
    merged = merge_secrets(current_secrets, secret)

    if args.json:
        print(
            json.dumps(
                {
                    "action": action,
                    "webhook_id": webhook.get("id"),
                    "url": webhook.get("url"),
                    "subscriptions": webhook.get("subscriptions"),
                    "secret": secret,
                    "webhook_secrets": merged,
                    "already_configured": bool(secret) and secret in current_secrets,
                },
                indent=2,
            )
        )
        return 0

    print(f"Webhook {webhook.get('id')} {action} for {webhook.get('url')}")
    print(f"  events: {', '.join(webhook.get('subscriptions') or [])}")
    if not secret:
        print(
            "  This Neoleads server returned no signing secret (it predates v4.11.2 and sends unsigned webhooks)."
        )
        print("  Set the connection's extra to accept unsigned deliveries with a URL token instead:")
        print('    "webhook_allow_unsigned": true, "webhook_url_token": "<a long random string>"')
        print("  and register the URL with ?token=<that string> appended.")
        return 0
    print(f"  signing secret: {secret}")
    print()
    if secret in current_secrets:
        print(f"Connection {args.conn_id!r} already accepts this secret; nothing to change.")
        return 0
    # This command has always shown the secrets the connection already lists; `neoleads inboxes` does not.
    print_connection_setting(
        args.conn_id,
        base_url=hook.settings.base_url,
        account_id=hook.settings.account_id,
        secret=secret,
        current_secrets=current_secrets,
        show_current_secrets=True,
    )
    return 0


# --------------------------------------------------------------------------- send-test


def _with_token(url: str, token: str) -> str:
    parts = urlsplit(url)
    query = [(key, value) for key, value in parse_qsl(parts.query, keep_blank_values=True) if key != "token"]
    query.append(("token", token))
    return urlunsplit(parts._replace(query=urlencode(query)))


def _send_test(args: argparse.Namespace) -> int:
    import urllib.error
    import urllib.request

    from neoleads_provider.events.build import sample_event
    from neoleads_provider.webhooks.verify import signed_headers

    if args.unsigned and not args.token:
        print("error: --unsigned needs --token (the connection's webhook_url_token)", file=sys.stderr)
        return 2
    if not args.unsigned and not args.secret:
        print("error: give --secret (or --unsigned --token T for an unsigned delivery)", file=sys.stderr)
        return 2
    prefix = args.header_prefix if args.header_prefix.endswith("-") else args.header_prefix + "-"
    payload = sample_event(
        args.event,
        account_id=args.account_id,
        inbox_id=args.inbox_id,
        conversation_id=args.conversation_id,
        content=args.content,
        message_type=args.message_type,
    )
    # Compact, like Ruby's to_json; the signature covers these exact bytes.
    body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
    delivery_id = args.delivery_id or str(uuid.uuid4())
    url = args.url
    if args.unsigned:
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            f"{prefix}Delivery": delivery_id,
        }
        url = _with_token(url, args.token)
    else:
        headers = signed_headers(
            args.secret, body, timestamp=int(time.time()), delivery_id=delivery_id, prefix=prefix
        )
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310 (http(s) only)
    try:
        with urllib.request.urlopen(request, timeout=args.timeout) as response:  # noqa: S310
            status, text = response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"error: could not reach {args.url}: {reason}", file=sys.stderr)
        return 1
    print(f"Sent {args.event} delivery {delivery_id} ({len(body)} bytes) to {args.url}")
    print(f"HTTP {status} {text}")
    return 0 if 200 <= status < 300 else 1
