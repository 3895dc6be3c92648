"""A real Airflow 3 deployment, end to end, as a user runs it.

On loopback: a fresh PostgreSQL database (Airflow's metadata and the Neoleads event store), ``airflow
api-server`` with the provider's receiver mounted at ``/neoleads``, ``airflow scheduler`` (LocalExecutor),
``airflow dag-processor`` and ``airflow triggerer``; the Neoleads sandbox posts signed webhooks to the API
server. It is started by ``scripts/airflow_local.py``, the code behind ``make airflow``.

Everything is driven the way the UI does it: the public REST API with a JWT from ``/auth/token``, and headless
Chromium for the pages a user looks at (screenshots land in ``artifacts/deployment/``).

Run it with ``pytest -m deployment tests/deployment`` (``.ci/run`` does); it needs ``NEOLEADS_TEST_PG_URL``
(a role that may create databases), Debian's ``chromium`` and the ``playwright`` package.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from neoleads_provider.webhooks.verify import signed_headers

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

pytestmark = pytest.mark.deployment

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts" / "deployment"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
ASSET_NAME = "neoleads_incoming_messages"
REPLY_SOURCE_PREFIX = "neoleads-auto-reply-"
FORM_CONN_ID = "neoleads_from_the_form"
FORM_SECRETS = ("first-form-secret", "second-form-secret")
PARAMS = {
    "name": "Katherine Johnson",
    "email": "katherine@example.com",
    "inbox_id": 1,
    "question": "Would you like a demo of the new dashboard next week?",
}


def field(scope: Any, label: str) -> Any:
    """The input of the form field labelled ``label``.

    Looked up through the field's group, not ``get_by_label``: in Airflow's forms the label of a provider
    field or a DAG param points at another id than its input.
    """
    return scope.get_by_role("group").filter(has_text=label).locator("input")


def playwright_api() -> Any:
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (the test extra)")
    assert Path(CHROMIUM).exists(), "apt-get install -y chromium (Debian's package; no browser is downloaded)"
    return sync_api


@contextlib.contextmanager
def logged_in_page(deployment: Any, *, height: int = 1000) -> Iterator[Any]:
    """A headless Chromium page, logged in through the simple auth manager's form as the admin."""
    with playwright_api().sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": height})
            page.set_default_timeout(30_000)
            page.goto(f"{deployment.base_url}/")
            page.get_by_label("Username").fill(deployment.admin_user)
            page.get_by_label("Password").fill(deployment.admin_password)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(lambda url: "/auth/" not in url)
            yield page
        finally:
            browser.close()


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _load_airflow_local() -> Any:
    spec = importlib.util.spec_from_file_location("airflow_local", ROOT / "scripts" / "airflow_local.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


airflow_local = _load_airflow_local()


def wait_until(check: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.5) -> Any:
    """Call ``check`` until it returns something truthy; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def quoted(run_id: str) -> str:
    return urllib.parse.quote(run_id, safe="")


# -- the deployment --------------------------------------------------------------------------------------------


def _selected(config: pytest.Config) -> bool:
    return (
        "deployment" in (config.getoption("markexpr") or "")
        or os.environ.get("NEOLEADS_DEPLOYMENT_TEST") == "1"
    )


@pytest.fixture(scope="module")
def deployment(request: pytest.FixtureRequest) -> Iterator[Any]:
    if not _selected(request.config):
        pytest.skip(
            "the deployment test starts a whole Airflow; run it with `pytest -m deployment` (CI does)"
        )
    pg_url = os.environ.get("NEOLEADS_TEST_PG_URL")
    if not pg_url:
        pytest.fail("the deployment test needs NEOLEADS_TEST_PG_URL (scripts/start-postgres.sh prints one)")
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    started = time.monotonic()
    deployed = airflow_local.Deployment(pg_server_url=pg_url, log=lambda line: print(line, flush=True))
    try:
        deployed.start()
        print(f"deployment ready in {time.monotonic() - started:.0f} s", flush=True)
        yield deployed
    finally:
        home = deployed.home
        deployed.stop(keep_home=True)
        # The service logs, for whoever reads a failure.
        for log in home.glob("*.log"):
            shutil.copy(log, ARTIFACTS / log.name)
        shutil.copytree(home / "logs", ARTIFACTS / "task-logs", dirs_exist_ok=True)
        shutil.rmtree(home, ignore_errors=True)
        leftovers = deployed.leftovers()
        assert leftovers == [], f"processes left behind: {leftovers}"


@pytest.fixture(scope="module")
def shared() -> dict[str, Any]:
    """What one test hands the next (the tests of this module run in order on one deployment)."""
    return {}


def task_states(deployment: Any, dag_id: str, run_id: str) -> dict[str, str | None]:
    answer = deployment.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{quoted(run_id)}/taskInstances")
    return {ti["task_id"]: ti["state"] for ti in answer["task_instances"]}


def run_state(deployment: Any, dag_id: str, run_id: str) -> str:
    return deployment.api("GET", f"/api/v2/dags/{dag_id}/dagRuns/{quoted(run_id)}")["state"]


def xcom(deployment: Any, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
    path = f"/api/v2/dags/{dag_id}/dagRuns/{quoted(run_id)}/taskInstances/{task_id}/xcomEntries/{key}"
    return deployment.api("GET", f"{path}?deserialize=true")["value"]


def wait_for_run(deployment: Any, dag_id: str, run_id: str, *, timeout: float = 120) -> None:
    def finished() -> str | None:
        state = run_state(deployment, dag_id, run_id)
        return state if state in ("success", "failed") else None

    state = wait_until(finished, timeout=timeout, what=f"{dag_id} run {run_id} to finish")
    assert state == "success", f"{dag_id} {run_id}: {task_states(deployment, dag_id, run_id)}"


def incoming_asset(deployment: Any) -> dict[str, Any]:
    assets = deployment.api("GET", f"/api/v2/assets?name_pattern={ASSET_NAME}")["assets"]
    assert [asset["name"] for asset in assets] == [ASSET_NAME]
    return assets[0]


def watcher_cursor(deployment: Any, asset_id: int) -> dict[str, Any] | None:
    """The auto-reply watcher's cursor, which it keeps in the event store (``neoleads_watch_cursor``)."""
    from sqlalchemy import text

    from neoleads_provider.store.engine import get_engine

    with get_engine(deployment.db_url).connect() as conn:
        try:
            rows = conn.execute(
                text(
                    "SELECT state FROM neoleads_watch_cursor WHERE cursor_key LIKE 'neoleads_event_cursor_%'"
                )
            ).all()
        except Exception:
            return None  # the store has no schema yet: the receiver creates it on its first delivery
    return json.loads(rows[0].state) if len(rows) == 1 else None


def auto_reply_runs(deployment: Any) -> list[dict[str, Any]]:
    return deployment.api("GET", "/api/v2/dags/neoleads_auto_reply/dagRuns?limit=100")["dag_runs"]


def auto_replies(sandbox: Any, conversation_id: int) -> dict[int, list[dict[str, Any]]]:
    """The auto-reply DAG's answers in a conversation, by the id of the message each answers."""
    answers: dict[int, list[dict[str, Any]]] = {}
    with sandbox.state.lock:
        conversation = next(
            c for c in sandbox.state.conversations.values() if c.display_id == conversation_id
        )
        messages = [sandbox.state.messages[mid] for mid in conversation.message_ids]
    for message in messages:
        source_id = message.source_id or ""
        if source_id.startswith(REPLY_SOURCE_PREFIX):
            answers.setdefault(int(source_id.removeprefix(REPLY_SOURCE_PREFIX)), []).append(
                {"id": message.id, "content": message.content, "message_type": message.message_type}
            )
    return answers


# -- 1. UI-style run: params, deferral, webhook on the API server, XComs ------------------------------------------


@pytest.fixture(scope="module")
def reply_run(deployment: Any, shared: dict[str, Any]) -> dict[str, Any]:
    """Trigger neoleads_wait_for_reply with params; once its sensor is deferred, make the contact reply."""
    sandbox = deployment.sandbox
    # The auto-reply watcher places its cursor when it starts; the reply below must come after that.
    asset = incoming_asset(deployment)
    wait_until(
        lambda: watcher_cursor(deployment, asset["id"]), timeout=60, what="the auto-reply watcher to start"
    )

    run = deployment.api(
        "POST", "/api/v2/dags/neoleads_wait_for_reply/dagRuns", {"logical_date": None, "conf": PARAMS}
    )
    run_id = run["dag_run_id"]
    assert run["conf"] == PARAMS

    seen: list[str | None] = []

    def deferred() -> bool:
        states = task_states(deployment, "neoleads_wait_for_reply", run_id)
        if not seen or seen[-1] != states["wait_for_reply"]:
            seen.append(states["wait_for_reply"])
        assert not {"failed", "upstream_failed"} & set(states.values()), states
        return states["wait_for_reply"] == "deferred"

    wait_until(deferred, timeout=120, what="the sensor to defer")
    # While deferred, nothing of this run holds a worker slot.
    running = deployment.api(
        "GET", f"/api/v2/dags/neoleads_wait_for_reply/dagRuns/{quoted(run_id)}/taskInstances?state=running"
    )
    assert running["total_entries"] == 0
    # The log of the deferred task, as the UI shows it while the task waits: read from the triggerer's and
    # the scheduler's log servers as well as the files.
    ti_path = f"/api/v2/dags/neoleads_wait_for_reply/dagRuns/{quoted(run_id)}/taskInstances/wait_for_reply"
    deferred_log = json.dumps(deployment.api("GET", f"{ti_path}/logs/1"))

    conversation_id = xcom(
        deployment, "neoleads_wait_for_reply", run_id, "create_conversation", "conversation_id"
    )
    question_id = xcom(deployment, "neoleads_wait_for_reply", run_id, "ask", "message_id")
    reply = sandbox.reply(conversation_id, "Yes please!")
    wait_for_run(deployment, "neoleads_wait_for_reply", run_id)
    shared.update(run_id=run_id, conversation_id=conversation_id, reply_id=reply["id"])
    return {
        "run_id": run_id,
        "conversation_id": conversation_id,
        "question_id": question_id,
        "reply": reply,
        "states_seen": seen,
        "deferred_log": deferred_log,
    }


def test_wait_for_reply_defers_and_completes_on_the_webhook(
    deployment: Any, reply_run: dict[str, Any]
) -> None:
    sandbox = deployment.sandbox
    run_id, conversation_id = reply_run["run_id"], reply_run["conversation_id"]
    assert "deferred" in reply_run["states_seen"]
    assert "Could not read served logs" not in reply_run["deferred_log"]
    assert "Waiting up to" in reply_run["deferred_log"]

    # The params reached the sandbox: the contact and the question.
    with sandbox.state.lock:
        contact = next(c for c in sandbox.state.contacts.values() if c.email == PARAMS["email"])
        question = sandbox.state.messages[reply_run["question_id"]]
    assert contact.name == PARAMS["name"]
    assert question.content == PARAMS["question"]

    # The reply travelled sandbox → signed webhook → receiver on the API server → store → trigger → sensor.
    event = xcom(deployment, "neoleads_wait_for_reply", run_id, "wait_for_reply")
    assert event["source"] == "webhook"
    assert event["conversation_id"] == conversation_id
    assert event["message_id"] == reply_run["reply"]["id"]
    assert event["message_type"] == "incoming"
    assert event["payload"]["content"] == "Yes please!"
    delivery = next(d for d in sandbox.deliveries if d.get("delivery_id") == event["delivery_id"])
    assert delivery["url"] == deployment.webhook_url
    assert delivery["status_code"] == 200

    decision = xcom(deployment, "neoleads_wait_for_reply", run_id, "decide")
    assert decision == "Great, our team will send you an invitation today."
    answer_id = xcom(deployment, "neoleads_wait_for_reply", run_id, "answer", "message_id")
    with sandbox.state.lock:
        assert sandbox.state.messages[answer_id].content == decision

    # Deferring used no retry, and the task log shows the hand-over to the triggerer and back.
    ti_path = f"/api/v2/dags/neoleads_wait_for_reply/dagRuns/{quoted(run_id)}/taskInstances/wait_for_reply"
    assert deployment.api("GET", ti_path)["try_number"] == 1
    log_events = [line.get("event", "") for line in deployment.api("GET", f"{ti_path}/logs/1")["content"]]
    assert any("Pausing task as DEFERRED" in line for line in log_events)
    assert any(line.endswith("starting") and "wait_for_reply" in line for line in log_events)
    assert "Trigger fired event" in log_events
    # The sensor said what it waits for, and on resuming one line without the customer's message.
    assert any(
        line.startswith("Waiting up to")
        and "(deferred to the triggerer)" in line
        and f"conversation {conversation_id}" in line
        for line in log_events
    ), log_events
    assert any(line.startswith("Matched message_created") for line in log_events), log_events

    sensor_links = deployment.api("GET", f"{ti_path}/links")
    assert sensor_links["extra_links"] == {
        "Neoleads conversation": f"{sandbox.url}/app/accounts/{sandbox.account_id}/conversations/{conversation_id}"
    }

    links = deployment.api(
        "GET",
        f"/api/v2/dags/neoleads_wait_for_reply/dagRuns/{quoted(run_id)}/taskInstances/create_conversation/links",
    )
    assert links["extra_links"] == {
        "Neoleads conversation": f"{sandbox.url}/app/accounts/{sandbox.account_id}/conversations/{conversation_id}"
    }


# -- 2. the UI in headless Chromium ------------------------------------------------------------------------------


def test_the_ui_shows_the_connection_form_the_params_form_and_the_extra_link(
    deployment: Any, reply_run: dict[str, Any], shared: dict[str, Any]
) -> None:
    expect = playwright_api().expect
    base = deployment.base_url
    with logged_in_page(deployment, height=1900) as page:
        # The connection form for type neoleads: relabelled standard fields and the provider's own fields.
        page.goto(f"{base}/connections")
        page.get_by_role("button", name="Add Connection").click()
        dialog = page.get_by_role("dialog")
        dialog.get_by_role("combobox").fill("Neoleads")
        dialog.get_by_role("option", name="Neoleads", exact=True).click()
        dialog.get_by_label("Connection ID").fill(FORM_CONN_ID)
        dialog.get_by_label("Base URL").fill(deployment.sandbox.url)
        field(dialog, "API access token").fill(deployment.sandbox.token)
        expect(dialog.locator("label").filter(has_text="Base URL").first).to_be_visible()
        dialog.screenshot(path=ARTIFACTS / "connection-form-neoleads-standard-fields.png")
        dialog.get_by_role("button", name="Extra Fields", exact=True).click()
        field(dialog, "Account ID").fill(str(deployment.sandbox.account_id))
        field(dialog, "Webhook secrets").fill(f"{FORM_SECRETS[0]}, {FORM_SECRETS[1]}")
        for label in (
            "Account ID",
            "Timeout (seconds)",
            "Web app URL",
            "Webhook secrets",
            "Allow unsigned webhooks",
        ):
            expect(dialog.locator("label").filter(has_text=label).first).to_be_visible()
        dialog.screenshot(path=ARTIFACTS / "connection-form-neoleads-extra-fields.png")
        dialog.get_by_role("button", name="Save").click()
        dialog.wait_for(state="hidden")

        # The trigger form of neoleads_send_message shows its params; trigger it from there.
        page.goto(f"{base}/dags/neoleads_send_message")
        page.get_by_role("button", name="Trigger").first.click()
        dialog = page.get_by_role("dialog")
        for title in ("Contact name", "Contact email", "API inbox id", "Message"):
            expect(dialog.locator("label").filter(has_text=title).first).to_be_visible()
        expect(field(dialog, "Contact name")).to_have_value("Ada Lovelace")
        field(dialog, "Contact name").fill("Mary Jackson")
        field(dialog, "Contact email").fill("mary@example.com")
        dialog.screenshot(path=ARTIFACTS / "trigger-form-neoleads_send_message.png")
        dialog.get_by_role("button", name="Trigger").click()
        dialog.wait_for(state="hidden")

        # The run's extra link to the conversation, on the task instance's details.
        run_id = reply_run["run_id"]
        page.goto(
            f"{base}/dags/neoleads_wait_for_reply/runs/{quoted(run_id)}/tasks/create_conversation/details"
        )
        page.set_viewport_size({"width": 1400, "height": 1000})
        link = page.get_by_role("link", name="Neoleads conversation")
        link.wait_for()
        href = link.get_attribute("href")
        page.screenshot(path=ARTIFACTS / "extra-link-neoleads-conversation.png")

    sandbox = deployment.sandbox
    assert (
        href
        == f"{sandbox.url}/app/accounts/{sandbox.account_id}/conversations/{reply_run['conversation_id']}"
    )

    # What the form saved works: the receiver on the API server takes deliveries signed with either secret.
    saved = deployment.api("GET", f"/api/v2/connections/{FORM_CONN_ID}")
    assert (saved["conn_type"], saved["host"]) == ("neoleads", sandbox.url)
    saved_extra = json.loads(saved["extra"])
    assert saved_extra["account_id"] == sandbox.account_id
    # The Add form saved the fields left alone with their defaults (null where there is none).
    assert (saved_extra["timeout"], saved_extra["max_retries"], saved_extra["inbox_id"]) == (30, 5, None)
    body = json.dumps({"event": "contact_updated", "id": 301, "account": {"id": sandbox.account_id}}).encode()
    url = f"{deployment.base_url}/neoleads/webhooks/{FORM_CONN_ID}"
    for number, secret in enumerate((*FORM_SECRETS, "not-a-secret-of-it")):
        headers = signed_headers(secret, body, timestamp=int(time.time()), delivery_id=f"form-{number}")
        status, answer = post(url, body, headers)
        # The second copy of the same body (another path's delivery id) is acknowledged, not stored again.
        expected = [(200, "stored"), (200, "duplicate"), (401, None)][number]
        assert (status, answer.get("status")) == expected, answer

    runs = deployment.api("GET", "/api/v2/dags/neoleads_send_message/dagRuns")["dag_runs"]
    assert len(runs) == 1
    assert runs[0]["conf"]["name"] == "Mary Jackson"
    shared["send_run_id"] = runs[0]["dag_run_id"]


@pytest.mark.parametrize(
    ("conn_id", "change", "title", "message"),
    [
        ("neoleads_default", None, "Test Connection Successful", "Connected as 'Sandbox Admin' to account 1"),
        (FORM_CONN_ID, None, "Test Connection Successful", "Connected as 'Sandbox Admin' to account 1"),
        (
            "neoleads_wrong_token",
            {"password": "not-the-token"},
            "Test Connection Failed",
            "The API access token was refused: Invalid Access Token",
        ),
        (
            "neoleads_wrong_account",
            {"extra": {"account_id": 999}},
            "Test Connection Failed",
            "The token works, but account 999 is not one of its accounts (it has: 1).",
        ),
        (
            "neoleads_no_account",
            {"extra": {}},
            "Test Connection Failed",
            "Field 'account_id' is required (an integer)",
        ),
    ],
)
def test_the_connections_list_test_button_shows_the_provider_s_answer(
    deployment: Any, conn_id: str, change: dict[str, Any] | None, title: str, message: str
) -> None:
    # The list page posts the stored connection back with "port": 0 and the masked token; Airflow 3.3.2
    # refused that with a bare "Bad Request" until the provider's plugin mended it.
    expect = playwright_api().expect
    sandbox = deployment.sandbox
    if change is not None:
        body = {
            "connection_id": conn_id,
            "conn_type": "neoleads",
            "host": sandbox.url,
            "password": sandbox.token,
            "extra": {"account_id": sandbox.account_id},
            **change,
        }
        body["extra"] = json.dumps(body["extra"])
        deployment.api("POST", "/api/v2/connections", body)
    assert deployment.api("GET", f"/api/v2/connections/{conn_id}")["port"] is None
    with logged_in_page(deployment) as page:
        page.goto(f"{deployment.base_url}/connections")
        row = page.get_by_role("row").filter(has=page.get_by_role("cell", name=conn_id, exact=True))
        row.get_by_role("button", name="Test Connection").click()
        toast = page.get_by_role("status").filter(has_text=title)
        expect(toast).to_be_visible()
        expect(toast).to_contain_text(message)
        page.wait_for_timeout(600)  # the toast slides in
        page.screenshot(path=ARTIFACTS / f"connection-test-button-{conn_id}.png")


# -- 3. event-driven: one incoming message, one auto-reply run, across a triggerer restart ----------------------


def test_each_incoming_message_starts_the_auto_reply_dag_exactly_once(
    deployment: Any, reply_run: dict[str, Any], shared: dict[str, Any]
) -> None:
    sandbox = deployment.sandbox
    asset_id = incoming_asset(deployment)["id"]
    conversation_id = reply_run["conversation_id"]
    first_id = reply_run["reply"]["id"]

    # The reply of part 1 was an incoming message: it started one auto-reply run, which answered it.
    first_run = wait_until(lambda: auto_reply_runs(deployment), timeout=60, what="the first auto-reply run")[
        0
    ]
    wait_for_run(deployment, "neoleads_auto_reply", first_run["dag_run_id"])
    assert first_run["run_type"] == "asset_triggered"

    # The watcher's cursor is saved once the event is handed over; then restart the triggerer, and let a
    # message arrive while it is down.
    stored_first = deployment.api(
        "GET",
        f"/api/v2/dags/neoleads_auto_reply/dagRuns/{quoted(first_run['dag_run_id'])}/upstreamAssetEvents",
    )["asset_events"][0]["extra"]["payload"]["event_id"]

    def saved_past_first() -> bool:
        cursor = watcher_cursor(deployment, asset_id) or {}
        return cursor.get("after_id", 0) >= stored_first or stored_first in cursor.get("fired", [])

    wait_until(saved_past_first, timeout=30, what="the watcher to save its cursor")
    deployment.stop_service("triggerer")
    second = sandbox.reply(conversation_id, "Do you have a price list? {{ 7 * 7 }}")
    sandbox.wait_for_deliveries(timeout=10)
    deployment.start_service("triggerer")

    def two_runs_done() -> list[dict[str, Any]] | None:
        runs = auto_reply_runs(deployment)
        return runs if len(runs) >= 2 and all(run["state"] == "success" for run in runs) else None

    wait_until(two_runs_done, timeout=120, what="the second auto-reply run")

    # The UI-triggered send run's outgoing message (and every answer's echo) must start nothing.
    if "send_run_id" in shared:
        wait_for_run(deployment, "neoleads_send_message", shared["send_run_id"])
    # More looks of the watcher than it needs: nothing else may fire.
    time.sleep(5)

    runs = auto_reply_runs(deployment)
    assert len(runs) == 2, runs
    fired_for: list[int] = []
    for run in runs:
        events = deployment.api(
            "GET", f"/api/v2/dags/neoleads_auto_reply/dagRuns/{quoted(run['dag_run_id'])}/upstreamAssetEvents"
        )["asset_events"]
        fired_for += [event["extra"]["payload"]["message_id"] for event in events]
    assert sorted(fired_for) == sorted([first_id, second["id"]])
    asset_events = deployment.api("GET", f"/api/v2/assets/events?asset_id={asset_id}")["asset_events"]
    assert sorted(event["extra"]["payload"]["message_id"] for event in asset_events) == sorted(fired_for)
    assert all(event["extra"]["from_trigger"] for event in asset_events)

    # Each incoming message got exactly one answer; no outgoing message was answered.
    answers = auto_replies(sandbox, conversation_id)
    assert sorted(answers) == sorted([first_id, second["id"]])
    assert all(len(found) == 1 for found in answers.values()), answers
    assert answers[first_id][0]["content"].startswith("Thanks for your message! A member of our team")
    # The answer is picked by what the customer asked, and never renders (or quotes) the customer's text.
    assert answers[second["id"]][0]["content"].startswith("Thanks for asking! Our price list")
    assert "49" not in answers[second["id"]][0]["content"]

    # Nothing secret reached any service log.
    for log in deployment.home.glob("*.log"):
        text = log.read_text(errors="replace")
        assert deployment.webhook_secret not in text, log.name
        assert deployment.admin_password not in text, log.name
        assert not any(secret in text for secret in FORM_SECRETS), log.name


# -- 4. text the metadata database cannot hold never makes a sensor fail --------------------------------------


def test_text_postgresql_cannot_hold_is_refused_and_never_fails_a_sensor(deployment: Any) -> None:
    """NUL and lone surrogates: refused at the door, and neutralised in a row an older receiver stored.

    The metadata database here is PostgreSQL, whose JSONB refuses ``\\u0000``: before the fix, the sensor's
    XCom push failed on such a reply, and every retry matched the same reply again.
    """
    from neoleads_provider.events.build import sample_event
    from neoleads_provider.store.engine import get_engine
    from tests._helpers import new_event, store_payloads

    sandbox = deployment.sandbox
    run = deployment.api(
        "POST", "/api/v2/dags/neoleads_wait_for_reply/dagRuns", {"logical_date": None, "conf": PARAMS}
    )
    run_id = run["dag_run_id"]
    wait_until(
        lambda: task_states(deployment, "neoleads_wait_for_reply", run_id)["wait_for_reply"] == "deferred",
        timeout=120,
        what="the sensor to defer",
    )
    conversation_id = xcom(
        deployment, "neoleads_wait_for_reply", run_id, "create_conversation", "conversation_id"
    )
    question_id = xcom(deployment, "neoleads_wait_for_reply", run_id, "ask", "message_id")
    poison = sample_event(
        "message_created",
        account_id=sandbox.account_id,
        conversation_id=conversation_id,
        message_id=question_id + 1000,
        content="Yes\u0000 please \ud800",
    )

    # At the door: a signed delivery with such text is refused, naming the field, and not stored.
    body = json.dumps(poison).encode()
    headers = signed_headers(
        deployment.webhook_secret, body, timestamp=int(time.time()), delivery_id="poison-1"
    )
    status, answer = post(deployment.webhook_url, body, headers)
    assert status == 400, answer
    assert "field 'content' holds a NUL character" in answer["detail"]

    # A row stored before the receiver refused such text: the sensor returns it, neutralised.
    assert new_event(poison).fields.content == "Yes\u0000 please \ud800"
    store_payloads(get_engine(deployment.db_url), poison)
    wait_for_run(deployment, "neoleads_wait_for_reply", run_id)
    event = xcom(deployment, "neoleads_wait_for_reply", run_id, "wait_for_reply")
    assert event["message_id"] == question_id + 1000
    assert event["payload"]["content"] == "Yes\ufffd please \ufffd"
