"""Wait for a Neoleads webhook event, typically the customer's reply in a conversation the DAG wrote to.

The sensor reads the provider's event store, where the webhook receiver keeps every verified delivery,
so a reply that arrived before the sensor started is found as well as one that arrives later. Pass the id
of the message the DAG sent as ``after_message_id``: only later messages count, and the echo of the
DAG's own message is never taken for the reply (by default only incoming, non-private messages match).

Neoleads does not retry a webhook it failed to deliver; ``poll_api=True`` also reads the conversation's
messages through the API, so a lost delivery does not leave the sensor waiting until its timeout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue

from neoleads_provider.connection import DEFAULT_CONN_ID
from neoleads_provider.exceptions import NeoleadsConfigError, NeoleadsError
from neoleads_provider.links import NeoleadsConversationLink
from neoleads_provider.version_compat import conf
from neoleads_provider.whole_numbers import parse_whole_number

if TYPE_CHECKING:
    from airflow.sdk import Context

    from neoleads_provider.connection import NeoleadsConnectionSettings
    from neoleads_provider.events.filter import EventFilter
    from neoleads_provider.hooks.neoleads import NeoleadsHook

__all__ = ["NeoleadsWebhookSensor"]


def _is_template(value: Any) -> bool:
    """Whether a constructor argument will only be known after rendering (Jinja text or an XComArg)."""
    if isinstance(value, str):
        return "{{" in value or "{%" in value
    return hasattr(value, "resolve") or type(value).__name__ in ("XComArg", "PlainXComArg", "MapXComArg")


def _as_int(name: str, value: Any, *, required: bool, minimum: int) -> int | None:
    """Cast a rendered id: templates render to text, XCom gives ints."""
    if value is None:
        if required:
            raise NeoleadsConfigError(f"{name} is required: a whole number")
        return None
    if isinstance(value, str) and value.strip() in ("", "None"):
        # Jinja renders a missing XCom as "None": waiting without the intended bound would be wrong.
        raise NeoleadsConfigError(
            f"{name} rendered to {value!r}: the value it was templated from is missing (e.g. no such XCom)"
        )
    return parse_whole_number(value, name, minimum=minimum)


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("false", "0", "no", ""):
        return False
    raise NeoleadsConfigError(f"{name} must be true or false, got {value!r}")


def _as_names(name: str, value: Any) -> tuple[str, ...] | None:
    """A string, a comma-separated string or a sequence of strings; None stays None ("any")."""
    if value is None:
        return None
    if isinstance(value, str):
        items: list[Any] = value.split(",")
    elif isinstance(value, Sequence | set | frozenset):
        items = list(value)
    else:
        raise NeoleadsConfigError(f"{name} must be a string or a list of strings, got {value!r}")
    if not all(isinstance(item, str) for item in items):
        raise NeoleadsConfigError(f"{name} must hold strings, got {value!r}")
    names = tuple(item.strip() for item in items if item.strip())
    if not names:
        raise NeoleadsConfigError(f"{name} must name at least one value (or be None for any), got {value!r}")
    return names


class NeoleadsWebhookSensor(BaseSensorOperator):
    """Wait for a stored Neoleads webhook event on one conversation, e.g. the customer's reply.

    Returns (as XCom) the matched event: the stored event's columns, ``payload`` (the webhook body) and
    ``source`` (``"webhook"``, or ``"api"`` for a message found by ``poll_api``).

    :param conversation_id: the conversation's display id. (templated)
    :param events: webhook event names to wait for. (templated)
    :param message_type: ``incoming`` (default: the customer), ``outgoing``, ``template``, a list, or
        None for any. (templated)
    :param include_private: whether private notes match. (templated)
    :param content_pattern: a Python regular expression the message content must contain (``re.search``). (templated)
    :param sender_type: ``contact``, ``user``, ``agent_bot``, a list, or None for any. (templated)
    :param after_message_id: only messages with a greater id match: the id of the message the DAG sent,
        e.g. ``send.output["message_id"]``. (templated)
    :param inbox_id: only events of this inbox. (templated)
    :param neoleads_conn_id: the ``neoleads`` connection; its ``account_id`` scopes the wait, so display
        ids of other accounts never match. (templated)
    :param events_db_url: the event store's SQLAlchemy URL; default ``[neoleads] events_db_url``. (templated)
    :param poll_api: also look for the message through the API (``message_created`` only), in case its
        webhook was lost. (templated)
    :param deferrable: wait in the triggerer instead of a worker slot.
    :param trigger_poll_interval: seconds between the trigger's store looks when deferred (a cheap
        indexed query); ``poke_interval`` applies in poke and reschedule modes.
    :param trigger_api_poll_interval: seconds between the trigger's API looks when deferred with ``poll_api``.
    """

    template_fields: Sequence[str] = (
        "conversation_id",
        "events",
        "message_type",
        "include_private",
        "content_pattern",
        "sender_type",
        "after_message_id",
        "inbox_id",
        "neoleads_conn_id",
        "events_db_url",
        "poll_api",
    )
    ui_color = "#1f93ff"
    operator_extra_links = (NeoleadsConversationLink(),)

    def __init__(
        self,
        *,
        conversation_id: int | str,
        events: str | Sequence[str] = ("message_created",),
        message_type: str | Sequence[str] | None = "incoming",
        include_private: bool | str = False,
        content_pattern: str | None = None,
        sender_type: str | Sequence[str] | None = None,
        after_message_id: int | str | None = None,
        inbox_id: int | str | None = None,
        neoleads_conn_id: str = DEFAULT_CONN_ID,
        events_db_url: str | None = None,
        poll_api: bool | str = False,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        trigger_poll_interval: float = 1.0,
        trigger_api_poll_interval: float = 30.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.conversation_id = conversation_id
        self.events = events
        self.message_type = message_type
        self.include_private = include_private
        self.content_pattern = content_pattern
        self.sender_type = sender_type
        self.after_message_id = after_message_id
        self.inbox_id = inbox_id
        self.neoleads_conn_id = neoleads_conn_id
        self.events_db_url = events_db_url
        self.poll_api = poll_api
        self.deferrable = deferrable
        self.trigger_poll_interval = trigger_poll_interval
        self.trigger_api_poll_interval = trigger_api_poll_interval
        if isinstance(events_db_url, str) and not _is_template(events_db_url):
            self._mask_db_password(events_db_url)
        self._check_static_arguments()

    # -- arguments -----------------------------------------------------------------------------------------

    @staticmethod
    def _mask_db_password(url: str) -> None:
        # Rendered template fields are shown in the UI; register the password so it is redacted there.
        from neoleads_provider.store.engine import url_password
        from neoleads_provider.version_compat import mask_secret

        password = url_password(url)
        if password:
            mask_secret(password)

    def _check_static_arguments(self) -> None:
        """Report bad arguments when the DAG is parsed, for those that are not templated."""
        arguments = {name: getattr(self, name) for name in self.template_fields}
        if any(_is_template(value) for value in arguments.values()):
            # Values combine (e.g. the watermark needs message events): check everything once rendered.
            return
        self._build_filter(account_id=None)
        self._poll_api_enabled()

    def _poll_api_enabled(self) -> bool:
        enabled = _as_bool("poll_api", self.poll_api)
        events = _as_names("events", self.events) or ()
        if enabled and "message_created" not in events:
            raise NeoleadsConfigError(
                f"poll_api only finds message_created events (the API keeps messages, not event history); "
                f"events is {list(events)}"
            )
        return enabled

    def _build_filter(self, *, account_id: int | None) -> EventFilter:
        from neoleads_provider.events.filter import EventFilter

        events = _as_names("events", self.events)
        if events is None:  # None means "any" for the other criteria, but a filter needs its events
            raise NeoleadsConfigError("events must be a string or a list of strings, got None")
        try:
            return EventFilter(
                conn_id=self.neoleads_conn_id,
                events=events,
                account_id=account_id,
                inbox_id=_as_int("inbox_id", self.inbox_id, required=False, minimum=1),
                conversation_id=_as_int("conversation_id", self.conversation_id, required=True, minimum=1),
                message_types=_as_names("message_type", self.message_type),
                include_private=_as_bool("include_private", self.include_private),
                sender_types=_as_names("sender_type", self.sender_type),
                after_message_id=_as_int(
                    "after_message_id", self.after_message_id, required=False, minimum=0
                ),
                content_pattern=self.content_pattern or None,
            )
        except ValueError as exc:
            # The filter names its fields; say them the way this operator's arguments are called.
            message = str(exc).replace("EventFilter.message_types", "message_type")
            message = message.replace("EventFilter.sender_types", "sender_type").replace("EventFilter.", "")
            raise NeoleadsConfigError(message) from None

    @cached_property
    def _settings(self) -> NeoleadsConnectionSettings:
        from airflow.sdk import BaseHook

        from neoleads_provider.connection import NeoleadsConnectionSettings

        # The token is not needed to read the store, so a receiver-only connection works too.
        return NeoleadsConnectionSettings.from_connection(
            BaseHook.get_connection(self.neoleads_conn_id), require_token=False
        )

    def _account_id(self) -> int:
        settings = self._settings
        if not settings.account_id:
            raise NeoleadsConfigError(
                f"Connection {self.neoleads_conn_id!r}: field 'account_id' is required to wait for its events"
            )
        return settings.account_id

    @cached_property
    def event_filter(self) -> EventFilter:
        """The rendered arguments as a filter (built on first use, after templates are rendered)."""
        if self.after_message_id is None:
            self.log.warning(
                "No after_message_id: any matching event already stored for conversation %s counts, "
                "however old. Pass the id of the message this DAG sent to wait for what comes after it.",
                self.conversation_id,
            )
        return self._build_filter(account_id=self._account_id())

    @cached_property
    def hook(self) -> NeoleadsHook:
        from neoleads_provider.hooks.neoleads import NeoleadsHook

        return NeoleadsHook(neoleads_conn_id=self.neoleads_conn_id)

    # -- waiting -------------------------------------------------------------------------------------------

    def poke(self, context: Context) -> PokeReturnValue:
        """Look once in the store (and the API with ``poll_api``); a store outage is just "not yet"."""
        from neoleads_provider.store.engine import safe_url
        from neoleads_provider.store.errors import EventStoreError, EventStoreSchemaError
        from neoleads_provider.waiting import (
            found_summary,
            is_transient_api_error,
            look_in_api,
            look_in_store,
        )

        flt = self.event_filter
        poll_api = self._poll_api_enabled()
        try:
            found = look_in_store(self.events_db_url, flt)
        except EventStoreSchemaError:
            raise
        except EventStoreError as exc:
            if not exc.transient:
                raise
            where = safe_url(self.events_db_url) if self.events_db_url else "[neoleads] events_db_url"
            self.log.warning("The Neoleads event store (%s) is unavailable; will look again: %s", where, exc)
            found = None
        if found is None and poll_api:
            try:
                found = look_in_api(self.hook, flt)
            except NeoleadsError as exc:
                if not is_transient_api_error(exc):
                    raise
                self.log.warning("Looking for the message through the API failed; will look again: %s", exc)
        if found is None:
            self._say_still_waiting()
            return PokeReturnValue(is_done=False)
        self.log.info("%s", found_summary(found))
        return PokeReturnValue(is_done=True, xcom_value=found)

    def _say_still_waiting(self) -> None:
        """In poke mode, say every few minutes that the wait goes on (the first poke said what for)."""
        import time

        from neoleads_provider.waiting import STILL_WAITING_LOG_EVERY

        now = time.monotonic()
        started = self.__dict__.setdefault("_waiting_since", now)
        last = self.__dict__.get("_said_still_waiting_at", started)
        if now - last >= STILL_WAITING_LOG_EVERY:
            self.__dict__["_said_still_waiting_at"] = now
            self.log.info(
                "Still waiting for %s (%d s so far, timeout %g s)",
                self.event_filter.describe(),
                now - started,
                self.timeout,
            )

    def _link_the_conversation(self) -> None:
        """The task's "Neoleads conversation" link: the conversation it waits on."""
        from neoleads_provider.links import CONVERSATION_URL_KEY, remember_link

        conversation_id = self.event_filter.conversation_id
        if conversation_id is not None:
            remember_link(self, CONVERSATION_URL_KEY, self._settings.conversation_url(conversation_id))

    def _announce(self) -> None:
        """Say what this task waits for, where it looks and for how long; warn if it cannot succeed."""
        from neoleads_provider.store.engine import get_events_db_url, safe_url
        from neoleads_provider.waiting import receiving_problem

        where = safe_url(self.events_db_url or get_events_db_url())
        api = (
            f" and through the API every {self.trigger_api_poll_interval if self.deferrable else self.poke_interval:g} s"
            if self._poll_api_enabled()
            else ""
        )
        mode = "deferred to the triggerer" if self.deferrable else f"{self.mode} mode"
        self.log.info(
            "Waiting up to %g s (%s) for %s; looking in the event store %s%s",
            self.timeout,
            mode,
            self.event_filter.describe(),
            where,
            api,
        )
        problem = receiving_problem(self._settings)
        if problem is not None:
            self.log.warning(
                "This sensor can only succeed %s: %s",
                "through the API (poll_api)" if self._poll_api_enabled() else "if an event is already stored",
                problem,
            )

    def execute(self, context: Context) -> Any:
        from neoleads_provider.version_compat import AirflowSensorTimeout
        from neoleads_provider.waiting import timeout_message

        if isinstance(self.events_db_url, str):
            # Rendered now: a templated URL's password is only known here.
            self._mask_db_password(self.events_db_url)
        self._announce()
        self._link_the_conversation()
        if not self.deferrable:
            try:
                return super().execute(context)
            except AirflowSensorTimeout:
                # Worded as the deferred wait words it: what was waited for, and what to run next.
                raise AirflowSensorTimeout(
                    f"Sensor has timed out: {timeout_message(self.event_filter, self.timeout)}"
                ) from None
        first_look = self.poke(context)
        if first_look.is_done:
            return first_look.xcom_value
        self.defer(
            trigger=self._trigger(),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout),
        )

    def _trigger(self) -> Any:
        import time

        from neoleads_provider.triggers.webhook import NeoleadsWebhookTrigger

        return NeoleadsWebhookTrigger(
            event_filter=self.event_filter.to_dict(),
            neoleads_conn_id=self.neoleads_conn_id,
            events_db_url=self.events_db_url,
            poll_interval=self.trigger_poll_interval,
            poll_api=self._poll_api_enabled(),
            api_poll_interval=self.trigger_api_poll_interval,
            # The trigger reports the timeout itself, so soft_fail can turn it into a skip.
            end_time=time.time() + self.timeout,
        )

    def execute_complete(self, context: Context, event: Mapping[str, Any] | None = None) -> Any:
        """Resume after the trigger fired: return the matched event, or fail (or skip) as the trigger says."""
        from neoleads_provider.version_compat import AirflowSensorTimeout, AirflowSkipException
        from neoleads_provider.waiting import found_summary, timeout_message

        # A resumed task is a new process: the link is made again for the task runner's finalize. A link is
        # a convenience: failing to make one must not fail a wait that succeeded.
        try:
            self._link_the_conversation()
        except Exception as exc:
            self.log.debug("No Neoleads conversation link: %s", exc)
        status = event.get("status") if isinstance(event, Mapping) else None
        if status == "success" and isinstance(event, Mapping):  # status is None unless event is a Mapping
            found = self._matched(event)
            self.log.info("%s", found_summary(found))
            return found
        if status == "timeout":
            message = f"Sensor has timed out: {timeout_message(self.event_filter, self.timeout)}"
            if self.soft_fail or getattr(self, "never_fail", False):
                raise AirflowSkipException(message)
            raise AirflowSensorTimeout(message)
        detail = event.get("message") if isinstance(event, Mapping) else None
        raise NeoleadsError(f"Waiting for the Neoleads event failed: {detail or event!r}")

    def _matched(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """The matched event the trigger named: read again here, so the payload never passes the triggerer.

        The trigger's event is logged by the triggerer and kept in the metadata database: it carries only
        where the match is (a stored event id, or "the API"), not the customer's message.
        """
        from neoleads_provider.store.queries import load_event
        from neoleads_provider.waiting import look_in_api

        if isinstance(event.get("event"), Mapping):
            return dict(event["event"])  # a trigger of an earlier release sent the whole event
        if event.get("source") == "api":
            found = look_in_api(self.hook, self.event_filter)
            if found is not None and found.get("message_id") != event.get("message_id"):
                found = None  # not the message the trigger matched (it was deleted, or the page moved on)
            if found is None:
                raise NeoleadsError(
                    f"The message {event.get('message_id')} the trigger found through the API for "
                    f"{self.event_filter.describe()} is no longer there"
                )
            return found
        stored = load_event(self.events_db_url, int(event["event_id"]), self.neoleads_conn_id)
        if stored is None:
            raise NeoleadsError(
                f"Stored event {event['event_id']} that the trigger matched for {self.event_filter.describe()} "
                "is no longer in the event store (purged?)"
            )
        return {**stored.to_xcom(), "source": "webhook"}
