"""``sensorlab run CONFIG``: run a config through its stages and record every stage."""

from __future__ import annotations

import argparse
from typing import Any

from pipeline.cli.common import add_set_option, run_overrides
from pipeline.config import load_config
from pipeline.report import write_report
from pipeline.runner import RunResult, run

__all__ = ["cmd_run", "register", "summary"]


def register(sub: Any) -> None:
    """Add ``sensorlab run``."""
    p = sub.add_parser(
        "run",
        help="run a config through its stages and record every stage",
        description="Stream the config's dataset through its sensor stages (and model, if "
        "any) and write a run folder: manifest.json, arrays.zarr (the first images of every "
        "stage), samples.png, confusion.png with a model, and report.html.",
    )
    p.add_argument("config", help="run config YAML")
    add_set_option(p)
    p.add_argument("--out", help="folder that receives the run folder (run.out)")
    p.add_argument("--name", help="run folder name (overrides run.name, --set included)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar, summary only")
    p.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    loaded = load_config(args.config, run_overrides(args))
    result = run(loaded, progress=False if args.quiet else None)
    print(summary(result))
    print(f"report: {write_report(result.path)}")
    return 0


def summary(result: RunResult) -> str:
    """A few lines: stages with units and shapes, accuracy, PSNR/SSIM, where the records are."""
    m = result.manifest
    lines = [
        f"sensorlab run {m['config_file']}: {m['dataset']['images']} images in "
        f"{m['wall_seconds']:.2f} s ({m['images_per_second'] or 0:.0f} images/s), seed {m['seed']}"
    ]
    for st in m["stages"]:
        shape = "×".join(str(s) for s in st["shape"])
        name, unit, dtype = st["name"], st["unit"], st["dtype"]
        lines.append(f"  {name:<14} {unit:<9} {shape:<12} {dtype:<8} {st['seconds']:8.3f} s")
    met = result.metrics
    if met.get("accuracy") is not None:
        lo, hi = met["accuracy_ci95"]
        lines.append(
            f"accuracy {met['accuracy']:.4f} (95% CI {lo:.4f}–{hi:.4f}) on {met['n']} images"
        )
    if met.get("psnr_db") is not None:
        lines.append(
            f"raw image against the ideal sensor: PSNR {met['psnr_db']:.2f} dB, "
            f"SSIM {met['ssim']:.4f} ({met['quality_images']} images)"
        )
    if result.path is not None:
        lines.append(f"records: {result.path}")
    return "\n".join(lines)
