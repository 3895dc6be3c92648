"""The bulk send's run: rows on worker threads, each found or created, sent at most once, and counted.

:class:`BulkRun` holds one execution's state (the work queue, the outcomes, the stop conditions); the
operator (:mod:`neoleads_provider.operators.bulk`) builds it, runs it and turns its result into the XCom.
"""

from __future__ import annotations

import hashlib
import threading
import time
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
from neoleads_provider.store.errors import EventStoreError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from neoleads_provider.bulk.rows import BulkRow
    from neoleads_provider.hooks.neoleads import NeoleadsHook
    from neoleads_provider.operators.bulk import NeoleadsBulkMessageOperator
    from neoleads_provider.store.sends import SendKey, SendLedger, SendRecord

__all__ = ["REQUESTS_PER_NEW_CONTACT", "BulkRun", "bulk_source_id"]

# This many rows in a row failing with an outage-like error (network, 5xx) stop the send: the rest would
# only fail the same way, slowly, after their retries. A rerun resumes where it stopped.
ABORT_AFTER_CONSECUTIVE_OUTAGE_FAILURES = 25
REUSABLE_CONVERSATION_STATUSES = ("open", "pending")
PROGRESS_LOG_SECONDS = 15.0
# A row for a new contact takes three requests: the contact, the conversation and the message.
REQUESTS_PER_NEW_CONTACT = 3
MAX_REASON_LENGTH = 300


def bulk_source_id(key: SendKey, row_key: str) -> str:
    """The message ``source_id`` of one row of one task instance: the same on every try and rerun."""
    material = "\x1f".join((key.dag_id, key.run_id, key.task_id, str(key.map_index), row_key))
    return "airflow-bulk-" + hashlib.sha256(material.encode("utf-8")).hexdigest()[:40]


def _reason(exc: BaseException) -> str:
    # Provider errors name method, path and the server's message, never the token.
    text = str(exc) if isinstance(exc, NeoleadsError) else f"{type(exc).__name__}: {exc}"
    return text[:MAX_REASON_LENGTH]


class _Abort(Exception):
    """Stop the whole send (the error would repeat for every row)."""


class BulkRun:
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

    def run(self, rows: list[BulkRow], concurrency: int, stop: threading.Event) -> None:
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

    def _record(self, row: BulkRow, outcome: dict[str, Any], stop: threading.Event) -> None:
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
    def _outcome(row: BulkRow, outcome: str, **values: Any) -> dict[str, Any]:
        result: dict[str, Any] = {
            "row": row.index,
            "where": row.where,
            "row_key": row.row_key,
            "outcome": outcome,
        }
        result.update({name: value for name, value in values.items() if value is not None})
        return result

    def _failed(
        self, row: BulkRow, reason: str, *, outage: bool = False, retryable: bool = True
    ) -> dict[str, Any]:
        """A failed row; ``retryable`` unless a retry of the task would fail it the same way."""
        outcome = self._outcome(row, "failed", reason=reason)
        outcome["_outage"] = outage
        outcome["_retryable"] = retryable
        return outcome

    def _process(self, row: BulkRow) -> dict[str, Any]:
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

    def _send(self, row: BulkRow, record: SendRecord | None) -> dict[str, Any]:
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
        row: BulkRow,
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
            for conversation in hook.list_contact_conversations(contact_id):  # latest activity first
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
