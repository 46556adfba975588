"""``sensorlab calibrate FRAMES --out DIR``: a sensor's digital twin from its own dark and
flat frames (:mod:`pipeline.calibrate`)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.calibrate import calibrate
from pipeline.calibrate.bootstrap import DEFAULT_REPLICATES

__all__ = ["cmd_calibrate", "register", "summary"]


def register(sub: Any) -> None:
    """Add ``sensorlab calibrate FRAMES --out DIR [--replicates N] [--seed S] [--maps]``."""
    p = sub.add_parser(
        "calibrate",
        help="fit the sensor model to a camera's own dark and flat frames",
        description="Read the frames a YAML or CSV manifest names (DNG/camera raw, 16-bit "
        "TIFF, PNG-16, .npy/.npz stacks), fit per CFA channel by the EMVA 1288 "
        "photon-transfer method with a row/column decomposition, and write DIR/sensor.yaml "
        "(a sensor: list for sensorlab run), DIR/fit.json (every figure with its "
        "uncertainty) and DIR/report.html. See docs/calibration.md.",
    )
    p.add_argument("frames", metavar="FRAMES", help="the manifest (.yaml, .yml or .csv)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument(
        "--replicates",
        type=int,
        default=DEFAULT_REPLICATES,
        help=f"bootstrap replicates over frame pairs (default {DEFAULT_REPLICATES})",
    )
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--maps", action="store_true", help="also write dsnu_map.npy, prnu_map.npy")
    p.set_defaults(func=cmd_calibrate)


def cmd_calibrate(args: argparse.Namespace) -> int:
    from pipeline.errors import UserError

    if args.replicates < 10:
        raise UserError(f"must be at least 10, got {args.replicates}", key="--replicates")
    folder, fit = calibrate(
        args.frames, args.out, replicates=args.replicates, seed=args.seed, maps=args.maps
    )
    print(summary(fit, folder))
    return 0


def summary(fit: Mapping[str, Any], folder: Path) -> str:
    """Headline figures of the sensor with their standard errors, and where they are."""
    s = fit["sensor"]

    def f(name: str, unit: str) -> str:
        v, se = s[name]["value"], s[name]["stderr"]
        return f"{v:.4g} ± {se:.2g} {unit}" if se is not None else f"{v:.4g} {unit}"

    dist = fit.get("noise_distribution") or {}
    lines = [
        f"calibrated {fit['cfa']} sensor ({fit['bits']} bits): {folder}",
        f"  K {f('system_gain_dn_per_e', 'DN/e-')}, black {f('black_level_dn', 'DN')}, "
        f"read noise {f('read_noise_e', 'e-')} ({dist.get('dist', 'n/a')})",
        f"  full well {f('full_well_e', 'e-')}, DSNU {f('dsnu_e', 'e-')}, "
        f"PRNU {f('prnu_pct', '%')}, dark current {f('dark_current_e_per_s', 'e-/s')}",
        f"  sensor.yaml, fit.json, report.html in {folder}",
    ]
    lines.extend(f"  note: {n}" for n in fit.get("notes", []))
    return "\n".join(lines)
