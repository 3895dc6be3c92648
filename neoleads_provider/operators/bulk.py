"""Send one message to each of many contacts: find or create the contact, open or reuse its conversation,
send; concurrently, under a client-side rate limit, and at most once per row across reruns.

Idempotency lives in the event store's ``neoleads_send_record`` table (:mod:`neoleads_provider.store.sends`):
each row's message carries a ``source_id`` derived from the task instance and the row's key, recorded as
``pending`` before the POST and ``sent`` after it. A retry or a cleared-and-rerun task instance skips
``sent`` rows and, for ``pending`` ones, looks the ``source_id`` up in the conversation before sending.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import string
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from neoleads_provider.exceptions import (
    NeoleadsAuthError,
    NeoleadsConfigError,
    NeoleadsError,
    NeoleadsForbiddenError,
    NeoleadsNotFoundError,
    NeoleadsRateLimitError,
    NeoleadsServerError,
    NeoleadsTransportError,
    NeoleadsValidationError,
)
from neoleads_provider.hooks.neoleads import NeoleadsHook
from neoleads_provider.operators.base import NeoleadsBaseOperator, as_id
from neoleads_provider.ratelimit import DEFAULT_REQUESTS_PER_MINUTE, TokenBucket
from neoleads_provider.store.errors import EventStoreError
from neoleads_provider.version_compat import AirflowFailException

if TYPE_CHECKING:
    from collections.abc import Sequence

    from airflow.sdk import Context

    from neoleads_provider.store.sends import SendKey, SendLedger, SendRecord

__all__ = ["NeoleadsBulkMessageOperator", "NeoleadsBulkSendError", "bulk_source_id", "read_rows_csv"]

CONTACT_FIELDS = ("name", "email", "phone_number", "identifier")
CUSTOM_ATTRIBUTE_PREFIX = "custom_attributes."
# The connection pool holds 32 connections per host; more threads would open and drop extra ones.
MAX_CONCURRENCY = 32
# This many rows in a row failing with an outage-like error (network, 5xx) stop the send: the rest would
# only fail the same way, slowly, after their retries. A rerun resumes where it stopped.
ABORT_AFTER_CONSECUTIVE_OUTAGE_FAILURES = 25
REUSABLE_CONVERSATION_STATUSES = ("open", "pending")
PROGRESS_LOG_SECONDS = 15.0
# A row for a new contact takes three requests: the contact, the conversation and the message.
REQUESTS_PER_NEW_CONTACT = 3
MAX_REASON_LENGTH = 300
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class NeoleadsBulkSendError(NeoleadsError):
    """A bulk send stopped early, or more rows failed than ``max_failures`` allows."""


class NeoleadsBulkRowsInvalidError(NeoleadsBulkSendError, AirflowFailException):
    """More rows failed than ``max_failures`` allows, each for a reason a retry cannot fix (a row without an
    email, a value the server refuses): the task fails at once instead of spending its retries."""


def bulk_source_id(key: SendKey, row_key: str) -> str:
    """The message ``source_id`` of one row of one task instance: the same on every try and rerun."""
    material = "\x1f".join((key.dag_id, key.run_id, key.task_id, str(key.map_index), row_key))
    return "airflow-bulk-" + hashlib.sha256(material.encode("utf-8")).hexdigest()[:40]


def read_rows_csv(path: str | Path, lines: list[int] | None = None) -> list[dict[str, str]]:
    """Read a CSV file with a header line into a list of dicts (UTF-8, a byte-order mark is ignored).

    :param lines: if given, filled with each row's line number in the file (its last line, for a cell that
        spans several; blank lines are skipped as the reader skips them).
    :raises NeoleadsConfigError: the file is missing or has no header.
    """
    path = Path(path)
    if not path.is_file():
        raise NeoleadsConfigError(f"rows: CSV file {str(path)!r} does not exist")
    rows: list[dict[str, str]] = []
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames:
            raise NeoleadsConfigError(f"rows: CSV file {str(path)!r} has no header line")
        for row in reader:
            # Extra cells beyond the header land under the key None; they have no column name to mean anything.
            rows.append({key: value for key, value in row.items() if key is not None})
            if lines is not None:
                lines.append(reader.line_num)
    return rows


@dataclass
class _Row:
    """One input row, validated: what to find or create, what to send, or why it cannot be sent."""

    index: int
    #: Where the row is in the user's input: ``line 702 of contacts.csv``, or ``rows[700]``.
    where: str = ""
    row_key: str | None = None
    contact: dict[str, Any] = field(default_factory=dict)
    content: str | None = None
    error: str | None = None
    #: Where the earlier row with the same row_key is.
    duplicate_of: str | None = None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _contact_fields(row: Mapping[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {name: _text(row.get(name)) for name in CONTACT_FIELDS}
    custom: dict[str, Any] = {}
    raw = row.get("custom_attributes")
    if isinstance(raw, str) and raw.strip():
        try:
            raw = json.loads(raw)
        except ValueError:
            raise ValueError("custom_attributes is not a JSON object") from None
    if isinstance(raw, dict):
        custom.update(raw)
    elif raw not in (None, ""):
        raise ValueError("custom_attributes must be an object")
    for key, value in row.items():
        if isinstance(key, str) and key.startswith(CUSTOM_ATTRIBUTE_PREFIX) and value not in (None, ""):
            custom[key[len(CUSTOM_ATTRIBUTE_PREFIX) :]] = value
    fields["custom_attributes"] = custom or None
    return fields


def _identity_key(contact: Mapping[str, Any]) -> str | None:
    """The contact's identity as the server dedupes it: identifier, else email, else phone number."""
    if contact.get("identifier"):
        return "identifier:" + contact["identifier"]
    if contact.get("email"):
        return "email:" + contact["email"].lower()
    if contact.get("phone_number"):
        return "phone:+" + contact["phone_number"].replace("+", "")
    return None


def _short_key(key: str) -> str:
    # The record's row_key column holds 255 characters; longer keys keep a readable head and a digest.
    if len(key) <= 255:
        return key
    return key[:180] + "#sha256:" + hashlib.sha256(key.encode("utf-8")).hexdigest()


def _template_variables(row: Mapping[str, Any], contact: Mapping[str, Any]) -> dict[str, str]:
    variables: dict[str, str] = {}
    for source in (contact.get("custom_attributes") or {}, row):
        for key, value in source.items():
            if isinstance(key, str) and _IDENTIFIER.match(key):
                variables[key] = "" if value is None else str(value)
    return variables


def _reason(exc: BaseException) -> str:
    # Provider errors name method, path and the server's message, never the token.
    text = str(exc) if isinstance(exc, NeoleadsError) else f"{type(exc).__name__}: {exc}"
    return text[:MAX_REASON_LENGTH]


class _Abort(Exception):
    """Stop the whole send (the error would repeat for every row)."""


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

    # ------------------------------------------------------------------ input

    def _load_rows(self, context: Context) -> tuple[list[Mapping[str, Any]], list[str]]:
        """The input rows, and where each is in the user's input (``line 702 of contacts.csv``, ``rows[7]``)."""
        rows: Any = self.rows
        if isinstance(rows, str | Path):
            path = Path(str(rows).strip())
            if not path.is_absolute():
                dag = context.get("dag")
                fileloc = getattr(dag, "fileloc", None)
                if fileloc:
                    path = Path(fileloc).parent / path
            lines: list[int] = []
            csv_rows: list[Mapping[str, Any]] = list(read_rows_csv(path, lines))
            return csv_rows, [f"line {line} of {path.name}" for line in lines]
        if isinstance(rows, dict) or not hasattr(rows, "__iter__"):
            raise NeoleadsConfigError(
                f"rows must be a list of dicts or a CSV file path; got {type(rows).__name__}"
            )
        rows = list(rows)
        for index, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise NeoleadsConfigError(f"rows[{index}] must be a dict; got {type(row).__name__}")
        return rows, [f"rows[{index}]" for index in range(len(rows))]

    def _prepare(
        self, raw_rows: list[Mapping[str, Any]], wheres: list[str], template: string.Template | None
    ) -> list[_Row]:
        prepared: list[_Row] = []
        first_by_key: dict[str, int] = {}
        for index, raw in enumerate(raw_rows):
            row = _Row(index=index, where=wheres[index])
            prepared.append(row)
            try:
                row.contact = _contact_fields(raw)
            except ValueError as exc:
                row.error = str(exc)
                continue
            explicit = _text(raw.get("row_key"))
            key = explicit or _identity_key(row.contact)
            if key is None:
                row.error = (
                    "the row's identifier, email and phone_number are all empty or missing: the contact "
                    "cannot be found or created without one of them"
                )
                continue
            row.row_key = _short_key(key)
            content = _text(raw.get("content"))
            if content is None and template is not None:
                try:
                    content = template.substitute(_template_variables(raw, row.contact)) or None
                except KeyError as exc:
                    row.error = f"message_template needs ${exc.args[0]}, and the row has no such column"
                    continue
            if content is None:
                row.error = "no message: the row has no content and the operator no message_template"
                continue
            row.content = content
            earlier = first_by_key.setdefault(row.row_key, index)
            if earlier != index:
                row.duplicate_of = wheres[earlier]
        return prepared

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
        rows = self._prepare(*self._load_rows(context), template)

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

        run = _BulkRun(
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

    def _log_summary(self, result: dict[str, Any], run: _BulkRun) -> None:
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


class _BulkRun:
    """The state of one execution: the work queue, the outcomes and the stop conditions."""

    def __init__(
        self,
        *,
        operator: NeoleadsBulkMessageOperator,
        hook: NeoleadsHook,
        ledger: SendLedger,
        records: dict[str, SendRecord],
        inbox_id: int,
        private: bool,
        total: int,
    ) -> None:
        self.operator = operator
        self.hook = hook
        self.ledger = ledger
        self.key = ledger.key
        self.records = records
        self.inbox_id = inbox_id
        self.private = private
        self.outcomes: list[dict[str, Any] | None] = [None] * total
        self.fatal: str | None = None
        self.not_started = 0
        self._lock = threading.Lock()
        self._consecutive_outages = 0
        self._done = 0
        #: Failed rows whose cause may go away (network, 429, 5xx): a retry of the task may send them.
        self.transient_failures = 0
        self._counts = {"sent": 0, "skipped": 0, "failed": 0}

    # -- orchestration

    def run(self, rows: list[_Row], concurrency: int, stop: threading.Event) -> None:
        queue = iter(rows)
        queue_lock = threading.Lock()

        def worker() -> None:
            while not stop.is_set():
                with queue_lock:
                    row = next(queue, None)
                if row is None:
                    return
                try:
                    outcome = self._process(row)
                except _Abort as exc:
                    with self._lock:
                        if self.fatal is None:
                            self.fatal = str(exc.__cause__ or exc)
                    stop.set()
                    outcome = self._failed(row, _reason(exc.__cause__ or exc))
                except Exception as exc:
                    # A bug must not take the worker (and the rows behind it) down silently.
                    self.operator.log.exception("Row %s failed unexpectedly", row.index)
                    outcome = self._failed(row, _reason(exc))
                self._record(row, outcome, stop)

        from concurrent.futures import ThreadPoolExecutor

        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="neoleads-bulk") as pool:
            futures = [pool.submit(worker) for _ in range(min(concurrency, max(1, len(rows))))]
            last_log = time.monotonic()
            for future in futures:
                while True:
                    try:
                        future.result(timeout=1.0)
                        break
                    except TimeoutError:
                        if time.monotonic() - last_log >= PROGRESS_LOG_SECONDS:
                            last_log = time.monotonic()
                            self._log_progress(len(rows), time.monotonic() - started)
        if stop.is_set() and self.fatal is None:
            self.fatal = "the task was stopped"
        self.not_started = sum(1 for outcome in self.outcomes if outcome is None)

    def _log_progress(self, total: int, elapsed: float) -> None:
        with self._lock:
            done, counts = self._done, dict(self._counts)
        rate = done / elapsed if elapsed > 0 else 0.0
        left = f", about {(total - done) / rate:.0f} s left" if rate > 0 else ""
        self.operator.log.info(
            "Bulk send progress: %s of %s rows done (%s sent, %s skipped, %s failed), %.1f rows/s%s",
            done,
            total,
            counts["sent"],
            counts["skipped"],
            counts["failed"],
            rate,
            left,
        )

    def _record(self, row: _Row, outcome: dict[str, Any], stop: threading.Event) -> None:
        with self._lock:
            self.outcomes[row.index] = outcome
            self._done += 1
            self._counts[outcome["outcome"]] += 1
            if outcome.pop("_retryable", False):
                self.transient_failures += 1
            if outcome["outcome"] != "failed":
                self._consecutive_outages = 0
            elif outcome.pop("_outage", False):
                self._consecutive_outages += 1
                if (
                    self._consecutive_outages >= ABORT_AFTER_CONSECUTIVE_OUTAGE_FAILURES
                    and self.fatal is None
                ):
                    self.fatal = (
                        f"{self._consecutive_outages} rows in a row failed on network or server errors, "
                        f"the last with: {outcome['reason']}"
                    )
                    stop.set()
            else:
                outcome.pop("_outage", None)

    # -- one row

    @staticmethod
    def _outcome(row: _Row, outcome: str, **values: Any) -> dict[str, Any]:
        result: dict[str, Any] = {
            "row": row.index,
            "where": row.where,
            "row_key": row.row_key,
            "outcome": outcome,
        }
        result.update({name: value for name, value in values.items() if value is not None})
        return result

    def _failed(
        self, row: _Row, reason: str, *, outage: bool = False, retryable: bool = True
    ) -> dict[str, Any]:
        """A failed row; ``retryable`` unless a retry of the task would fail it the same way."""
        outcome = self._outcome(row, "failed", reason=reason)
        outcome["_outage"] = outage
        outcome["_retryable"] = retryable
        return outcome

    def _process(self, row: _Row) -> dict[str, Any]:
        if row.error is not None:
            return self._failed(row, row.error, retryable=False)
        if row.duplicate_of is not None:
            return self._outcome(row, "skipped", reason=f"same row_key as the row at {row.duplicate_of}")
        assert row.row_key is not None
        assert row.content is not None
        record = self.records.get(row.row_key)
        if record is not None and record.state == "sent":
            return self._outcome(
                row,
                "skipped",
                reason="already sent",
                contact_id=record.contact_id,
                conversation_id=record.conversation_id,
                message_id=record.message_id,
            )
        try:
            return self._send(row, record)
        except (NeoleadsAuthError, NeoleadsRateLimitError) as exc:
            # A refused token refuses every row; a throttle that outlasted the hook's patience would too.
            raise _Abort() from exc
        except (NeoleadsTransportError, NeoleadsServerError) as exc:
            return self._failed(row, _reason(exc), outage=True)
        except (
            NeoleadsConfigError,
            NeoleadsForbiddenError,
            NeoleadsNotFoundError,
            NeoleadsValidationError,
        ) as exc:
            # The same row fails the same way on every try.
            return self._failed(row, _reason(exc), retryable=False)
        except NeoleadsError as exc:
            # Anything else (an answer that is not JSON, an unexpected status) may be gone on the next try.
            return self._failed(row, _reason(exc))
        except EventStoreError as exc:
            # Without the record the at-most-once promise cannot be kept: stop, and let a rerun resume.
            raise _Abort() from exc

    def _send(self, row: _Row, record: SendRecord | None) -> dict[str, Any]:
        ledger = self.ledger
        hook = self.hook
        row_key = row.row_key or ""
        source_id = bulk_source_id(self.key, row_key)
        contact_id: int | None = None
        conversation_id: int | None = None
        if record is not None and record.conversation_id is not None:
            # An earlier try got as far as the POST: it may have committed even though its answer was lost.
            try:
                earlier = hook.find_message_by_source_id(int(record.conversation_id), source_id)
            except NeoleadsNotFoundError:
                earlier = None  # the conversation is gone, and the message with it: start this row over
            else:
                conversation_id, contact_id = int(record.conversation_id), record.contact_id
            if earlier is not None:
                assert conversation_id is not None
                return self._record_sent(
                    row,
                    source_id,
                    contact_id,
                    conversation_id,
                    int(earlier["id"]),
                    status="skipped",
                    reason="sent by an earlier try",
                )
        if conversation_id is None:
            found = hook.get_or_create_contact(inbox_id=self.inbox_id, **row.contact)
            contact_id = int(found["contact"]["id"])
            conversation_id = self._conversation_for(contact_id, found)

        ledger.mark_pending(
            row_key, source_id=source_id, contact_id=contact_id, conversation_id=conversation_id
        )
        message = hook.send_message(
            conversation_id,
            row.content,
            message_type=self.operator.message_type,
            private=self.private,
            source_id=source_id,
        )
        return self._record_sent(
            row, source_id, contact_id, conversation_id, int(message["id"]), status="sent"
        )

    def _record_sent(
        self,
        row: _Row,
        source_id: str,
        contact_id: int | None,
        conversation_id: int,
        message_id: int,
        *,
        status: str,
        reason: str | None = None,
    ) -> dict[str, Any]:
        """Record the row's message as in the conversation, then report the row's outcome."""
        self.ledger.mark_sent(
            row.row_key or "",
            source_id=source_id,
            contact_id=contact_id,
            conversation_id=conversation_id,
            message_id=message_id,
        )
        return self._outcome(
            row,
            status,
            reason=reason,
            contact_id=contact_id,
            conversation_id=conversation_id,
            message_id=message_id,
        )

    def _conversation_for(self, contact_id: int, found: Mapping[str, Any]) -> int:
        hook = self.hook
        # A contact created just now has no conversation; one that existed may have one to continue.
        if self.operator.reuse_conversation and not found.get("created"):
            conversations = hook.request("GET", f"contacts/{contact_id}/conversations").get("payload") or []
            for conversation in conversations:  # the server sorts them by latest activity first
                if (
                    conversation.get("inbox_id") == self.inbox_id
                    and conversation.get("status") in REUSABLE_CONVERSATION_STATUSES
                ):
                    return int(conversation["id"])
        source_id = found.get("source_id")
        if not source_id:
            raise NeoleadsConfigError(f"contact {contact_id} has no contact inbox in inbox {self.inbox_id}")
        conversation = hook.create_conversation(
            source_id=source_id, inbox_id=self.inbox_id, contact_id=contact_id
        )
        return int(conversation["id"])

    # -- result

    def result(self, elapsed: float, max_rows: int) -> dict[str, Any]:
        outcomes = [outcome for outcome in self.outcomes if outcome is not None]
        counts = {"sent": 0, "skipped": 0, "failed": 0}
        for outcome in outcomes:
            counts[outcome["outcome"]] += 1
        complete = len(self.outcomes) <= max_rows and self.not_started == 0
        if complete:
            listed = outcomes
        else:
            failed = [outcome for outcome in outcomes if outcome["outcome"] == "failed"]
            skipped = [outcome for outcome in outcomes if outcome["outcome"] == "skipped"]
            listed = (failed + skipped)[:max_rows]
        return {
            "total": len(self.outcomes),
            **counts,
            "not_started": self.not_started,
            "elapsed_seconds": round(elapsed, 3),
            "rows_complete": complete,
            "rows": listed,
        }
