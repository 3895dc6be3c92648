"""``neoleads inboxes ...`` against the sandbox, with a live receiver: an API inbox made by ``create`` delivers
its events signed with its own secret, and the receiver stores them once the printed setting is applied."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from typing import TYPE_CHECKING, Any

import pytest

from neoleads_provider.cli._connections import hook_for
from neoleads_provider.cli.main import main
from neoleads_provider.store.engine import get_engine
from neoleads_provider.store.repository import list_events
from neoleads_provider.webhooks.server import create_server_app
from tests._helpers import run_cli, serving, use_sandbox_connection

if TYPE_CHECKING:
    from collections.abc import Iterator

    from sqlalchemy import Engine

    from neoleads_provider.testing import NeoleadsSandbox

CONN = "neoleads_default"
WHOLE_EXTRA = "The connection's whole extra, with the secret merged in:"


def printed_extra(out: str) -> dict[str, Any]:
    """The complete extra the command printed, as an operator would copy it."""
    lines = out.splitlines()
    return json.loads(lines[lines.index(WHOLE_EXTRA) + 1])


class Receiver:
    """The standalone receiver on a free loopback port, with a clock the test can move forward."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.offset = 0.0
        self.app = create_server_app(engine_factory=lambda: engine, clock=lambda: time.time() + self.offset)
        self.base = ""

    def url(self, conn_id: str = CONN) -> str:
        return f"{self.base}/neoleads/webhooks/{conn_id}"

    def let_connection_cache_expire(self) -> None:
        # The receiver re-reads a connection at most every 30 s; a test does not wait that long.
        self.offset += 31

    def stored(self) -> list[Any]:
        with self.engine.connect() as conn:
            return list(reversed(list_events(conn)))


@pytest.fixture
def receiver(events_url: str) -> Iterator[Receiver]:
    live = Receiver(get_engine(events_url))
    with serving(live.app) as base:
        live.base = base
        yield live


def converse(sandbox: NeoleadsSandbox, conn_id: str, inbox_id: int, reply: str) -> int:
    """A contact in ``inbox_id`` gets a conversation and writes ``reply``; returns the conversation id."""
    # Looked up as the CLI does, so a connection in the metadata database works too.
    with hook_for(conn_id) as hook:
        contact = hook.create_contact(
            name="Ada", email=f"ada.{uuid.uuid4().hex[:12]}@example.com", inbox_id=inbox_id
        )
        conversation = hook.create_conversation(source_id=contact["contact_inbox"]["source_id"])
    sandbox.reply(conversation["id"], reply)
    sandbox.wait_for_deliveries()
    return int(conversation["id"])


# --------------------------------------------------------------------------- create, end to end


def test_create_then_the_receiver_accepts_the_inbox_deliveries(
    capsys, monkeypatch, neoleads_sandbox: NeoleadsSandbox, neoleads_connection: str, receiver: Receiver
) -> None:
    code, out, err = run_cli(
        capsys, "inboxes", "create", "--conn-id", CONN, "--name", "Airflow", "--webhook-url", receiver.url()
    )
    assert code == 0, err
    [inbox] = [inbox for inbox in neoleads_sandbox.state.inboxes.values() if inbox.name == "Airflow"]
    assert inbox.webhook_url == receiver.url()
    assert f'API inbox {inbox.id} ("Airflow") created' in out
    assert f"  inbox id:       {inbox.id}" in out
    assert f"  signing secret: {inbox.secret}" in out
    assert f'  "inbox_id": {inbox.id}' in out
    assert f'  "webhook_secrets": ["{inbox.secret}"]' in out
    extra = printed_extra(out)
    assert extra == {"account_id": 1, "webhook_secrets": [inbox.secret], "inbox_id": inbox.id}
    assert "export AIRFLOW_CONN_NEOLEADS_DEFAULT='" in out
    assert neoleads_sandbox.token not in out + err
    # A loopback, plain-http URL: both warnings, on stderr.
    assert "SAFE_FETCH_ALLOW_PRIVATE_NETWORK" in err
    assert "is not https" in err

    # Before the setting is applied, the receiver refuses the inbox's deliveries.
    converse(neoleads_sandbox, CONN, inbox.id, "Too early")
    assert {d["status_code"] for d in neoleads_sandbox.deliveries} == {401}
    assert receiver.stored() == []

    # Apply the printed extra, as the operator would; then the inbox's deliveries are stored.
    use_sandbox_connection(monkeypatch, neoleads_sandbox, **extra)
    receiver.let_connection_cache_expire()
    before = len(neoleads_sandbox.deliveries)
    conversation_id = converse(neoleads_sandbox, CONN, inbox.id, "Yes please")
    accepted = neoleads_sandbox.deliveries[before:]
    assert [(d["event"], d["target"], d["target_id"], d["status_code"]) for d in accepted] == [
        ("conversation_created", "api_inbox", inbox.id, 200),
        ("message_created", "api_inbox", inbox.id, 200),
    ]
    events = receiver.stored()
    assert [(e.event, e.inbox_id, e.conversation_id) for e in events] == [
        ("conversation_created", inbox.id, conversation_id),
        ("message_created", inbox.id, conversation_id),
    ]
    assert events[-1].payload["content"] == "Yes please"

    # `list` shows the inbox delivering here, with its signatures accepted; no secret is shown.
    code, out, _ = run_cli(capsys, "inboxes", "list", "--conn-id", CONN, "--json")
    rows = {row["id"]: row for row in json.loads(out)}
    assert rows[inbox.id]["delivers_to_receiver"] is True
    assert rows[inbox.id]["secret_accepted"] is True
    assert rows[inbox.id]["connection_inbox"] is True
    assert rows[neoleads_sandbox.api_inbox_id]["secret_accepted"] is False
    assert inbox.secret not in out
    assert neoleads_sandbox.api_inbox_secret not in out


def test_create_defaults_to_the_receiver_on_the_api_server(
    capsys, monkeypatch, neoleads_sandbox: NeoleadsSandbox, neoleads_connection: str
) -> None:
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.com/")
    code, out, err = run_cli(capsys, "inboxes", "create", "--name", "Airflow", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["webhook_url"] == "https://airflow.example.com/neoleads/webhooks/neoleads_default"
    assert result["warnings"] == []
    assert err.count("warning:") == 0
    assert neoleads_sandbox.state.inboxes[result["inbox_id"]].secret == result["secret"]
    assert (result["action"], result["applied"], result["already_configured"]) == ("created", False, False)


def test_create_needs_a_url_when_no_base_url_is_set(capsys, monkeypatch, neoleads_connection: str) -> None:
    monkeypatch.delenv("AIRFLOW__API__BASE_URL", raising=False)
    code, _, err = run_cli(capsys, "inboxes", "create", "--name", "Airflow")
    assert code == 2
    assert "set [api] base_url (AIRFLOW__API__BASE_URL)" in err


@pytest.mark.parametrize(
    ("url", "private", "plain"),
    [
        ("http://10.1.2.3/neoleads/webhooks/neoleads_default", True, True),
        ("https://airflow.internal/neoleads/webhooks/neoleads_default", True, False),
        ("https://localhost:8443/neoleads/webhooks/neoleads_default", True, False),
        ("http://airflow.example.com/neoleads/webhooks/neoleads_default", False, True),
        ("https://[::1]/neoleads/webhooks/neoleads_default", True, False),
    ],
)
def test_create_warns_about_urls_neoleads_will_not_or_should_not_use(
    capsys, neoleads_sandbox, neoleads_connection: str, url: str, private: bool, plain: bool
) -> None:
    code, _, err = run_cli(capsys, "inboxes", "create", "--name", "Airflow", "--webhook-url", url)
    assert code == 0, err
    assert ("SSRF filter" in err) is private
    assert ("is not https" in err) is plain


def test_existing_secrets_are_kept_but_never_printed(
    capsys, monkeypatch, neoleads_sandbox: NeoleadsSandbox, receiver: Receiver
) -> None:
    kept = ["kept-secret-aaaa1111", "kept-secret-bbbb2222"]
    use_sandbox_connection(
        monkeypatch, neoleads_sandbox, webhook_secrets=kept, webhook_url_token="kept-url-token-cc33"
    )
    code, out, err = run_cli(
        capsys, "inboxes", "create", "--name", "Rotated", "--webhook-url", receiver.url()
    )
    assert code == 0, err
    [inbox] = [inbox for inbox in neoleads_sandbox.state.inboxes.values() if inbox.name == "Rotated"]
    assert f'"webhook_secrets": ["<current secret 1>", "<current secret 2>", "{inbox.secret}"]' in out
    assert 'Each "<current ...>" stands for a value the connection has now' in out
    assert printed_extra(out)["webhook_url_token"] == "<current webhook_url_token>"
    for secret in [*kept, "kept-url-token-cc33"]:
        assert secret not in out + err

    # Filling the placeholders in, as the printed note says: old and new secrets are all accepted.
    extra = printed_extra(out)
    extra["webhook_secrets"] = [*kept, inbox.secret]
    extra["webhook_url_token"] = "kept-url-token-cc33"
    use_sandbox_connection(monkeypatch, neoleads_sandbox, **extra)
    converse(neoleads_sandbox, CONN, inbox.id, "Rotation works")
    assert {d["status_code"] for d in neoleads_sandbox.deliveries} == {200}
    assert len(receiver.stored()) == 2

    # JSON output has the new secret only.
    run_cli(capsys, "inboxes", "create", "--name", "Rotated 2", "--webhook-url", receiver.url(), "--json")
    # (the connection now lists three secrets)
    code, out, _ = run_cli(
        capsys, "inboxes", "create", "--name", "Rotated 3", "--webhook-url", receiver.url(), "--json"
    )
    result = json.loads(out)
    assert result["other_secrets_kept"] == 3
    for secret in [*kept, inbox.secret]:
        assert secret not in out


def test_create_refuses_a_second_inbox_with_the_same_name(
    capsys, neoleads_sandbox, neoleads_connection
) -> None:
    url = "http://127.0.0.1:9/neoleads/webhooks/neoleads_default"
    assert run_cli(capsys, "inboxes", "create", "--name", "Airflow", "--webhook-url", url)[0] == 0
    [first] = [i for i in neoleads_sandbox.state.inboxes.values() if i.name == "Airflow"]
    code, out, err = run_cli(capsys, "inboxes", "create", "--name", "Airflow", "--webhook-url", url)
    assert code == 1
    assert f'an API inbox named "Airflow" exists already (id {first.id})' in err
    assert f"neoleads inboxes set-webhook --conn-id neoleads_default --inbox-id {first.id} --url {url}" in err
    assert [i.name for i in neoleads_sandbox.state.inboxes.values()].count("Airflow") == 1
    assert first.secret not in out + err


def test_a_non_administrator_token_is_refused_naming_its_role(capsys, monkeypatch, neoleads_sandbox) -> None:
    use_sandbox_connection(monkeypatch, neoleads_sandbox, "nl_agent", token=neoleads_sandbox.agent_token)
    url = "https://airflow.example.com/neoleads/webhooks/nl_agent"
    for argv in (
        ["create", "--name", "Airflow", "--webhook-url", url],
        ["set-webhook", "--inbox-id", "1", "--url", url],
        ["reset-secret", "--inbox-id", "1"],
    ):
        code, out, err = run_cli(capsys, "inboxes", *argv, "--conn-id", "nl_agent")
        assert code == 1, argv
        assert "needs an administrator's API access token" in err
        assert "role in account 1 is 'agent'" in err
        assert neoleads_sandbox.agent_token not in out + err
    assert len(neoleads_sandbox.state.inboxes) == 2
    # Listing works for agents; the secret column is unknown to them.
    code, out, _ = run_cli(capsys, "inboxes", "list", "--conn-id", "nl_agent")
    assert code == 0
    assert "Signing secrets are shown to administrators only" in out


# --------------------------------------------------------------------------- set-webhook and reset-secret


def test_set_webhook_points_an_inbox_at_the_receiver(
    capsys, monkeypatch, neoleads_sandbox: NeoleadsSandbox, neoleads_connection: str, receiver: Receiver
) -> None:
    inbox_id = neoleads_sandbox.api_inbox_id
    code, out, err = run_cli(
        capsys, "inboxes", "set-webhook", "--inbox-id", str(inbox_id), "--url", receiver.url()
    )
    assert code == 0, err
    assert neoleads_sandbox.state.inboxes[inbox_id].webhook_url == receiver.url()
    assert f"  signing secret: {neoleads_sandbox.api_inbox_secret}" in out
    use_sandbox_connection(monkeypatch, neoleads_sandbox, **printed_extra(out))

    # Again, with the setting applied: nothing changes, not even on the server.
    patches = sum(1 for method, _, _ in neoleads_sandbox.requests if method == "PATCH")
    code, out, _ = run_cli(
        capsys, "inboxes", "set-webhook", "--inbox-id", str(inbox_id), "--url", receiver.url()
    )
    assert code == 0
    assert f"already accepts this secret for inbox {inbox_id}; nothing to change" in out
    assert sum(1 for method, _, _ in neoleads_sandbox.requests if method == "PATCH") == patches

    converse(neoleads_sandbox, CONN, inbox_id, "Through the default inbox")
    assert [e.event for e in receiver.stored()] == ["conversation_created", "message_created"]


@pytest.mark.parametrize(
    ("inbox_id", "message"),
    [
        (2, 'inbox 2 ("Website") is a WebWidget inbox; only API inboxes post their events to a webhook_url'),
        (99, "account 1 has no inbox 99"),
    ],
)
def test_set_webhook_refuses_what_cannot_deliver(
    capsys, neoleads_sandbox, neoleads_connection, inbox_id, message
):
    code, _, err = run_cli(
        capsys, "inboxes", "set-webhook", "--inbox-id", str(inbox_id), "--url", "https://a.example.com/x"
    )
    assert code == 1
    assert message in err


def test_reset_secret_rotates_without_refusing_anything(
    capsys, monkeypatch, neoleads_sandbox: NeoleadsSandbox, receiver: Receiver
) -> None:
    inbox_id = neoleads_sandbox.api_inbox_id
    old = neoleads_sandbox.api_inbox_secret
    neoleads_sandbox.set_inbox_webhook(inbox_id, receiver.url())
    use_sandbox_connection(monkeypatch, neoleads_sandbox, webhook_secrets=[old], inbox_id=inbox_id)
    converse(neoleads_sandbox, CONN, inbox_id, "Signed with the old secret")

    code, out, err = run_cli(capsys, "inboxes", "reset-secret", "--inbox-id", str(inbox_id), "--json")
    assert code == 0, err
    result = json.loads(out)
    new = neoleads_sandbox.api_inbox_secret
    assert (result["action"], result["secret"], result["other_secrets_kept"]) == ("reset", new, 1)
    assert new != old
    assert old not in out + err

    code, out, _ = run_cli(capsys, "inboxes", "reset-secret", "--inbox-id", str(inbox_id))
    newer = neoleads_sandbox.api_inbox_secret
    assert f'"webhook_secrets": ["<current secret 1>", "{newer}"]' in out
    assert "does not retry a refused delivery: update the" in out
    assert old not in out

    use_sandbox_connection(monkeypatch, neoleads_sandbox, webhook_secrets=[old, newer], inbox_id=inbox_id)
    receiver.let_connection_cache_expire()
    converse(neoleads_sandbox, CONN, inbox_id, "Signed with the new secret")
    assert {d["status_code"] for d in neoleads_sandbox.deliveries} == {200}
    assert len(receiver.stored()) == 4


def test_reset_secret_of_a_website_inbox(capsys, neoleads_sandbox, neoleads_connection) -> None:
    code, _, err = run_cli(capsys, "inboxes", "reset-secret", "--inbox-id", "2")
    assert code == 1
    assert "account 1 has no API inbox 2" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["create", "--name", " "], "the inbox name must not be empty"),
        (["create", "--name", "x", "--webhook-url", "ftp://a/b"], "is not an http(s) URL"),
        (["set-webhook", "--inbox-id", "0", "--url", "https://a.example.com"], "must be at least 1"),
        (["reset-secret", "--inbox-id", "one"], "is not an inbox id"),
        (
            ["set-webhook", "--url", "https://a.example.com"],
            "the following arguments are required: --inbox-id",
        ),
    ],
)
def test_bad_arguments_exit_2(capsys, argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as info:
        main(["inboxes", *argv])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


# --------------------------------------------------------------------------- --apply


def test_apply_refuses_a_connection_it_cannot_write_before_changing_anything(
    capsys, neoleads_sandbox, neoleads_connection
) -> None:
    code, _, err = run_cli(
        capsys,
        "inboxes",
        "create",
        "--name",
        "Airflow",
        "--webhook-url",
        "https://a.example.com/x",
        "--apply",
    )
    assert code == 1
    assert "comes from the environment variable AIRFLOW_CONN_NEOLEADS_DEFAULT" in err
    assert len(neoleads_sandbox.state.inboxes) == 2


def _store_connection(conn_id: str, sandbox: NeoleadsSandbox) -> None:
    from airflow.models.connection import Connection
    from airflow.utils.session import create_session
    from sqlalchemy import delete

    with create_session() as session:
        session.execute(delete(Connection).where(Connection.conn_id == conn_id))
        session.add(
            Connection(
                conn_id=conn_id,
                conn_type="neoleads",
                host=sandbox.url,
                password=sandbox.token,
                extra=json.dumps({"account_id": 1, "webhook_secrets": ["kept-db-secret-9x"], "timeout": 20}),
            )
        )


def _stored_connection(conn_id: str) -> Any:
    from airflow.models.connection import Connection
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        row = session.scalar(select(Connection).where(Connection.conn_id == conn_id))
        return {"extra": row.extra_dejson, "password": row.password}


def test_apply_writes_the_connection_in_the_metadata_database(
    capsys, neoleads_sandbox: NeoleadsSandbox, receiver: Receiver
) -> None:
    """A connection made with `airflow connections add` gets inbox_id and the secret, and nothing else changes."""
    # The metadata database of the tests' AIRFLOW_HOME; this process then reads and writes it directly.
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        env=os.environ.copy(),
        check=True,
        capture_output=True,
        timeout=300,
    )

    _store_connection("nl_stored", neoleads_sandbox)
    code, out, err = run_cli(
        capsys,
        "inboxes",
        "create",
        "--conn-id",
        "nl_stored",
        "--name",
        "Stored",
        "--webhook-url",
        receiver.url("nl_stored"),
        "--apply",
    )
    assert code == 0, err
    [inbox] = [inbox for inbox in neoleads_sandbox.state.inboxes.values() if inbox.name == "Stored"]
    assert f"  signing secret: {inbox.secret}" in out
    assert "Connection 'nl_stored' updated in the metadata database: inbox_id" in out
    assert "(the 1 other secret(s) kept)" in out
    assert "kept-db-secret-9x" not in out + err
    row = _stored_connection("nl_stored")
    assert row == {
        "extra": {
            "account_id": 1,
            "webhook_secrets": ["kept-db-secret-9x", inbox.secret],
            "timeout": 20,
            "inbox_id": inbox.id,
        },
        "password": neoleads_sandbox.token,
    }

    # The receiver reads the same row: the inbox's deliveries are stored.
    converse(neoleads_sandbox, "nl_stored", inbox.id, "From the stored connection")
    assert {d["status_code"] for d in neoleads_sandbox.deliveries} == {200}
    assert [e.conn_id for e in receiver.stored()] == ["nl_stored", "nl_stored"]

    # Applying again has nothing to do.
    code, out, _ = run_cli(
        capsys,
        "inboxes",
        "set-webhook",
        "--conn-id",
        "nl_stored",
        "--inbox-id",
        str(inbox.id),
        "--url",
        receiver.url("nl_stored"),
        "--apply",
    )
    assert code == 0
    assert "already accepts this secret" in out
