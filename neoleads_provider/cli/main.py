"""The ``neoleads`` command: sandbox, webhook receiver, event store, API inbox setup and the doctor.

Each command group lives in its own module with a ``register(subparsers)`` function; imports inside the
handlers stay lazy so ``neoleads --help`` is quick.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

# Command group modules, each exposing ``register(subparsers) -> None``.
COMMAND_MODULES = (
    "neoleads_provider.cli.sandbox",
    "neoleads_provider.cli.webhooks",
    "neoleads_provider.cli.events",
    "neoleads_provider.cli.inboxes",
    "neoleads_provider.cli.doctor",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="neoleads", description="Neoleads provider for Apache Airflow.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Each leaf command sets ``func`` with ``set_defaults``; it returns the exit status.
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
