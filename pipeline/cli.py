"""The ``sensorlab`` command line (also ``python -m pipeline``).

Every bad input ends as one line on stderr, ``file: key: problem``, and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from typing import Any

from pipeline.errors import EXIT_USER_ERROR, UserError

__all__ = ["main"]

# Modules that add a subcommand through ``register(subparsers)``, in help order.
_COMMAND_MODULES = (
    "pipeline.commands",
    "pipeline.sweep",
    "pipeline.train",
    "pipeline.characterize",
    "pipeline.export",
)


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line and exit 2, like every other bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(message, file=self.prog)


def build_parser() -> argparse.ArgumentParser:
    from pipeline import __version__

    parser = _Parser(
        prog="sensorlab",
        description="Simulate an image sensor feeding a CNN classifier, from YAML.",
    )
    parser.add_argument("--version", action="version", version=f"sensorlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # a command whose module has not landed yet
            raise
        module.register(sub)
    return parser


def add_set_option(parser: argparse.ArgumentParser) -> None:
    """``--set KEY=VALUE`` (repeatable): dotted-key config overrides."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set sensor.adc.bits=4 --set run.batch_size=7",
    )


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


def print_json(data: Any) -> None:
    from pipeline.store import jsonable

    json.dump(jsonable(data), sys.stdout, indent=2)
    sys.stdout.write("\n")
