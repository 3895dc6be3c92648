"""``NeoleadsSandbox``: a Neoleads-compatible server on a real TCP port, in a background thread.

Example::

    from neoleads_provider.testing import NeoleadsSandbox

    with NeoleadsSandbox(auto_reply="Thanks!") as sandbox:
        os.environ.update(sandbox.connection_env())  # AIRFLOW_CONN_NEOLEADS_DEFAULT
        ...  # run tasks or DAGs against sandbox.url

The server stack (FastAPI, uvicorn, requests) is imported by :meth:`NeoleadsSandbox.start`, so importing
this module stays cheap.
"""

from __future__ import annotations

import json
import threading
import time
from typing import TYPE_CHECKING, Any

from neoleads_provider.testing.errors import SandboxError
from neoleads_provider.testing.models import (
    DEFAULT_ACCOUNT_ID,
    DEFAULT_AGENT_TOKEN,
    DEFAULT_API_INBOX_ID,
    DEFAULT_TOKEN,
    DEFAULT_WEB_INBOX_ID,
)
from neoleads_provider.testing.state import SandboxState
from neoleads_provider.webhooks import DEFAULT_HEADER_PREFIX

if TYPE_CHECKING:
    from types import TracebackType

    from airflow.sdk import Connection

    from neoleads_provider.testing.app import FaultInjector, RequestLog
    from neoleads_provider.testing.delivery import WebhookDispatcher

DEFAULT_CONN_ID = "neoleads_default"
STARTUP_TIMEOUT_SECONDS = 15.0


class NeoleadsSandbox:
    """Run the sandbox server on ``host:port`` (``port=0`` picks a free port).

    :param host: the address to bind; keep the loopback default unless you know why.
    :param port: the TCP port, or 0 for any free one (read it back from :attr:`url`).
    :param token: the administrator's API access token.
    :param account_id: the account id the tokens belong to.
    :param auto_reply: when set, the contact answers each outgoing, non-private API message with this text.
    :param auto_reply_delay: seconds before that answer.
    :param sign_webhooks: sign deliveries (``False`` acts like a server older than 4.11.2: no timestamp,
        signature or delivery-id headers).
    :param header_prefix: the webhook header prefix (white-labelled servers rename ``X-Chatwoot-``).
    :param agent_token: the token of a non-administrator user, for role checks.
    :param webhook_timeout: seconds before a delivery gives up (the real default is 5).
    :param allow_remote_webhooks: deliver webhooks to hosts other than this machine (off by default, so
        placeholder URLs in tests never cause outside traffic; such deliveries are logged as refused).
    :param inbox_events: fire ``inbox_created`` when an inbox is created. The real server does only with its
        ``ENABLE_INBOX_EVENTS`` setting on, so off by default here too.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str = DEFAULT_TOKEN,
        account_id: int = DEFAULT_ACCOUNT_ID,
        auto_reply: str | None = None,
        auto_reply_delay: float = 0.5,
        sign_webhooks: bool = True,
        header_prefix: str = DEFAULT_HEADER_PREFIX,
        agent_token: str = DEFAULT_AGENT_TOKEN,
        webhook_timeout: float = 5.0,
        allow_remote_webhooks: bool = False,
        inbox_events: bool = False,
    ) -> None:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"port must be a whole number from 0 to 65535, got {port!r}")
        if not isinstance(header_prefix, str) or not header_prefix:
            raise ValueError("header_prefix must be a non-empty string such as 'X-Chatwoot-'")
        self.host = host
        self.port = port
        self.sign_webhooks = sign_webhooks
        self.header_prefix = header_prefix
        self.webhook_timeout = webhook_timeout
        self.allow_remote_webhooks = allow_remote_webhooks
        self._auto_reply = auto_reply
        self._auto_reply_delay = auto_reply_delay
        self._dispatcher: WebhookDispatcher | None = None
        self._faults: FaultInjector | None = None
        self._requests: RequestLog | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._url: str | None = None
        self._state = SandboxState(
            token=token,
            agent_token=agent_token,
            account_id=account_id,
            auto_reply=auto_reply,
            auto_reply_delay=auto_reply_delay,
            inbox_events=inbox_events,
        )

    def __repr__(self) -> str:
        return f"NeoleadsSandbox(url={self._url!r}, account_id={self.account_id})"

    # ---- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> NeoleadsSandbox:
        """Start the server and the webhook worker; return once the port accepts connections.

        :raises RuntimeError: when the server cannot start (for example, the port is taken).
        """
        if self._thread is not None:
            raise RuntimeError("this sandbox is already running")
        import uvicorn

        from neoleads_provider.testing.app import FaultInjector, RequestLog, create_sandbox_app
        from neoleads_provider.testing.delivery import WebhookDispatcher

        self._dispatcher = WebhookDispatcher(
            sign=self.sign_webhooks,
            header_prefix=self.header_prefix,
            timeout=self.webhook_timeout,
            on_failure=self._state.mark_delivery_failed,
            allow_remote=self.allow_remote_webhooks,
        )
        self._faults = FaultInjector()
        self._requests = RequestLog()
        self._state.sink = self._dispatcher.submit
        app = create_sandbox_app(
            self._state,
            dispatcher=self._dispatcher,
            faults=self._faults,
            requests=self._requests,
            on_reset=self.reset,
        )
        config = uvicorn.Config(
            app,
            host=self.host,
            port=self.port,
            log_level="warning",
            lifespan="off",
            access_log=False,
            loop="asyncio",
            # A request held by a delay fault must not hold up stop() for long.
            timeout_graceful_shutdown=1,
        )
        server = uvicorn.Server(config)
        failure: list[BaseException] = []

        def serve() -> None:
            try:
                server.run()
            except BaseException as exc:  # SystemExit from a failed bind included
                failure.append(exc)

        self._dispatcher.start()
        thread = threading.Thread(target=serve, name="neoleads-sandbox", daemon=True)
        thread.start()
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                thread.join(2)
                self._dispatcher.stop()
                reason = f": {failure[0]!r}" if failure else ""
                raise RuntimeError(f"the Neoleads sandbox could not start on {self.host}:{self.port}{reason}")
            time.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        host = self.host if ":" not in self.host else f"[{self.host}]"
        self._url = f"http://{host}:{port}"
        self._state.base_url = self._url
        self._server = server
        self._thread = thread
        return self

    def stop(self) -> None:
        """Stop the server, the webhook worker and pending auto-replies. Safe to call twice."""
        self._state.cancel_timers()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        if self._dispatcher is not None:
            self._dispatcher.stop()
        # Nothing would post events queued from now on.
        self._state.sink = None
        self._server = None
        self._thread = None

    def __enter__(self) -> NeoleadsSandbox:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # ---- where and who ---------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Return the base URL, e.g. ``http://127.0.0.1:8081``."""
        if self._url is None:
            raise RuntimeError("the sandbox is not running: call start() or use it as a context manager")
        return self._url

    @property
    def token(self) -> str:
        """Return the administrator's API access token."""
        return self._state.token

    @property
    def agent_token(self) -> str:
        """Return the agent's (non-administrator) API access token."""
        return self._state.agent_token

    @property
    def account_id(self) -> int:
        """Return the account id."""
        return self._state.account_id

    @property
    def api_inbox_id(self) -> int:
        """Return the id of the default API inbox."""
        return DEFAULT_API_INBOX_ID

    @property
    def web_inbox_id(self) -> int:
        """Return the id of the default website inbox."""
        return DEFAULT_WEB_INBOX_ID

    @property
    def api_inbox_secret(self) -> str:
        """Return the API inbox's current webhook signing secret."""
        with self._state.lock:
            return self._state.inboxes[DEFAULT_API_INBOX_ID].secret or ""

    @property
    def state(self) -> SandboxState:
        """Return the in-memory state, for assertions (e.g. ``len(sandbox.state.contacts)``)."""
        return self._state

    def connection_env(self, conn_id: str = DEFAULT_CONN_ID, **extra: Any) -> dict[str, str]:
        """Return ``{"AIRFLOW_CONN_<ID>": <JSON connection>}`` pointing at this sandbox.

        :param conn_id: the Airflow connection id.
        :param extra: more connection extras (merged after ``account_id``).
        """
        value = json.dumps(
            {
                "conn_type": "neoleads",
                "host": self.url,
                "password": self.token,
                "extra": {"account_id": self.account_id, **extra},
            }
        )
        return {f"AIRFLOW_CONN_{conn_id.upper()}": value}

    def connection(self, conn_id: str = DEFAULT_CONN_ID, **extra: Any) -> Connection:
        """Return an ``airflow.sdk.Connection`` pointing at this sandbox."""
        from airflow.sdk import Connection

        return Connection(
            conn_id=conn_id,
            conn_type="neoleads",
            host=self.url,
            password=self.token,
            extra=json.dumps({"account_id": self.account_id, **extra}),
        )

    # ---- control ---------------------------------------------------------------------------------------------

    def inject(
        self,
        status: int | None = None,
        *,
        delay: float | None = None,
        count: int = 1,
        method: str | None = None,
        path: str | None = None,
        after_commit: bool = False,
        retry_after: int | str | None = None,
        drop: bool = False,
    ) -> None:
        """Add a fault for the next ``count`` API requests matching ``method`` and ``path`` (a substring).

        :param status: answer with this status (429: text/plain ``Retry later`` without Retry-After;
            5xx: the JSON 500 body).
        :param delay: wait this many seconds before answering.
        :param after_commit: apply the request first, then delay, fail or drop: the client never sees
            that its request succeeded.
        :param retry_after: add a ``Retry-After`` header to the fault answer.
        :param drop: close the connection without any answer.
        """
        from neoleads_provider.testing.app import FaultRule

        self._require_running()
        assert self._faults is not None
        self._faults.add(
            FaultRule(
                status=status,
                delay=delay,
                count=count,
                method=method,
                path=path,
                after_commit=after_commit,
                retry_after=retry_after,
                drop=drop,
            )
        )

    def clear_faults(self) -> None:
        """Remove every injected fault."""
        if self._faults is not None:
            self._faults.clear()

    def reset(self) -> None:
        """Restore the default data and settings; clear faults, webhooks, logs and pending deliveries."""
        self._state.reset()
        self._state.set_auto_reply(self._auto_reply, delay=self._auto_reply_delay)
        if self._faults is not None:
            self._faults.clear()
        if self._requests is not None:
            self._requests.clear()
        if self._dispatcher is not None:
            self._dispatcher.clear()

    def set_auto_reply(self, text: str | None, *, delay: float = 0.5) -> None:
        """Turn the contact's auto-reply on (``text``) or off (``None``) until the next :meth:`reset`."""
        self._state.set_auto_reply(text, delay=delay)

    def reply(self, conversation_id: int, content: str) -> dict[str, Any]:
        """Make the contact of conversation ``conversation_id`` (display id) write ``content``.

        :return: the new incoming message as the REST API renders it.
        :raises LookupError: when no conversation has that display id.
        """
        try:
            return self._state.reply(conversation_id, content)
        except SandboxError:
            raise LookupError(
                f"the sandbox has no conversation with display id {conversation_id!r}"
            ) from None

    def add_webhook(
        self, url: str, *, secret: str | None = None, subscriptions: list[str] | None = None
    ) -> dict[str, Any]:
        """Add an account webhook (every event unless ``subscriptions``), with ``secret`` if given.

        :return: the webhook as the API renders it (``id``, ``url``, ``subscriptions``, ``secret``...).
        :raises ValueError: on an invalid or duplicate URL or unknown subscriptions (the API's message).
        """
        try:
            created = self._state.add_webhook(
                url, secret=secret, subscriptions=subscriptions, default_subscriptions=True
            )
        except SandboxError as exc:
            body = exc.body or {}
            raise ValueError(str(body.get("message") or body.get("error") or exc)) from None
        return created["payload"]["webhook"]

    def set_inbox_webhook(self, inbox_id: int, url: str | None) -> None:
        """Set (or clear, with ``None``) an API inbox's ``webhook_url``."""
        self._state.set_inbox_webhook(inbox_id, url)

    def wait_for_deliveries(self, timeout: float = 10) -> None:
        """Wait until every queued webhook delivery has been attempted.

        :raises TimeoutError: when deliveries are still pending after ``timeout`` seconds.
        """
        if self._dispatcher is None:
            return
        if not self._dispatcher.wait(timeout):
            raise TimeoutError(
                f"{self._dispatcher.pending} sandbox webhook deliveries still pending after {timeout} s"
            )

    @property
    def deliveries(self) -> list[dict[str, Any]]:
        """Return the delivery log: ``url``, ``event``, ``delivery_id``, ``status_code`` or ``error``, ..."""
        return self._dispatcher.log if self._dispatcher is not None else []

    @property
    def requests(self) -> list[tuple[str, str, int | None]]:
        """Return every API request so far as ``(method, path, status)``."""
        return self._requests.entries if self._requests is not None else []

    @property
    def faults(self) -> list[dict[str, Any]]:
        """Return the remaining fault rules."""
        return self._faults.rules if self._faults is not None else []

    def _require_running(self) -> None:
        if self._faults is None:
            raise RuntimeError("the sandbox is not running: call start() first")
