"""The ``sensorlab`` command line (also ``python -m pipeline``): one module per command.

Each command module has ``register(subparsers)`` (its arguments) and a ``cmd_*`` function
(the call into the feature). The CLI is the top layer: it imports the features, and
nothing imports it. Every bad input ends as one line on stderr, ``file: key: problem``,
and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from pipeline._version import __version__
from pipeline.cli import (
    calibrate,
    characterize,
    design_adc,
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
from pipeline.cli.failure import after_warning, held_warnings, replay, unexpected
from pipeline.errors import EXIT_USER_ERROR, UserError

__all__ = ["COMMANDS", "build_parser", "main"]

# Command modules in help order. Imported statically: a command that fails to import is
# an error of the whole command line, never a silently missing command.
COMMANDS = (
    run,
    report,
    schema,
    stages,
    sweep,
    design_adc,
    train,
    characterize,
    calibrate,
    export,
    eval,
    import_,
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every command of :data:`COMMANDS`."""
    parser = CliParser(
        prog="sensorlab",
        description="Simulate an image sensor feeding a CNN classifier, from YAML.",
    )
    parser.add_argument("--version", action="version", version=f"sensorlab {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="on an unexpected error, show Python's traceback instead of one line",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=CliParser)
    sub.required = True
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    Every failure is one line on stderr: a :class:`UserError` as ``file: key: problem``
    (exit 2), any other exception as what went wrong in which command and input, with a
    hint to rerun with ``--debug`` for Python's traceback (exit 2).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # accepted anywhere on the line, not only before the command
    argv = [a for a in argv if a != "--debug"]
    args = None
    caught: list[warnings.WarningMessage] = []
    try:
        with held_warnings(caught):
            parser = build_parser()
            args = parser.parse_args(argv)
            status = int(args.func(args) or 0)
        replay(caught)
        return status
    except UserError as exc:
        print(f"sensorlab: error: {exc}{after_warning(caught)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("sensorlab: interrupted; nothing was kept", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:
        if debug:
            raise
        line = unexpected(exc, args, argv)
        print(f"sensorlab: error: {line}{after_warning(caught)}", file=sys.stderr)
        return EXIT_USER_ERROR
