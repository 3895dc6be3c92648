"""How the Neoleads hook speaks HTTP: its session, one attempt, the retry policy, and errors from answers.

Transport and policy apart, as in ``requests``: :func:`send_once` makes one attempt and turns whatever
happened into a result or one of the provider's exceptions; :class:`RetryPolicy` decides which of those
are worth another attempt. The hook (:mod:`neoleads_provider.hooks.neoleads`) only says what to call.
Everything a server sends back is quoted with the connection's token scrubbed out (:func:`scrub`).
"""

from __future__ import annotations

import html
import json
import logging
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, quote_plus, urljoin, urlsplit

import requests
import tenacity
from requests.adapters import HTTPAdapter
from urllib3.exceptions import NameResolutionError, NewConnectionError

from neoleads_provider import __version__
from neoleads_provider.exceptions import (
    NeoleadsApiError,
    NeoleadsAuthError,
    NeoleadsForbiddenError,
    NeoleadsNotFoundError,
    NeoleadsRateLimitError,
    NeoleadsRedirectError,
    NeoleadsServerError,
    NeoleadsTransportError,
    NeoleadsValidationError,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from neoleads_provider.connection import NeoleadsConnectionSettings
    from neoleads_provider.ratelimit import RateLimiter

__all__ = [
    "IDEMPOTENT_METHODS",
    "RETRYABLE_STATUS",
    "SCRUBBED",
    "RetryPolicy",
    "build_session",
    "scrub",
    "secret_forms",
    "send_once",
]

log = logging.getLogger("neoleads_provider.hooks.neoleads")

# Replaying these can never create a second resource on the server.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
RETRYABLE_STATUS = frozenset({502, 503, 504})
# What an echoed token is replaced with in the error bodies the hook quotes.
SCRUBBED = "***"
# requests refuses these before opening any connection: the request provably never left.
_REFUSED_BEFORE_SENDING = (
    requests.exceptions.InvalidSchema | requests.exceptions.InvalidURL | requests.exceptions.MissingSchema
)

_ERROR_CLASSES: dict[int, type[NeoleadsApiError]] = {
    401: NeoleadsAuthError,
    403: NeoleadsForbiddenError,
    404: NeoleadsNotFoundError,
    422: NeoleadsValidationError,
    429: NeoleadsRateLimitError,
}


# ---------------------------------------------------------------------------------------------- secrets


def secret_forms(secret: str) -> tuple[str, ...]:
    """``secret`` as a server may echo it: raw, URL-encoded (either case of hex), JSON- or HTML-escaped.

    Longest first, so that scrubbing one form never leaves part of another behind.
    """
    if not secret:
        return ()
    encoded = {quote(secret, safe=""), quote(secret), quote_plus(secret)}
    forms = {secret, json.dumps(secret)[1:-1], html.escape(secret), *encoded}
    forms |= {_lower_hex(form) for form in encoded}
    return tuple(sorted(forms, key=len, reverse=True))


def _lower_hex(text: str) -> str:
    parts = text.split("%")
    return parts[0] + "".join("%" + part[:2].lower() + part[2:] for part in parts[1:])


def scrub(value: Any, forms: Sequence[str]) -> Any:
    """``value`` with every form of a secret replaced by ``***``, in strings nested in dicts and lists too."""
    if not forms:
        return value
    if isinstance(value, str):
        for form in forms:
            value = value.replace(form, SCRUBBED)
        return value
    if isinstance(value, dict):
        return {scrub(key, forms): scrub(item, forms) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(scrub(item, forms) for item in value)
    return value


# --------------------------------------------------------------------------------------------- the session


def build_session(settings: NeoleadsConnectionSettings) -> requests.Session:
    """The one session a hook uses: the token header, a connection pool, no retries of its own."""
    session = requests.Session()
    session.headers.update(
        {
            "api_access_token": settings.api_token,
            "Accept": "application/json",
            "User-Agent": f"airflow-provider-neoleads/{__version__}",
        }
    )
    # Retries are the policy's (they need to know the method and the status); the adapter only pools.
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=32, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    # requests reads the proxy and CA-bundle environment variables again on every request, walking all of
    # os.environ: a quarter of a request's client time. Every request goes to this one host, so resolve
    # them once, by requests' own rules (NO_PROXY included), and stop it looking again.
    environment = session.merge_environment_settings(settings.base_url, {}, None, None, None)
    session.proxies = environment["proxies"]
    session.verify = environment["verify"]
    session.trust_env = False
    return session


# ------------------------------------------------------------------------------------------- one attempt


def send_once(
    session: requests.Session,
    method: str,
    url: str,
    display_path: str,
    *,
    timeout: float,
    forms: Sequence[str],
    rate_limiter: RateLimiter | None = None,
    json: Any = None,
    params: Mapping[str, Any] | None = None,
    data: Any = None,
    files: Any = None,
) -> Any:
    """Make one attempt; return the parsed JSON body (None when empty) or raise what went wrong.

    :param display_path: the path as errors and logs name it (never the host or the query string).
    :param forms: the token's forms (:func:`secret_forms`), scrubbed from everything quoted.
    :raises NeoleadsApiError: a subclass per status class; any 3xx is :class:`NeoleadsRedirectError`.
    :raises NeoleadsTransportError: the attempt failed below HTTP; ``maybe_delivered`` says whether the
        server may have received it.
    """
    if rate_limiter is not None:
        rate_limiter.acquire()
    started = time.monotonic()
    try:
        response = session.request(
            method,
            url,
            json=json,
            params=params,
            data=data,
            files=files,
            timeout=(min(10.0, timeout), timeout),
            allow_redirects=False,
        )
    except requests.RequestException as exc:
        # str(exc) from requests holds the URL and the socket error, never the headers.
        raise NeoleadsTransportError(
            method,
            display_path,
            scrub(type(exc).__name__ + ": " + str(exc), forms),
            maybe_delivered=not _never_sent(exc),
        ) from None
    log.debug("%s %s -> %s in %.3f s", method, display_path, response.status_code, time.monotonic() - started)
    if 300 <= response.status_code < 400:
        # Never followed (allow_redirects=False) and never success: the body is not the API's answer.
        raise NeoleadsRedirectError(
            method, display_path, response.status_code, _redirect_location(response, forms)
        )
    if response.status_code >= 400:
        raise error_for(method, display_path, response, forms)
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        raise NeoleadsApiError(
            method, display_path, response.status_code, "the server answered with a body that is not JSON"
        ) from None


def error_for(method: str, path: str, response: requests.Response, forms: Sequence[str]) -> NeoleadsApiError:
    """The exception for an error answer, quoting the server's message with the token scrubbed."""
    message, attributes, body = _server_message(response, forms)
    status = response.status_code
    if status == 422:
        return NeoleadsValidationError(method, path, status, message, body=body, attributes=attributes)
    if status == 429:
        return NeoleadsRateLimitError(
            method, path, status, message, body=body, retry_after=_retry_after_seconds(response)
        )
    if status >= 500:
        return NeoleadsServerError(method, path, status, message, body=body)
    return _ERROR_CLASSES.get(status, NeoleadsApiError)(method, path, status, message, body=body)


def _server_message(response: requests.Response, forms: Sequence[str] = ()) -> tuple[str, list[str], object]:
    """Pull the human message out of any of the server's error shapes, with the token scrubbed from it all.

    Handled errors carry ``error``, validation errors ``message`` + ``attributes``, devise ``errors``;
    the 429 body is plain text. The body is scrubbed before it is cut, so no part of a secret survives.
    """
    reason = scrub(response.reason or "", forms)
    try:
        body: object = scrub(response.json(), forms)
    except ValueError:
        text = scrub(response.text, forms).strip()
        return (text[:300] or reason or "no body"), [], text[:300]
    attributes: list[str] = []
    if isinstance(body, dict):
        if isinstance(body.get("attributes"), list):
            attributes = [str(item) for item in body["attributes"]]
        for key in ("message", "error", "errors", "description"):
            value = body.get(key)
            if isinstance(value, str) and value:
                return value, attributes, body
            if isinstance(value, list) and value:
                return ", ".join(str(item) for item in value), attributes, body
    return (reason or "error"), attributes, body


def _redirect_location(response: requests.Response, forms: Sequence[str]) -> str | None:
    """Where a redirect points, made absolute, without its query string, fragment or credentials."""
    location = response.headers.get("Location")
    if not location:
        return None
    try:
        parts = urlsplit(urljoin(response.url, location.strip()))
        if not parts.scheme or not parts.netloc:
            return None
        netloc = parts.netloc.rpartition("@")[2]
    except ValueError:
        return None
    return str(scrub(f"{parts.scheme}://{netloc}{parts.path}", forms))


def _retry_after_seconds(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # An HTTP-date: rare enough that our own backoff is good enough.


def _never_sent(exc: requests.RequestException) -> bool:
    """True when the request provably never left this machine, so replaying it cannot duplicate anything."""
    if isinstance(exc, requests.ConnectTimeout | _REFUSED_BEFORE_SENDING):
        return True
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, NewConnectionError | NameResolutionError):
            return True
        reason = getattr(cause, "reason", None)
        cause = (
            reason
            if isinstance(reason, BaseException)
            else (cause.args[0] if cause.args and isinstance(cause.args[0], BaseException) else None)
        )
    return False


# ------------------------------------------------------------------------------------------- the policy


@dataclass(frozen=True)
class RetryPolicy:
    """Which failed attempts are tried again, and after how long.

    Replaying is safe for a 429 (the server did not process it: after its ``Retry-After`` or a jittered
    back-off, for up to ``rate_limit_max_wait`` seconds in all), for a request that provably never left, and
    for 502/503/504 or a lost answer on an idempotent request. A create call that may have reached the server
    is never replayed blindly.

    :param max_retries: retries after the first attempt (429s aside).
    :param backoff_base: the first back-off in seconds; later ones double, with full jitter.
    """

    max_retries: int
    backoff_base: float
    backoff_max: float
    rate_limit_max_wait: float

    def call(self, attempt: Callable[[], Any], method: str, display_path: str, *, idempotent: bool) -> Any:
        """Run ``attempt`` until it succeeds or this policy gives up; re-raise its last exception."""
        rate_limited_since: list[float] = []

        def should_retry(exc: BaseException) -> bool:
            if isinstance(exc, NeoleadsRateLimitError):
                # Throttled requests were not processed: safe to replay whatever the method.
                rate_limited_since.append(time.monotonic())
                return True
            if isinstance(exc, NeoleadsTransportError):
                return idempotent or not exc.maybe_delivered
            if isinstance(exc, NeoleadsServerError):
                return idempotent and exc.status_code in RETRYABLE_STATUS
            return False

        def stop(retry_state: tenacity.RetryCallState) -> bool:
            exc = retry_state.outcome.exception() if retry_state.outcome else None
            if isinstance(exc, NeoleadsRateLimitError):
                waited = time.monotonic() - rate_limited_since[0] if rate_limited_since else 0.0
                return waited >= self.rate_limit_max_wait
            return retry_state.attempt_number > self.max_retries

        def wait(retry_state: tenacity.RetryCallState) -> float:
            exc = retry_state.outcome.exception() if retry_state.outcome else None
            if isinstance(exc, NeoleadsRateLimitError) and exc.retry_after is not None:
                return min(exc.retry_after, self.rate_limit_max_wait)
            # Full jitter: parallel tasks throttled together must not come back together.
            ceiling = min(self.backoff_max, self.backoff_base * 2 ** (retry_state.attempt_number - 1))
            return random.uniform(ceiling / 2, ceiling)

        def before_sleep(retry_state: tenacity.RetryCallState) -> None:
            exc = retry_state.outcome.exception() if retry_state.outcome else None
            sleep = retry_state.next_action.sleep if retry_state.next_action else 0.0
            log.warning("Retrying %s %s in %.2f s after: %s", method, display_path, sleep, exc)

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(should_retry),
            stop=stop,
            wait=wait,
            before_sleep=before_sleep,
            reraise=True,
        )
        return retrying(attempt)
