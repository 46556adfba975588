"""``sensorlab stages``: every registered stage with its parameters."""

from __future__ import annotations

import argparse
import sys
import textwrap
from typing import Any

from pipeline.cli.common import print_json
from pipeline.registry import default_registry

__all__ = ["cmd_stages", "register", "stage_rows"]


def register(sub: Any) -> None:
    """Add ``sensorlab stages``."""
    p = sub.add_parser(
        "stages",
        help="list every registered stage with its parameters",
        description="List every registered stage (built in and plugins): what it takes and "
        "gives, and each parameter with its unit, type or choices, default and meaning.",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_stages)


def stage_rows() -> list[dict[str, Any]]:
    """One row per registered stage: name, kind, units, first doc line, parameters (or the
    error of a plugin that cannot load, so one broken plugin does not hide the others)."""
    registry = default_registry()
    rows: list[dict[str, Any]] = []
    for name in registry.names():
        try:
            cls = registry.get(name)
        except Exception as exc:  # list a broken plugin instead of failing the listing
            rows.append({"name": name, "error": str(exc)})
            continue
        rows.append(
            {
                "name": name,
                "kind": cls.kind,
                "takes": [str(u) for u in cls.takes],
                "gives": str(cls.gives),
                "doc": (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else "",
                "params": cls.describe(),
            }
        )
    return rows


def cmd_stages(args: argparse.Namespace) -> int:
    rows = stage_rows()
    if args.json:
        print_json(rows)
        return 0
    out = sys.stdout
    for row in rows:
        if "error" in row:
            out.write(f"{row['name']}: cannot load: {row['error']}\n\n")
            continue
        takes = " or ".join(row["takes"]) or "anything"
        out.write(f"{row['name']} ({row['kind']}): {takes} -> {row['gives']}\n")
        if row["doc"]:
            out.write(textwrap.indent(row["doc"], "  ") + "\n")
        for p in row["params"]:
            default = "required" if p["required"] else f"default {p['default']!r}"
            unit = f" [{p['unit']}]" if p["unit"] else ""
            out.write(f"  {p['name']}{unit}: {p['type']}, {default}")
            out.write(f" — {p['doc']}\n" if p["doc"] else "\n")
        out.write("\n")
    return 0
