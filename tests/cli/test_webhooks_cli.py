"""``neoleads webhooks ...``: send-test against a live receiver, ``serve`` as a real process, and
``register`` against the Neoleads sandbox, ending with the sandbox's own signed deliveries stored."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import pytest

from neoleads_provider.cli.main import main
from neoleads_provider.store.engine import dispose_engines, get_engine
from neoleads_provider.store.repository import get_event, list_events
from neoleads_provider.webhooks.server import create_server_app
from tests._helpers import (
    connection_env,
    free_port,
    run_cli,
    serving,
    standalone_receiver,
    use_connection,
    use_sandbox_connection,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from sqlalchemy import Engine

    from neoleads_provider.testing import NeoleadsSandbox

SECRET = "cli-secret-5be0c2d19a"
URL_TOKEN = "cli-url-token-77c1e0a4"
CONN = "cli_receiver"


def set_connection(monkeypatch: pytest.MonkeyPatch, **extra: Any) -> None:
    use_connection(monkeypatch, CONN, account_id=1, **extra)


@pytest.fixture
def engine(events_url: str) -> Engine:
    return get_engine(events_url)


@pytest.fixture
def receiver(engine: Engine) -> Iterator[str]:
    """A live receiver (the standalone app, mounted at /neoleads) on a free port; yields its base URL."""
    with serving(create_server_app(engine_factory=lambda: engine)) as url:
        yield url


def stored(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return list_events(conn)


# --------------------------------------------------------------------------- send-test


def test_send_test_signed(capsys, monkeypatch, engine: Engine, receiver: str) -> None:
    set_connection(monkeypatch, webhook_secrets=["older-secret", SECRET])
    url = f"{receiver}/neoleads/webhooks/{CONN}"
    code, out, _ = run_cli(
        capsys,
        "webhooks",
        "send-test",
        "--url",
        url,
        "--secret",
        SECRET,
        "--conversation-id",
        "31",
        "--content",
        "Ping from the test",
        "--delivery-id",
        "send-test-1",
    )
    assert code == 0, out
    assert "HTTP 200" in out
    assert '"status":"stored"' in out
    (event,) = stored(engine)
    assert event.delivery_id == "send-test-1"
    assert (event.event, event.conversation_id, event.message_type, event.sender_type) == (
        "message_created",
        31,
        "incoming",
        "contact",
    )
    assert event.payload["content"] == "Ping from the test"

    # Sending the same delivery again is acknowledged as a duplicate.
    code, out, _ = run_cli(
        capsys, "webhooks", "send-test", "--url", url, "--secret", SECRET, "--delivery-id", "send-test-1"
    )
    assert code == 0
    assert '"status":"duplicate"' in out
    assert len(stored(engine)) == 1


@pytest.mark.parametrize(
    "event",
    ["conversation_status_changed", "contact_created", "conversation_typing_on", "webwidget_triggered"],
)
def test_send_test_other_events(capsys, monkeypatch, engine: Engine, receiver: str, event: str) -> None:
    set_connection(monkeypatch, webhook_secrets=[SECRET])
    url = f"{receiver}/neoleads/webhooks/{CONN}"
    code, out, _ = run_cli(
        capsys, "webhooks", "send-test", "--url", url, "--secret", SECRET, "--event", event
    )
    assert code == 0, out
    assert [e.event for e in stored(engine)] == [event]


def test_send_test_wrong_secret_exits_1(capsys, monkeypatch, engine: Engine, receiver: str) -> None:
    set_connection(monkeypatch, webhook_secrets=[SECRET])
    url = f"{receiver}/neoleads/webhooks/{CONN}"
    code, out, _ = run_cli(capsys, "webhooks", "send-test", "--url", url, "--secret", "not-the-secret")
    assert code == 1
    assert 'HTTP 401 {"detail":"unauthorized"}' in out
    assert stored(engine) == []


def test_send_test_custom_prefix(capsys, monkeypatch, engine: Engine, receiver: str) -> None:
    set_connection(monkeypatch, webhook_secrets=[SECRET], webhook_header_prefix="X-Acme-")
    url = f"{receiver}/neoleads/webhooks/{CONN}"
    code, out, _ = run_cli(
        capsys,
        "webhooks",
        "send-test",
        "--url",
        url,
        "--secret",
        SECRET,
        "--header-prefix",
        "X-Acme",
        "--delivery-id",
        "acme-7",
    )
    assert code == 0, out
    assert [e.delivery_id for e in stored(engine)] == ["acme-7"]
    # The default prefix is not what this connection expects.
    assert run_cli(capsys, "webhooks", "send-test", "--url", url, "--secret", SECRET)[0] == 1


def test_send_test_unsigned_with_token(capsys, monkeypatch, engine: Engine, receiver: str) -> None:
    set_connection(monkeypatch, webhook_allow_unsigned=True, webhook_url_token=URL_TOKEN)
    url = f"{receiver}/neoleads/webhooks/{CONN}?other=1"
    code, out, _ = run_cli(capsys, "webhooks", "send-test", "--url", url, "--unsigned", "--token", URL_TOKEN)
    assert code == 0, out
    assert len(stored(engine)) == 1
    code, out, _ = run_cli(capsys, "webhooks", "send-test", "--url", url, "--unsigned", "--token", "wrong")
    assert code == 1
    assert "HTTP 401" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--url", "http://127.0.0.1:9/x"], "give --secret"),
        (["--url", "http://127.0.0.1:9/x", "--unsigned"], "--unsigned needs --token"),
    ],
)
def test_send_test_needs_a_secret_or_a_token(capsys, argv: list[str], message: str) -> None:
    code, _, err = run_cli(capsys, "webhooks", "send-test", *argv)
    assert code == 2
    assert message in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--url", "ftp://example.com/x", "--secret", "s"], "is not an http(s) URL"),
        (["--url", "http://127.0.0.1:9/x", "--secret", "s", "--event", "message_deleted"], "invalid choice"),
        (["--url", "http://127.0.0.1:9/x", "--secret", "s", "--conversation-id", "0"], "must be at least 1"),
    ],
)
def test_send_test_bad_arguments(capsys, argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as info:
        main(["webhooks", "send-test", *argv])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_send_test_unreachable(capsys) -> None:
    code, _, err = run_cli(
        capsys, "webhooks", "send-test", "--url", f"http://127.0.0.1:{free_port()}/x", "--secret", "s"
    )
    assert code == 1
    assert "could not reach" in err


# --------------------------------------------------------------------------- serve, as real processes


def test_serve_receives_a_send_test_delivery(tmp_path: Path) -> None:
    db_path = tmp_path / "served.db"
    port = free_port()
    env = {**os.environ, **connection_env(CONN, webhook_secrets=[SECRET])}
    log_path = tmp_path / "serve.log"
    with standalone_receiver(
        port=port, db_url=f"sqlite:///{db_path}", env=env, log_path=log_path, host="127.0.0.1"
    ) as server:
        # The store was migrated at start, before any delivery.
        assert db_path.exists()

        sent = subprocess.run(
            [
                sys.executable,
                "-m",
                "neoleads_provider.cli",
                "webhooks",
                "send-test",
                "--url",
                f"http://127.0.0.1:{port}/neoleads/webhooks/{CONN}",
                "--secret",
                SECRET,
                "--conversation-id",
                "12",
                "--delivery-id",
                "served-1",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert "HTTP 200" in sent.stdout
        assert "stored" in sent.stdout
    assert server.returncode == 0, log_path.read_text()

    engine = get_engine(f"sqlite:///{db_path}")
    try:
        with engine.connect() as conn:
            event = get_event(conn, conn_id=CONN, delivery_id="served-1")
        assert event is not None
        assert event.conversation_id == 12
        assert event.conn_id == CONN
    finally:
        dispose_engines()
    log = log_path.read_text()
    assert "/neoleads/webhooks/cli_receiver" in log  # the access log line
    assert SECRET not in log


def test_serve_refuses_an_unusable_store(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "neoleads_provider.cli",
            "webhooks",
            "serve",
            "--port",
            str(free_port()),
            "--db-url",
            f"sqlite:///{tmp_path / 'missing' / 'dir' / 'x.db'}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "cannot open or migrate the event store" in result.stderr


# --------------------------------------------------------------------------- register, against the sandbox


def register(capsys, *argv: str) -> tuple[int, Any, str]:
    code, out, err = run_cli(capsys, "webhooks", "register", *argv)
    return code, out, err


def test_register_creates_then_adopts_then_updates(
    capsys, neoleads_sandbox: NeoleadsSandbox, neoleads_connection: str
) -> None:
    url = "http://127.0.0.1:9/neoleads/webhooks/neoleads_default"
    code, out, err = register(
        capsys, "--url", url, "--events", "message_created,conversation_status_changed", "--json"
    )
    assert code == 0, err
    created = json.loads(out)
    assert created["action"] == "created"
    assert created["secret"]
    assert created["subscriptions"] == ["message_created", "conversation_status_changed"]
    assert created["webhook_secrets"] == [created["secret"]]

    # Same URL and events: the existing webhook is adopted, nothing changes on the server.
    code, out, _ = register(
        capsys, "--url", url, "--events", "conversation_status_changed,message_created", "--json"
    )
    adopted = json.loads(out)
    assert (code, adopted["action"], adopted["webhook_id"], adopted["secret"]) == (
        0,
        "adopted",
        created["webhook_id"],
        created["secret"],
    )
    assert ("PATCH", f"/api/v1/accounts/1/webhooks/{created['webhook_id']}") not in {
        (method, path) for method, path, _ in neoleads_sandbox.requests
    }

    # Same URL, other events: the subscriptions are updated in place.
    code, out, _ = register(
        capsys, "--url", url, "--events", "message_created", "--name", "Airflow", "--json"
    )
    updated = json.loads(out)
    assert (code, updated["action"], updated["webhook_id"]) == (0, "updated", created["webhook_id"])
    assert updated["subscriptions"] == ["message_created"]
    webhooks = neoleads_sandbox.state.webhooks
    assert len(webhooks) == 1
    assert next(iter(webhooks.values())).subscriptions == ["message_created"]


def test_register_prints_the_setting_merged_with_existing_secrets(
    capsys, monkeypatch, neoleads_sandbox: NeoleadsSandbox
) -> None:
    use_sandbox_connection(monkeypatch, neoleads_sandbox, "nl_admin", webhook_secrets=["existing-secret-1"])
    url = "http://127.0.0.1:9/neoleads/webhooks/nl_admin"
    code, out, err = register(capsys, "--conn-id", "nl_admin", "--url", url)
    assert code == 0, err
    secret = next(iter(neoleads_sandbox.state.webhooks.values())).secret
    assert f"signing secret: {secret}" in out
    assert f'"webhook_secrets": ["existing-secret-1", "{secret}"]' in out
    assert "export AIRFLOW_CONN_NL_ADMIN=" in out
    assert "airflow connections add nl_admin --conn-type neoleads" in out
    # The API token is never echoed; the user fills it in.
    assert neoleads_sandbox.token not in out + err
    assert "<API access token>" in out
    # Default subscriptions.
    assert next(iter(neoleads_sandbox.state.webhooks.values())).subscriptions == [
        "message_created",
        "message_updated",
        "conversation_created",
        "conversation_updated",
        "conversation_status_changed",
    ]

    # With the secret already configured there is nothing to change.
    use_sandbox_connection(monkeypatch, neoleads_sandbox, "nl_admin", webhook_secrets=[secret])
    code, out, _ = register(capsys, "--conn-id", "nl_admin", "--url", url)
    assert code == 0
    assert "already accepts this secret" in out


def test_register_with_a_non_admin_token_fails_cleanly(
    capsys, monkeypatch, neoleads_sandbox: NeoleadsSandbox
) -> None:
    use_sandbox_connection(monkeypatch, neoleads_sandbox, "nl_agent", token=neoleads_sandbox.agent_token)
    code, _, err = register(capsys, "--conn-id", "nl_agent", "--url", "http://127.0.0.1:9/x")
    assert code == 1
    assert "401" in err
    assert neoleads_sandbox.agent_token not in err


def test_register_rejects_unknown_events(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(
            [
                "webhooks",
                "register",
                "--url",
                "http://127.0.0.1:9/x",
                "--events",
                "message_created,message_deleted",
            ]
        )
    assert info.value.code == 2
    assert "unknown event(s) message_deleted" in capsys.readouterr().err


def test_register_then_the_sandbox_delivers_into_the_store(
    capsys, monkeypatch, neoleads_sandbox: NeoleadsSandbox, neoleads_connection: str, engine: Engine
) -> None:
    from neoleads_provider.hooks.neoleads import NeoleadsHook

    with serving(create_server_app(engine_factory=lambda: engine)) as base:
        url = f"{base}/neoleads/webhooks/{neoleads_connection}"
        code, out, err = register(capsys, "--url", url, "--json")
        assert code == 0, err
        result = json.loads(out)
        # Apply the printed setting, as the operator would.
        use_sandbox_connection(
            monkeypatch, neoleads_sandbox, neoleads_connection, webhook_secrets=result["webhook_secrets"]
        )

        hook = NeoleadsHook(neoleads_conn_id=neoleads_connection)
        contact = hook.create_contact(
            name="Ada", email="ada@example.com", inbox_id=neoleads_sandbox.api_inbox_id
        )
        conversation = hook.create_conversation(
            inbox_id=neoleads_sandbox.api_inbox_id, contact_id=contact["contact"]["id"]
        )
        neoleads_sandbox.reply(conversation["id"], "Hello from the contact")
        neoleads_sandbox.wait_for_deliveries()

    assert {delivery.get("status_code") for delivery in neoleads_sandbox.deliveries} == {200}
    events = {event.event: event for event in stored(engine)}
    assert set(events) == {"conversation_created", "message_created"}
    message = events["message_created"]
    assert (message.conversation_id, message.message_type, message.private) == (
        conversation["id"],
        "incoming",
        False,
    )
    assert message.payload["content"] == "Hello from the contact"
    assert message.conn_id == neoleads_connection
