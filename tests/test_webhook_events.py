"""The one list of webhook event names (neoleads_provider/webhook_events.py) and the names it is known by."""

from __future__ import annotations

import json
import subprocess
import sys

from neoleads_provider import webhook_events
from neoleads_provider.cli import webhooks as cli_webhooks
from neoleads_provider.hooks import neoleads as hook_module
from neoleads_provider.store import matching
from neoleads_provider.testing import state
from neoleads_provider.webhook_events import WEBHOOK_EVENTS


def test_every_module_checks_names_against_the_one_list() -> None:
    assert hook_module.WEBHOOK_EVENTS is WEBHOOK_EVENTS
    assert state.ALLOWED_WEBHOOK_EVENTS is WEBHOOK_EVENTS
    assert set(matching.KNOWN_EVENTS) == set(WEBHOOK_EVENTS)


def test_the_cli_offers_the_one_list() -> None:
    assert cli_webhooks.WEBHOOK_EVENTS is WEBHOOK_EVENTS
    assert set(cli_webhooks.DEFAULT_EVENTS) <= set(WEBHOOK_EVENTS)


def test_the_names_are_distinct_and_spelt_as_in_the_payload() -> None:
    assert len(set(WEBHOOK_EVENTS)) == len(WEBHOOK_EVENTS) == 12
    assert all(name.islower() and "." not in name and " " not in name for name in WEBHOOK_EVENTS)
    assert {"message_created", "conversation_status_changed"} <= set(WEBHOOK_EVENTS)


def test_importing_the_list_loads_nothing_else() -> None:
    """store.matching relies on it to stay free of Airflow and SQLAlchemy at import time."""
    code = (
        "import json, sys\n"
        "before = set(sys.modules)\n"
        "import neoleads_provider.webhook_events\n"
        "print(json.dumps(sorted(set(sys.modules) - before)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    outside_stdlib = {name for name in loaded if name.split(".")[0] not in sys.stdlib_module_names}
    assert outside_stdlib <= {"neoleads_provider", "neoleads_provider.webhook_events"}, loaded
    assert webhook_events.__all__ == ["WEBHOOK_EVENTS"]
