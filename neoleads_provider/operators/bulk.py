"""Send one message to each of many contacts: find or create the contact, open or reuse its conversation,
send; concurrently, under a client-side rate limit, and at most once per row across reruns.

Idempotency lives in the event store's ``neoleads_send_record`` table (:mod:`neoleads_provider.store.sends`):
each row's message carries a ``source_id`` derived from the task instance and the row's key, recorded as
``pending`` before the POST and ``sent`` after it. A retry or a cleared-and-rerun task instance skips
``sent`` rows and, for ``pending`` ones, looks the ``source_id`` up in the conversation before sending.
"""

from __future__ import annotations

import string
import threading
import time
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from neoleads_provider.bulk.rows import load_rows, prepare_rows, read_rows_csv
from neoleads_provider.bulk.runner import REQUESTS_PER_NEW_CONTACT, BulkRun, bulk_source_id
from neoleads_provider.exceptions import NeoleadsConfigError, NeoleadsError
from neoleads_provider.hooks.neoleads import NeoleadsHook
from neoleads_provider.operators.base import NeoleadsBaseOperator, as_id
from neoleads_provider.ratelimit import DEFAULT_REQUESTS_PER_MINUTE, TokenBucket
from neoleads_provider.version_compat import AirflowFailException

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from airflow.sdk import Context

__all__ = ["NeoleadsBulkMessageOperator", "NeoleadsBulkSendError", "bulk_source_id", "read_rows_csv"]

# The connection pool holds 32 connections per host; more threads would open and drop extra ones.
MAX_CONCURRENCY = 32


class NeoleadsBulkSendError(NeoleadsError):
    """A bulk send stopped early, or more rows failed than ``max_failures`` allows."""


class NeoleadsBulkRowsInvalidError(NeoleadsBulkSendError, AirflowFailException):
    """More rows failed than ``max_failures`` allows, each for a reason a retry cannot fix (a row without an
    email, a value the server refuses): the task fails at once instead of spending its retries."""


class NeoleadsBulkMessageOperator(NeoleadsBaseOperator):
    """Send a message to every contact in ``rows``, each at most once, concurrently and rate-limited.

    For each row: find or create the contact by identifier, email or phone number (with a contact inbox in
    ``inbox_id``), reuse its latest open or pending conversation in that inbox or open one, and send the
    message. Rows run on ``concurrency`` threads sharing one hook (one pooled ``requests.Session``), and
    every HTTP attempt takes a token from a bucket of ``requests_per_minute``.

    **At most once per row.** Each message's ``source_id`` is derived from the task instance and the row's
    key and recorded in the event store (table ``neoleads_send_record``) as ``pending`` before it is sent
    and ``sent`` after. A retry, or a rerun after the task is cleared, skips rows already sent and, for a
    row whose send was interrupted, checks the conversation for that ``source_id`` before sending again.
    A new DAG run sends again: it is a different task instance.

    **Rows.** A list of dicts (e.g. another task's output), or a CSV file path (absolute, or relative to the
    DAG file's folder) with a header line. Columns: ``name``, ``email``, ``phone_number``, ``identifier``
    (at least one of the last three), ``custom_attributes`` (a JSON object, or one column per attribute
    named ``custom_attributes.<key>``), ``content`` (the message; else ``message_template``) and
    ``row_key`` (optional; default: the contact's identity, so two rows for one contact send once: give
    them distinct ``row_key`` values to send both). Other columns are only template variables.

    **Template.** ``message_template`` uses :class:`string.Template` syntax (``$name`` or ``${name}``,
    ``$$`` for a dollar sign), filled per row from the row's columns and its custom attributes. It cannot
    reach attributes or call anything, unlike ``str.format``, and does not clash with the Jinja that Airflow
    applies to the template once, before the run (so ``{{ ds }}`` works in it too). A row missing a
    variable fails with the name of the variable.

    :param rows: a list of dicts, or a CSV file path. (templated)
    :param inbox_id: the (API) inbox to reach the contacts in. (templated)
    :param message_template: the message for rows without ``content``. (templated)
    :param message_type: ``outgoing`` (default) or ``incoming``. (templated)
    :param private: send private notes instead. (templated)
    :param reuse_conversation: reuse the contact's latest open or pending conversation in the inbox;
        False opens a new conversation for every contact that does not have its message yet.
    :param concurrency: rows in flight at once (1 to 32).
    :param requests_per_minute: the client-side limit on HTTP requests (default 2400, under the server's
        3000 per IP); None turns it off (a server without the limit, such as the sandbox).
    :param max_failures: the task fails when more rows than this fail (default 0: any failure fails it,
        so that Airflow's retry resumes the send).
    :param max_xcom_rows: the per-row list in the XCom holds every row up to this many rows; above it,
        only the rows that were not sent (failed first), at most this many.
    :param events_db_url: the event store's SQLAlchemy URL; default ``[neoleads] events_db_url``.
    :return: ``{"total", "sent", "skipped", "failed", "elapsed_seconds", "rows_complete", "rows"}``,
        each listed row ``{"row", "row_key", "outcome", "reason"?, "contact_id"?, "conversation_id"?,
        "message_id"?}``. The same dict is pushed under the key ``bulk_result`` when the task fails.
    """

    template_fields = (
        *NeoleadsBaseOperator.template_fields,
        "rows",
        "inbox_id",
        "message_template",
        "message_type",
        "private",
        "events_db_url",
    )
    ui_color = "#1f93ff"

    def __init__(
        self,
        *,
        rows: Sequence[Mapping[str, Any]] | str,
        inbox_id: int | str,
        message_template: str | None = None,
        message_type: str = "outgoing",
        private: bool | str = False,
        reuse_conversation: bool = True,
        concurrency: int = 8,
        requests_per_minute: float | None = DEFAULT_REQUESTS_PER_MINUTE,
        max_failures: int = 0,
        max_xcom_rows: int = 1000,
        events_db_url: str | None = None,
        **kwargs: Any,
    ) -> None:
        # One result dict; per-key XComs would store the row list twice.
        kwargs.setdefault("multiple_outputs", False)
        super().__init__(**kwargs)
        if isinstance(concurrency, bool) or not isinstance(concurrency, int):
            raise NeoleadsConfigError(f"concurrency must be a whole number; got {concurrency!r}")
        if not 1 <= concurrency <= MAX_CONCURRENCY:
            raise NeoleadsConfigError(
                f"concurrency must be between 1 and {MAX_CONCURRENCY}; got {concurrency}"
            )
        if requests_per_minute is not None and (
            isinstance(requests_per_minute, bool) or not requests_per_minute > 0
        ):
            raise NeoleadsConfigError(
                f"requests_per_minute must be a positive number or None; got {requests_per_minute!r}"
            )
        if isinstance(max_failures, bool) or not isinstance(max_failures, int) or max_failures < 0:
            raise NeoleadsConfigError(f"max_failures must be a whole number >= 0; got {max_failures!r}")
        if isinstance(max_xcom_rows, bool) or not isinstance(max_xcom_rows, int) or max_xcom_rows < 0:
            raise NeoleadsConfigError(f"max_xcom_rows must be a whole number >= 0; got {max_xcom_rows!r}")
        self.rows = rows
        self.inbox_id = inbox_id
        self.message_template = message_template
        self.message_type = message_type
        self.private = private
        self.reuse_conversation = reuse_conversation
        self.concurrency = concurrency
        self.requests_per_minute = requests_per_minute
        self.max_failures = max_failures
        self.max_xcom_rows = max_xcom_rows
        self.events_db_url = events_db_url
        # Created in execute(): operators are deep-copied (DAG subsets, mapped tasks), and an Event is not.
        self._stop: threading.Event | None = None

    @cached_property
    def hook(self) -> NeoleadsHook:
        limiter = TokenBucket(self.requests_per_minute) if self.requests_per_minute is not None else None
        return NeoleadsHook(neoleads_conn_id=self.neoleads_conn_id, rate_limiter=limiter)

    def on_kill(self) -> None:
        if self._stop is not None:
            self._stop.set()

    # ------------------------------------------------------------------ run

    def execute(self, context: Context) -> dict[str, Any]:
        from neoleads_provider.operators.messages import _as_bool
        from neoleads_provider.store.sends import SendKey, SendLedger

        inbox_id = as_id("inbox_id", self.inbox_id)
        if self.message_type not in ("outgoing", "incoming"):
            raise NeoleadsConfigError(
                f"message_type must be 'outgoing' or 'incoming'; got {self.message_type!r}"
            )
        private = _as_bool("private", self.private)
        template = None
        if self.message_template:
            template = string.Template(str(self.message_template))
            if not template.is_valid():
                raise NeoleadsConfigError(
                    "message_template has an invalid $ placeholder; write $$ for a literal dollar sign"
                )
        fileloc = getattr(context.get("dag"), "fileloc", None)
        rows = prepare_rows(*load_rows(self.rows, Path(fileloc).parent if fileloc else None), template)

        ti = context["ti"]
        map_index = getattr(ti, "map_index", None)
        key = SendKey(
            dag_id=ti.dag_id,
            run_id=ti.run_id,
            task_id=ti.task_id,
            map_index=-1 if map_index is None else int(map_index),
        )
        ledger = SendLedger(self.events_db_url, key)
        # Creates the send-record table on a store that predates it; a no-op once migrated.
        records = ledger.load()

        hook = self.hook
        # Resolved once here: the worker threads then share the settings and the session, read-only.
        hook.get_inbox(inbox_id)
        hook.get_conn()

        run = BulkRun(
            operator=self,
            hook=hook,
            ledger=ledger,
            records=records,
            inbox_id=inbox_id,
            private=private,
            total=len(rows),
        )
        started = time.monotonic()
        self.log.info(
            "Bulk send of %s rows to inbox %s: %s already sent by an earlier try, %s threads, %s",
            len(rows),
            inbox_id,
            sum(1 for record in records.values() if record.state == "sent"),
            self.concurrency,
            f"at most {self.requests_per_minute:g} requests/min (requests_per_minute): about "
            f"{self.requests_per_minute / 60 / REQUESTS_PER_NEW_CONTACT:.0f} rows/s for new contacts, which take "
            f"{REQUESTS_PER_NEW_CONTACT} requests each"
            if self.requests_per_minute
            else "no rate limit",
        )
        self._stop = threading.Event()
        run.run(rows, self.concurrency, self._stop)
        elapsed = time.monotonic() - started
        result = run.result(elapsed, self.max_xcom_rows)
        self._log_summary(result, run)
        if run.fatal is not None or result["failed"] > self.max_failures:
            ti.xcom_push(key="bulk_result", value=result)
            counts = f"{result['sent']} sent, {result['skipped']} skipped, {result['failed']} failed"
            if run.fatal is not None:
                raise NeoleadsBulkSendError(
                    f"The bulk send stopped early ({counts}, {run.not_started} not started): {run.fatal}. "
                    "Fix the cause and rerun the task: rows already sent are skipped."
                )
            message = f"{result['failed']} of {result['total']} rows failed (max_failures={self.max_failures}; {counts})"
            if run.transient_failures == 0:
                # Every failure would fail the same way again: retries would only repeat it.
                raise NeoleadsBulkRowsInvalidError(
                    f"{message}. Each failed for a reason a retry cannot fix (listed above and in the "
                    "bulk_result XCom): fix those rows, or raise max_failures, then rerun the task; rows "
                    "already sent are skipped."
                )
            raise NeoleadsBulkSendError(
                f"{message}. Rerun the task to retry them: rows already sent are skipped."
            )
        return result

    def _log_summary(self, result: dict[str, Any], run: BulkRun) -> None:
        elapsed = result["elapsed_seconds"]
        rate = result["sent"] / elapsed if elapsed > 0 else 0.0
        self.log.info(
            "Bulk send done in %.1f s: %s rows, %s sent (%.1f/s), %s skipped, %s failed%s",
            elapsed,
            result["total"],
            result["sent"],
            rate,
            result["skipped"],
            result["failed"],
            f", {run.not_started} not started" if run.not_started else "",
        )
        failures = [outcome for outcome in run.outcomes if outcome and outcome["outcome"] == "failed"]
        for outcome in failures[:10]:
            key = f" ({outcome['row_key']})" if outcome.get("row_key") else ""
            self.log.warning("Row at %s%s failed: %s", outcome["where"], key, outcome["reason"])
        if len(failures) > 10:
            self.log.warning("... and %s more failed rows (see the XCom)", len(failures) - 10)
