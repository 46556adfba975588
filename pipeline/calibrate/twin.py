"""The fitted figures → a ``sensor:`` list that ``sensorlab run`` takes as it is.

The rows: ``scene`` (the flats' exposure time, and the mid flat level as mean photons),
``photodetector`` (CFA, QE per colour as each channel's responsivity over the sensor's
K, full well, read noise and its distribution, row and column temporal noise, DSNU/PRNU
and row/column FPN, dark current), ``adc`` (bits, K, black level; the fitted black
level's fraction of a code as ``offset_lsb``) and ``raw``. The photodetector's
parameters are one per sensor: the channels' mean (QE stays per colour). What
sensorlab's model cannot hold is listed in ``notes`` (ADC temporal noise is
indistinguishable from read noise and is folded into it).
"""

from __future__ import annotations

from typing import Any

__all__ = ["sensor_rows"]

_PHOTODETECTOR = (
    ("full_well_e", "full_well_e"),
    ("read_noise_e", "read_noise_e"),
    ("row_noise_e", "row_noise_e"),
    ("col_noise_e", "col_noise_e"),
    ("row_offset_fpn_e", "row_offset_fpn_e"),
    ("col_offset_fpn_e", "col_offset_fpn_e"),
    ("row_gain_fpn_pct", "row_gain_fpn_pct"),
    ("col_gain_fpn_pct", "col_gain_fpn_pct"),
    ("prnu_pct", "prnu_pct"),
    ("dsnu_e", "dsnu_e"),
    ("dark_current_e_per_s", "dark_current_e_per_s"),
)


def _round(x: float, digits: int = 5) -> float:
    return float(f"{x:.{digits}g}")


def sensor_rows(
    fit: dict[str, Any],
    *,
    cfa: str,
    bits: int,
    black_level_dn: int | None,
    exposure_s: float,
    mean_photons: float | None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """The twin's sensor rows and the notes on what they leave out.

    Parameters
    ----------
    fit : :func:`pipeline.calibrate.analyse.analyse`'s result.
    cfa, bits : the sensor's colour filter array and ADC resolution.
    black_level_dn : the nominal black level (None: the fitted one, rounded).
    exposure_s : the flats' exposure time (s).
    mean_photons : a flat level's photons per pixel for the scene (None: the default).
    """
    sensor = fit["sensor"]
    notes: list[str] = []
    pd: dict[str, Any] = {"stage": "photodetector", "cfa": cfa}
    # η = R / K with the sensor's K (one ADC gain): R is the better-determined slope
    k = sensor["system_gain_dn_per_e"]["value"]
    qe = {c: ch["responsivity_dn_per_photon"]["value"] / k for c, ch in fit["channels"].items()}
    if mean_photons is None:
        notes.append("no photon levels in the manifest: qe is 1 (the scene's photons are e-)")
        qe = {c: 1.0 for c in qe}
    if cfa == "mono":
        pd["qe_w"] = _round(min(qe["W"], 1.0))
    else:
        pd["qe"] = [_round(min(qe[c], 1.0)) for c in "RGB"]
    for key, name in _PHOTODETECTOR:
        pd[key] = _round(max(sensor[name]["value"] or 0.0, 0.0))
    pd["full_well_e"] = max(pd["full_well_e"], 1.0)
    dist = fit.get("noise_distribution")
    if dist and dist["dist"] != "gaussian":
        pd["read_noise_dist"] = dist["dist"]
        pd["read_noise_shape"] = _round(dist["shape"], 4)
    black_fit = sensor["black_level_dn"]["value"]
    black = round(black_fit) if black_level_dn is None else black_level_dn
    adc = {
        "stage": "adc",
        "bits": bits,
        "system_gain_dn_per_e": _round(sensor["system_gain_dn_per_e"]["value"], 6),
        "black_level_dn": int(black),
        "offset_lsb": _round(black_fit - black, 4),
    }
    scene: dict[str, Any] = {"stage": "scene", "exposure_s": _round(exposure_s, 6)}
    if mean_photons is not None:
        scene["mean_photons"] = _round(mean_photons)
    return [scene, pd, adc, {"stage": "raw"}], notes
