"""``sensorlab report FOLDER``: write ``report.html`` for a result folder
(:mod:`pipeline.report`)."""

from __future__ import annotations

import argparse
from typing import Any

from pipeline.report import write_report

__all__ = ["cmd_report", "register"]


def register(sub: Any) -> None:
    """Add ``sensorlab report``."""
    p = sub.add_parser(
        "report",
        help="write report.html for a run, sweep, training or characterisation folder",
        description="Write one self-contained HTML page (figures embedded, no network) "
        "into a result folder; open it in any browser.",
    )
    p.add_argument("folder", help="a run, sweep, training or characterize folder")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    print(f"report: {write_report(args.folder)}")
    return 0
