"""``neoleads doctor`` against the sandbox, a live receiver and a real event store: a working setup passes,
and each broken piece is reported as a named failure with its fix (exit status 1)."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from neoleads_provider.cli.main import main
from neoleads_provider.hooks.neoleads import NeoleadsHook
from neoleads_provider.store.engine import get_engine
from neoleads_provider.store.migrate import migrate
from neoleads_provider.webhooks.server import create_server_app
from tests._helpers import free_port, serving, use_sandbox_connection

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from neoleads_provider.testing import NeoleadsSandbox

CONN = "nl_doctor"
ALL_PASS = {
    "connection": "PASS",
    "token": "PASS",
    "account": "PASS",
    "role": "PASS",
    "inbox": "PASS",
    # The sandbox and the receiver are on loopback over plain http: a real server would not deliver there.
    "webhook_url": "WARN",
    "signing secret": "PASS",
    "receiver": "PASS",
    "event store": "PASS",
    "last delivery": "PASS",
}


@dataclass
class Setup:
    sandbox: NeoleadsSandbox
    monkeypatch: pytest.MonkeyPatch
    base: str  # the receiver's base URL, as [api] base_url
    db_url: str
    inbox_id: int
    secret: str
    extra: dict[str, Any]

    @property
    def receiver_url(self) -> str:
        return f"{self.base}/neoleads/webhooks/{CONN}"

    def connection(self, conn_id: str = CONN, token: str | None = None, **extra: Any) -> None:
        """(Re)define the connection: the working extra, with ``extra`` on top (None removes a field)."""
        merged = {key: value for key, value in {**self.extra, **extra}.items() if value is not None}
        use_sandbox_connection(self.monkeypatch, self.sandbox, conn_id, token=token, **merged)


def doctor(capsys, *argv: str) -> tuple[int, dict[str, Any], str]:
    code = main(["doctor", "--conn-id", CONN, "--json", *argv])
    out, err = capsys.readouterr()
    return code, json.loads(out), out + err


def statuses(report: dict[str, Any]) -> dict[str, str]:
    return {check["name"]: check["status"] for check in report["checks"]}


def check(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(item for item in report["checks"] if item["name"] == name)


@pytest.fixture
def setup(
    neoleads_sandbox: NeoleadsSandbox, monkeypatch: pytest.MonkeyPatch, events_url: str
) -> Iterator[Setup]:
    """A working setup: an API inbox posting to a live receiver, its secret in the connection, one delivery stored."""
    monkeypatch.setenv("AIRFLOW__NEOLEADS__EVENTS_DB_URL", events_url)
    with serving(create_server_app(engine_factory=lambda: get_engine(events_url))) as base:
        monkeypatch.setenv("AIRFLOW__API__BASE_URL", base)
        use_sandbox_connection(monkeypatch, neoleads_sandbox, "nl_setup")
        with NeoleadsHook("nl_setup") as hook:
            inbox = hook.create_api_inbox("Airflow", f"{base}/neoleads/webhooks/{CONN}")
        extra = {"inbox_id": inbox["id"], "webhook_secrets": ["an-older-secret-1", inbox["secret"]]}
        ready = Setup(neoleads_sandbox, monkeypatch, base, events_url, inbox["id"], inbox["secret"], extra)
        ready.connection()
        with NeoleadsHook(CONN) as hook:
            contact = hook.create_contact(name="Ada", email="ada@example.com", inbox_id=inbox["id"])
            conversation = hook.create_conversation(source_id=contact["contact_inbox"]["source_id"])
        neoleads_sandbox.reply(conversation["id"], "Hello")
        neoleads_sandbox.wait_for_deliveries()
        assert {d["status_code"] for d in neoleads_sandbox.deliveries} == {200}
        yield ready


def assert_no_secrets(setup: Setup, output: str) -> None:
    for secret in (setup.secret, "an-older-secret-1", setup.sandbox.token, setup.sandbox.agent_token):
        assert secret not in output


# --------------------------------------------------------------------------- a working setup


def test_a_working_setup_passes(capsys, setup: Setup) -> None:
    code, report, output = doctor(capsys)
    assert code == 0, output
    assert report["ok"] is True
    assert statuses(report) == ALL_PASS
    assert check(report, "inbox")["detail"] == f"inbox {setup.inbox_id} ('Airflow') is an API inbox"
    assert "is a private, loopback or internal address" in check(report, "webhook_url")["detail"]
    assert "SAFE_FETCH_ALLOW_PRIVATE_NETWORK" in check(report, "webhook_url")["fix"]
    assert check(report, "receiver")["detail"].endswith(f"answers and checks signatures for '{CONN}'")
    assert "one of its 2 webhook_secrets" in check(report, "signing secret")["detail"]
    assert_no_secrets(setup, output)


def test_the_text_report(capsys, setup: Setup) -> None:
    code = main(["doctor", "--conn-id", CONN])
    out, _ = capsys.readouterr()
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"Neoleads doctor for connection '{CONN}'"
    assert any(line.startswith("PASS  connection ") for line in lines)
    assert any(line.startswith("WARN  webhook_url ") for line in lines)
    assert lines[-1] == "Everything needed for sending and receiving works. Warnings: webhook_url."
    assert_no_secrets(setup, out)


def test_no_delivery_yet_is_only_a_warning(capsys, setup: Setup, tmp_path: Path) -> None:
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    migrate(get_engine(empty))
    code, report, _ = doctor(capsys, "--db-url", empty)
    assert code == 0
    assert check(report, "last delivery")["status"] == "WARN"
    assert check(report, "last delivery")["detail"] == f"no delivery for '{CONN}' stored yet"


def test_an_agent_token_warns_that_it_cannot_see_secrets(capsys, setup: Setup) -> None:
    setup.sandbox.set_inbox_webhook(setup.sandbox.api_inbox_id, setup.receiver_url)
    setup.connection(token=setup.sandbox.agent_token, inbox_id=setup.sandbox.api_inbox_id)
    code, report, output = doctor(capsys)
    assert code == 0, output
    assert statuses(report)["role"] == "WARN"
    assert check(report, "role")["detail"].startswith("agent: sending works")
    assert check(report, "signing secret")["status"] == "WARN"
    assert "takes an administrator's token" in check(report, "signing secret")["detail"]
    assert_no_secrets(setup, output)


def test_without_inbox_id_it_finds_the_inbox_that_delivers_here(capsys, setup: Setup) -> None:
    setup.connection(inbox_id=None)
    code, report, _ = doctor(capsys)
    assert code == 0
    inbox = check(report, "inbox")
    assert inbox["status"] == "PASS"
    assert f"API inbox {setup.inbox_id} ('Airflow') delivers here" in inbox["detail"]
    assert f"inbox_id to {setup.inbox_id}" in inbox["fix"]
    assert check(report, "signing secret")["status"] == "PASS"


def test_without_inbox_id_an_account_webhook_also_counts(capsys, setup: Setup) -> None:
    with NeoleadsHook("nl_setup") as hook:
        hook.update_inbox_webhook(setup.inbox_id, None)
        webhook = hook.create_webhook(setup.receiver_url, ["message_created"])
    setup.connection(inbox_id=None, webhook_secrets=[webhook["secret"]])
    code, report, output = doctor(capsys)
    assert code == 0, output
    assert check(report, "inbox")["detail"].endswith(f"account webhook {webhook['id']} delivers here")
    assert check(report, "signing secret")["detail"].startswith(
        f"the connection accepts account webhook {webhook['id']}'s signing secret"
    )
    assert webhook["secret"] not in output


# --------------------------------------------------------------------------- each broken piece


def _wrong_type(setup: Setup) -> None:
    setup.monkeypatch.setenv(
        f"AIRFLOW_CONN_{CONN.upper()}", json.dumps({"conn_type": "http", "host": setup.sandbox.url})
    )


BROKEN = {
    "undefined connection": (
        lambda s: s.monkeypatch.delenv(f"AIRFLOW_CONN_{CONN.upper()}"),
        "connection",
        f"connection '{CONN}' is not defined",
        f"airflow connections add {CONN} --conn-type neoleads",
    ),
    "wrong connection type": (_wrong_type, "connection", "has conn_type 'http'", "--conn-type neoleads"),
    "invalid field": (
        lambda s: s.connection(account_id="abc"),
        "connection",
        "field 'account_id' must be a whole number",
        "correct that field",
    ),
    "bad token": (
        lambda s: s.connection(token="not-a-token"),
        "token",
        "Neoleads refused the API access token: Invalid Access Token",
        "Profile settings > Access token",
    ),
    "server down": (
        lambda s: s.monkeypatch.setenv(
            f"AIRFLOW_CONN_{CONN.upper()}",
            json.dumps(
                {
                    "conn_type": "neoleads",
                    "host": f"http://127.0.0.1:{free_port()}",
                    "password": "x",
                    "extra": {**s.extra, "account_id": 1, "max_retries": 0},
                }
            ),
        ),
        "token",
        "cannot reach http://127.0.0.1:",
        "check the connection's host",
    ),
    "wrong account": (
        lambda s: s.connection(account_id=999),
        "account",
        "account 999 is not one of the token's accounts (it has: 1 (Sandbox Account))",
        "set the connection's extra account_id",
    ),
    "unknown inbox": (
        lambda s: s.connection(inbox_id=99),
        "inbox",
        "account 1 has no inbox 99",
        f"neoleads inboxes create --conn-id {CONN} --name Airflow",
    ),
    "website inbox": (
        lambda s: s.connection(inbox_id=2),
        "inbox",
        "inbox 2 ('Website') is a Channel::WebWidget inbox",
        "make an API inbox",
    ),
    "no inbox delivers here": (
        lambda s: (s.sandbox.set_inbox_webhook(s.inbox_id, None), s.connection(inbox_id=None)),
        "inbox",
        "nothing in Neoleads delivers to this receiver",
        f"neoleads inboxes create --conn-id {CONN} --name Airflow",
    ),
    "no webhook_url": (
        lambda s: s.sandbox.set_inbox_webhook(s.inbox_id, None),
        "webhook_url",
        "has no webhook_url: Neoleads delivers none of its events",
        "neoleads inboxes set-webhook --conn-id nl_doctor --inbox-id {inbox} --url {receiver}",
    ),
    "webhook_url elsewhere": (
        lambda s: s.sandbox.set_inbox_webhook(
            s.inbox_id, "https://elsewhere.example.com/hook?token=t0ps3cret"
        ),
        "webhook_url",
        "posts to https://elsewhere.example.com/hook?token=<hidden>, not to this receiver",
        "neoleads inboxes set-webhook --conn-id nl_doctor --inbox-id {inbox} --url {receiver}",
    ),
    "no webhook secrets": (
        lambda s: s.connection(webhook_secrets=None),
        "signing secret",
        "the connection lists no webhook_secrets: the receiver refuses every signed delivery (401)",
        "neoleads inboxes set-webhook --conn-id nl_doctor --inbox-id {inbox} --url {receiver}",
    ),
    "secret not listed": (
        lambda s: s.connection(webhook_secrets=["an-older-secret-1"]),
        "signing secret",
        "signs with a secret that is not among the connection's 1 webhook_secrets",
        "neoleads inboxes set-webhook --conn-id nl_doctor --inbox-id {inbox} --url {receiver}",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_each_broken_piece_is_a_named_failure_with_its_fix(capsys, setup: Setup, case: str) -> None:
    breaks, name, detail, fix = BROKEN[case]
    breaks(setup)
    code, report, output = doctor(capsys)
    assert code == 1
    assert report["ok"] is False
    failed = [item for item in report["checks"] if item["status"] == "FAIL"]
    assert [item["name"] for item in failed] == [name], output
    assert detail in failed[0]["detail"]
    assert fix.format(inbox=setup.inbox_id, receiver=setup.receiver_url) in failed[0]["fix"]
    if fix.startswith("neoleads inboxes"):
        # The connection is an environment variable: --apply could not update it, so it is not suggested.
        assert "--apply only updates a row of the metadata database" in failed[0]["fix"]
        assert " --apply (" not in failed[0]["fix"]
        assert not failed[0]["fix"].endswith("--apply")
    # The rest still ran (the store does not depend on the API), and nothing secret was printed.
    assert statuses(report)["event store"] == "PASS"
    assert_no_secrets(setup, output)
    assert "t0ps3cret" not in output


def test_a_receiver_that_does_not_know_the_connection(capsys, setup: Setup) -> None:
    """The API server may not see the connection the doctor sees (an env var set only in this shell)."""
    app = create_server_app(
        engine_factory=lambda: get_engine(setup.db_url), resolve_connection=lambda conn_id: None
    )
    with serving(app) as other:
        setup.sandbox.set_inbox_webhook(setup.inbox_id, f"{other}/neoleads/webhooks/{CONN}")
        code, report, _ = doctor(capsys, "--receiver-url", f"{other}/neoleads/webhooks/{CONN}")
    assert code == 1
    receiver = check(report, "receiver")
    assert receiver["status"] == "FAIL"
    assert f"does not know connection '{CONN}' (HTTP 404)" in receiver["detail"]
    assert "where the API server can read it" in receiver["fix"]


def test_no_receiver_mounted_at_the_url(capsys, setup: Setup) -> None:
    # The sandbox answers 404 for /neoleads/_health: an API server without the provider's plugin.
    url = f"{setup.sandbox.url}/neoleads/webhooks/{CONN}"
    setup.sandbox.set_inbox_webhook(setup.inbox_id, url)
    code, report, _ = doctor(capsys, "--receiver-url", url)
    assert code == 1
    receiver = check(report, "receiver")
    assert (receiver["status"], receiver["detail"]) == (
        "FAIL",
        f"no receiver at {setup.sandbox.url}/neoleads/_health (HTTP 404)",
    )
    assert "restart it" in receiver["fix"]


def test_an_unreachable_receiver_is_a_warning(capsys, setup: Setup) -> None:
    url = f"http://127.0.0.1:{free_port()}/neoleads/webhooks/{CONN}"
    setup.sandbox.set_inbox_webhook(setup.inbox_id, url)
    code, report, _ = doctor(capsys, "--receiver-url", url)
    assert code == 0
    assert check(report, "receiver")["status"] == "WARN"
    assert "cannot reach" in check(report, "receiver")["detail"]


def test_an_unknown_receiver_url_is_skipped(capsys, setup: Setup) -> None:
    setup.monkeypatch.delenv("AIRFLOW__API__BASE_URL")
    code, report, _ = doctor(capsys)
    assert code == 0
    assert check(report, "receiver")["status"] == "SKIP"
    assert "AIRFLOW__API__BASE_URL" in check(report, "receiver")["fix"]
    # Without the full URL, the webhook_url is matched on its path.
    assert check(report, "webhook_url")["status"] == "WARN"


def test_an_unmigrated_event_store(capsys, setup: Setup, tmp_path: Path) -> None:
    empty = f"sqlite:///{tmp_path / 'never-migrated.db'}"
    code, report, _ = doctor(capsys, "--db-url", empty)
    assert code == 1
    store = check(report, "event store")
    assert store["status"] == "FAIL"
    assert "has no schema" in store["detail"]
    assert store["fix"] == f"neoleads events migrate --db-url {empty}"
    assert check(report, "last delivery")["status"] == "SKIP"


def test_an_unreachable_event_store(capsys, setup: Setup, tmp_path: Path) -> None:
    missing = f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / f'{uuid.uuid4().hex}.db'}"
    code, report, _ = doctor(capsys, "--db-url", missing)
    assert code == 1
    store = check(report, "event store")
    assert store["status"] == "FAIL"
    assert store["detail"].startswith(f"cannot use the event store at {missing}: OperationalError")
    assert "[neoleads] events_db_url" in store["fix"]


def test_bad_arguments_exit_2(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["doctor", "--receiver-url", "ftp://x"])
    assert info.value.code == 2
    assert "is not an http(s) URL" in capsys.readouterr().err


def test_an_unreachable_server_is_reported_at_once_without_retry_warnings(
    capsys, setup: Setup, caplog
) -> None:
    """A task's connection retries (5 by default); the doctor reports what it meets on the first try."""
    setup.monkeypatch.setenv(
        f"AIRFLOW_CONN_{CONN.upper()}",
        json.dumps(
            {
                "conn_type": "neoleads",
                "host": f"http://127.0.0.1:{free_port()}",
                "password": "x",
                "extra": {**setup.extra, "account_id": 1},
            }
        ),
    )
    started = time.monotonic()
    code, report, output = doctor(capsys)
    assert code == 1
    assert check(report, "token")["status"] == "FAIL"
    assert time.monotonic() - started < 5
    assert "Retrying" not in output + caplog.text
