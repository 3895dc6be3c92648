"""``neoleads doctor``: check every piece that sending to Neoleads and receiving its webhooks depends on.

Each check prints one ``PASS``/``WARN``/``FAIL``/``SKIP`` line and, when something is wrong, the command or
setting that fixes it:

1. ``connection``: the Airflow connection exists, is of type ``neoleads`` and its fields are valid;
2. ``token``: Neoleads accepts the API access token (``GET /api/v1/profile``);
3. ``account``: the connection's ``account_id`` is one of the token's accounts;
4. ``role``: administrator (needed to create inboxes, set their webhook and read their signing secret);
5. ``inbox``: the connection's ``inbox_id`` (or ``--inbox-id``) exists and is an API inbox; without one,
   whatever in Neoleads delivers to this receiver;
6. ``webhook_url``: that inbox posts its events to this connection's receiver;
7. ``signing secret``: the connection's ``webhook_secrets`` hold the secret Neoleads signs with;
8. ``receiver``: the receiver answers at its URL and knows the connection (an unsigned probe must get 401);
9. ``event store``: reachable and migrated; 10. ``last delivery``: when the last delivery was stored.

Exit status 1 when a check fails (something blocks sending or receiving), else 0; warnings do not fail.
No secret, token or signature is ever printed.
"""

from __future__ import annotations

import hmac
import json
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from neoleads_provider.cli.events import http_url, with_logs_on_stderr
from neoleads_provider.cli.inboxes import parse_inbox_id

if TYPE_CHECKING:
    import argparse

    from neoleads_provider.connection import NeoleadsConnectionSettings
    from neoleads_provider.hooks.neoleads import NeoleadsHook

__all__ = ["Check", "register", "run_checks"]

PASS, WARN, FAIL, SKIP = "PASS", "WARN", "FAIL", "SKIP"
API_CHANNEL = "Channel::Api"
DEFAULT_CONN_ID = "neoleads_default"
PROBE_TIMEOUT_SECONDS = 10.0


@dataclass
class Check:
    """One check's outcome: ``status`` is PASS, WARN, FAIL or SKIP; ``fix`` says what to do about it."""

    name: str
    status: str
    detail: str
    fix: str = ""


def register(subparsers: Any) -> None:
    """Add the ``doctor`` command to the ``neoleads`` parser."""
    parser = subparsers.add_parser(
        "doctor",
        help="check the connection, token, role, API inbox, webhook, secrets, receiver and event store",
        description="Check everything sending to Neoleads and receiving its webhooks depends on; print "
        "PASS/WARN/FAIL per check with its fix. Exit status 1 when a check fails.",
    )
    parser.add_argument(
        "--conn-id", default=DEFAULT_CONN_ID, help=f"Airflow connection (default {DEFAULT_CONN_ID})"
    )
    parser.add_argument(
        "--inbox-id", type=parse_inbox_id, help="the API inbox to check (default: the connection's inbox_id)"
    )
    parser.add_argument(
        "--receiver-url",
        type=http_url,
        metavar="URL",
        help="the receiver's URL as Neoleads calls it (default: {[api] base_url}/neoleads/webhooks/<conn_id>)",
    )
    parser.add_argument("--db-url", metavar="URL", help="event store URL (default: [neoleads] events_db_url)")
    parser.add_argument("--json", action="store_true", help="print the checks as JSON")
    parser.set_defaults(func=with_logs_on_stderr(_doctor))


# --------------------------------------------------------------------------- the checks


@dataclass
class _Context:
    conn_id: str
    inbox_id: int | None
    receiver_url: str | None
    db_url: str | None
    checks: list[Check] = field(default_factory=list)
    settings: NeoleadsConnectionSettings | None = None
    hook: NeoleadsHook | None = None
    is_admin: bool | None = None
    # What delivers to the receiver, and the secret it signs with (None: unknown to this token).
    source: str | None = None
    source_url: str | None = None
    source_secret: str | None = None
    source_secret_visible: bool = False

    def add(self, name: str, status: str, detail: str, fix: str = "") -> Check:
        check = Check(name, status, detail, fix)
        self.checks.append(check)
        return check

    def skip(self, *names: str, because: str) -> None:
        for name in names:
            self.add(name, SKIP, because)

    #: Whether the connection is a metadata-database row, which ``--apply`` can update.
    applies: bool = False

    def receiver_hint(self) -> str:
        return self.receiver_url or "<receiver URL>"

    def apply(self, what: str = "") -> str:
        """The end of a fix command: ``--apply`` where it can update the connection, else where to copy to."""
        if self.applies:
            return f" --apply{what}"
        return " (then put the setting it prints where the connection is defined: --apply only updates a row of the metadata database)"


_API_CHECKS = ("token", "account", "role", "inbox", "webhook_url", "signing secret")


def _check_connection(ctx: _Context) -> None:
    from neoleads_provider.cli._connections import (
        connection_source,
        create_connection_command,
        hook_for,
        resolve_connection,
    )
    from neoleads_provider.connection import CONN_TYPE
    from neoleads_provider.exceptions import NeoleadsConfigError

    try:
        conn = resolve_connection(ctx.conn_id)
    except Exception as exc:
        ctx.add(
            "connection",
            FAIL,
            f"looking connection {ctx.conn_id!r} up failed: {type(exc).__name__}",
            "check the secrets backend and the metadata database this machine uses",
        )
        return
    if conn is None:
        ctx.add(
            "connection",
            FAIL,
            f"connection {ctx.conn_id!r} is not defined (no secrets backend, no "
            f"AIRFLOW_CONN_{ctx.conn_id.upper()} and no row in the metadata database has it)",
            create_connection_command(ctx.conn_id),
        )
        return
    if conn.conn_type != CONN_TYPE:
        ctx.add(
            "connection",
            FAIL,
            f"connection {ctx.conn_id!r} has conn_type {conn.conn_type!r}; the receiver refuses deliveries for it",
            f"re-create it with --conn-type {CONN_TYPE}",
        )
        return
    try:
        # A diagnosis reports what it meets at once: an unreachable server must not cost the retries (and
        # their warnings) a task would spend before the table says so.
        ctx.hook = hook_for(ctx.conn_id, max_retries=0, timeout=PROBE_TIMEOUT_SECONDS)
    except NeoleadsConfigError as exc:
        ctx.add("connection", FAIL, str(exc), "correct that field of the connection")
        return
    ctx.settings = ctx.hook.settings
    if ctx.inbox_id is None:
        ctx.inbox_id = ctx.settings.inbox_id
    source = connection_source(ctx.conn_id)
    ctx.applies = source == "metadata database"
    ctx.add(
        "connection",
        PASS,
        f"{ctx.conn_id}: {ctx.settings.base_url}, account {ctx.settings.account_id} (from the {source})",
    )


def _check_api(ctx: _Context) -> None:
    """token, account, role, then the inbox (or whatever delivers to the receiver) and its signing secret."""
    from neoleads_provider.exceptions import NeoleadsAuthError, NeoleadsError, NeoleadsTransportError

    assert ctx.hook is not None
    assert ctx.settings is not None
    settings = ctx.settings
    try:
        profile = ctx.hook.get_profile()
    except NeoleadsAuthError as exc:
        ctx.add(
            "token",
            FAIL,
            f"Neoleads refused the API access token: {exc.server_message}",
            "set the connection's password to the access token on your Neoleads profile page "
            "(Profile settings > Access token); bot and platform-app tokens cannot read the profile",
        )
        ctx.skip(*_API_CHECKS[1:], because="needs a working token")
        return
    except NeoleadsTransportError as exc:
        ctx.add(
            "token",
            FAIL,
            f"cannot reach {settings.base_url}: {exc.reason}",
            "check the connection's host (the Neoleads base URL) and that this machine reaches it",
        )
        ctx.skip(*_API_CHECKS[1:], because="needs the Neoleads server")
        return
    except NeoleadsError as exc:
        ctx.add(
            "token",
            FAIL,
            str(exc),
            "the connection's host must be the Neoleads server's root URL, e.g. https://app.neoleads.com",
        )
        ctx.skip(*_API_CHECKS[1:], because="needs a working token")
        return
    ctx.add("token", PASS, f"Neoleads accepts it: user {profile.get('name')!r}")

    accounts = {account.get("id"): account for account in profile.get("accounts") or []}
    account = accounts.get(settings.account_id)
    if account is None:
        known = ", ".join(f"{key} ({value.get('name')})" for key, value in accounts.items()) or "none"
        ctx.add(
            "account",
            FAIL,
            f"account {settings.account_id} is not one of the token's accounts (it has: {known})",
            "set the connection's extra account_id to one of those: the number in /app/accounts/<id>/",
        )
        ctx.skip(*_API_CHECKS[2:], because="needs the right account")
        return
    if account.get("status") not in (None, "active"):
        ctx.add(
            "account",
            FAIL,
            f"account {settings.account_id} ({account.get('name')!r}) is {account.get('status')}",
            "ask the Neoleads administrators to reactivate it",
        )
        ctx.skip(*_API_CHECKS[2:], because="needs an active account")
        return
    ctx.add("account", PASS, f"account {settings.account_id} ({account.get('name')!r})")

    role = account.get("role") or "unknown"
    ctx.is_admin = role == "administrator"
    if ctx.is_admin:
        ctx.add("role", PASS, "administrator: can create inboxes, set their webhook and read signing secrets")
    else:
        ctx.add(
            "role",
            WARN,
            f"{role}: sending works, but creating inboxes, setting their webhook and reading their signing "
            "secret need an administrator, so the secret is not checked",
            "use an administrator's token for setting up (and for this doctor)",
        )
    _check_source(ctx)
    _check_secret(ctx)


def _check_source(ctx: _Context) -> None:
    """The configured inbox and its webhook_url; without one, find what delivers to the receiver."""
    from neoleads_provider.cli._connections import points_at_receiver, shown_url, url_problems
    from neoleads_provider.exceptions import NeoleadsAuthError, NeoleadsError, NeoleadsNotFoundError

    assert ctx.hook is not None
    hook, conn_id = ctx.hook, ctx.conn_id
    where = ctx.receiver_url or f"path /neoleads/webhooks/{conn_id}"
    create_fix = (
        f"neoleads inboxes create --conn-id {conn_id} --name Airflow"
        + ("" if ctx.receiver_url else " --webhook-url <receiver URL>")
        + ctx.apply()
    )
    if ctx.inbox_id is None:
        try:
            inboxes = hook.list_inboxes()
            webhooks = hook.list_webhooks() if ctx.is_admin else []
        except NeoleadsError as exc:
            ctx.add("inbox", FAIL, f"cannot list inboxes: {exc}", "check the token's access to the account")
            ctx.skip("webhook_url", because="no inbox to check")
            return
        found = [
            inbox
            for inbox in inboxes
            if inbox.get("channel_type") == API_CHANNEL
            and points_at_receiver(inbox.get("webhook_url"), conn_id, ctx.receiver_url)
        ]
        hooks_found = [
            item for item in webhooks if points_at_receiver(item.get("url"), conn_id, ctx.receiver_url)
        ]
        if found:
            inbox = found[0]
            ctx.inbox_id = int(inbox["id"])
            ctx.add(
                "inbox",
                PASS,
                f"no inbox_id in the connection; API inbox {inbox['id']} ({inbox.get('name')!r}) delivers here",
                f"optional: set the connection's extra inbox_id to {inbox['id']} so the doctor always checks it",
            )
        elif hooks_found:
            webhook = hooks_found[0]
            ctx.source = f"account webhook {webhook.get('id')}"
            ctx.source_url = webhook.get("url")
            ctx.source_secret = webhook.get("secret") or None
            ctx.source_secret_visible = True
            ctx.add("inbox", PASS, f"no inbox_id in the connection; {ctx.source} delivers here")
            ctx.add("webhook_url", PASS, shown_url(webhook.get("url")))
            return
        else:
            status = FAIL if ctx.is_admin else WARN
            seen = "" if ctx.is_admin else " among the inboxes this (non-administrator) token sees"
            ctx.add(
                "inbox",
                status,
                f"nothing in Neoleads delivers to this receiver ({where}): no API inbox's webhook_url "
                f"and no account webhook points at it{seen}",
                create_fix,
            )
            ctx.skip("webhook_url", because="no inbox to check")
            return
    else:
        try:
            inbox = hook.get_inbox(ctx.inbox_id)
        except NeoleadsNotFoundError:
            ctx.add(
                "inbox",
                FAIL,
                f"account {hook.account_id} has no inbox {ctx.inbox_id}",
                f"set the connection's extra inbox_id to an API inbox from `neoleads inboxes list --conn-id "
                f"{conn_id}`, or make one: {create_fix}",
            )
            ctx.skip("webhook_url", because="no inbox to check")
            return
        except NeoleadsAuthError as exc:
            ctx.add(
                "inbox",
                FAIL,
                f"the token may not see inbox {ctx.inbox_id}: {exc.server_message}",
                "add the token's user to the inbox in Neoleads, or use an administrator's token",
            )
            ctx.skip("webhook_url", because="no inbox to check")
            return
        except NeoleadsError as exc:
            ctx.add("inbox", FAIL, f"cannot read inbox {ctx.inbox_id}: {exc}", "try again; check the server")
            ctx.skip("webhook_url", because="no inbox to check")
            return
        if inbox.get("channel_type") != API_CHANNEL:
            ctx.add(
                "inbox",
                FAIL,
                f"inbox {ctx.inbox_id} ({inbox.get('name')!r}) is a {inbox.get('channel_type')} inbox; only "
                "API inboxes post their events to a webhook_url",
                f"make an API inbox (it replaces inbox_id): {create_fix}",
            )
            ctx.skip("webhook_url", because="not an API inbox")
            return
        ctx.add("inbox", PASS, f"inbox {ctx.inbox_id} ({inbox.get('name')!r}) is an API inbox")

    ctx.source = f"inbox {ctx.inbox_id}"
    ctx.source_url = inbox.get("webhook_url") or None
    ctx.source_secret = inbox.get("secret") or None
    ctx.source_secret_visible = "secret" in inbox
    set_fix = (
        f"neoleads inboxes set-webhook --conn-id {conn_id} --inbox-id {ctx.inbox_id} "
        f"--url {ctx.receiver_hint()}{ctx.apply()}"
    )
    if not ctx.source_url:
        ctx.add(
            "webhook_url",
            FAIL,
            f"inbox {ctx.inbox_id} has no webhook_url: Neoleads delivers none of its events",
            set_fix,
        )
        return
    if not points_at_receiver(ctx.source_url, conn_id, ctx.receiver_url):
        ctx.add(
            "webhook_url",
            FAIL,
            f"inbox {ctx.inbox_id} posts to {shown_url(ctx.source_url)}, not to this receiver ({where})",
            set_fix,
        )
        return
    problems = url_problems(ctx.source_url)
    if problems:
        ctx.add(
            "webhook_url",
            WARN,
            f"{shown_url(ctx.source_url)} points here, but " + "; ".join(what for what, _ in problems),
            " ".join(advice for _, advice in problems),
        )
    else:
        ctx.add("webhook_url", PASS, f"{shown_url(ctx.source_url)} points at this receiver")


def _check_secret(ctx: _Context) -> None:
    """Does the connection accept what Neoleads signs with?"""
    from urllib.parse import parse_qs

    assert ctx.settings is not None
    settings, conn_id = ctx.settings, ctx.conn_id
    apply_fix = (
        f"neoleads inboxes set-webhook --conn-id {conn_id} --inbox-id {ctx.inbox_id} "
        f"--url {ctx.receiver_hint()}{ctx.apply(' (prints the inbox secret and adds it to the connection)')}"
        if ctx.source and ctx.source.startswith("inbox")
        else f"neoleads inboxes create --conn-id {conn_id} --name Airflow{ctx.apply()}"
    )
    secrets = settings.webhook_secrets
    if ctx.source_secret_visible and ctx.source and not ctx.source_secret:
        # A server before 4.13 signs nothing; only unsigned mode with a URL token lets deliveries in.
        token = (parse_qs(urlsplit(ctx.source_url or "").query).get("token") or [""])[0]
        if settings.webhook_allow_unsigned and token:
            ok = hmac.compare_digest(token.encode(), settings.webhook_url_token.encode())
            ctx.add(
                "signing secret",
                PASS if ok else FAIL,
                f"{ctx.source} sends unsigned deliveries (Neoleads before 4.13); its URL token "
                + (
                    "matches the connection's webhook_url_token"
                    if ok
                    else "is not the connection's webhook_url_token"
                ),
                "" if ok else "put ?token=<the connection's webhook_url_token> in the inbox's webhook_url",
            )
            return
        ctx.add(
            "signing secret",
            FAIL,
            f"Neoleads has no signing secret for {ctx.source} (a server before 4.13 sends unsigned deliveries), "
            "and the connection does not accept unsigned ones with a URL token",
            'set the connection\'s extra "webhook_allow_unsigned": true and "webhook_url_token": "<a long '
            'random string>", and append ?token=<that string> to the webhook_url',
        )
        return
    if not secrets:
        ctx.add(
            "signing secret",
            FAIL,
            "the connection lists no webhook_secrets: the receiver refuses every signed delivery (401)",
            apply_fix,
        )
        return
    if not ctx.source:
        ctx.add(
            "signing secret",
            SKIP,
            f"the connection lists {len(secrets)} webhook secret(s); no sender to match",
        )
        return
    if not ctx.source_secret_visible:
        ctx.add(
            "signing secret",
            WARN,
            f"the connection lists {len(secrets)} webhook secret(s); whether {ctx.source} signs with one of them "
            "takes an administrator's token to see",
            "run the doctor with an administrator's token",
        )
        return
    assert ctx.source_secret is not None
    if any(hmac.compare_digest(ctx.source_secret.encode(), known.encode()) for known in secrets):
        ctx.add(
            "signing secret",
            PASS,
            f"the connection accepts {ctx.source}'s signing secret (one of its {len(secrets)} webhook_secrets)",
        )
        return
    ctx.add(
        "signing secret",
        FAIL,
        f"{ctx.source} signs with a secret that is not among the connection's {len(secrets)} webhook_secrets: "
        "the receiver refuses its deliveries (401) and Neoleads does not retry them",
        apply_fix,
    )


def _check_receiver(ctx: _Context) -> None:
    """GET /neoleads/_health, then an unsigned POST that a receiver knowing the connection answers with 401."""
    import urllib.error
    import urllib.request
    import uuid

    from neoleads_provider.cli._connections import shown_url

    if not ctx.receiver_url:
        ctx.add(
            "receiver",
            SKIP,
            "its URL is unknown",
            "set [api] base_url (AIRFLOW__API__BASE_URL) to the API server's URL, or pass --receiver-url",
        )
        return
    url = ctx.receiver_url
    # The receiver app serves /webhooks/<conn_id> and /_health under one mount point (/neoleads).
    health = url.split("?", 1)[0].rstrip("/").rsplit("/webhooks/", 1)[0] + "/_health"

    def call(request: urllib.request.Request) -> int:
        try:
            with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT_SECONDS) as response:  # noqa: S310
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    try:
        health_status = call(urllib.request.Request(health, method="GET"))  # noqa: S310 (http(s) only)
        if health_status != 200:
            ctx.add(
                "receiver",
                FAIL,
                f"no receiver at {shown_url(health)} (HTTP {health_status})",
                "install the provider where the API server runs and restart it (its plugin serves /neoleads), "
                "or run `neoleads webhooks serve` there",
            )
            return
        probe = urllib.request.Request(  # noqa: S310 (http(s) only)
            url,
            data=b"{}",
            method="POST",
            headers={
                "Content-Type": "application/json",
                "X-Chatwoot-Delivery": f"doctor-probe-{uuid.uuid4()}",
            },
        )
        status = call(probe)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        ctx.add(
            "receiver",
            WARN,
            f"cannot reach {shown_url(url)} from here: {reason}",
            "check that the API server runs; Neoleads (not necessarily this machine) must reach that URL",
        )
        return
    if status == 401:
        ctx.add("receiver", PASS, f"{shown_url(url)} answers and checks signatures for {ctx.conn_id!r}")
    elif status == 404:
        ctx.add(
            "receiver",
            FAIL,
            f"the receiver at {shown_url(url)} does not know connection {ctx.conn_id!r} (HTTP 404)",
            "define the connection where the API server can read it (its metadata database, its environment "
            "or its secrets backend)",
        )
    elif status == 503:
        ctx.add(
            "receiver",
            FAIL,
            f"the receiver at {shown_url(url)} refuses deliveries (HTTP 503): the connection is misconfigured "
            "there, or the event store is down",
            'the API server\'s log says which ("Neoleads webhook endpoint ... refused deliveries: ...")',
        )
    else:
        ctx.add(
            "receiver",
            WARN,
            f"an unsigned probe to {shown_url(url)} got HTTP {status} instead of 401",
            "check that the URL is the receiver's, and what answers there",
        )


def _check_store(ctx: _Context) -> None:
    from neoleads_provider.store.engine import get_engine, get_events_db_url, safe_url
    from neoleads_provider.store.errors import EventStoreError, EventStoreSchemaError, translate_errors
    from neoleads_provider.store.migrate import check_schema
    from neoleads_provider.store.repository import last_received_at

    where = safe_url(ctx.db_url or get_events_db_url())
    migrate_fix = "neoleads events migrate" + (f" --db-url {where}" if ctx.db_url else "")
    try:
        with translate_errors():
            engine = get_engine(ctx.db_url)
            version = check_schema(engine)
    except EventStoreSchemaError as exc:
        ctx.add("event store", FAIL, str(exc).split(": run", 1)[0], migrate_fix)
        ctx.skip("last delivery", because="needs the event store")
        return
    except EventStoreError as exc:
        ctx.add(
            "event store",
            FAIL,
            f"cannot use the event store at {where}: {exc}",
            "check [neoleads] events_db_url: the API server, the triggerer and the workers must share one store",
        )
        ctx.skip("last delivery", because="needs the event store")
        return
    ctx.add("event store", PASS, f"{where} is at schema version {version}")
    try:
        with translate_errors(), engine.connect() as conn:
            last = last_received_at(conn, ctx.conn_id)
    except EventStoreError as exc:
        ctx.add("last delivery", WARN, f"cannot read it: {str(exc).split(':', 1)[0]}")
        return
    if last is None:
        ctx.add(
            "last delivery",
            WARN,
            f"no delivery for {ctx.conn_id!r} stored yet",
            "write in the inbox as a customer (or reply to a DAG's message); if nothing arrives, the API server's "
            "log names refused deliveries",
        )
        return
    ago = max(0, int(time.time() - last.timestamp()))
    ctx.add("last delivery", PASS, f"{last.astimezone(UTC).isoformat(timespec='seconds')} ({_ago(ago)} ago)")


def _ago(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def run_checks(
    conn_id: str, *, inbox_id: int | None = None, receiver_url: str | None = None, db_url: str | None = None
) -> list[Check]:
    """Run every check for ``conn_id`` and return them in order."""
    from neoleads_provider.cli._connections import receiver_url as default_receiver_url

    ctx = _Context(conn_id, inbox_id, receiver_url or default_receiver_url(conn_id), db_url)
    _check_connection(ctx)
    if ctx.hook is not None:
        try:
            _check_api(ctx)
        finally:
            ctx.hook.close()
    else:
        ctx.skip(*_API_CHECKS, because="needs a valid connection")
    _check_receiver(ctx)
    _check_store(ctx)
    return ctx.checks


def _doctor(args: argparse.Namespace) -> int:
    checks = run_checks(
        args.conn_id, inbox_id=args.inbox_id, receiver_url=args.receiver_url, db_url=args.db_url
    )
    failed = [check for check in checks if check.status == FAIL]
    if args.json:
        print(
            json.dumps(
                {
                    "conn_id": args.conn_id,
                    "ok": not failed,
                    "checked_at": datetime.now(UTC).isoformat(timespec="seconds"),
                    "checks": [asdict(check) for check in checks],
                },
                indent=2,
            )
        )
        return 1 if failed else 0
    print(f"Neoleads doctor for connection {args.conn_id!r}")
    print()
    width = max(len(check.name) for check in checks)
    for check in checks:
        print(f"{check.status}  {check.name.ljust(width)}  {check.detail}")
        if check.fix:
            print(f"{'':{width + 8}}fix: {check.fix}")
    print()
    if failed:
        names = ", ".join(check.name for check in failed)
        print(f"{len(failed)} check(s) failed: {names}. Fix them and run the doctor again.")
        return 1
    warned = [check.name for check in checks if check.status == WARN]
    print(
        "Everything needed for sending and receiving works."
        + (f" Warnings: {', '.join(warned)}." if warned else "")
    )
    return 0
