"""Read a ``neoleads`` Airflow connection into typed settings, in one place.

The hook, the webhook receiver and the CLI all read connections through :class:`NeoleadsConnectionSettings`,
so a field means the same thing everywhere and a bad value is reported the same way.
Fields may sit in ``extra`` under their plain name or under the legacy ``extra__neoleads__<name>`` key.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from neoleads_provider.exceptions import NeoleadsConfigError
from neoleads_provider.webhooks import DEFAULT_HEADER_PREFIX, DEFAULT_TOLERANCE_SECONDS
from neoleads_provider.whole_numbers import parse_whole_number

if TYPE_CHECKING:
    from collections.abc import Mapping

CONN_TYPE = "neoleads"
DEFAULT_CONN_ID = "neoleads_default"
DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_MAX_RETRIES = 5
# Neoleads throttles per minute with no Retry-After, so a 429 may need most of a window to clear.
DEFAULT_RATE_LIMIT_MAX_WAIT_SECONDS = 90.0


def _extra_value(extra: Mapping[str, Any], name: str) -> Any:
    value = extra.get(name)
    if value in (None, ""):
        value = extra.get(f"extra__{CONN_TYPE}__{name}")
    return None if value == "" else value


def _as_int(conn_id: str, name: str, value: Any, *, minimum: int | None = None) -> int:
    return parse_whole_number(value, f"Connection {conn_id!r}: field {name!r}", minimum=minimum)


def _as_float(conn_id: str, name: str, value: Any) -> float:
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value)
    except (TypeError, ValueError):
        raise NeoleadsConfigError(
            f"Connection {conn_id!r}: field {name!r} must be a number, got {value!r}"
        ) from None
    if number <= 0:
        raise NeoleadsConfigError(f"Connection {conn_id!r}: field {name!r} must be > 0, got {number}")
    return number


def _as_bool(conn_id: str, name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"true", "1", "yes", "on"}:
        return True
    if isinstance(value, str) and value.strip().lower() in {"false", "0", "no", "off"}:
        return False
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise NeoleadsConfigError(f"Connection {conn_id!r}: field {name!r} must be true or false, got {value!r}")


def parse_secret_list(value: Any) -> list[str]:
    """Accept a JSON list, a list, or a string of secrets separated by commas, spaces or newlines."""
    if value in (None, ""):
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except ValueError:
                raise NeoleadsConfigError("field 'webhook_secrets' is not a valid JSON list") from None
        else:
            return [part for part in text.replace(",", " ").split() if part]
    if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
        return [item.strip() for item in value if item.strip()]
    raise NeoleadsConfigError("field 'webhook_secrets' must be a list of strings")


# What may precede "://" (RFC 3986's scheme): anything else is not echoed, as it may hold credentials.
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
_SCHEME_ONLY = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:(?:/.*)?")
_HOST_EXPECTED = "must be an http:// or https:// URL, e.g. https://app.neoleads.com"


def _normalise_base_url(conn_id: str, host: str | None, schema: str | None, port: int | None) -> str:
    """The base URL from the host (plus ``schema`` and ``port`` when the host has none); only http(s).

    Error messages name the scheme at most: the rest of the host may carry ``user:password@``.
    """
    if not host or not host.strip():
        raise NeoleadsConfigError(
            f"Connection {conn_id!r} has no host: set it to the Neoleads base URL, e.g. https://app.neoleads.com"
        )
    host = host.strip()
    if "://" not in host and _SCHEME_ONLY.fullmatch(host):
        # "file:/etc/passwd", "https:": a scheme without "//", not a bare host (whose colon starts a port).
        host = host.replace(":", "://", 1)
    if "://" in host:
        scheme, _, rest = host.partition("://")
        if not _SCHEME.fullmatch(scheme):
            raise NeoleadsConfigError(f"Connection {conn_id!r}: field 'host' {_HOST_EXPECTED}")
        scheme = scheme.lower()
        if scheme not in ("http", "https"):
            raise NeoleadsConfigError(
                f"Connection {conn_id!r}: field 'host' must be an http:// or https:// URL, got scheme {scheme!r}"
            )
    else:
        scheme = schema if schema in ("http", "https") else "https"
        rest = host
    parts = urlsplit(f"{scheme}://{rest.rstrip('/')}")
    try:
        hostname, host_port = parts.hostname, parts.port
        if host_port == 0:
            raise ValueError
    except ValueError:  # a port that is not a number, or out of range
        raise NeoleadsConfigError(
            f"Connection {conn_id!r}: field 'host' has a port that is not a number from 1 to 65535"
        ) from None
    if not hostname:
        raise NeoleadsConfigError(
            f"Connection {conn_id!r}: field 'host' must be an http:// or https:// URL with a host name, "
            f"got '{scheme}://' with none"
        )
    netloc = f"{parts.netloc}:{port}" if port and host_port is None else parts.netloc
    return urlunsplit((scheme, netloc, parts.path, parts.query, parts.fragment))


@dataclass(frozen=True)
class NeoleadsConnectionSettings:
    """Everything a ``neoleads`` connection configures. ``repr`` never shows the token or secrets."""

    conn_id: str
    base_url: str
    account_id: int
    api_token: str = field(repr=False)
    timeout: float = DEFAULT_TIMEOUT_SECONDS
    max_retries: int = DEFAULT_MAX_RETRIES
    rate_limit_max_wait: float = DEFAULT_RATE_LIMIT_MAX_WAIT_SECONDS
    web_url: str = ""
    webhook_secrets: tuple[str, ...] = field(default=(), repr=False)
    webhook_header_prefix: str = DEFAULT_HEADER_PREFIX
    webhook_tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS
    webhook_allow_unsigned: bool = False
    webhook_url_token: str = field(default="", repr=False)
    # The API inbox whose webhook_url feeds the receiver: set by `neoleads inboxes create`, read by the doctor.
    inbox_id: int | None = None

    @classmethod
    def from_connection(cls, conn: Any, *, require_token: bool = True) -> NeoleadsConnectionSettings:
        """Build settings from an Airflow ``Connection`` (SDK or core), validating every field.

        :param require_token: the webhook receiver needs only the webhook fields, not the API token.
        """
        conn_id = conn.conn_id
        extra = conn.extra_dejson or {}
        base_url = (
            _normalise_base_url(conn_id, conn.host, conn.schema, conn.port)
            if (conn.host or require_token)
            else ""
        )
        token = conn.password or ""
        if require_token and not token:
            raise NeoleadsConfigError(
                f"Connection {conn_id!r} has no password: set it to the Neoleads API access token"
            )
        raw_account = _extra_value(extra, "account_id")
        if raw_account is None:
            if require_token:
                raise NeoleadsConfigError(
                    f"Connection {conn_id!r}: field 'account_id' is required (an integer)"
                )
            account_id = 0
        else:
            account_id = _as_int(conn_id, "account_id", raw_account, minimum=1)

        def optional(name: str, parse: Any, default: Any) -> Any:
            value = _extra_value(extra, name)
            return default if value is None else parse(conn_id, name, value)

        allow_unsigned = optional("webhook_allow_unsigned", _as_bool, False)
        url_token = str(_extra_value(extra, "webhook_url_token") or "")
        if allow_unsigned and not url_token:
            raise NeoleadsConfigError(
                f"Connection {conn_id!r}: 'webhook_allow_unsigned' needs 'webhook_url_token' "
                "(a long random string that unsigned senders must put in the URL as ?token=...)"
            )
        prefix = str(_extra_value(extra, "webhook_header_prefix") or DEFAULT_HEADER_PREFIX)
        return cls(
            conn_id=conn_id,
            base_url=base_url,
            account_id=account_id,
            api_token=token,
            timeout=optional("timeout", _as_float, DEFAULT_TIMEOUT_SECONDS),
            max_retries=optional(
                "max_retries", lambda c, n, v: _as_int(c, n, v, minimum=0), DEFAULT_MAX_RETRIES
            ),
            rate_limit_max_wait=optional(
                "rate_limit_max_wait", _as_float, DEFAULT_RATE_LIMIT_MAX_WAIT_SECONDS
            ),
            web_url=str(_extra_value(extra, "web_url") or base_url).rstrip("/"),
            webhook_secrets=tuple(parse_secret_list(_extra_value(extra, "webhook_secrets"))),
            webhook_header_prefix=prefix if prefix.endswith("-") else prefix + "-",
            webhook_tolerance_seconds=optional(
                "webhook_tolerance_seconds",
                lambda c, n, v: _as_int(c, n, v, minimum=1),
                DEFAULT_TOLERANCE_SECONDS,
            ),
            webhook_allow_unsigned=allow_unsigned,
            webhook_url_token=url_token,
            inbox_id=optional("inbox_id", lambda c, n, v: _as_int(c, n, v, minimum=1), None),
        )

    def conversation_url(self, conversation_id: int) -> str:
        """The conversation in the Neoleads web app."""
        return f"{self.web_url}/app/accounts/{self.account_id}/conversations/{conversation_id}"

    def contact_url(self, contact_id: int) -> str:
        """The contact in the Neoleads web app."""
        return f"{self.web_url}/app/accounts/{self.account_id}/contacts/{contact_id}"
