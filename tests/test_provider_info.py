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
    assert fields["account_id"]["schema"]["type"] == "integer"
    assert {"timeout", "max_retries", "webhook_secrets"} <= set(fields)
    assert fields["webhook_secrets"]["schema"]["format"] == "password"


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
