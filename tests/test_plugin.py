"""The Airflow plugin: discovered through its entry point, cheap to import, mounted at /neoleads, and
serving deliveries on a real ``airflow api-server`` with a connection from the metadata database."""

from __future__ import annotations

import importlib.metadata
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from neoleads_provider.plugins import LazyReceiverApp, NeoleadsPlugin, receiver_app
from neoleads_provider.store.engine import dispose_engines, get_engine
from neoleads_provider.store.repository import get_event
from neoleads_provider.webhooks import URL_PREFIX
from neoleads_provider.webhooks.app import WebhookReceiverApp
from tests._helpers import (
    child_env,
    free_port,
    post_webhook,
    signed_now,
    standalone_receiver,
    stop_process_group,
    use_connection,
    wait_until_healthy,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

AIRFLOW_VERSION = tuple(
    int(part) for part in importlib.metadata.version("apache-airflow-core").split(".")[:3]
)
URL_TOKEN = "plugin-url-token-3c9e1b7d5a"
SECRET = "plugin-secret-6d2f8a"
BODY = json.dumps({"event": "message_created", "id": 11, "conversation": {"id": 3}}).encode()


def test_entry_point_names_the_plugin() -> None:
    entry_points = {ep.name: ep for ep in importlib.metadata.entry_points(group="airflow.plugins")}
    assert entry_points["neoleads"].load() is NeoleadsPlugin


def test_airflow_loads_the_plugin_and_its_fastapi_app() -> None:
    from airflow import plugins_manager

    plugins, errors = plugins_manager._get_plugins()
    assert errors == {}
    assert [plugin for plugin in plugins if plugin.name == "neoleads"]

    apps, _ = plugins_manager.get_fastapi_plugins()
    ours = [entry for entry in apps if entry.get("url_prefix") == URL_PREFIX]
    assert len(ours) == 1
    assert ours[0]["name"] == "Neoleads webhooks"
    assert ours[0]["app"] is receiver_app

    # What `airflow plugins` prints.
    info = {plugin["name"]: plugin for plugin in plugins_manager.get_plugin_info()}["neoleads"]
    assert info["fastapi_apps"] == [
        {
            "app": "neoleads_provider.plugins.LazyReceiverApp",
            "url_prefix": "/neoleads",
            "name": "Neoleads webhooks",
        }
    ]


def test_prefix_is_not_reserved_by_airflow() -> None:
    from airflow.api_fastapi.app import RESERVED_URL_PREFIXES

    assert not any(URL_PREFIX.startswith(prefix) for prefix in RESERVED_URL_PREFIXES)


def test_importing_the_plugin_is_cheap_and_touches_no_database(tmp_path) -> None:
    code = (
        "import json, os, sys\n"
        "from airflow import plugins_manager\n"
        "import neoleads_provider.plugins\n"
        "plugins_manager.get_fastapi_plugins()\n"
        "print(json.dumps({\n"
        "    'receiver_loaded': 'neoleads_provider.webhooks.app' in sys.modules,\n"
        "    'store_loaded': 'neoleads_provider.store.engine' in sys.modules,\n"
        "    'db_exists': os.path.exists(os.path.join(os.environ['AIRFLOW_HOME'], 'events.db')),\n"
        "}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=child_env(tmp_path), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {
        "receiver_loaded": False,
        "store_loaded": False,
        "db_exists": False,
    }


def test_lazy_app_builds_once() -> None:
    lazy = LazyReceiverApp()
    assert "built=False" in repr(lazy)
    built = lazy.app
    assert isinstance(built, WebhookReceiverApp)
    assert isinstance(built.fastapi_app, FastAPI)
    assert lazy.app is built
    assert "built=True" in repr(lazy)


def test_a_setting_the_receiver_cannot_run_with_is_a_503_naming_it(monkeypatch) -> None:
    monkeypatch.setenv("AIRFLOW__NEOLEADS__WEBHOOK_MAX_BODY_BYTES", "lots")
    parent = FastAPI()
    parent.mount(URL_PREFIX, LazyReceiverApp())
    with TestClient(parent) as client:
        response = client.post(f"{URL_PREFIX}/webhooks/nl_any", content=b"{}")
    assert response.status_code == 503
    assert "webhook_max_body_bytes must be a whole number of bytes from 1024 to" in response.json()["detail"]


def test_mounted_the_way_the_api_server_mounts_it(monkeypatch, tmp_path) -> None:
    from airflow.api_fastapi.app import init_plugins

    db_path = tmp_path / "mounted-events.db"
    monkeypatch.setenv("AIRFLOW__NEOLEADS__EVENTS_DB_URL", f"sqlite:///{db_path}")
    use_connection(monkeypatch, "nl_mounted", webhook_secrets=[SECRET])
    parent = FastAPI()
    init_plugins(parent)
    try:
        with TestClient(parent) as client:
            assert client.get("/neoleads/_health").json() == {"status": "ok"}
            headers = signed_now(SECRET, BODY, "mounted-1")
            response = client.post("/neoleads/webhooks/nl_mounted", content=BODY, headers=headers)
            assert response.status_code == 200, response.text
            assert response.json()["status"] == "stored"
            # The plugin migrated the store on this first delivery.
            with get_engine().connect() as conn:
                assert get_event(conn, conn_id="nl_mounted", delivery_id="mounted-1") is not None
            assert client.get("/neoleads/openapi.json").status_code == 200
    finally:
        dispose_engines()


# --------------------------------------------------------------------------- a real airflow api-server


_SETUP_METADATA_DB = """
import json
from airflow.utils.db import upgradedb
from airflow.utils.session import create_session
from airflow.models.connection import Connection

upgradedb()
with create_session() as session:
    session.add(Connection(
        conn_id="nl_metadata",
        conn_type="neoleads",
        host="http://127.0.0.1:1",
        password="api-token-unused",
        extra=json.dumps({"account_id": 1, "webhook_secrets": [SECRET]}),
    ))
    session.add(Connection(
        conn_id="nl_unsigned",
        conn_type="neoleads",
        extra=json.dumps(
            {"account_id": 1, "webhook_allow_unsigned": True, "webhook_url_token": URL_TOKEN}
        ),
    ))
    for conn_id, token in (("nl_button_right", SANDBOX_TOKEN), ("nl_button_wrong", "not-the-token")):
        session.add(Connection(
            conn_id=conn_id,
            conn_type="neoleads",
            host=SANDBOX_URL,
            password=token,
            extra=json.dumps({"account_id": SANDBOX_ACCOUNT, "webhook_secrets": "s-1"}),
        ))
    session.add(Connection(conn_id="an_http_one", conn_type="http", host="http://127.0.0.1:1", password="pw"))
""".replace("SECRET", repr(SECRET)).replace("URL_TOKEN", repr(URL_TOKEN))


@pytest.fixture(scope="module")
def api_server(tmp_path_factory, neoleads_sandbox_server: Any) -> Iterator[tuple[str, Path]]:
    home = tmp_path_factory.mktemp("api-server-home")
    setup_script = (
        _SETUP_METADATA_DB.replace("SANDBOX_URL", repr(neoleads_sandbox_server.url))
        .replace("SANDBOX_TOKEN", repr(neoleads_sandbox_server.token))
        .replace("SANDBOX_ACCOUNT", repr(neoleads_sandbox_server.account_id))
    )
    env = child_env(
        home,
        # The connection Test button's route, and a token for the REST API without a login.
        AIRFLOW__CORE__TEST_CONNECTION="Enabled",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="True",
        # Airflow 3.1.0 signs its tokens with issuer None, which today's PyJWT refuses.
        AIRFLOW__API_AUTH__JWT_ISSUER="neoleads-tests",
    )
    setup = subprocess.run(
        [sys.executable, "-c", setup_script], env=env, capture_output=True, text=True, timeout=240
    )
    assert setup.returncode == 0, setup.stderr[-3000:]
    port = free_port()
    log_file = (home / "api-server.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "airflow", "api-server", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(base, process, home / "api-server.log", name="airflow api-server", timeout=120)
        yield base, home
    finally:
        # The server runs in its own session (process group), so this stops it and only it.
        stop_process_group(process, signal.SIGTERM)
        log_file.close()


def test_real_api_server_serves_the_receiver(api_server: tuple[str, Path]) -> None:
    base, home = api_server
    url = f"{base}/neoleads/webhooks/nl_metadata"

    # No Airflow auth in front of the plugin: the receiver's own signature check decides. The receiver was
    # built and warmed up when the server started, so this first delivery pays for no imports or lookups
    # (cold, it took about 0.3 s; warm, a few milliseconds).
    headers = signed_now(SECRET, BODY, "api-server-1")
    started = time.monotonic()
    status, answer = post_webhook(url, BODY, headers)
    first = time.monotonic() - started
    assert (status, answer["status"]) == (200, "stored")
    assert "Neoleads webhook receiver warmed up" in (home / "api-server.log").read_text()
    assert first < 0.25, f"the first delivery took {first:.3f} s"

    events_db = get_engine(f"sqlite:///{home / 'events.db'}")
    try:
        with events_db.connect() as conn:
            stored = get_event(conn, conn_id="nl_metadata", delivery_id="api-server-1")
        assert stored is not None
        assert stored.conn_id == "nl_metadata"
    finally:
        dispose_engines()

    assert post_webhook(url, BODY, headers) == (200, {**answer, "status": "duplicate"})
    wrong = signed_now("not-the-secret", BODY, "api-server-2")
    assert post_webhook(url, BODY, wrong) == (401, {"detail": "unauthorized"})
    assert post_webhook(f"{base}/neoleads/webhooks/nobody", BODY, headers)[0] == 404

    log = (home / "api-server.log").read_text()
    assert SECRET not in log


def test_the_url_token_never_reaches_the_api_server_log(api_server: tuple[str, Path]) -> None:
    """Airflow 3.1's access log writes query strings: the plugin's root middleware takes the token out first."""
    base, home = api_server
    url = f"{base}/neoleads/webhooks/nl_unsigned"
    body = json.dumps({**json.loads(BODY), "id": 4242}).encode()
    plain = {"Content-Type": "application/json"}
    status, answer = post_webhook(f"{url}?token={URL_TOKEN}", body, plain)
    assert (status, answer["status"]) == (200, "stored")
    assert post_webhook(f"{url}?token=a-wrong-guess-5d1c", body, plain)[0] == 401
    assert post_webhook(f"{url}?keep=1&token={URL_TOKEN}", body, plain) == (
        200,
        {**answer, "status": "duplicate"},
    )
    time.sleep(0.5)  # the access log line is written as the response goes out
    log = (home / "api-server.log").read_text()
    assert "/neoleads/webhooks/nl_unsigned" in log  # the access log did record the requests
    assert URL_TOKEN not in log
    assert "a-wrong-guess-5d1c" not in log


def test_standalone_receiver_reads_the_metadata_database_too(api_server: tuple[str, Path]) -> None:
    """``neoleads webhooks serve`` runs outside Airflow's server context; the connection still resolves."""
    _, home = api_server
    port = free_port()
    db_url = f"sqlite:///{home / 'standalone-events.db'}"
    with standalone_receiver(port=port, db_url=db_url, env=child_env(home), log_path=home / "serve.log"):
        headers = signed_now(SECRET, BODY, "standalone-1")
        status, answer = post_webhook(f"http://127.0.0.1:{port}/neoleads/webhooks/nl_metadata", BODY, headers)
        assert (status, answer["status"]) == (200, "stored")


def _rest(base: str, method: str, path: str, body: Any = None) -> Any:
    """Call the API server's REST API as an admin (the fixture's auth manager lets anyone be one)."""
    with urllib.request.urlopen(f"{base}/auth/token", timeout=30) as response:
        token = json.loads(response.read())["access_token"]
    request = urllib.request.Request(
        f"{base}{path}",
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method=method,
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read() or b"null")


def _as_the_list_page_tests_it(stored: dict[str, Any]) -> dict[str, Any]:
    """The body the connections list's Test button posts for ``stored`` (Airflow 3.3.2's UI code)."""
    row = {
        "conn_type": stored["conn_type"],
        "connection_id": stored["connection_id"],
        "description": stored.get("description") or "",
        "extra": stored.get("extra") or "{}",
        "host": stored.get("host") or "",
        "login": stored.get("login") or "",
        "password": stored.get("password") or "",
        # Number(null) is 0 in JavaScript: the port the form hides comes back as 0.
        "port": int(stored.get("port") or 0),
        "schema": stored.get("schema") or "",
    }
    # The UI leaves out what is empty.
    return {key: value for key, value in row.items() if value not in ("", "{}")}


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        (None, (True, "Connected as")),
        ("not-the-token", (False, "The API access token was refused: Invalid Access Token")),
    ],
    ids=["right-token", "wrong-token"],
)
def test_the_connections_list_test_button_tests_the_stored_connection(
    api_server: tuple[str, Path], neoleads_sandbox: Any, token: str | None, expected: tuple[bool, str]
) -> None:
    base, _ = api_server
    # Stored by the fixture (Airflow 3.1.0's POST /connections fails with today's cryptography).
    conn_id = f"nl_button_{'right' if token is None else 'wrong'}"
    stored = _rest(base, "GET", f"/api/v2/connections/{conn_id}")
    assert stored["password"] == "***"  # what the list page has to send back
    row = _as_the_list_page_tests_it(stored)
    assert row["port"] == 0

    answer = _rest(base, "POST", "/api/v2/connections/test", row)
    if AIRFLOW_VERSION < (3, 1, 7):
        # These releases test only what the UI sent: the masked token. The provider says so.
        assert answer["status"] is False
        assert "Airflow passed the masked token '***', not the stored one" in answer["message"]
    else:
        assert (answer["status"], answer["message"][: len(expected[1])]) == expected, answer


def test_the_test_button_fix_is_for_neoleads_connections_only(api_server: tuple[str, Path]) -> None:
    base, _ = api_server
    row = _as_the_list_page_tests_it(_rest(base, "GET", "/api/v2/connections/an_http_one"))
    if AIRFLOW_VERSION >= (3, 3, 2):
        # Airflow's own refusal, untouched.
        with pytest.raises(urllib.error.HTTPError) as refused:
            _rest(base, "POST", "/api/v2/connections/test", row)
        assert refused.value.code == 400
        assert "differs from the stored connection" in refused.value.read().decode()
    else:
        # Older releases test the http connection itself (nothing listens on its port): not our business.
        answer = _rest(base, "POST", "/api/v2/connections/test", row)
        assert answer["status"] is False
        assert "Connected as" not in answer["message"]
