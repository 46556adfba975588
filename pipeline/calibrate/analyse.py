"""Streamed levels → every fitted figure, per channel and for the sensor, with uncertainty.

Each figure is ``{"value", "stderr", "ci95": [low, high], "method"}``: method
``bootstrap`` (over frame pairs, :mod:`pipeline.calibrate.bootstrap`) or ``analytic``
(pattern sampling, :func:`pipeline.calibrate.fit.spatial_figures`; interval ±1.96 SE).
The black level adds the fixed patterns' mean in quadrature, the read noise the sampling
error of the row/column temporal noise taken out of it (``bootstrap+analytic``, the
interval with the bootstrap's t quantile).
The sensor's figure is the mean over channels (its bootstrap resamples the same frame
pairs for every channel; an analytic SE is the channels' mean SE, as their patterns
share rows and columns).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pipeline.calibrate.bootstrap import bootstrap
from pipeline.calibrate.fit import Level, channel_phases, pair_figures, spatial_figures
from pipeline.calibrate.measure import Measured
from pipeline.calibrate.noise_dist import fit_noise_distribution, standard_logpdf

__all__ = ["BOOTSTRAPPED", "SPATIAL", "analyse"]

#: figures from pair_figures that get bootstrap intervals
BOOTSTRAPPED = (
    "system_gain_dn_per_e",
    "quantum_efficiency",
    "responsivity_dn_per_photon",
    "black_level_dn",
    "dark_current_e_per_s",
    "temporal_dark_noise_e",
    "read_noise_e",
    "saturation_capacity_e",
    "full_well_e",
    "saturation_dn",
    "linearity_error_pct",
    "snr_max_db",
    "dynamic_range_db",
)
#: figures from spatial_figures (analytic standard errors)
SPATIAL = (
    "dsnu_e",
    "prnu_pct",
    "row_offset_fpn_e",
    "col_offset_fpn_e",
    "row_gain_fpn_pct",
    "col_gain_fpn_pct",
    "dsnu_total_e",
    "prnu_total_pct",
    "row_noise_e",
    "col_noise_e",
)
HIST_BINS = 81


def _pairs(level: Level, phases: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Per pair mean and ``var(A − B)/2`` of one channel (its phases averaged)."""
    s = level.stats
    mean = np.mean([s.pair_mean_dn[:, i, j] for i, j in phases], axis=0)
    var = np.mean([s.pair_var_dn2[:, i, j] for i, j in phases], axis=0)
    return mean, var


#: one channel's levels for :func:`pair_figures`: darks ``(t, mean[P], var[P])``, flats
#: ``(x, t, mean[P], var[P])``
ChannelLevels = tuple[list[tuple], list[tuple]]


def _channel_levels(m: Measured, phases: list[tuple[int, int]]) -> ChannelLevels:
    """The channel's per-pair statistics of every level (computed once, then picked)."""
    darks = [(lv.exposure_s, *_pairs(lv, phases)) for lv in m.darks]
    flats = [
        (
            lv.photons if lv.photons is not None else lv.exposure_s,
            lv.exposure_s,
            *_pairs(lv, phases),
        )
        for lv in m.flats
    ]
    return darks, flats


def _channel_pairs(
    levels: ChannelLevels, picks: list[np.ndarray] | None, line_dn2: float
) -> dict[str, Any]:
    """:func:`pair_figures` of one channel, with the pairs ``picks`` of every level
    (darks, then flats; None: all)."""
    darks, flats = levels
    if picks is not None:
        darks = [(*d[:-2], d[-2][p], d[-1][p]) for d, p in zip(darks, picks, strict=False)]
        flats = [
            (*f[:-2], f[-2][p], f[-1][p]) for f, p in zip(flats, picks[len(darks) :], strict=True)
        ]
    return pair_figures(darks, flats, line_dn2)


def _figure(value: float, stderr: float, low: float, high: float, method: str) -> dict:
    def clean(x: float) -> float | None:
        return float(x) if x is not None and math.isfinite(x) else None

    return {
        "value": clean(value),
        "stderr": clean(stderr),
        "ci95": [clean(low), clean(high)],
        "method": method,
    }


def _boot_figure(value: float, boot: dict[str, float]) -> dict:
    se = boot["stderr"]
    return _figure(value, se, value - boot["t95"] * se, value + boot["t95"] * se, "bootstrap")


def _with_analytic(fig: dict, boot: dict[str, float], analytic_se: float) -> dict:
    """The bootstrap figure with an analytic SE added in quadrature (same t quantile)."""
    se = math.hypot(fig["stderr"] or 0.0, analytic_se)
    v, t95 = fig["value"], boot["t95"]
    return _figure(v, se, v - t95 * se, v + t95 * se, "bootstrap+analytic")


def _read_noise_line_se(read_noise_e: float, line_se_dn2: float, k: float) -> float:
    """SE of σ_r from the row/column temporal variances' SE (DN²): delta method."""
    return line_se_dn2 / k**2 / (2 * read_noise_e) if read_noise_e > 0 else 0.0


def _bright(m: Measured, fig: dict[str, Any]) -> Level:
    """The flat level whose signal is nearest half the saturation signal."""
    ptc = fig["ptc"]
    signal = ptc.mu_y - ptc.mu_y_dark_dn
    target = 0.5 * signal[ptc.saturation_index]
    # ptc arrays follow the flats' (sorted) order
    return m.flats[int(np.argmin(np.abs(signal - target)))]


def _reference_dark(m: Measured, exposure_s: float) -> Level:
    return min(m.darks, key=lambda lv: abs(lv.exposure_s - exposure_s))


def analyse(
    m: Measured,
    tile: tuple[str, ...],
    *,
    replicates: int = 200,
    seed: int = 0,
    noise_dn: np.ndarray | None = None,
    nominal_black_dn: int | None = None,
) -> dict[str, Any]:
    """Fit every channel and the sensor (see the module docstring).

    Parameters
    ----------
    m : the measured levels.
    tile : the CFA tile's rows of channel letters.
    replicates, seed : the bootstrap's.
    noise_dn : dark temporal-noise samples (DN) for the distribution fit, or None.
    nominal_black_dn : the nominal black level; given, ``black_level_error_dn`` (fitted
        minus nominal, with the black level's uncertainty) is added.

    Returns
    -------
    dict with ``channels`` (name → figures and curves), ``sensor`` (figures),
    ``noise_distribution``, ``spectra``, ``dark_histogram``, ``bootstrap``.
    """
    tshape = (len(tile), len(tile[0]))
    channels = channel_phases(tile)
    spatial: dict[str, dict] = {}
    point: dict[str, dict] = {}
    levels = {name: _channel_levels(m, phases) for name, phases in channels.items()}
    for name, phases in channels.items():
        first = _channel_pairs(levels[name], None, 0.0)
        dark = _reference_dark(m, first["exposure_ref_s"])
        sp = spatial_figures(
            dark.stats, _bright(m, first).stats, tshape, phases, first["system_gain_dn_per_e"]
        )
        spatial[name] = sp
        point[name] = _channel_pairs(levels[name], None, sp["line_temporal_dn2"][0])

    def statistic(picks: list[np.ndarray]) -> dict[str, float]:
        out: dict[str, float] = {}
        for name in channels:
            fig = _channel_pairs(levels[name], picks, spatial[name]["line_temporal_dn2"][0])
            out |= {f"{name}.{k}": fig[k] for k in BOOTSTRAPPED}
        for k in BOOTSTRAPPED:
            out[f"sensor.{k}"] = float(np.mean([out[f"{c}.{k}"] for c in channels]))
        return out

    counts = [len(lv.stats.pair_var_dn2) for lv in (*m.darks, *m.flats)]
    boot, failed = bootstrap(statistic, counts, replicates=replicates, seed=seed)
    result: dict[str, Any] = {"channels": {}, "sensor": {}}
    missing = {"stderr": float("nan"), "t95": float("nan")}
    read_se: dict[str, float] = {}
    for name in channels:
        figs = {}
        for k in BOOTSTRAPPED:
            b = boot.get(f"{name}.{k}", missing)
            figs[k] = _boot_figure(point[name][k], b)
        for k in SPATIAL:
            v, se = spatial[name][k]
            figs[k] = _figure(v, se, v - 1.96 * se, v + 1.96 * se, "analytic")
        figs["black_level_dn"] = _with_analytic(
            figs["black_level_dn"],
            boot.get(f"{name}.black_level_dn", missing),
            spatial[name]["black_level_pattern_se_dn"][0],
        )
        read_se[name] = _read_noise_line_se(
            point[name]["read_noise_e"],
            spatial[name]["line_temporal_dn2"][1],
            point[name]["system_gain_dn_per_e"],
        )
        figs["read_noise_e"] = _with_analytic(
            figs["read_noise_e"], boot.get(f"{name}.read_noise_e", missing), read_se[name]
        )
        ptc = point[name]["ptc"]
        figs["curves"] = {
            "level": ptc.mu_p.tolist(),
            "mu_y_dn": ptc.mu_y.tolist(),
            "var_y_dn2": ptc.var_y.tolist(),
            "snr": ptc.snr.tolist(),
            "mu_y_dark_dn": ptc.mu_y_dark_dn,
            "fit_mask": ptc.fit_mask.tolist(),
            "saturation_index": ptc.saturation_index,
        }
        result["channels"][name] = figs
    for k in BOOTSTRAPPED:
        b = boot.get(f"sensor.{k}", missing)
        result["sensor"][k] = _boot_figure(float(np.mean([point[c][k] for c in channels])), b)
    result["sensor"]["black_level_dn"] = _with_analytic(
        result["sensor"]["black_level_dn"],
        boot.get("sensor.black_level_dn", missing),
        float(np.mean([spatial[c]["black_level_pattern_se_dn"][0] for c in channels])),
    )
    # the channels share rows and columns: their line-noise errors move together
    result["sensor"]["read_noise_e"] = _with_analytic(
        result["sensor"]["read_noise_e"],
        boot.get("sensor.read_noise_e", missing),
        float(np.mean(list(read_se.values()))),
    )
    for k in SPATIAL:
        v = float(np.mean([spatial[c][k][0] for c in channels]))
        se = float(np.mean([spatial[c][k][1] for c in channels]))
        result["sensor"][k] = _figure(v, se, v - 1.96 * se, v + 1.96 * se, "analytic")
    if nominal_black_dn is not None:
        for figs in (*result["channels"].values(), result["sensor"]):
            b = figs["black_level_dn"]
            low, high = b["ci95"]
            figs["black_level_error_dn"] = {
                **b,
                "value": b["value"] - nominal_black_dn,
                "ci95": [low - nominal_black_dn, high - nominal_black_dn],
            }
    result["bootstrap"] = {"replicates": replicates, "failed": failed, "seed": seed}
    k_mean = result["sensor"]["system_gain_dn_per_e"]["value"]
    t_ref = point[next(iter(channels))]["exposure_ref_s"]
    dark = _reference_dark(m, t_ref)
    result["reference_dark_exposure_s"] = dark.exposure_s
    result["spectra"] = {k: v.tolist() for k, v in dark.stats.profile_spectra(tshape).items()}
    if noise_dn is not None:
        result |= _distribution(noise_dn / k_mean)
    return result


def _distribution(noise_e: np.ndarray) -> dict[str, Any]:
    fit = fit_noise_distribution(noise_e)
    lim = float(np.percentile(np.abs(noise_e), 99.9))
    counts, edges = np.histogram(noise_e, bins=HIST_BINS, range=(-lim, lim), density=True)
    centres = (edges[:-1] + edges[1:]) / 2
    return {
        "noise_distribution": fit,
        "dark_histogram": {
            "edges_e": edges.tolist(),
            "density": counts.tolist(),
            "fitted_density": np.exp(
                standard_logpdf(fit["dist"], fit["shape"], centres, fit["sigma"])
            ).tolist(),
            "gaussian_density": np.exp(
                standard_logpdf("gaussian", None, centres, fit["sigma"])
            ).tolist(),
        },
    }
