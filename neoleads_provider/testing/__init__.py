"""The Neoleads sandbox: a local, in-memory Neoleads-compatible server for offline tests and demos.

``NeoleadsSandbox`` serves the Application API on a real TCP port, posts signed webhooks like the real
server, and can inject faults. The pytest plugin (``neoleads_provider.testing.pytest_plugin``) exposes it
as fixtures, and ``neoleads sandbox`` runs it from the command line.
"""

from __future__ import annotations

from neoleads_provider.testing.models import (
    DEFAULT_ACCOUNT_ID,
    DEFAULT_ACCOUNT_NAME,
    DEFAULT_AGENT_TOKEN,
    DEFAULT_API_INBOX_ID,
    DEFAULT_API_INBOX_SECRET,
    DEFAULT_TOKEN,
    DEFAULT_WEB_INBOX_ID,
)
from neoleads_provider.testing.server import DEFAULT_CONN_ID, NeoleadsSandbox

__all__ = [
    "DEFAULT_ACCOUNT_ID",
    "DEFAULT_ACCOUNT_NAME",
    "DEFAULT_AGENT_TOKEN",
    "DEFAULT_API_INBOX_ID",
    "DEFAULT_API_INBOX_SECRET",
    "DEFAULT_CONN_ID",
    "DEFAULT_TOKEN",
    "DEFAULT_WEB_INBOX_ID",
    "NeoleadsSandbox",
]
