"""``sensorlab sweep SWEEP.yaml``: run or resume a sweep (:mod:`pipeline.sweep`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pipeline.cli.common import add_set_option
from pipeline.report import write_report
from pipeline.sweep.engine import SweepResult, run_sweep

__all__ = ["cmd_sweep", "register", "summary"]


def register(sub: Any) -> None:
    """Add ``sensorlab sweep``."""
    p = sub.add_parser(
        "sweep",
        help="run a config over a grid (or list) of values; resumes an interrupted sweep",
        description="Run every cell of a sweep file (a base config and axes over its keys), "
        "skipping cells finished by an earlier run, and write results.csv and plots.",
    )
    p.add_argument("sweep", help="sweep YAML (base config, axes or cells, train, out, name)")
    engine = p.add_mutually_exclusive_group()
    engine.add_argument(
        "--workers",
        type=_positive_int,
        metavar="N",
        help="run cells on a local Dask cluster of N worker processes (needs sensorlab[dask])",
    )
    engine.add_argument(
        "--scheduler",
        metavar="tcp://HOST:PORT",
        help="run cells on an existing Dask cluster (workers must see the same paths)",
    )
    p.add_argument("--out", help="folder that receives the sweep folder (the file's out:)")
    add_set_option(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar, summary only")
    p.set_defaults(func=cmd_sweep)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def cmd_sweep(args: argparse.Namespace) -> int:
    try:
        result = run_sweep(
            args.sweep,
            workers=args.workers,
            scheduler=args.scheduler,
            out=args.out,
            set=args.overrides,
            progress=False if args.quiet else None,
        )
    except KeyboardInterrupt:
        print(
            "sensorlab: interrupted; finished cells are kept, rerun the same command to resume",
            file=sys.stderr,
        )
        return 130
    print(summary(result))
    print(f"report: {write_report(result.path)}")
    return 0


def summary(result: SweepResult) -> str:
    """A few lines: how many cells ran, where the table and figures are, the table itself."""
    n, done = len(result.cells), len(result.skipped)
    lines = [
        f"sensorlab sweep {result.path.name}: {n} cells, {len(result.computed)} computed, "
        f"{done} already done, {result.wall_seconds:.2f} s",
    ]
    for cell, why in result.damaged.items():
        lines.append(f"recomputed {cell}: its records were damaged ({why})")
    for row in result.table:
        parts = [row["cell"]]
        if row.get("accuracy") is not None:
            lo, hi = row["accuracy_lo"], row["accuracy_hi"]
            parts.append(f"accuracy {row['accuracy']:.4f} (95% CI {lo:.4f}–{hi:.4f})")
        if row.get("snr_db") is not None:
            parts.append(f"SNR {row['snr_db']:.2f} dB")
        lines.append("  " + "  ".join(parts))
    lines.append(f"results: {result.path / 'results.csv'}")
    for fig in result.plots:
        lines.append(f"figure: {fig}")
    return "\n".join(lines)
