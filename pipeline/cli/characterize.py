"""``sensorlab characterize CONFIG``: an EMVA 1288 datasheet of the configured sensor
(:mod:`pipeline.characterize`)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.characterize import (
    DEFAULT_LEVELS,
    DEFAULT_SIZE,
    MIN_LEVELS,
    characterize_config,
)
from pipeline.cli.common import add_set_option
from pipeline.report import write_report

__all__ = ["cmd_characterize", "colour_summary", "luminance_summary", "register", "summary"]


def register(sub: Any) -> None:
    """Add ``sensorlab characterize CONFIG [--out DIR]``."""
    p = sub.add_parser(
        "characterize",
        help="EMVA 1288 datasheet of the configured sensor (photon-transfer method)",
        description="Run the EMVA 1288 photon-transfer method on the config's photodetector "
        "and ADC: flat fields from dark to beyond saturation, two frames per level. Writes "
        "datasheet.json, photon_transfer.png and snr.png. A spectral colour sensor also gets "
        "its colour figures: ColorChecker ΔE2000 after the CCM, the CCM's noise gain and the "
        "Vora-Trussell metamerism factor.",
    )
    p.add_argument("config", help="run config YAML")
    add_set_option(p)
    p.add_argument("--out", help="datasheet folder (default: <run.out>/characterize-<stem>)")
    p.add_argument(
        "--levels",
        type=int,
        default=DEFAULT_LEVELS,
        help=f"exposure levels, at least {MIN_LEVELS} (default {DEFAULT_LEVELS})",
    )
    p.add_argument(
        "--size",
        type=int,
        default=DEFAULT_SIZE,
        help=f"flat-field frame size in pixels, square (default {DEFAULT_SIZE})",
    )
    p.add_argument(
        "--colour-illuminant",
        help="spectral sensor: the light of the colour figures, a colour.SDS_ILLUMINANTS name "
        "(default: the scene's illuminant)",
    )
    p.set_defaults(func=cmd_characterize)


def cmd_characterize(args: argparse.Namespace) -> int:
    folder, sheet = characterize_config(
        args.config,
        args.overrides,
        out=args.out,
        levels=args.levels,
        size=args.size,
        colour_illuminant=args.colour_illuminant,
    )
    print(summary(sheet, folder))
    print(f"report: {write_report(folder)}")
    return 0


def summary(sheet: Mapping[str, Any], folder: Path) -> str:
    """Two lines per channel with the headline EMVA 1288 figures (and the FPN figures)."""
    lines = [f"EMVA 1288 datasheet of {sheet['sensor']['cfa']} sensor: {folder}"]
    for colour, ch in sheet["channels"].items():
        bound = "<" if ch["temporal_dark_noise_is_upper_bound"] else ""
        lines.append(
            f"  {colour}: K {ch['system_gain_dn_per_e']:.4g} DN/e-, "
            f"QE {ch['quantum_efficiency_pct']:.1f} %, "
            f"sigma_d {bound}{ch['temporal_dark_noise_e']:.3g} e-, "
            f"sat {ch['saturation_capacity_e']:.4g} e-, "
            f"SNR_max {ch['snr_max_db']:.1f} dB, DR {ch['dynamic_range_db']:.1f} dB"
        )
        lines.append(
            f"     DSNU {ch['dsnu_e']:.3g} e- (row {ch['row_offset_fpn_e']:.3g}, "
            f"col {ch['col_offset_fpn_e']:.3g}), PRNU {ch['prnu_pct']:.3g} % "
            f"(row {ch['row_gain_fpn_pct']:.3g}, col {ch['col_gain_fpn_pct']:.3g}), "
            f"row noise {ch['row_temporal_noise_e']:.3g} e-"
        )
        lines.extend(f"     note: {note}" for note in ch["notes"])
    if "colour" in sheet:
        lines.extend(colour_summary(sheet["colour"]))
    if "luminance" in sheet:
        lines.extend(luminance_summary(sheet["luminance"]))
    return "\n".join(lines)


def luminance_summary(figures: Mapping[str, Any]) -> list[str]:
    """Two lines: a mono sensor's luminance error and the ΔE2000 of its grey output."""
    return [
        f"  mono under {figures['illuminant']}: ColorChecker dL* mean "
        f"{figures['delta_l_mean']:.2f}, max {figures['delta_l_max']:.2f} (one scale fitted)",
        f"     grey output dE2000 mean {figures['delta_e2000_mean']:.2f}, max "
        f"{figures['delta_e2000_max']:.2f} (a grey of the true luminance: mean "
        f"{figures['delta_e2000_floor_mean']:.2f}, the chroma no mono sensor delivers)",
    ]


def colour_summary(colour: Mapping[str, Any]) -> list[str]:
    """Three lines: ΔE2000 after the CCM, the sRGB CCM's noise gain, the μ-factor."""
    gain = ", ".join(f"{g:.2f}" for g in colour["ccm_noise_gain"])
    return [
        f"  colour under {colour['illuminant']}: ColorChecker dE2000 after CCM mean "
        f"{colour['delta_e2000_mean']:.2f}, max {colour['delta_e2000_max']:.2f}",
        f"     sRGB CCM noise gain (R, G, B) {gain}; "
        f"Vora-Trussell mu {colour['vora_trussell_mu']:.4f} (1: Luther condition)",
    ]
