"""``sensorlab design-adc DESIGN.yaml``: search ADC transfer tables (:mod:`pipeline.design`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pipeline.cli.sweep import _positive_int
from pipeline.design.cell import FIXED_CURVES
from pipeline.design.design import DesignResult, design_adc
from pipeline.design.initial import FITTED

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
    """The searches run and reused, each designed table against the best fixed curve (at
    the base's gain and range-matched) and the best fitted table."""
    lines = [
        f"sensorlab design-adc {result.path.name}: {len(result.records)} searches, "
        f"{len(result.computed)} computed, {len(result.reused)} reused, "
        f"{result.wall_seconds:.1f} s"
    ]
    ranged = {r["cell"]: r["curves"] for r in result.ranges}
    for rec in result.records:
        curves = rec["curves"] | {f"{c}_ranged": v for c, v in ranged.get(rec["cell"], {}).items()}
        parts = [f"  {rec['cell']}:"]
        for label, names in (
            ("designed", ["designed"]),
            ("best fixed", FIXED_CURVES),
            ("best range-matched", [f"{c}_ranged" for c in FIXED_CURVES]),
            ("best fitted", FITTED),
        ):
            names = [n for n in names if n in curves]
            if names:
                best = max(names, key=lambda n: curves[n]["test"]["accuracy"])
                t = curves[best]["test"]
                name = "" if label == "designed" else f" {best}"
                parts.append(f"{label}{name} {t['accuracy']:.3f} ({t['lo']:.3f}–{t['hi']:.3f})")
        parts.append(f"search {rec['search_seconds']:.0f} s")
        lines.append(" ".join(parts[:1]) + " " + ", ".join(parts[1:]))
    lines.append(f"results: {result.path / 'results.csv'}")
    lines.extend(f"figure: {f}" for f in result.figures)
    return "\n".join(lines)
