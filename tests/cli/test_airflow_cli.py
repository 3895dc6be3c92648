"""``airflow neoleads ...``: the ``neoleads`` commands inside the Airflow CLI, built from the same definition,
discovered through provider info, cheap to load, and working end to end in real ``airflow`` processes."""

from __future__ import annotations

import argparse
import inspect
import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from neoleads_provider.cli.airflow_cli import GROUP_NAME, get_cli_commands
from neoleads_provider.cli.main import build_parser
from neoleads_provider.get_provider_info import get_provider_info
from tests._helpers import child_env

if TYPE_CHECKING:
    from neoleads_provider.testing import NeoleadsSandbox

AIRFLOW = str(Path(sys.executable).parent / "airflow")
TOP_COMMANDS = ["doctor", "events", "inboxes", "sandbox", "webhooks"]


def _leaves(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Every leaf command of an argparse tree: path -> its parser."""
    action = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    if action is None:
        return {prefix: parser}
    found: dict[tuple[str, ...], Any] = {}
    for name, sub in action.choices.items():
        found.update(_leaves(sub, (*prefix, name)))
    return found


def _airflow_leaves(commands: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    from airflow.cli.cli_config import GroupCommand

    found: dict[tuple[str, ...], Any] = {}
    for command in commands:
        if isinstance(command, GroupCommand):
            found.update(_airflow_leaves(command.subcommands, (*prefix, command.name)))
        else:
            found[(*prefix, command.name)] = command
    return found


def test_provider_info_names_the_cli_function() -> None:
    [path] = get_provider_info()["cli"]
    module, _, name = path.rpartition(".")
    assert getattr(__import__(module, fromlist=[name]), name) is get_cli_commands


def test_one_group_mirroring_every_neoleads_command() -> None:
    from airflow.cli.cli_config import GroupCommand

    [group] = get_cli_commands()
    assert isinstance(group, GroupCommand)
    assert group.name == GROUP_NAME
    assert sorted(command.name for command in group.subcommands) == TOP_COMMANDS

    argparse_leaves = _leaves(build_parser())
    airflow_leaves = _airflow_leaves(group.subcommands)
    assert set(airflow_leaves) == set(argparse_leaves)
    assert ("inboxes", "set-webhook") in airflow_leaves
    assert ("doctor",) in airflow_leaves
    for path, parser in argparse_leaves.items():
        flags = {
            flag
            for action in parser._actions
            if not isinstance(action, argparse._HelpAction)
            for flag in (action.option_strings or [action.dest])
        }
        assert {flag for arg in airflow_leaves[path].args for flag in arg.flags} == flags, path


@pytest.fixture(scope="module")
def airflow_parser() -> argparse.ArgumentParser:
    # The real `airflow` parser, with the provider's commands discovered through its provider info.
    from airflow.cli import cli_parser

    assert GROUP_NAME in cli_parser.ALL_COMMANDS_DICT
    return cli_parser.get_parser()


ARGV = [
    ["inboxes", "list", "--conn-id", "c1", "--json"],
    ["inboxes", "create", "--name", "Airflow", "--webhook-url", "https://a.example.com/h", "--apply"],
    ["inboxes", "set-webhook", "--inbox-id", "7", "--url", "https://a.example.com/h", "--json"],
    ["inboxes", "reset-secret", "--inbox-id", "7", "--conn-id", "c2"],
    ["doctor", "--conn-id", "c3", "--inbox-id", "4", "--receiver-url", "https://a.example.com/r", "--json"],
    ["events", "purge", "--older-than", "7d", "--dry-run", "--db-url", "sqlite://"],
    ["events", "list", "--event", "message_created", "--limit", "5"],
    ["events", "show", "12"],
    ["webhooks", "register", "--url", "https://a.example.com/h", "--events", "message_created"],
    ["webhooks", "send-test", "--url", "https://a.example.com/h", "--secret", "s", "--conversation-id", "3"],
    ["webhooks", "serve", "--port", "9999"],
    [
        "sandbox",
        "--port",
        "0",
        "--webhook-url",
        "http://127.0.0.1:1/a",
        "--webhook-url",
        "http://127.0.0.1:1/b",
    ],
]


@pytest.mark.parametrize("argv", ARGV, ids=[" ".join(argv[:2]) for argv in ARGV])
def test_airflow_parses_every_command_as_neoleads_does(airflow_parser, argv: list[str]) -> None:
    ours = vars(build_parser().parse_args(argv))
    theirs = vars(airflow_parser.parse_args([GROUP_NAME, *argv]))
    for key, value in ours.items():
        if key == "func" or key.endswith("_command") or key == "command":
            continue
        assert theirs[key] == value, key
    # Airflow calls the same handler, wrapped to turn a non-zero return into an exit status.
    assert theirs["func"] is not ours["func"]
    assert inspect.unwrap(theirs["func"]) is inspect.unwrap(ours["func"])


def test_help_shows_brackets_as_written(airflow_parser, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        airflow_parser.parse_args([GROUP_NAME, "inboxes", "create", "--help"])
    assert info.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert "--apply" in shown
    # Airflow renders help with rich, which would take "[api]" for a style tag and drop it.
    assert "{[api] base_url}/neoleads/webhooks/<conn_id>" in shown


def test_bad_arguments_are_refused_by_airflow_too(airflow_parser, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        airflow_parser.parse_args([GROUP_NAME, "inboxes", "set-webhook", "--inbox-id", "0"])
    assert info.value.code == 2


def test_a_failing_command_exits_with_its_status(airflow_parser, capsys, monkeypatch) -> None:
    args = airflow_parser.parse_args([GROUP_NAME, "inboxes", "create", "--name", "x", "--conn-id", "nobody"])
    monkeypatch.delenv("AIRFLOW__API__BASE_URL", raising=False)
    with pytest.raises(SystemExit) as info:
        args.func(args)
    assert info.value.code == 2  # no webhook URL


_IMPORT_COST = """
import json, sys, time
import airflow.cli.cli_config
before = set(sys.modules)
started = time.perf_counter()
from neoleads_provider.cli.airflow_cli import get_cli_commands
get_cli_commands()
print(json.dumps({"ms": (time.perf_counter() - started) * 1000, "new": sorted(set(sys.modules) - before)}))
"""


def test_loading_the_commands_imports_only_the_command_modules(tmp_path: Path) -> None:
    """Every `airflow` invocation runs get_cli_commands(): no hook, store, receiver, sandbox or HTTP client."""
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_COST],
        env=child_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    ours = [name for name in loaded["new"] if name.startswith("neoleads_provider")]
    assert set(ours) <= {
        "neoleads_provider",
        "neoleads_provider.cli",
        "neoleads_provider.cli.airflow_cli",
        "neoleads_provider.cli.main",
        "neoleads_provider.cli.sandbox",
        "neoleads_provider.cli.webhooks",
        "neoleads_provider.cli.events",
        "neoleads_provider.cli.inboxes",
        "neoleads_provider.cli.doctor",
        # cli/webhooks.py checks event names against events.names; the events package is stdlib only.
        "neoleads_provider.events",
        "neoleads_provider.events.fields",
        "neoleads_provider.events.filter",
        "neoleads_provider.events.names",
        # Its header prefix default; the package's __init__ imports nothing.
        "neoleads_provider.webhooks",
    }, ours
    for heavy in ("requests", "fastapi", "uvicorn", "tenacity"):
        assert heavy not in loaded["new"], heavy
    print(f"get_cli_commands: {loaded['ms']:.0f} ms")


def _airflow(home: Path, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [AIRFLOW, *argv], env=child_env(home, **env), capture_output=True, text=True, timeout=180, check=False
    )


def test_airflow_help_lists_the_group(tmp_path: Path) -> None:
    top = _airflow(tmp_path, "--help")
    assert top.returncode == 0, top.stderr[-3000:]
    assert f"    {GROUP_NAME} " in top.stdout
    group = _airflow(tmp_path, GROUP_NAME, "--help")
    assert group.returncode == 0, group.stderr[-3000:]
    for name in TOP_COMMANDS:
        assert f"    {name} " in group.stdout


def test_a_real_command_through_airflow(tmp_path: Path, neoleads_sandbox: NeoleadsSandbox) -> None:
    env = neoleads_sandbox.connection_env("nl_airflow")
    created = _airflow(
        tmp_path,
        GROUP_NAME,
        "inboxes",
        "create",
        "--conn-id",
        "nl_airflow",
        "--name",
        "Through airflow",
        "--webhook-url",
        "https://airflow.example.com/neoleads/webhooks/nl_airflow",
        "--json",
        **env,
    )
    assert created.returncode == 0, created.stderr[-3000:]
    # stdout is the JSON alone: Airflow's log lines go to stderr.
    result = json.loads(created.stdout)
    inbox = neoleads_sandbox.state.inboxes[result["inbox_id"]]
    assert (inbox.name, inbox.webhook_url) == ("Through airflow", result["webhook_url"])
    assert result["secret"] == inbox.secret
    assert neoleads_sandbox.token not in created.stdout + created.stderr

    # A failing check makes `airflow` exit non-zero, as `neoleads` would.
    doctor = _airflow(tmp_path, GROUP_NAME, "doctor", "--conn-id", "nl_missing")
    assert doctor.returncode == 1, doctor.stdout + doctor.stderr[-3000:]
    assert "FAIL  connection" in doctor.stdout
    assert "connection 'nl_missing' is not defined" in doctor.stdout
