"""The Neoleads hook: the provider's only HTTP client for the Neoleads Application API.

:class:`NeoleadsHook` is what Airflow discovers for connections of type ``neoleads``. Its parts, one module
each: :mod:`~neoleads_provider.hooks.base` (settings, session, requests, errors that name the field),
:mod:`~neoleads_provider.hooks.inboxes`, :mod:`~neoleads_provider.hooks.contacts`,
:mod:`~neoleads_provider.hooks.conversations` (and messages), :mod:`~neoleads_provider.hooks.webhooks`.
"""

from __future__ import annotations

from neoleads_provider.connection import DEFAULT_CONN_ID
from neoleads_provider.hooks.base import (
    CONVERSATION_STATUSES,
    MASKED_TOKEN,
    MAX_ATTACHMENTS,
    MESSAGE_TYPES,
    PROFILE_SECRET_FIELDS,
)
from neoleads_provider.hooks.contacts import ContactFields, ContactLookup, ContactsApi
from neoleads_provider.hooks.conversations import ConversationsApi
from neoleads_provider.hooks.inboxes import InboxesApi
from neoleads_provider.hooks.webhooks import WebhooksApi

__all__ = [
    "CONVERSATION_STATUSES",
    "MASKED_TOKEN",
    "MAX_ATTACHMENTS",
    "MESSAGE_TYPES",
    "PROFILE_SECRET_FIELDS",
    "ContactFields",
    "ContactLookup",
    "NeoleadsHook",
]


class NeoleadsHook(InboxesApi, ContactsApi, ConversationsApi, WebhooksApi):
    """Talk to the Neoleads Application API with the token and account of an Airflow connection.

    One ``requests.Session`` per hook, with connection pooling. Requests are retried where replaying is safe:
    429 (after a jittered back-off, or the server's ``Retry-After``), connection failures before the request
    was sent, and 502/503/504 or timeouts on idempotent requests. A create call that may have reached the
    server is never replayed blindly.

    :param neoleads_conn_id: the ``neoleads`` connection: host = base URL, password = API access token,
        extra ``account_id``.
    :param timeout: seconds per request; overrides the connection's ``timeout``.
    :param max_retries: retries after the first try; overrides the connection's ``max_retries``.
    :param backoff_base: first back-off in seconds; later ones double, with jitter.
    :param rate_limiter: called before every HTTP attempt, retries included (e.g. a
        :class:`~neoleads_provider.ratelimit.TokenBucket` shared by the threads of a bulk send).
    """

    conn_name_attr = "neoleads_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = "neoleads"
    hook_name = "Neoleads"
