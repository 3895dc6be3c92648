"""Test session setup and the fixtures shared by every test directory.

Airflow reads AIRFLOW_HOME when it is first imported, so the throwaway home is set here, at import time,
before any test module imports Airflow; the fixtures import the provider inside their bodies for the same
reason. Plain helpers shared by test modules are in ``tests/_helpers.py``.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

    from neoleads_provider.testing import NeoleadsSandbox

_HOME = Path(tempfile.mkdtemp(prefix="neoleads-airflow-home-"))
os.environ["AIRFLOW_HOME"] = str(_HOME)
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "True"
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
# Unit-test mode would give every process its own random Fernet key, and a trigger's kwargs encrypted by
# one `airflow dags test` process could not be read by the next. A fixed test-only key keeps them readable.
os.environ.setdefault("AIRFLOW__CORE__FERNET_KEY", "V1TRAjVODAMv26m2vK4j5Eq1LU6YbeW5tpqbgVkyjFs=")
os.environ.setdefault("AIRFLOW__NEOLEADS__EVENTS_DB_URL", f"sqlite:///{_HOME / 'neoleads_events.db'}")

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def airflow_home() -> Path:
    return _HOME


@pytest.fixture(scope="session")
def pg_url() -> str:
    """The PostgreSQL URL for store tests; skips without one unless NEOLEADS_REQUIRE_PG=1 demands it."""
    url = os.environ.get("NEOLEADS_TEST_PG_URL")
    if not url:
        if os.environ.get("NEOLEADS_REQUIRE_PG") == "1":
            pytest.fail("NEOLEADS_REQUIRE_PG=1 but NEOLEADS_TEST_PG_URL is not set")
        pytest.skip("set NEOLEADS_TEST_PG_URL to run the PostgreSQL tests")
    return url


# --------------------------------------------------------------------------- event stores


@pytest.fixture
def fresh_engines() -> Iterator[None]:
    """Dispose of the process's cached store engines before and after the test, so none outlives it."""
    from neoleads_provider.store.engine import dispose_engines

    dispose_engines()
    yield
    dispose_engines()


@pytest.fixture
def pg_schema_url(pg_url: str) -> Iterator[str]:
    """``pg_url`` with a fresh, empty schema of its own as the search path; the schema is dropped afterwards.

    Other test runs may use the same database at the same time: a schema each keeps them apart.
    """
    from sqlalchemy import create_engine, text

    from neoleads_provider.store.engine import dispose_engines

    schema = f"nl_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(pg_url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in pg_url else "?"
    try:
        yield f"{pg_url}{separator}options={quote(f'-csearch_path={schema}')}"
    finally:
        # Pooled connections would hold the schema's locks against the DROP.
        dispose_engines()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def events_url(tmp_path: Path) -> Iterator[str]:
    """A migrated event store in a SQLite file of the test's own; its URL."""
    from neoleads_provider.store.engine import dispose_engines, get_engine
    from neoleads_provider.store.migrate import migrate

    url = f"sqlite:///{tmp_path / 'events.db'}"
    migrate(get_engine(url))
    yield url
    dispose_engines()


# --------------------------------------------------------------------------- the sandbox


@pytest.fixture
def sandbox_conversation(
    neoleads_sandbox: NeoleadsSandbox, monkeypatch: pytest.MonkeyPatch
) -> dict[str, int]:
    """A sandbox conversation holding one message sent by "the DAG"; no webhook reaches any store.

    ``neoleads_default`` points at the sandbox without retries, so an injected 5xx is seen at once.
    """
    from neoleads_provider.hooks.neoleads import NeoleadsHook
    from tests._helpers import DEFAULT_CONN_ID, use_sandbox_connection

    use_sandbox_connection(monkeypatch, neoleads_sandbox, DEFAULT_CONN_ID, max_retries=0)
    with NeoleadsHook(neoleads_conn_id=DEFAULT_CONN_ID) as hook:
        contact = hook.create_contact(
            name="Ada",
            email=f"ada-{uuid.uuid4().hex[:8]}@example.com",
            inbox_id=neoleads_sandbox.api_inbox_id,
        )
        conversation = hook.create_conversation(
            inbox_id=neoleads_sandbox.api_inbox_id, contact_id=contact["contact"]["id"]
        )
        sent = hook.send_message(conversation["id"], "Shall we book Tuesday?")
    return {"conversation_id": int(conversation["id"]), "message_id": int(sent["id"])}
