"""`atelier`: run a local cluster and talk to it.

Each subcommand lives in its own module exposing `register(subparsers)`; heavy imports
(torch, ray) happen inside the command that needs them, so `atelier --help` is instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from atelier.cli import (
    account,
    audit,
    consent,
    credits,
    db,
    down,
    dsr,
    export,
    gallery,
    generate,
    keys,
    models,
    provenance,
    status,
    sweep,
    tenant,
    up,
)
from atelier.cli._cluster import add_timeout_flag
from atelier.cli._output import CommandError, report_error

_COMMANDS = (
    up,
    down,
    status,
    account,
    credits,
    generate,
    gallery,
    consent,
    dsr,
    audit,
    keys,
    tenant,
    db,
    sweep,
    export,
    models,
    provenance,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="atelier",
        description="Serve diffusion models privately: a local cluster and a client for it.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in _COMMANDS:
        command.register(subparsers)
    _add_timeout_flags(parser)
    return parser


def _add_timeout_flags(parser: argparse.ArgumentParser) -> None:
    """Gives every command that has none a `--timeout`: each of its calls then carries that deadline,
    so a cluster that does not answer fails the command within it, not after minutes."""
    subcommands = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    for action in subcommands:
        for child in action.choices.values():
            _add_timeout_flags(child)
    if not subcommands and "--timeout" not in parser._option_string_actions:
        add_timeout_flag(parser)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `atelier` console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except CommandError as exc:
        return report_error(exc, json_output=getattr(args, "json", False))
    except OSError as exc:  # an unwritable -o path, a full disk: the user can act on the file named
        message = f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc.strerror or exc)
        return report_error(CommandError(message), json_output=getattr(args, "json", False))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
