"""Pytest fixtures for running DAGs and hooks against the Neoleads sandbox.

Registered through the ``pytest11`` entry point, so every project that installs the provider gets:

* ``neoleads_sandbox_server``: one :class:`~neoleads_provider.testing.NeoleadsSandbox` per test session;
* ``neoleads_sandbox``: the same server, reset (data, faults, webhooks, logs, auto-reply) before each test;
* ``neoleads_connection``: sets ``AIRFLOW_CONN_NEOLEADS_DEFAULT`` for the sandbox and yields the conn id.

The sandbox is imported inside the fixtures: pytest loads this module in every run, and the server stack
(FastAPI, uvicorn) should cost nothing to projects that never use it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

    from neoleads_provider.testing.server import NeoleadsSandbox

DEFAULT_CONN_ID = "neoleads_default"


@pytest.fixture(scope="session")
def neoleads_sandbox_server() -> Iterator[NeoleadsSandbox]:
    """Start one sandbox server for the whole session and stop it at the end."""
    from neoleads_provider.testing.server import NeoleadsSandbox

    with NeoleadsSandbox() as sandbox:
        yield sandbox


@pytest.fixture
def neoleads_sandbox(neoleads_sandbox_server: NeoleadsSandbox) -> Iterator[NeoleadsSandbox]:
    """Yield the session's sandbox with fresh default data, no faults, no webhooks and no auto-reply."""
    neoleads_sandbox_server.reset()
    yield neoleads_sandbox_server
    # Stop pending auto-replies and queued deliveries from reaching the next test's receivers.
    neoleads_sandbox_server.reset()


@pytest.fixture
def neoleads_connection(neoleads_sandbox: NeoleadsSandbox, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point the ``neoleads_default`` Airflow connection at the sandbox for one test; return the conn id."""
    for name, value in neoleads_sandbox.connection_env(DEFAULT_CONN_ID).items():
        # monkeypatch restores the environment after the test.
        monkeypatch.setenv(name, value)
    return DEFAULT_CONN_ID
