"""The ``sensorlab`` command line (also ``python -m pipeline``): one module per command.

Each command module has ``register(subparsers)`` (its arguments) and a ``cmd_*`` function
(the call into the feature). The CLI is the top layer: it imports the features, and
nothing imports it. Every bad input ends as one line on stderr, ``file: key: problem``,
and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pipeline._version import __version__
from pipeline.cli import (
    characterize,
    eval,
    export,
    import_,
    report,
    run,
    schema,
    stages,
    sweep,
    train,
)
from pipeline.cli.common import CliParser
from pipeline.errors import EXIT_USER_ERROR, UserError

__all__ = ["COMMANDS", "build_parser", "main"]

# Command modules in help order. Imported statically: a command that fails to import is
# an error of the whole command line, never a silently missing command.
COMMANDS = (run, report, schema, stages, sweep, train, characterize, export, eval, import_)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every command of :data:`COMMANDS`."""
    parser = CliParser(
        prog="sensorlab",
        description="Simulate an image sensor feeding a CNN classifier, from YAML.",
    )
    parser.add_argument("--version", action="version", version=f"sensorlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=CliParser)
    sub.required = True
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"sensorlab: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("sensorlab: interrupted; nothing was kept", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
