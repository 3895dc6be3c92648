"""``airflow neoleads ...``: the ``neoleads`` commands as an Airflow CLI group (Airflow 3.2+).

Airflow calls :func:`get_cli_commands` (named in provider info ``"cli"``) every time ``airflow`` starts, so this
module imports nothing at load time, and the commands are not defined twice: the ``neoleads`` script's
argparse tree (:func:`neoleads_provider.cli.main.build_parser`) is the one definition, translated here into
Airflow's ``GroupCommand``/``ActionCommand``/``Arg``. Building that tree imports only the command modules,
which keep their own heavy imports inside the handlers, as ``lazy_load_command`` would.

Airflow 3.1 ignores ``"cli"``: there, and for the standalone receiver, use the ``neoleads`` script (or
``python -m neoleads_provider.cli``), which takes the same arguments.
"""

from __future__ import annotations

import argparse
import functools
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["GROUP_NAME", "get_cli_commands"]

# Not an Airflow command or group; a clash would raise CliConflictError and break the whole `airflow` CLI.
GROUP_NAME = "neoleads"

# The argparse actions the ``neoleads`` parser uses, by the name Airflow's ``Arg(action=...)`` takes.
_ACTION_NAMES: dict[type[argparse.Action], str] = {
    argparse._StoreAction: "store",
    argparse._StoreTrueAction: "store_true",
    argparse._StoreFalseAction: "store_false",
    argparse._AppendAction: "append",
    argparse._CountAction: "count",
}


def get_cli_commands() -> list[Any]:
    """Return the ``neoleads`` group for Airflow's CLI (``airflow neoleads --help``)."""
    from airflow.cli.cli_config import GroupCommand

    from neoleads_provider.cli.main import build_parser

    parser = build_parser()
    return [
        GroupCommand(
            name=GROUP_NAME,
            help="Neoleads: API inboxes, doctor, webhook receiver, event store, sandbox",
            description=_escape(parser.description or ""),
            subcommands=_subcommands(parser),
        )
    ]


def _subparsers_action(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def _subcommands(parser: argparse.ArgumentParser) -> list[Any]:
    """Translate the subcommands of ``parser``: groups stay groups, leaves become ``ActionCommand``s."""
    from airflow.cli.cli_config import ActionCommand, GroupCommand

    action = _subparsers_action(parser)
    if action is None:
        raise ValueError(f"{parser.prog!r} has no subcommands")
    helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
    commands: list[Any] = []
    for name, subparser in action.choices.items():
        if subparser._mutually_exclusive_groups:
            # Airflow's Arg has no notion of them; refuse rather than silently drop the constraint.
            raise ValueError(f"{subparser.prog!r}: mutually exclusive options cannot be translated")
        help_text = _escape(helps.get(name, ""))
        description = _escape(subparser.description) if subparser.description else None
        if _subparsers_action(subparser) is not None:
            commands.append(
                GroupCommand(
                    name=name, help=help_text, description=description, subcommands=_subcommands(subparser)
                )
            )
            continue
        handler = subparser._defaults.get("func")
        if handler is None:
            raise ValueError(f"{subparser.prog!r} sets no handler (set_defaults(func=...))")
        commands.append(
            ActionCommand(
                name=name,
                help=help_text,
                description=description,
                func=_exit_with_status(handler),
                args=[
                    _arg(item) for item in subparser._actions if not isinstance(item, argparse._HelpAction)
                ],
            )
        )
    return commands


def _arg(action: argparse.Action) -> Any:
    """Translate one argparse action into Airflow's ``Arg`` with the same flags, destination and checks."""
    from airflow.cli.cli_config import Arg

    kind = _ACTION_NAMES.get(type(action))
    if kind is None:
        raise ValueError(f"argument {action.dest!r}: {type(action).__name__} cannot be translated")
    kwargs: dict[str, Any] = {}
    if action.option_strings:
        flags = tuple(action.option_strings)
        kwargs["dest"] = action.dest
        if action.required:
            kwargs["required"] = True
    else:
        flags = (action.dest,)
    if kind != "store":
        kwargs["action"] = kind
    if kind in ("store", "append"):
        for key in ("nargs", "type", "choices", "metavar"):
            value = getattr(action, key)
            if value is not None:
                kwargs[key] = value
    if action.default is not None:
        kwargs["default"] = action.default
    if action.help is not None:
        kwargs["help"] = _escape(action.help)
    return Arg(flags, **kwargs)


def _escape(text: str) -> str:
    # Airflow renders help with rich, which would read "[neoleads]" or "[api]" as a style tag and drop it.
    return text.replace("[", r"\[")


def _exit_with_status(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], None]:
    """Wrap a ``neoleads`` handler for Airflow, which ignores return values: a non-zero status exits with it."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> None:
        status = int(handler(args) or 0)
        if status:
            raise SystemExit(status)

    return run
