"""Webhook delivery for the sandbox: a queue and one worker thread, like the real server's job queue.

Each delivery is one POST of compact JSON with the Neoleads headers, signed with the target's secret:
``X-Chatwoot-Signature: sha256=HMAC-SHA256(secret, "{timestamp}.{body}")``. As on the real server, the
timeout is 5 s, and a failure (error, timeout, non-2xx) is logged and never retried. Deliveries are
never made inside the request handler: the handler only enqueues.
"""

from __future__ import annotations

import collections
import ipaddress
import json
import logging
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from neoleads_provider.webhooks import DEFAULT_HEADER_PREFIX
from neoleads_provider.webhooks.verify import signed_headers

if TYPE_CHECKING:
    from collections.abc import Callable

    import requests

    from neoleads_provider.testing.models import Delivery

log = logging.getLogger(__name__)

DEFAULT_WEBHOOK_TIMEOUT_SECONDS = 5.0
DELIVERY_LOG_LIMIT = 10_000

# Rails' to_json escapes these (ActiveSupport's escape_html_entities_in_json and JS line terminators);
# receivers hash the raw bytes, so the sandbox sends the same bytes the real server would.
_RAILS_JSON_ESCAPES = (
    ("<", "\\u003c"),
    (">", "\\u003e"),
    ("&", "\\u0026"),
    ("\u2028", "\\u2028"),
    ("\u2029", "\\u2029"),
)


def is_loopback_url(url: str) -> bool:
    """Return whether ``url`` points at this machine (``localhost``, 127.0.0.0/8 or ``::1``)."""
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return False
    if not host:
        return False
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def encode_payload(payload: dict[str, Any]) -> bytes:
    """Serialise a payload exactly as Rails' ``to_json`` does: compact, UTF-8, HTML characters escaped."""
    text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    for raw, escaped in _RAILS_JSON_ESCAPES:
        text = text.replace(raw, escaped)
    return text.encode("utf-8")


class WebhookDispatcher:
    """Post webhook deliveries from a background thread and keep a log of the outcomes.

    :param sign: add the timestamp and signature headers (``False`` acts like a server older than 4.11.2).
    :param header_prefix: the header prefix; white-labelled servers rename ``X-Chatwoot-``.
    :param timeout: seconds for connect and for read, like the server's ``WEBHOOK_TIMEOUT``.
    :param on_failure: called with the delivery and an error text after a failed attempt.
    :param allow_remote: deliver to hosts other than this machine. Off by default so a test that
        configures a placeholder URL (``https://hooks.example.com``) never sends traffic off the machine.
    """

    def __init__(
        self,
        *,
        sign: bool = True,
        header_prefix: str = DEFAULT_HEADER_PREFIX,
        timeout: float = DEFAULT_WEBHOOK_TIMEOUT_SECONDS,
        on_failure: Callable[[Delivery, str], None] | None = None,
        allow_remote: bool = False,
    ) -> None:
        self.sign = sign
        self.allow_remote = allow_remote
        self.header_prefix = header_prefix
        self.timeout = timeout
        self.on_failure = on_failure
        self._queue: collections.deque[tuple[Delivery, bytes, str]] = collections.deque()
        self._condition = threading.Condition()
        self._pending = 0
        self._log: collections.deque[dict[str, Any]] = collections.deque(maxlen=DELIVERY_LOG_LIMIT)
        self._stopping = False
        self._thread: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker thread."""
        with self._condition:
            if self._thread is not None:
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="neoleads-sandbox-webhooks", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = DEFAULT_WEBHOOK_TIMEOUT_SECONDS + 1) -> None:
        """Drop queued deliveries, let the one in flight finish, and stop the worker."""
        with self._condition:
            self._stopping = True
            self._pending -= len(self._queue)
            self._queue.clear()
            self._condition.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)

    # ---- queue -----------------------------------------------------------------------------------------------

    def submit(self, deliveries: list[Delivery]) -> None:
        """Queue deliveries; each gets its own delivery id. Never blocks on the network."""
        with self._condition:
            for delivery in deliveries:
                self._queue.append((delivery, encode_payload(delivery.payload), str(uuid.uuid4())))
                self._pending += 1
            self._condition.notify_all()

    def wait(self, timeout: float = 10.0) -> bool:
        """Wait until every queued delivery has been attempted; return ``False`` on timeout."""
        with self._condition:
            return self._condition.wait_for(lambda: self._pending == 0, timeout)

    @property
    def pending(self) -> int:
        """Return how many deliveries are queued or in flight."""
        with self._condition:
            return self._pending

    def clear(self) -> None:
        """Forget queued deliveries and the log (the delivery in flight, if any, still completes)."""
        with self._condition:
            self._pending -= len(self._queue)
            self._queue.clear()
            self._log.clear()
            self._condition.notify_all()

    @property
    def log(self) -> list[dict[str, Any]]:
        """Return a copy of the delivery log, oldest first."""
        with self._condition:
            return [dict(entry) for entry in self._log]

    # ---- worker ----------------------------------------------------------------------------------------------

    def _headers(self, delivery: Delivery, body: bytes, delivery_id: str) -> dict[str, str]:
        if self.sign and delivery.secret:
            return signed_headers(
                delivery.secret,
                body,
                timestamp=int(time.time()),
                delivery_id=delivery_id,
                prefix=self.header_prefix,
            )
        # Servers before v4.11.2 send neither a signature nor a delivery id: the receiver then tells
        # duplicates apart by the body alone.
        return {"Content-Type": "application/json", "Accept": "application/json"}

    def _run(self) -> None:
        import requests

        session = requests.Session()
        # Environment proxies must not swallow deliveries to local receivers.
        session.trust_env = False
        try:
            while True:
                with self._condition:
                    self._condition.wait_for(lambda: self._queue or self._stopping)
                    if self._stopping:
                        return
                    delivery, body, delivery_id = self._queue.popleft()
                try:
                    self._deliver(session, delivery, body, delivery_id)
                finally:
                    with self._condition:
                        self._pending -= 1
                        self._condition.notify_all()
        finally:
            session.close()

    def _deliver(self, session: requests.Session, delivery: Delivery, body: bytes, delivery_id: str) -> None:
        import requests

        headers = self._headers(delivery, body, delivery_id)
        entry: dict[str, Any] = {
            "delivery_id": delivery_id,
            "url": delivery.url,
            "event": delivery.event,
            "target": delivery.target,
            "target_id": delivery.target_id,
            "signed": f"{self.header_prefix}Signature" in headers,
            "payload": delivery.payload,
        }
        started = time.monotonic()
        error: str | None = None
        try:
            if not self.allow_remote and not is_loopback_url(delivery.url):
                raise _RefusedError(
                    f"refused: {urlsplit(delivery.url).hostname!r} is not this machine; "
                    "start the sandbox with allow_remote_webhooks=True (--allow-remote-webhooks) to deliver there"
                )
            response = session.post(
                delivery.url, data=body, headers=headers, timeout=self.timeout, allow_redirects=False
            )
            response.close()
            entry["status_code"] = response.status_code
            if not 200 <= response.status_code < 300:
                error = f"HTTP {response.status_code}"
        except _RefusedError as exc:
            error = str(exc)
            entry["error"] = error
        except requests.RequestException as exc:
            error = f"{type(exc).__name__}: {exc}"
            entry["error"] = error
        except Exception as exc:  # a sandbox must keep delivering whatever one target does
            log.exception("Unexpected error delivering a sandbox webhook")
            error = f"{type(exc).__name__}: {exc}"
            entry["error"] = error
        entry["ok"] = error is None
        entry["duration"] = round(time.monotonic() - started, 4)
        with self._condition:
            self._log.append(entry)
        if error is not None:
            log.info("Sandbox webhook %s to %s failed (not retried): %s", delivery.event, delivery.url, error)
            if self.on_failure is not None:
                try:
                    self.on_failure(delivery, error)
                except Exception:
                    log.exception("Sandbox delivery failure callback raised")


class _RefusedError(Exception):
    """The target is not on this machine and remote deliveries are off."""
