"""NeoleadsWebhookSensor against a real SQLite event store (and the sandbox server for poll_api)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

try:
    from airflow.sdk.exceptions import (
        AirflowRescheduleException,
        AirflowSensorTimeout,
        AirflowSkipException,
        TaskDeferred,
    )
except ImportError:  # Airflow 3.1 has them in airflow.exceptions only.
    from airflow.exceptions import (
        AirflowRescheduleException,
        AirflowSensorTimeout,
        AirflowSkipException,
        TaskDeferred,
    )

from neoleads_provider.exceptions import NeoleadsConfigError, NeoleadsError
from neoleads_provider.sensors.webhook import NeoleadsWebhookSensor
from neoleads_provider.store.engine import dispose_engines, get_engine
from neoleads_provider.store.errors import EventStoreError, EventStoreSchemaError
from neoleads_provider.store.migrate import migrate
from neoleads_provider.triggers.webhook import NeoleadsWebhookTrigger
from tests._helpers import (
    free_port,
    later,
    message_payload,
    store_payloads,
    use_connection,
    use_sandbox_connection,
)

TEST_CONN_ID = "neoleads_default"


class FakeTaskInstance:
    """Just what reschedule mode and Jinja templates ask of the task instance."""

    def __init__(self, xcoms: dict[tuple[str, str], Any] | None = None) -> None:
        self.xcoms = xcoms or {}
        self.first_reschedule_date: datetime | None = None

    def get_first_reschedule_date(self, context: Any) -> datetime | None:
        return self.first_reschedule_date

    def xcom_pull(self, task_ids: str, key: str = "return_value") -> Any:
        return self.xcoms.get((task_ids, key))


@pytest.fixture(autouse=True)
def connection(monkeypatch: pytest.MonkeyPatch) -> None:
    use_connection(
        monkeypatch, TEST_CONN_ID, host="http://127.0.0.1:9", password="sensor-test-token", account_id=1
    )


def sensor(events_url: str, **kwargs: Any) -> NeoleadsWebhookSensor:
    kwargs.setdefault("conversation_id", 7)
    kwargs.setdefault("after_message_id", 100)
    kwargs.setdefault("poke_interval", 0.05)
    kwargs.setdefault("timeout", 10)
    return NeoleadsWebhookSensor(task_id=f"wait_{uuid.uuid4().hex[:6]}", events_db_url=events_url, **kwargs)


# -- poke and reschedule --------------------------------------------------------------------------------


def test_poke_mode_waits_for_the_reply_and_returns_it(events_url):
    store_payloads(events_url, message_payload(100, message_type="outgoing", content="Shall we book?"))
    task = sensor(events_url)
    timer = later(0.3, lambda: store_payloads(events_url, message_payload(101, content="Yes please")))
    started = time.monotonic()
    result = task.execute({})
    timer.join()
    assert time.monotonic() - started >= 0.25
    assert result["source"] == "webhook"
    assert result["message_id"] == 101
    assert result["payload"]["content"] == "Yes please"
    assert result["conversation_id"] == 7
    assert result["account_id"] == 1
    assert json.loads(json.dumps(result)) == result


def test_poke_mode_times_out_and_soft_fail_skips(events_url):
    with pytest.raises(AirflowSensorTimeout):
        sensor(events_url, timeout=0.2).execute({})
    with pytest.raises(AirflowSkipException):
        sensor(events_url, timeout=0.2, soft_fail=True).execute({})


EXPECTED_TIMEOUT = (
    "Sensor has timed out: No matching Neoleads event arrived within the sensor's timeout of 0.2 s: waited "
    "for message_created (incoming) in conversation 7 of account 1 after message 100, on connection "
    "neoleads_default. Next: `neoleads events list --conn-id neoleads_default --conversation-id 7` lists what "
    "was stored for it; `neoleads doctor --conn-id neoleads_default` checks the connection and the receiver"
)


def test_a_timeout_says_what_was_awaited_and_what_to_run_next_in_poke_and_deferred_modes(events_url):
    with pytest.raises(AirflowSensorTimeout) as poked:
        sensor(events_url, timeout=0.2).execute({})
    with pytest.raises(AirflowSensorTimeout) as deferred:
        sensor(events_url, timeout=0.2, deferrable=True).execute_complete({}, event={"status": "timeout"})
    assert str(poked.value) == str(deferred.value) == EXPECTED_TIMEOUT


def test_the_wait_is_announced_with_what_where_and_how_long(events_url, caplog, capfd):
    caplog.set_level(logging.INFO)
    with pytest.raises(TaskDeferred):
        sensor(events_url, deferrable=True, timeout=600).execute({})
    text = logged(capfd, caplog)
    assert (
        "Waiting up to 600 s (deferred to the triggerer) for message_created (incoming) in conversation 7 of "
        "account 1 after message 100, on connection neoleads_default; looking in the event store sqlite:///"
    ) in text
    # This connection has no webhook secret: the receiver refuses every delivery for it.
    assert (
        "This sensor can only succeed if an event is already stored: connection 'neoleads_default' has no"
        in text
    )


def test_a_connection_that_can_receive_gets_no_warning(events_url, monkeypatch, caplog, capfd):
    use_connection(
        monkeypatch,
        TEST_CONN_ID,
        host="http://127.0.0.1:9",
        password="sensor-test-token",
        account_id=1,
        webhook_secrets=["sensor-webhook-secret"],
    )
    caplog.set_level(logging.INFO)
    store_payloads(events_url, message_payload(101, content="my secret address"))
    sensor(events_url).execute({})
    text = logged(capfd, caplog)
    assert "can only succeed" not in text
    # One concise line on success, without the message or the contact.
    assert "Matched message_created (message 101) in conversation 7, found through the event store" in text
    assert "my secret address" not in text
    assert "Ada" not in text


def test_poke_mode_says_every_few_minutes_that_it_still_waits(events_url, monkeypatch, caplog, capfd):
    from neoleads_provider import waiting

    monkeypatch.setattr(waiting, "STILL_WAITING_LOG_EVERY", 0.1)
    caplog.set_level(logging.INFO)
    with pytest.raises(AirflowSensorTimeout):
        sensor(events_url, timeout=0.5).execute({})
    lines = [line for line in logged(capfd, caplog).splitlines() if "Still waiting for" in line]
    assert 2 <= len(lines) <= 12, lines
    assert "Still waiting for message_created (incoming) in conversation 7" in lines[0]


def test_reschedule_mode_gives_the_slot_back_then_finds_the_reply(events_url):
    task = sensor(events_url, mode="reschedule", poke_interval=30)
    ti = FakeTaskInstance()
    with pytest.raises(AirflowRescheduleException) as rescheduled:
        task.execute({"ti": ti})
    assert rescheduled.value.reschedule_date > datetime.now(UTC) + timedelta(seconds=20)
    store_payloads(events_url, message_payload(101, content="Sounds good"))
    ti.first_reschedule_date = datetime.now(UTC) - timedelta(seconds=30)
    result = task.execute({"ti": ti})
    assert result["payload"]["content"] == "Sounds good"


def test_only_matches_after_the_watermark_and_for_this_account(events_url):
    store_payloads(
        events_url,
        message_payload(99, content="an earlier message"),
        message_payload(100, message_type="outgoing", content="our question"),
        message_payload(101, message_type="outgoing", private=True, content="a note"),
        message_payload(102, account_id=2, content="another account's conversation 7"),
        message_payload(103, conversation_id=8, content="another conversation"),
    )
    task = sensor(events_url)
    assert task.poke({}).is_done is False
    store_payloads(events_url, message_payload(104, content="the reply"))
    done = task.poke({})
    assert done.is_done is True
    assert done.xcom_value["message_id"] == 104


def test_only_deliveries_received_for_its_connection_match(events_url, monkeypatch):
    use_connection(monkeypatch, "neoleads_b", host="http://127.0.0.1:9", password="b-token", account_id=1)
    # Same account, same conversation, after the watermark: only the connection differs.
    store_payloads(events_url, message_payload(101, content="sent to B"), conn_id="neoleads_b")
    assert sensor(events_url).poke({}).is_done is False
    done = sensor(events_url, neoleads_conn_id="neoleads_b").poke({})
    assert done.is_done is True
    assert (done.xcom_value["conn_id"], done.xcom_value["message_id"]) == ("neoleads_b", 101)
    assert sensor(events_url).event_filter.conn_id == TEST_CONN_ID


def test_a_deferred_sensor_waits_on_its_own_connection(events_url, monkeypatch):
    use_connection(monkeypatch, "neoleads_b", host="http://127.0.0.1:9", password="b-token", account_id=1)
    with pytest.raises(TaskDeferred) as deferred:
        sensor(events_url, neoleads_conn_id="neoleads_b", deferrable=True).execute({})
    _, kwargs = deferred.value.trigger.serialize()
    assert (kwargs["neoleads_conn_id"], kwargs["event_filter"]["conn_id"]) == ("neoleads_b", "neoleads_b")


def test_a_stored_row_with_text_xcom_cannot_hold_is_returned_neutralised(events_url):
    """The receiver refuses NUL and lone surrogates now; a row an older receiver stored must not break pokes."""
    store_payloads(events_url, message_payload(101, content="nul\x00 and lone \ud800 surrogate"))
    done = sensor(events_url, content_pattern="surrogate").poke({})
    assert done.is_done is True
    assert done.xcom_value["payload"]["content"] == "nul\ufffd and lone \ufffd surrogate"
    text = json.dumps(done.xcom_value, ensure_ascii=False)
    text.encode("utf-8")
    assert "\x00" not in text


def test_filters_reach_the_store(events_url):
    store_payloads(
        events_url,
        message_payload(101, content="maybe"),
        message_payload(102, message_type="outgoing", content="YES from the agent"),
        message_payload(103, content="yes!"),
    )
    assert sensor(events_url, content_pattern=r"(?i)^yes").poke({}).xcom_value["message_id"] == 103
    agent = sensor(events_url, message_type="outgoing", sender_type="user").poke({})
    assert agent.xcom_value["message_id"] == 102
    anyone = sensor(events_url, message_type=None, content_pattern="YES").poke({})
    assert anyone.xcom_value["message_id"] == 102


# -- deferrable -----------------------------------------------------------------------------------------


def test_deferrable_defers_to_the_trigger_then_completes(events_url):
    task = sensor(events_url, deferrable=True, timeout=600, trigger_poll_interval=0.05)
    with pytest.raises(TaskDeferred) as deferred:
        task.execute({})
    assert deferred.value.method_name == "execute_complete"
    assert deferred.value.timeout == timedelta(seconds=600)
    trigger = deferred.value.trigger
    assert isinstance(trigger, NeoleadsWebhookTrigger)
    classpath, kwargs = trigger.serialize()
    assert classpath == "neoleads_provider.triggers.webhook.NeoleadsWebhookTrigger"
    assert kwargs["neoleads_conn_id"] == TEST_CONN_ID
    assert kwargs["event_filter"]["conn_id"] == TEST_CONN_ID
    assert kwargs["event_filter"]["account_id"] == 1
    assert kwargs["event_filter"]["conversation_id"] == 7
    assert kwargs["event_filter"]["after_message_id"] == 100
    assert kwargs["events_db_url"] == events_url
    assert kwargs["poll_interval"] == 0.05
    assert time.time() + 590 < kwargs["end_time"] <= time.time() + 600

    # What the triggerer does: rebuild the trigger from its serialized form and run it.
    rebuilt = NeoleadsWebhookTrigger(**kwargs)
    later(0.2, lambda: store_payloads(events_url, message_payload(101, content="Deferred yes")))
    event = asyncio.run(asyncio.wait_for(anext(rebuilt.run()), timeout=10))
    result = task.execute_complete({}, event=event.payload)
    assert result["payload"]["content"] == "Deferred yes"
    assert result["source"] == "webhook"


def test_deferrable_returns_at_once_when_the_reply_is_already_stored(events_url):
    store_payloads(events_url, message_payload(101, content="already here"))
    result = sensor(events_url, deferrable=True).execute({})
    assert result["payload"]["content"] == "already here"


def test_execute_complete_turns_timeouts_and_errors_into_failures_or_skips(events_url):
    timeout_event = {"status": "timeout", "message": "nothing came"}
    with pytest.raises(AirflowSensorTimeout, match="within the sensor's timeout of 10 s"):
        sensor(events_url).execute_complete({}, event=timeout_event)
    with pytest.raises(AirflowSkipException):
        sensor(events_url, soft_fail=True).execute_complete({}, event=timeout_event)
    with pytest.raises(NeoleadsError, match="store has no schema"):
        sensor(events_url).execute_complete({}, event={"status": "error", "message": "store has no schema"})


# -- templating -----------------------------------------------------------------------------------------


def test_templated_conversation_and_watermark_are_cast_to_int(events_url):
    store_payloads(events_url, message_payload(101, conversation_id=12, content="templated"))
    task = sensor(
        events_url,
        conversation_id="{{ ti.xcom_pull(task_ids='create', key='conversation_id') }}",
        after_message_id="{{ ti.xcom_pull(task_ids='send', key='message_id') }}",
        include_private="{{ params.private }}",
    )
    ti = FakeTaskInstance({("create", "conversation_id"): 12, ("send", "message_id"): 100})
    task.render_template_fields({"ti": ti, "params": {"private": False}})
    assert task.conversation_id == "12"
    assert task.after_message_id == "100"
    flt = task.event_filter
    assert (flt.conversation_id, flt.after_message_id, flt.include_private) == (12, 100, False)
    assert task.poke({}).xcom_value["payload"]["content"] == "templated"


def test_a_watermark_that_rendered_to_none_is_an_error(events_url):
    task = sensor(events_url, after_message_id="{{ ti.xcom_pull(task_ids='send', key='message_id') }}")
    task.render_template_fields({"ti": FakeTaskInstance()})
    with pytest.raises(NeoleadsConfigError, match=r"after_message_id rendered to 'None'"):
        task.poke({})


def test_xcomarg_arguments_are_accepted_and_wire_the_dependency(events_url):
    from airflow.sdk import DAG, BaseOperator

    with DAG(dag_id="neoleads_sensor_xcomarg", schedule=None):
        send = BaseOperator(task_id="send")
        wait = sensor(events_url, conversation_id=7, after_message_id=send.output["message_id"])
    assert "send" in wait.upstream_task_ids


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"conversation_id": "abc"}, "conversation_id must be a whole number, got 'abc'"),
        ({"conversation_id": None}, "conversation_id is required"),
        ({"after_message_id": "1.5"}, "after_message_id must be a whole number"),
        ({"message_type": "incomming"}, "message_type has unknown types"),
        ({"content_pattern": "([a-z]"}, "content_pattern is not a valid Python regular expression"),
        ({"events": ["conversation_status_changed"]}, "after_message_id is a message id"),
        ({"include_private": "perhaps"}, "include_private must be true or false"),
        ({"poll_api": True, "events": "message_updated"}, "poll_api only finds message_created"),
    ],
)
def test_bad_arguments_fail_at_parse_time_naming_the_argument(events_url, kwargs, message):
    with pytest.raises(NeoleadsConfigError, match=message):
        sensor(events_url, **kwargs)


def test_templated_bad_values_fail_when_rendered(events_url):
    task = sensor(events_url, conversation_id="{{ params.conversation }}")
    task.render_template_fields({"params": {"conversation": "not-a-number"}})
    with pytest.raises(
        NeoleadsConfigError, match="conversation_id must be a whole number, got 'not-a-number'"
    ):
        task.poke({})


def test_the_connection_must_name_its_account(events_url, monkeypatch):
    use_connection(monkeypatch, TEST_CONN_ID, host="http://127.0.0.1:9", password="t", account_id=None)
    with pytest.raises(NeoleadsConfigError, match="account_id"):
        sensor(events_url).poke({})


# -- the store failing ----------------------------------------------------------------------------------


def logged(capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> str:
    # Task loggers go through Airflow's structlog setup to stdout; plain loggers reach caplog.
    out, err = capfd.readouterr()
    return out + err + caplog.text


def test_a_store_outage_is_not_a_failure_and_the_next_poke_recovers(tmp_path, capfd, caplog):
    # A directory that does not exist yet: SQLite cannot open the file, as if the volume were unmounted.
    store_dir = tmp_path / "not-mounted-yet"
    url = f"sqlite:///{store_dir / 'events.db'}"
    task = sensor(url)
    try:
        with caplog.at_level(logging.WARNING):
            assert task.poke({}).is_done is False
        assert "unavailable" in logged(capfd, caplog)
        store_dir.mkdir()
        migrate(get_engine(url))
        store_payloads(url, message_payload(101, content="after the outage"))
        assert task.poke({}).xcom_value["payload"]["content"] == "after the outage"
    finally:
        dispose_engines()


def test_an_unreachable_postgresql_is_waited_out_and_its_password_never_logged(capfd, caplog):
    url = f"postgresql+psycopg://neoleads:hunter2-db-secret@127.0.0.1:{free_port()}/nowhere?connect_timeout=2"
    task = sensor(url)
    try:
        with caplog.at_level(logging.DEBUG):
            assert task.poke({}).is_done is False
        text = logged(capfd, caplog)
        assert "unavailable" in text
        assert "127.0.0.1" in text
        assert "hunter2-db-secret" not in text
    finally:
        dispose_engines()


def test_a_store_that_was_never_migrated_says_how_to_fix_it(tmp_path):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    try:
        with pytest.raises(EventStoreSchemaError, match="neoleads events migrate"):
            sensor(url).poke({})
    finally:
        dispose_engines()


def test_a_bad_store_url_fails_instead_of_waiting_forever():
    with pytest.raises(EventStoreError, match="nosuchdb") as failed:
        sensor("nosuchdb://x/y").poke({})
    assert failed.value.transient is False


# -- poll_api: filling a lost delivery from the API ------------------------------------------------------


def test_poll_api_finds_a_reply_whose_webhook_never_arrived(
    events_url, neoleads_sandbox, sandbox_conversation
):
    conversation_id = sandbox_conversation["conversation_id"]
    watermark = sandbox_conversation["message_id"]
    reply = neoleads_sandbox.reply(conversation_id, "Tuesday works")
    store_only = sensor(events_url, conversation_id=conversation_id, after_message_id=watermark)
    assert store_only.poke({}).is_done is False

    task = sensor(events_url, conversation_id=conversation_id, after_message_id=watermark, poll_api=True)
    done = task.poke({})
    assert done.is_done is True
    found = done.xcom_value
    assert found["source"] == "api"
    assert found["event"] == "message_created"
    assert found["event_id"] is None
    assert found["message_id"] == reply["id"]
    assert found["conversation_id"] == conversation_id
    assert found["account_id"] == neoleads_sandbox.account_id
    assert found["message_type"] == "incoming"
    assert found["sender_type"] == "contact"
    payload = found["payload"]
    assert payload["content"] == "Tuesday works"
    assert payload["message_type"] == "incoming"
    assert payload["conversation"] == {"id": conversation_id}
    assert json.loads(json.dumps(found)) == found


def test_poll_api_respects_the_filters(events_url, neoleads_sandbox, sandbox_conversation):
    conversation_id = sandbox_conversation["conversation_id"]
    watermark = sandbox_conversation["message_id"]
    # The DAG's own message is after watermark-1 but outgoing: the echo never counts as the reply.
    echo_only = sensor(
        events_url, conversation_id=conversation_id, after_message_id=watermark - 1, poll_api=True
    )
    assert echo_only.poke({}).is_done is False
    reply = neoleads_sandbox.reply(conversation_id, "No thanks")
    yes_only = sensor(
        events_url,
        conversation_id=conversation_id,
        after_message_id=watermark,
        poll_api=True,
        content_pattern="(?i)yes",
    )
    assert yes_only.poke({}).is_done is False
    past_reply = sensor(
        events_url, conversation_id=conversation_id, after_message_id=reply["id"], poll_api=True
    )
    assert past_reply.poke({}).is_done is False
    outgoing = sensor(
        events_url,
        conversation_id=conversation_id,
        after_message_id=watermark - 1,
        poll_api=True,
        message_type="outgoing",
    )
    assert outgoing.poke({}).xcom_value["message_id"] == watermark


def test_a_stored_webhook_is_preferred_to_the_api(events_url, neoleads_sandbox, sandbox_conversation):
    conversation_id = sandbox_conversation["conversation_id"]
    watermark = sandbox_conversation["message_id"]
    neoleads_sandbox.reply(conversation_id, "via the API")
    store_payloads(
        events_url,
        message_payload(watermark + 1000, conversation_id=conversation_id, content="via the webhook"),
    )
    requests_before = len(neoleads_sandbox.requests)
    found = sensor(
        events_url, conversation_id=conversation_id, after_message_id=watermark, poll_api=True
    ).poke({})
    assert found.xcom_value["source"] == "webhook"
    assert len(neoleads_sandbox.requests) == requests_before


def test_a_transient_api_failure_is_a_not_yet(events_url, neoleads_sandbox, sandbox_conversation):
    conversation_id = sandbox_conversation["conversation_id"]
    neoleads_sandbox.reply(conversation_id, "Tuesday works")
    neoleads_sandbox.inject(503, path="/messages", method="GET")
    task = sensor(
        events_url,
        conversation_id=conversation_id,
        after_message_id=sandbox_conversation["message_id"],
        poll_api=True,
    )
    assert task.poke({}).is_done is False
    assert task.poke({}).xcom_value["payload"]["content"] == "Tuesday works"


def test_a_permanent_api_failure_fails_the_poke(
    events_url, neoleads_sandbox, sandbox_conversation, monkeypatch
):
    from neoleads_provider.exceptions import NeoleadsAuthError

    use_sandbox_connection(monkeypatch, neoleads_sandbox, TEST_CONN_ID, token="revoked-token")
    task = sensor(
        events_url,
        conversation_id=sandbox_conversation["conversation_id"],
        after_message_id=sandbox_conversation["message_id"],
        poll_api=True,
    )
    with pytest.raises(NeoleadsAuthError) as failed:
        task.poke({})
    assert "revoked-token" not in str(failed.value)


def test_deferrable_with_poll_api_completes_from_the_api(events_url, neoleads_sandbox, sandbox_conversation):
    conversation_id = sandbox_conversation["conversation_id"]
    task = sensor(
        events_url,
        conversation_id=conversation_id,
        after_message_id=sandbox_conversation["message_id"],
        poll_api=True,
        deferrable=True,
        trigger_poll_interval=0.05,
        trigger_api_poll_interval=0.2,
    )
    with pytest.raises(TaskDeferred) as deferred:
        task.execute({})
    _, kwargs = deferred.value.trigger.serialize()
    assert kwargs["poll_api"] is True
    assert kwargs["api_poll_interval"] == 0.2
    later(0.3, lambda: neoleads_sandbox.reply(conversation_id, "Deferred and found"))
    event = asyncio.run(asyncio.wait_for(anext(NeoleadsWebhookTrigger(**kwargs).run()), timeout=10))
    result = task.execute_complete({}, event=event.payload)
    assert result["source"] == "api"
    assert result["payload"]["content"] == "Deferred and found"


def test_the_sensor_links_to_the_conversation_it_waits_on(events_url) -> None:
    from neoleads_provider.links import NeoleadsConversationLink

    task = sensor(events_url, deferrable=True)
    with pytest.raises(TaskDeferred):
        task.execute({})
    link = NeoleadsConversationLink().get_link(task, ti_key=None)  # type: ignore[arg-type]
    assert link == "http://127.0.0.1:9/app/accounts/1/conversations/7"
    # Resumed in a new process (a fresh task object): the link is made again.
    resumed = sensor(events_url, deferrable=True)
    with pytest.raises(AirflowSensorTimeout):
        resumed.execute_complete({}, event={"status": "timeout"})
    assert NeoleadsConversationLink().get_link(resumed, ti_key=None) == link  # type: ignore[arg-type]
