"""The colour figures of a sensor's QE curves: ΔE2000 after the CCM, the CCM's noise
amplification, and the sensor's metamerism index against the CIE observer.

All noiseless and computed from the curves alone (no frames), under one illuminant:

* the ColorChecker fit of :func:`sensors.colour_correction.fit_chart` (camera RGB → XYZ,
  ISO 17321-1's least-squares matrix): the CCM, mean and max ΔE2000 over the 24 patches;
* the CCM the raw stage applies (:func:`sensors.colour_correction.srgb_ccm`, illuminant
  white balance then camera → linear sRGB), and its SNR loss per output channel for
  independent, equal channel noise (:func:`sensors.colour_correction.ccm_noise_gain`);
* the Vora–Trussell μ-factor (:func:`sensors.colour_correction.vora_trussell_mu`) of the
  curves against the CIE 1931 2° colour-matching functions, weighted by the illuminant:
  1 for a sensor that meets the Luther condition. The QE curves act on photons and the
  CMFs on energy (a photon of λ carries h·c/λ), so the curves compared with the QE are
  the CMFs per photon, x̄(λ)/λ, ȳ(λ)/λ, z̄(λ)/λ (any constant factor drops out).

A monochrome sensor has one curve and gives a grey image, so a CCM and μ do not apply:
:func:`luminance_accuracy` reports how well its one channel, scaled by least squares,
gives each patch's luminance (ΔL*), and the ΔE2000 of the grey it delivers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sensors import spectra
from sensors.colour_correction import (
    ccm_noise_gain,
    chart_camera_rgb,
    chart_xyz,
    delta_e2000,
    fit_chart,
    srgb_ccm,
    vora_trussell_mu,
)
from sensors.spectral import CURVE_CHANNELS
from sensors.white_balance import illuminant_gains

__all__ = ["colour_accuracy", "luminance_accuracy"]


def colour_accuracy(
    qe_curves: np.ndarray,
    bands_nm: np.ndarray,
    *,
    illuminant: str = "D65",
    chart: str = "BabelColor Average",
) -> dict[str, Any]:
    """The colour datasheet of R, G, B QE curves under ``illuminant`` (JSON-ready).

    Parameters
    ----------
    qe_curves : (3, B) (or more rows: the first three are R, G, B) QE curves, e⁻/photon.
    bands_nm : band centres, nm.
    illuminant : a colour.SDS_ILLUMINANTS name (``flat_photons``, which has no CIE
        colorimetry, is replaced by D65; the result names the light used).
    chart : a colour.SDS_COLOURCHECKERS name.

    Returns
    -------
    ``{"illuminant", "chart", "delta_e2000_mean", "delta_e2000_max", "delta_e2000",
    "ccm_xyz", "wb_gains", "ccm_srgb", "ccm_noise_gain", "vora_trussell_mu"}``.
    """
    if illuminant == spectra.FLAT_PHOTONS:  # not a CIE light: no XYZ to compare with
        illuminant = "D65"
    qe = np.asarray(qe_curves, dtype=np.float64)[:3]
    bands = np.asarray(bands_nm, dtype=np.float64)
    light = spectra.illuminant_photons(illuminant, bands)
    fit = fit_chart(qe, bands, illuminant=illuminant, chart=chart)
    gains = illuminant_gains(qe, light)
    to_srgb = srgb_ccm(qe, bands, illuminant=illuminant, wb_gains=gains, chart=chart)
    cmfs_per_photon = spectra.colour_matching_functions(bands) / bands  # energy → photons
    return {
        "illuminant": illuminant,
        "chart": chart,
        "delta_e2000_mean": fit.mean_delta_e,
        "delta_e2000_max": fit.max_delta_e,
        "delta_e2000": dict(zip(fit.patches, fit.delta_e.tolist(), strict=True)),
        "ccm_xyz": fit.ccm.tolist(),
        "wb_gains": gains.tolist(),
        "ccm_srgb": to_srgb.tolist(),
        "ccm_noise_gain": ccm_noise_gain(to_srgb).tolist(),
        "vora_trussell_mu": vora_trussell_mu(qe, cmfs_per_photon, light),
    }


def luminance_accuracy(
    qe_curves: np.ndarray,
    bands_nm: np.ndarray,
    *,
    illuminant: str = "D65",
    chart: str = "BabelColor Average",
) -> dict[str, Any]:
    """The colour datasheet of a monochrome sensor: its grey output against the chart.

    The patches' responses ``w`` through the one QE curve under ``illuminant`` are mapped
    to luminance by the least-squares scale ``k = Σ w·Y / Σ w²`` (Y of the patches, white
    Y = 1), and each patch is delivered as the grey of luminance ``k·w``: the
    illuminant's white chromaticity, ``XYZ = k·w · XYZ_white / Y_white`` (a* = b* = 0).
    ΔL* and ΔE2000 against the patches' true colour are in CIELAB relative to the white
    (:func:`sensors.colour_correction.delta_e2000`). The ΔE2000 floor is that of the grey
    with each patch's true luminance: what any grey output loses, the patch's chroma.

    Parameters
    ----------
    qe_curves : (B,) QE of the panchromatic pixel at ``bands_nm``, e⁻/photon, or the
        (4, B) rows R, G, B, W of :func:`sensors.spectral.qe_curves` (its W row is taken).
    bands_nm : band centres, nm.
    illuminant : a colour.SDS_ILLUMINANTS name (``flat_photons`` falls back to D65).
    chart : a colour.SDS_COLOURCHECKERS name.

    Returns
    -------
    ``{"illuminant", "chart", "luminance_scale", "delta_l_mean", "delta_l_max",
    "delta_e2000_mean", "delta_e2000_max", "delta_e2000_floor_mean",
    "delta_e2000_floor_max", "delta_l", "delta_e2000"}`` (per-patch dicts last).
    """
    import colour

    if illuminant == spectra.FLAT_PHOTONS:
        illuminant = "D65"
    bands = np.asarray(bands_nm, dtype=np.float64)
    reflectances, names = spectra.colourchecker_reflectances(chart, bands)
    light = spectra.illuminant_photons(illuminant, bands)
    curves = np.asarray(qe_curves, dtype=np.float64)
    curve = curves[CURVE_CHANNELS.index("W")] if curves.ndim == 2 else curves
    curve = curve.reshape(1, -1)
    w = chart_camera_rgb(curve, light, reflectances)[:, 0]
    xyz, white = chart_xyz(illuminant, chart)
    scale = float(w @ xyz[:, 1] / (w @ w))
    grey = (scale * w)[:, None] * (white / white[1])
    true_grey = xyz[:, 1:2] * (white / white[1])
    white_xy = colour.XYZ_to_xy(white / white[1])
    lightness = colour.XYZ_to_Lab(np.concatenate([grey, xyz]) / white[1], white_xy)[:, 0]
    delta_l = np.abs(lightness[: len(w)] - lightness[len(w) :])
    delta_e = delta_e2000(grey, xyz, white)
    floor = delta_e2000(true_grey, xyz, white)
    return {
        "illuminant": illuminant,
        "chart": chart,
        "luminance_scale": scale,
        "delta_l_mean": float(delta_l.mean()),
        "delta_l_max": float(delta_l.max()),
        "delta_e2000_mean": float(delta_e.mean()),
        "delta_e2000_max": float(delta_e.max()),
        "delta_e2000_floor_mean": float(floor.mean()),
        "delta_e2000_floor_max": float(floor.max()),
        "delta_l": dict(zip(names, delta_l.tolist(), strict=True)),
        "delta_e2000": dict(zip(names, delta_e.tolist(), strict=True)),
    }
