"""What several commands share: the argparse parser class, ``--set``, JSON output."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pipeline.errors import UserError

__all__ = ["CliParser", "add_set_option", "print_json", "run_overrides"]


class CliParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line and exit 2, like every other bad input:
    ``sensorlab: error: MESSAGE``, or ``sensorlab: error: COMMAND: MESSAGE`` for an error of
    a command's own arguments (the program name is said once)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        command = self.prog.partition(" ")[2]
        raise UserError(message, file=command or None)


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


def run_overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` overrides plus ``--out`` / ``--name`` as ``run.out`` / ``run.name``."""
    extra = list(args.overrides)
    if getattr(args, "out", None):
        extra.append(f"run.out={args.out}")
    if getattr(args, "name", None):
        extra.append(f"run.name={args.name}")
    return extra


def print_json(data: Any) -> None:
    """``data`` as indented JSON on stdout (NumPy values made plain)."""
    from pipeline.store import jsonable

    json.dump(jsonable(data), sys.stdout, indent=2)
    sys.stdout.write("\n")
