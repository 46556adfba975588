"""Per-channel fits of the sensor model to the levels' streamed statistics.

For each CFA channel (its tile phases pooled) and the dark levels at one or more
exposure times t and flat levels at photon levels μ_p:

- dark line ``μ_y.dark(t) = b + K D t`` (least squares over the dark exposures): the
  black level b (DN) and the dark current D (e⁻/s); one dark exposure gives b only;
- the EMVA 1288 photon transfer (:func:`pipeline.emva.photon_transfer`): K, R = ηK, η,
  σ_d, the saturation point μ_e.sat; the dark mean and variance of each flat level
  come from the dark line at its exposure;
- the full well: the plateau ``max_l (μ_y,l − μ_y.dark) / K + D t`` of the mean beyond
  saturation (the dark electrons fill the well too);
- read noise ``σ_r² = σ_d² − σ_row.t² − σ_col.t² − D t`` (what is left of the temporal
  dark noise once row/column temporal noise and dark shot noise are taken out; the line
  variances unclipped, as a clipped estimate of a zero variance is biased up);
- the row/column/pixel decomposition (:func:`pipeline.emva.line_nonuniformity`) of the
  dark level and of the flat level nearest 50 % of saturation: DSNU and PRNU, row and
  column offset and gain FPN, row (and column) temporal noise;
- the linearity error ``LE = (max δ − min δ) / 2`` of ``δ = (y − fit) / fit`` (%) over
  5–95 % of saturation (EMVA 1288 R4.0 Linear, section 6.6).

Uncertainty: the pair-based figures (K, η, σ_d, read noise, black level, dark current,
saturation, full well) by bootstrap over frames (:mod:`pipeline.calibrate.bootstrap`),
and for the black level also the spread of the fixed patterns' mean over the channel's
pixels (the sensor is one draw of its patterns), for the read noise also the sampling
error of the row/column temporal variances taken out of it (fixed in the bootstrap:
``SE(σ_r) = SE(σ²_row.t + σ²_col.t) / (2 σ_r K²)``, delta method);
the spatial figures analytically, from the sampling of the pattern: an rms estimated
from n independent lines (pixels) with observed variance v has
``var(ŝ²) = 2 v² / (n − 1)`` and ``SE(ŝ) = SE(ŝ²) / (2 ŝ)`` (delta method).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from pipeline import emva
from pipeline.calibrate.stream import LevelStats

__all__ = ["Level", "channel_phases", "pair_figures", "spatial_figures"]

LINEARITY_RANGE = (0.05, 0.95)


@dataclasses.dataclass
class Level:
    """One exposure level: dark or flat, exposure time (s), photons per pixel, its stats."""

    kind: str
    exposure_s: float
    photons: float | None
    stats: LevelStats


def channel_phases(tile: tuple[str, ...]) -> dict[str, list[tuple[int, int]]]:
    """Channel letter → its tile phases ``(i, j)``, in R, G, B, W order."""
    out: dict[str, list[tuple[int, int]]] = {}
    for letter in "RGBW":
        phases = [(i, j) for i, row in enumerate(tile) for j, c in enumerate(row) if c == letter]
        if phases:
            out[letter] = phases
    return out


def _line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Intercept and slope of least squares ``y = a + b x`` (slope 0 for one distinct x)."""
    if np.ptp(x) == 0:
        return float(np.mean(y)), 0.0
    slope, intercept = np.polyfit(x, y, 1)
    return float(intercept), float(slope)


def pair_figures(
    darks: list[tuple[float, np.ndarray, np.ndarray]],
    flats: list[tuple[float, float, np.ndarray, np.ndarray]],
    line_temporal_dn2: float,
) -> dict[str, Any]:
    """The pair-based figures of one channel (the bootstrap's statistic).

    Parameters
    ----------
    darks : per dark level ``(exposure_s, pair_mean_dn[P], pair_var_dn2[P])``.
    flats : per flat level ``(x, exposure_s, pair_mean_dn[P], pair_var_dn2[P])`` with x the
        photons per pixel (or the exposure time when photons are unknown).
    line_temporal_dn2 : σ²_row.t + σ²_col.t of the dark level (DN²), taken out of σ_d
        for the read noise.

    Returns
    -------
    dict of floats, and ``"ptc"``: the :class:`pipeline.emva.PhotonTransfer`.
    """
    t_dark = np.array([d[0] for d in darks])
    b, slope = _line(t_dark, np.array([d[1].mean() for d in darks]))
    v0, vslope = _line(t_dark, np.array([d[2].mean() for d in darks]))
    x = np.array([f[0] for f in flats])
    t_flat = np.array([f[1] for f in flats])
    mu_y = np.array([f[2].mean() for f in flats])
    var_y = np.array([f[3].mean() for f in flats])
    order = np.argsort(x)
    x, t_flat, mu_y, var_y = x[order], t_flat[order], mu_y[order], var_y[order]
    dark_mu, dark_var = b + slope * t_flat, v0 + vslope * t_flat
    ptc = emva.photon_transfer(x, mu_y, var_y, dark_mu, dark_var)
    k = ptc.system_gain_dn_per_e
    dark_current = slope / k
    t_ref = float(np.mean(t_flat))
    sigma_d2 = (float(np.mean(dark_var)) - emva.SIGMA_Q2_DN2) / k**2
    read2 = sigma_d2 - line_temporal_dn2 / k**2 - max(dark_current, 0.0) * t_ref
    return {
        "ptc": ptc,
        "system_gain_dn_per_e": k,
        "responsivity_dn_per_photon": ptc.responsivity_dn_per_photon,
        "quantum_efficiency": ptc.quantum_efficiency,
        "black_level_dn": b,
        "dark_current_e_per_s": dark_current,
        "temporal_dark_noise_e": ptc.sigma_d_e,
        "read_noise_e": math.sqrt(max(read2, 0.0)),
        "saturation_capacity_e": ptc.mu_e_sat,
        # the dark electrons (D t) sit in the well with the light and are clipped with it
        "full_well_e": float(np.max(mu_y - dark_mu)) / k + max(dark_current, 0.0) * t_ref,
        "saturation_dn": float(np.max(mu_y)),
        "linearity_error_pct": linearity_error_pct(x, mu_y - dark_mu, ptc.saturation_index),
        "snr_max_db": emva.ratio_db(ptc.snr_max),
        "dynamic_range_db": emva.ratio_db(ptc.dynamic_range),
        "exposure_ref_s": t_ref,
    }


def linearity_error_pct(x: np.ndarray, signal_dn: np.ndarray, sat_index: int) -> float:
    """EMVA 1288 linearity error (%): half the spread of the relative deviations from a
    least-squares line over 5–95 % of the saturation signal (NaN for fewer than 3 levels)."""
    lo, hi = LINEARITY_RANGE
    top = signal_dn[sat_index]
    use = (signal_dn >= lo * top) & (signal_dn <= hi * top)
    use[sat_index + 1 :] = False
    if np.count_nonzero(use) < 3:
        return float("nan")
    a, b = _line(x[use], signal_dn[use])
    fit = a + b * x[use]
    delta = 100.0 * (signal_dn[use] - fit) / fit
    return float((delta.max() - delta.min()) / 2)


def _rms_with_se(var: float, se_var: float, scale: float) -> tuple[float, float]:
    """``sqrt(var)·scale`` and its standard error by the delta method (bounded near 0)."""
    value = math.sqrt(max(var, 0.0))
    se = math.sqrt(se_var) if value == 0 else min(se_var / (2 * value), math.sqrt(se_var))
    return value * scale, se * scale


def spatial_figures(
    dark: LevelStats,
    bright: LevelStats,
    tile: tuple[int, int],
    phases: list[tuple[int, int]],
    gain_dn_per_e: float,
) -> dict[str, tuple[float, float]]:
    """DSNU/PRNU and their row/column/pixel parts, row/column temporal noise, with SEs.

    Parameters
    ----------
    dark, bright : the dark level and a flat level near 50 % of saturation.
    tile : the tile's shape; phases : the channel's phases in it.
    gain_dn_per_e : K.

    Returns
    -------
    ``name → (value, standard_error)`` in e⁻ (offsets, temporal) or % (gains).
    """
    k = gain_dn_per_e
    d_parts = [dark.decomposition(tile, i, j) for i, j in phases]
    b_parts = [bright.decomposition(tile, i, j) for i, j in phases]
    d, b = emva.mean_decomposition(d_parts), emva.mean_decomposition(b_parts)
    m, n = dark.mean_frame[:: tile[0], :: tile[1]].shape
    rows = m * len({i for i, _ in phases})
    cols = n * len({j for _, j in phases})
    pixels = m * n * len(phases)
    signal = b.mean_dn - d.mean_dn

    def se_var(observed: float, count: int) -> float:
        return math.sqrt(2.0 / (count - 1)) * max(observed, 0.0)

    def observed(part: emva.SpatialDecomposition, which: str, stats: LevelStats) -> float:
        pix = part.pixel_dn2 + part.temporal_dn2 / stats.n_frames
        if which == "row":
            return part.row_dn2 + pix / n + part.row_temporal_dn2 / stats.n_frames
        if which == "col":
            return part.col_dn2 + pix / m
        return pix

    out: dict[str, tuple[float, float]] = {}
    counts = {"row": rows, "col": cols, "pixel": pixels}
    dark_names = {"row": "row_offset_fpn_e", "col": "col_offset_fpn_e", "pixel": "dsnu_e"}
    gain_names = {"row": "row_gain_fpn_pct", "col": "col_gain_fpn_pct", "pixel": "prnu_pct"}
    for which, count in counts.items():
        dv = getattr(d, f"{which}_dn2")
        bv = getattr(b, f"{which}_dn2")
        se_d = se_var(observed(d, which, dark), count)
        se_b = se_var(observed(b, which, bright), count)
        out[dark_names[which]] = _rms_with_se(dv, se_d, 1.0 / k)
        out[gain_names[which]] = _rms_with_se(bv - dv, math.hypot(se_d, se_b), 100.0 / signal)
    # totals (EMVA DSNU1288 / PRNU1288: all parts together)
    se_tot_d = se_var(d.total_dn2 + d.temporal_dn2 / dark.n_frames, pixels)
    se_tot_b = se_var(b.total_dn2 + b.temporal_dn2 / bright.n_frames, pixels)
    out["dsnu_total_e"] = _rms_with_se(d.total_dn2, se_tot_d, 1.0 / k)
    out["prnu_total_pct"] = _rms_with_se(
        b.total_dn2 - d.total_dn2, math.hypot(se_tot_d, se_tot_b), 100.0 / signal
    )
    # temporal line noise: per-frame row (column) means over L frames
    row_t = d.row_temporal_dn2
    col_t = d.col_temporal_dn2
    line_se2 = 0.0
    for name, var, count in (("row_noise_e", row_t, rows), ("col_noise_e", col_t, cols)):
        obs = var + d.temporal_dn2 / (n if name == "row_noise_e" else m)
        se = math.sqrt(2.0 / max(count * (dark.n_frames - 1) - 1, 1)) * obs
        out[name] = _rms_with_se(var, se, 1.0 / k)
        line_se2 += se**2
    # unclipped: both variance estimates are unbiased, their positive parts are not
    out["line_temporal_dn2"] = (row_t + col_t, math.sqrt(line_se2))
    # the black level is the mean over the channel's pixels of a sensor whose patterns
    # are one draw: their means add var(row)/rows + var(col)/cols + var(pixel)/pixels
    pattern_var = (
        max(d.row_dn2, 0.0) / rows + max(d.col_dn2, 0.0) / cols + max(d.pixel_dn2, 0.0) / pixels
    )
    out["black_level_pattern_se_dn"] = (math.sqrt(pattern_var), 0.0)
    return out
