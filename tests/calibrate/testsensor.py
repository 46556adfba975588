"""The test sensor: a small simulated RGGB sensor with every noise source on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .simulate import SimSensor, write_manifest

#: the simulated sensor (sensorlab's photodetector and ADC parameters)
TRUE_PD: dict[str, Any] = {
    "cfa": "RGGB",
    "qe": (0.5, 0.6, 0.4),
    "full_well_e": 6000.0,
    "read_noise_e": 3.0,
    "prnu_pct": 1.0,
    "dsnu_e": 1.5,
    "row_noise_e": 0.8,
    "col_noise_e": 0.6,
    "row_offset_fpn_e": 1.0,
    "col_offset_fpn_e": 0.7,
    "row_gain_fpn_pct": 0.5,
    "col_gain_fpn_pct": 0.4,
    "dark_current_e_per_s": 50.0,
    "exposure_s": 0.02,
}
TRUE_ADC: dict[str, Any] = {"bits": 12, "system_gain_dn_per_e": 0.5, "black_level_dn": 200}
SHAPE = (64, 64)
LEVELS = np.linspace(0.0, 1.3 * 6000 / 0.4, 16)[1:]


def simulate_manifest(folder: Path, *, seed: int = 3, frames: int = 6, darks: int = 12) -> Path:
    """The test sensor's manifest folder (darks at 0.02 s and 0.2 s, 15 flat levels)."""
    sensor = SimSensor(TRUE_PD, TRUE_ADC, SHAPE, seed=seed)
    return write_manifest(
        folder,
        sensor,
        photon_levels=LEVELS,
        frames_per_level=frames,
        dark_frames=darks,
        exposure_s=0.02,
        dark_exposures=(0.2,),
    )
