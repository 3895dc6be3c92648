"""Airflow discovers the provider, its connection type, form fields, links and config."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema

from neoleads_provider.get_provider_info import get_provider_info

AIRFLOW = str(Path(sys.executable).parent / "airflow")


def test_provider_info_matches_airflows_schema():
    import airflow

    schema = json.loads((Path(airflow.__file__).parent / "provider_info.schema.json").read_text())
    jsonschema.validate(get_provider_info(), schema)


def test_every_declared_module_and_class_imports():
    info = get_provider_info()
    modules = [
        m
        for key in ("hooks", "operators", "sensors", "triggers")
        for entry in info[key]
        for m in entry["python-modules"]
    ]
    classes = [ct["hook-class-name"] for ct in info["connection-types"]]
    classes += info["extra-links"] + [plugin["plugin-class"] for plugin in info["plugins"]]
    for module in modules:
        importlib.import_module(module)
    for dotted in classes:
        module, _, name = dotted.rpartition(".")
        assert getattr(importlib.import_module(module), name)


def test_connection_form_declares_the_fields():
    [conn_type] = get_provider_info()["connection-types"]
    assert conn_type["connection-type"] == "neoleads"
    assert conn_type["ui-field-behaviour"]["relabeling"] == {
        "host": "Base URL",
        "password": "API access token",
    }
    fields = conn_type["conn-fields"]
    assert fields["account_id"]["schema"]["type"] == ["integer", "null"]
    assert {"timeout", "max_retries", "webhook_secrets"} <= set(fields)
    assert fields["webhook_secrets"]["schema"]["format"] == "password"


def test_the_form_fields_are_what_airflow_s_form_can_render() -> None:
    [conn_type] = get_provider_info()["connection-types"]
    fields = conn_type["conn-fields"]
    # A non-null type shows "This field is required" before anything is typed: every field may be null.
    assert {name: field["schema"]["type"][-1] for name, field in fields.items()} == dict.fromkeys(
        fields, "null"
    )
    # The form reads "minimum", never "exclusiveMinimum": a number field without it takes negatives.
    numbers = [name for name, field in fields.items() if field["schema"]["type"][0] in ("integer", "number")]
    assert [name for name in numbers if "minimum" not in fields[name]["schema"]] == []
    # Placeholders reach the standard fields only.
    assert set(conn_type["ui-field-behaviour"]["placeholders"]) <= {
        "host",
        "password",
        "login",
        "schema",
        "port",
    }


def test_the_defaults_the_add_form_saves_are_the_hook_s_defaults() -> None:
    from neoleads_provider.connection import (
        DEFAULT_MAX_RETRIES,
        DEFAULT_RATE_LIMIT_MAX_WAIT_SECONDS,
        DEFAULT_TIMEOUT_SECONDS,
        NeoleadsConnectionSettings,
    )
    from neoleads_provider.webhooks import DEFAULT_HEADER_PREFIX, DEFAULT_TOLERANCE_SECONDS

    [conn_type] = get_provider_info()["connection-types"]
    defaults = {
        name: field["schema"]["default"]
        for name, field in conn_type["conn-fields"].items()
        if "default" in field["schema"]
    }
    assert defaults == {
        "timeout": DEFAULT_TIMEOUT_SECONDS,
        "max_retries": DEFAULT_MAX_RETRIES,
        "rate_limit_max_wait": DEFAULT_RATE_LIMIT_MAX_WAIT_SECONDS,
        "webhook_header_prefix": DEFAULT_HEADER_PREFIX,
        "webhook_tolerance_seconds": DEFAULT_TOLERANCE_SECONDS,
        "webhook_allow_unsigned": False,
    }

    # What the Add form saves for a connection whose user filled in only the required fields: the defaults,
    # and null for the rest. The hook reads it as it reads a connection without those keys.
    class Saved:
        conn_id = "from_the_form"
        host = "https://app.neoleads.com"
        password = "token"
        schema = port = None
        extra_dejson = {
            **dict.fromkeys(conn_type["conn-fields"]),
            **defaults,
            "account_id": 7,
        }

    class Minimal(Saved):
        extra_dejson = {"account_id": 7}

    assert NeoleadsConnectionSettings.from_connection(Saved()) == NeoleadsConnectionSettings.from_connection(
        Minimal()
    )


def airflow_json(*args: str) -> list[dict]:
    result = subprocess.run(
        [AIRFLOW, *args, "--output", "json"],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # Airflow may print notices (e.g. a fresh airflow.cfg) before the JSON document.
    return json.loads(result.stdout[result.stdout.index("[{") :])


def test_airflow_lists_the_provider_and_its_hook():
    providers = airflow_json("providers", "list")
    assert any(p["package_name"] == "airflow-provider-neoleads" for p in providers)
    hooks = airflow_json("providers", "hooks")
    [neoleads] = [h for h in hooks if h["connection_type"] == "neoleads"]
    assert neoleads["class"] == "neoleads_provider.hooks.neoleads.NeoleadsHook"
    assert neoleads["conn_id_attribute_name"] == "neoleads_conn_id"
