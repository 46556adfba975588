"""The ideal sensor: overrides that turn a config into its noise-free, high-bit reference.

One place for what "noise-free reference" means; the sweep's SNR and the image-quality
metrics (PSNR, SSIM) both compare against it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["NOISE_STAGE", "NOISE_SWITCHES", "REFERENCE_BITS", "default_reference"]

# Parameters that make a stage ideal, by stage name: the default noise-free, high-bit
# reference. The photodetector's mean signal (QE, dark current, full well) is kept;
# its temporal noise (photon and dark shot noise, read noise) and its fixed-pattern
# noise (PRNU, DSNU) are removed. The ADC digitises with 24 bits on a linear curve, so
# quantisation counts as noise and the reference is black only for a black scene.
REFERENCE_BITS = 24
NOISE_STAGE = "photodetector"  # the stage whose noise is known: no reference without it
NOISE_SWITCHES: dict[str, dict[str, Any]] = {
    "photodetector": {"shot_noise": False, "read_noise_e": 0.0, "prnu_pct": 0.0, "dsnu_e": 0.0},
    "adc": {"bits": REFERENCE_BITS, "curve": "linear", "thresholds": None},
}


def default_reference(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Overrides that make every stage in :data:`NOISE_SWITCHES` ideal.

    Parameters
    ----------
    raw : a run config as a plain dict.

    Returns
    -------
    dict : ``{"sensor[2].shot_noise": False, ...}``; empty when the chain has no
    photodetector (no known noise to switch off). An ADC given a system gain K
    (``system_gain_dn_per_e``) gets K · 2^(24 − bits): the same full scale in electrons
    with 2^(24 − bits) times finer codes (kept as given, 24 bits would only add codes
    above the full well and the reference would keep the cell's quantisation).
    """
    rows = raw.get("sensor")
    rows = rows if isinstance(rows, list) else []
    if NOISE_STAGE not in [r.get("stage") for r in rows if isinstance(r, dict)]:
        return {}
    out: dict[str, Any] = {}
    for i, row in enumerate(rows):
        switches = NOISE_SWITCHES.get(row.get("stage")) if isinstance(row, dict) else None
        for key, value in (switches or {}).items():
            out[f"sensor[{i}].{key}"] = value
        gain = row.get("system_gain_dn_per_e") if isinstance(row, dict) else None
        if row.get("stage") == "adc" and gain is not None:
            # the same full scale in electrons: K grows with the number of codes
            bits = int(row.get("bits", _default_adc_bits()))
            out[f"sensor[{i}].system_gain_dn_per_e"] = gain * 2.0 ** (REFERENCE_BITS - bits)
    return out


def _default_adc_bits() -> int:
    from pipeline.registry import default_registry

    return int(default_registry().get("adc").Params.model_fields["bits"].default)
