"""Test session setup shared by every test.

Airflow reads AIRFLOW_HOME when it is first imported, so the throwaway home is set here, at import time,
before any test module imports Airflow.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

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
