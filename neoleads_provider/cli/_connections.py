"""What the setup commands (``inboxes``, ``doctor``, ``webhooks register``) share about connections and the receiver.

The commands look a connection up the way the webhook receiver does, through every secrets backend *and* the
metadata database. The Task SDK's ``Connection.get`` (which the hook uses) skips the metadata database outside
Airflow's own servers, so a connection made with ``airflow connections add`` would be invisible to a command
run from a shell.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from collections.abc import Mapping

    from neoleads_provider.hooks.neoleads import NeoleadsHook

log = logging.getLogger(__name__)

__all__ = [
    "RECEIVER_PATH",
    "ConnectionNotStoredError",
    "api_base_url",
    "connection_source",
    "create_connection_command",
    "hook_for",
    "not_defined_message",
    "points_at_receiver",
    "receiver_url",
    "resolve_connection",
    "shown_url",
    "update_stored_extra",
    "url_problems",
    "url_warnings",
]

# Where the plugin (and `neoleads webhooks serve`) mount the receiver; the same as plugins.URL_PREFIX, repeated
# so that nothing here imports the plugin module.
RECEIVER_PATH = "/neoleads/webhooks/{conn_id}"
# Single-label names and these suffixes are not resolvable from the internet.
_INTERNAL_SUFFIXES = (".localhost", ".local", ".internal", ".lan", ".home.arpa", ".localdomain")


class ConnectionNotStoredError(Exception):
    """The connection does not come from the metadata database, so this tool cannot change it."""


def resolve_connection(conn_id: str) -> Any | None:
    """The connection as Airflow resolves it in this process (secrets backends, env, metadata DB); None if undefined."""
    from airflow.exceptions import AirflowNotFoundException
    from airflow.models.connection import Connection

    try:
        return Connection.get_connection_from_secrets(conn_id)
    except AirflowNotFoundException:
        return None


def create_connection_command(conn_id: str) -> str:
    """The command that defines ``conn_id`` in the metadata database."""
    return (
        f"airflow connections add {conn_id} --conn-type neoleads --conn-host <Neoleads URL> "
        "--conn-password '<API access token>' --conn-extra '{\"account_id\": <account id>}'"
    )


def not_defined_message(conn_id: str) -> str:
    """Say that ``conn_id`` is undefined, and how to define it."""
    return (
        f"Connection {conn_id!r} is not defined (no secrets backend, no AIRFLOW_CONN_{conn_id.upper()} and no "
        f"row in the metadata database has it). Create it: {create_connection_command(conn_id)}"
    )


def hook_for(conn_id: str, **hook_kwargs: Any) -> NeoleadsHook:
    """A :class:`NeoleadsHook` for ``conn_id``, looked up as :func:`resolve_connection` does.

    :param hook_kwargs: passed to the hook, e.g. ``max_retries=0`` for a check that should fail fast.
    :raises NeoleadsConfigError: the connection is undefined or one of its fields is invalid.
    """
    from neoleads_provider.connection import NeoleadsConnectionSettings
    from neoleads_provider.exceptions import NeoleadsConfigError
    from neoleads_provider.hooks.neoleads import NeoleadsHook

    conn = resolve_connection(conn_id)
    if conn is None:
        raise NeoleadsConfigError(not_defined_message(conn_id))
    hook = NeoleadsHook(neoleads_conn_id=conn_id, **hook_kwargs)
    # ``settings`` is a cached property: setting it here spares the hook its own (SDK) lookup.
    hook.settings = NeoleadsConnectionSettings.from_connection(conn)
    return hook


def connection_source(conn_id: str) -> str:
    """Name where Airflow finds ``conn_id`` first: ``"metadata database"``, or an env var / backend description.

    :return: ``"undefined"`` when no backend has it.
    """
    from airflow.configuration import ensure_secrets_loaded
    from airflow.secrets.environment_variables import EnvironmentVariablesBackend
    from airflow.secrets.metastore import MetastoreBackend

    for backend in ensure_secrets_loaded():
        try:
            found = backend.get_connection(conn_id=conn_id)
        except Exception as exc:
            # Airflow skips a failing backend too, and looks in the next one.
            log.debug("Secrets backend %s failed: %s", type(backend).__name__, type(exc).__name__)
            continue
        if found is None:
            continue
        if isinstance(backend, MetastoreBackend):
            return "metadata database"
        if isinstance(backend, EnvironmentVariablesBackend):
            return f"environment variable AIRFLOW_CONN_{conn_id.upper()}"
        return f"secrets backend {type(backend).__name__}"
    return "undefined"


def update_stored_extra(conn_id: str, updates: Mapping[str, Any]) -> None:
    """Set ``updates`` in the extra of ``conn_id``'s row in the metadata database, keeping every other field.

    :raises ConnectionNotStoredError: Airflow reads the connection from somewhere else first (an environment
        variable or a secrets backend), or the metadata database has no row for it.
    """
    source = connection_source(conn_id)
    if source != "metadata database":
        where = "is not defined" if source == "undefined" else f"comes from the {source}"
        raise ConnectionNotStoredError(
            f"connection {conn_id!r} {where}, not from the metadata database, so it cannot be updated "
            "from here: set the printed values where it is defined"
        )
    from airflow.models.connection import Connection
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        row = session.scalar(select(Connection).where(Connection.conn_id == conn_id))
        if row is None:
            raise ConnectionNotStoredError(f"connection {conn_id!r} has no row in the metadata database")
        extra = dict(row.extra_dejson or {})
        for key in updates:
            # A legacy ``extra__neoleads__<key>`` would be read instead of an empty plain key; drop it.
            extra.pop(f"extra__neoleads__{key}", None)
        extra.update(updates)
        row.set_extra(json.dumps(extra))


# --------------------------------------------------------------------------- the receiver's URL


def api_base_url() -> str:
    """``[api] base_url``: where the Airflow API server (and so the receiver plugin) is reached; may be empty."""
    from airflow.configuration import conf

    return (conf.get("api", "base_url", fallback="") or "").strip().rstrip("/")


def receiver_url(conn_id: str, base_url: str | None = None) -> str | None:
    """The receiver's URL for ``conn_id`` on the API server (``{base_url}/neoleads/webhooks/{conn_id}``).

    :param base_url: the server's base URL; default ``[api] base_url``.
    :return: None when no base URL is known.
    """
    base = (api_base_url() if base_url is None else base_url.strip()).rstrip("/")
    return base + RECEIVER_PATH.format(conn_id=conn_id) if base else None


def _without_query(url: str) -> tuple[str, str, str]:
    parts = urlsplit(url.strip())
    return parts.scheme.lower(), parts.netloc.lower(), parts.path.rstrip("/")


def points_at_receiver(url: str | None, conn_id: str, expected: str | None = None) -> bool:
    """Whether ``url`` delivers to the receiver of ``conn_id``.

    With ``expected`` (the receiver's full URL) scheme, host and path must match; without it, the path alone.
    The query string is ignored: unsigned setups add ``?token=`` to it.
    """
    if not url:
        return False
    scheme, netloc, path = _without_query(url)
    if expected:
        return (scheme, netloc, path) == _without_query(expected)
    return path.endswith(RECEIVER_PATH.format(conn_id=conn_id))


def url_problems(url: str) -> list[tuple[str, str]]:
    """Why a real Neoleads server may not deliver to ``url``, or deliver in the clear: ``(what, advice)`` pairs."""
    problems = []
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    try:
        internal = not ipaddress.ip_address(host).is_global
    except ValueError:
        internal = host == "localhost" or "." not in host or host.endswith(_INTERNAL_SUFFIXES)
    if internal:
        problems.append(
            (
                f"{host or url} is a private, loopback or internal address",
                "Neoleads' SSRF filter drops deliveries to it unless the Neoleads server runs with "
                "SAFE_FETCH_ALLOW_PRIVATE_NETWORK=true; use the URL at which Neoleads reaches your Airflow API server.",
            )
        )
    if parts.scheme != "https":
        problems.append(
            (
                f"{shown_url(url)} is not https",
                "Deliveries (message contents, contact details) would cross the network unencrypted; put the API "
                "server behind TLS.",
            )
        )
    return problems


def url_warnings(url: str) -> list[str]:
    """:func:`url_problems` as sentences."""
    return [f"{what}: {advice}" for what, advice in url_problems(url)]


def shown_url(url: str | None) -> str:
    """``url`` for output, with a ``?token=`` value (the unsigned mode's shared secret) hidden."""
    if not url:
        return ""
    parts = urlsplit(url)
    if not parts.query:
        return url
    query = "&".join(
        f"{key}=<hidden>" if key == "token" else f"{key}={value}" if sep else key
        for key, sep, value in (item.partition("=") for item in parts.query.split("&"))
    )
    return parts._replace(query=query).geturl()
