"""``sensorlab schema``: the JSON Schema of config files."""

from __future__ import annotations

import argparse
from typing import Any

from pipeline.cli.common import print_json
from pipeline.config import json_schema

__all__ = ["cmd_schema", "register"]


def register(sub: Any) -> None:
    """Add ``sensorlab schema``."""
    p = sub.add_parser(
        "schema",
        help="print the JSON Schema of config files",
        description="Print the JSON Schema of run config files (every section, dataset "
        "kind and stage parameter with its type, default and description) for editors "
        "and validators.",
    )
    p.set_defaults(func=cmd_schema)


def cmd_schema(args: argparse.Namespace) -> int:
    print_json(json_schema())
    return 0
