"""``sensorlab design-adc DESIGN.yaml``: search ADC transfer tables (:mod:`pipeline.design`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pipeline.cli.sweep import _positive_int
from pipeline.design.design import DesignResult, design_adc

__all__ = ["cmd_design_adc", "register", "summary"]


def register(sub: Any) -> None:
    """Add ``sensorlab design-adc``."""
    p = sub.add_parser(
        "design-adc",
        help="search N-bit ADC transfer tables for a model's accuracy; resumes",
        description="For each light level, noise setting and bit depth of a design file, "
        "search a monotone threshold table (CMA-ES) that maximises the model's validation "
        "accuracy, score it and the fixed curves on held-out test images, and write "
        "results.csv, pareto.csv and pareto.png. Finished searches are reused.",
    )
    p.add_argument("design", help="design YAML (base config, lights, bits, search, energy)")
    engine = p.add_mutually_exclusive_group()
    engine.add_argument(
        "--workers",
        type=_positive_int,
        metavar="N",
        help="run searches on a local Dask cluster of N worker processes (sensorlab[dask])",
    )
    engine.add_argument(
        "--scheduler", metavar="tcp://HOST:PORT", help="run searches on an existing Dask cluster"
    )
    p.add_argument("--out", help="folder that receives the design folder (the file's out:)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress, summary only")
    p.set_defaults(func=cmd_design_adc)


def cmd_design_adc(args: argparse.Namespace) -> int:
    try:
        result = design_adc(
            args.design,
            workers=args.workers,
            scheduler=args.scheduler,
            out=args.out,
            progress=False if args.quiet else None,
        )
    except KeyboardInterrupt:
        print(
            "sensorlab: interrupted; finished searches and checkpoints are kept, rerun the "
            "same command to resume",
            file=sys.stderr,
        )
        return 130
    print(summary(result))
    return 0


def summary(result: DesignResult) -> str:
    """The searches run and reused, each designed table against the best fixed curve."""
    lines = [
        f"sensorlab design-adc {result.path.name}: {len(result.records)} searches, "
        f"{len(result.computed)} computed, {len(result.reused)} reused, "
        f"{result.wall_seconds:.1f} s"
    ]
    for rec in result.records:
        curves = rec["curves"]
        best = max(
            (c for c in curves if c != "designed"), key=lambda c: curves[c]["test"]["accuracy"]
        )
        d, b = curves["designed"]["test"], curves[best]["test"]
        lines.append(
            f"  {rec['cell']}: designed {d['accuracy']:.3f} ({d['lo']:.3f}–{d['hi']:.3f}), "
            f"best fixed {best} {b['accuracy']:.3f} ({b['lo']:.3f}–{b['hi']:.3f}), "
            f"search {rec['search_seconds']:.0f} s"
        )
    lines.append(f"results: {result.path / 'results.csv'}")
    lines.extend(f"figure: {f}" for f in result.figures)
    return "\n".join(lines)
