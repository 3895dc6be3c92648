"""``neoleads sandbox``: run the local Neoleads sandbox server in the foreground.

The sandbox is imported inside the handler so ``neoleads --help`` stays quick.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse
    from types import FrameType

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8081
# Used for --webhook-url targets when --webhook-secret is not given, so receivers can be set up in advance.
DEFAULT_WEBHOOK_SECRET = "sandbox-webhook-secret"


def register(subparsers: Any) -> None:
    """Add the ``sandbox`` command to the ``neoleads`` parser."""
    parser = subparsers.add_parser(
        "sandbox",
        help="run a local Neoleads-compatible server for offline DAG runs",
        description=(
            "Run an in-memory Neoleads (Chatwoot Application API) server until Ctrl-C or SIGTERM. "
            "It serves the API, posts signed webhooks and has /_sandbox/ control routes."
        ),
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default: {DEFAULT_HOST})")
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help=f"TCP port, 0 for any free one (default: {DEFAULT_PORT})",
    )
    parser.add_argument(
        "--token", default=None, help="the administrator's API access token (default: sandbox-token)"
    )
    parser.add_argument("--account-id", type=int, default=None, help="the account id (default: 1)")
    parser.add_argument(
        "--webhook-url",
        action="append",
        default=[],
        metavar="URL",
        help="add an account webhook subscribed to every event (repeatable)",
    )
    parser.add_argument(
        "--webhook-secret",
        default=None,
        metavar="SECRET",
        help=f"signing secret of the --webhook-url webhooks (default: {DEFAULT_WEBHOOK_SECRET})",
    )
    parser.add_argument(
        "--inbox-webhook-url",
        default=None,
        metavar="URL",
        help="point the API inbox's own webhook_url here: its deliveries are signed with the inbox's secret "
        "(the other delivery path; it carries the inbox's events only)",
    )
    parser.add_argument(
        "--unsigned",
        action="store_true",
        help="send webhooks as servers before 4.11.2 do: no signature, timestamp or delivery-id headers",
    )
    parser.add_argument(
        "--allow-remote-webhooks",
        action="store_true",
        help="deliver webhooks to hosts other than this machine (by default only localhost/127.0.0.0/8/::1)",
    )
    parser.add_argument(
        "--header-prefix", default="X-Chatwoot-", help="webhook header prefix (default: X-Chatwoot-)"
    )
    parser.add_argument(
        "--auto-reply", default=None, metavar="TEXT", help="make the contact answer each outgoing API message"
    )
    parser.add_argument(
        "--auto-reply-delay",
        type=float,
        default=0.5,
        metavar="S",
        help="seconds before the auto-reply (default: 0.5)",
    )
    parser.set_defaults(func=run_sandbox)


def run_sandbox(args: argparse.Namespace) -> int:
    """Start the sandbox, print how to reach it, and serve until interrupted; return the exit status."""
    from neoleads_provider.testing import DEFAULT_ACCOUNT_ID, DEFAULT_TOKEN, NeoleadsSandbox

    if args.auto_reply_delay < 0:
        print("error: --auto-reply-delay must be >= 0", file=sys.stderr)
        return 2
    try:
        sandbox = NeoleadsSandbox(
            host=args.host,
            port=args.port,
            token=args.token or DEFAULT_TOKEN,
            account_id=args.account_id if args.account_id is not None else DEFAULT_ACCOUNT_ID,
            auto_reply=args.auto_reply,
            auto_reply_delay=args.auto_reply_delay,
            sign_webhooks=not args.unsigned,
            header_prefix=args.header_prefix,
            allow_remote_webhooks=args.allow_remote_webhooks,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    # Webhooks first, then the port: a request that arrives the moment it opens already finds them.
    webhooks = []
    for url in args.webhook_url:
        try:
            webhooks.append(sandbox.add_webhook(url, secret=args.webhook_secret or DEFAULT_WEBHOOK_SECRET))
        except ValueError as exc:
            print(f"error: --webhook-url {url!r}: {exc}", file=sys.stderr)
            return 1
    if args.inbox_webhook_url:
        sandbox.set_inbox_webhook(sandbox.api_inbox_id, args.inbox_webhook_url)

    # And the signal handlers before the port opens: a SIGTERM right after must stop it cleanly.
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            sandbox.start()
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        _print_banner(sandbox, webhooks, args)
        if not args.allow_remote_webhooks:
            from neoleads_provider.testing.delivery import is_loopback_url

            for url in [*args.webhook_url, *([args.inbox_webhook_url] if args.inbox_webhook_url else [])]:
                if not is_loopback_url(url):
                    print(
                        f"warning: {url} is not on this machine; its deliveries will be refused "
                        "unless you pass --allow-remote-webhooks",
                        file=sys.stderr,
                        flush=True,
                    )
        # A timed wait keeps the main thread responsive to signals on every platform.
        while not stop.wait(0.5):
            pass
        print("Stopping the Neoleads sandbox.", flush=True)
        return 0
    finally:
        sandbox.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _print_banner(sandbox: Any, webhooks: list[dict[str, Any]], args: argparse.Namespace) -> None:
    lines = [
        f"Neoleads sandbox running at {sandbox.url}",
        f"  API token:      {sandbox.token}  (agent, non-admin: {sandbox.agent_token})",
        f"  Account id:     {sandbox.account_id}",
        f"  API inbox id:   {sandbox.api_inbox_id}  (webhook secret: GET /api/v1/accounts/"
        f"{sandbox.account_id}/inboxes/{sandbox.api_inbox_id} as admin)",
        f"  Website inbox:  {sandbox.web_inbox_id}",
    ]
    for webhook in webhooks:
        secret_source = (
            "--webhook-secret" if args.webhook_secret else f"default secret {DEFAULT_WEBHOOK_SECRET!r}"
        )
        signing = "unsigned" if args.unsigned else f"signed with the {secret_source}"
        lines.append(f"  Webhook {webhook['id']}:     {webhook['url']} (every event, {signing})")
    if args.inbox_webhook_url:
        signing = (
            "unsigned" if args.unsigned else f"signed with the inbox's secret {sandbox.api_inbox_secret!r}"
        )
        lines.append(
            f"  Inbox webhook:  {args.inbox_webhook_url} (API inbox {sandbox.api_inbox_id}'s events, {signing})"
        )
    if args.auto_reply is not None:
        lines.append(f"  Auto-reply:     {args.auto_reply!r} after {args.auto_reply_delay} s")
    env = sandbox.connection_env()
    for name, value in env.items():
        lines.append(f"Airflow connection:\n  export {name}='{value}'")
    lines.append(
        "Control routes under /_sandbox/ (faults, reset, state, requests, deliveries). Ctrl-C to stop."
    )
    print("\n".join(lines), flush=True)
