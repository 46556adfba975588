"""Spectral data from colour-science, sampled on a band grid: illuminants, ColorChecker
reflectances, camera sensitivities and RGB → reflectance recovery.

Nothing here is measured or fitted by sensorlab: every curve is colour-science's
(``colour.SDS_ILLUMINANTS``, ``colour.SDS_COLOURCHECKERS``,
``colour.MSDS_CAMERA_SENSITIVITIES``, ``colour.recovery``), sampled with colour's own
interpolators at the band centres. ``colour`` is imported inside the functions: it
takes ~2 s to import, and the RGB scene never needs it.

Illuminants are spectral *power* distributions; a sensor counts photons, and a photon
of wavelength λ carries energy h·c/λ, so the relative photon spectrum is S(λ)·λ
(:func:`illuminant_photons`). CIE illuminant E (equal energy) therefore has a photon
spectrum rising ∝ λ; ``flat_photons`` is the illuminant with the same photon count in
every band (the RGB scene's white: the same photons in R, G and B).

References
----------
CIE 015:2018 Colorimetry, 4th ed. (standard illuminants A, D65, E; F series).
B. Smits, "An RGB-to-spectrum conversion for reflectances", J. Graphics Tools 4(4), 1999.
I. Mallett, C. Yuksel, "Spectral primary decomposition for rendering with sRGB
reflectance", EGSR 2019.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

__all__ = [
    "FLAT_PHOTONS",
    "RECOVERY_METHODS",
    "Recovery",
    "camera_names",
    "camera_sensitivities",
    "chart_names",
    "colour_matching_functions",
    "colourchecker_reflectances",
    "illuminant_names",
    "illuminant_photons",
    "recovery",
]

#: The illuminant with equal photons per band (not a CIE illuminant; see the module doc).
FLAT_PHOTONS = "flat_photons"

#: RGB → reflectance methods of colour.recovery that the scene can run per pixel.
#: Jakob & Hanika (2019) needs a coefficient table colour 0.4.7 does not ship (it
#: generates one at ~2 s per entry, 3·64³ entries), so it is not offered.
RECOVERY_METHODS = ("mallett2019", "smits1999")


def _colour() -> Any:
    import colour  # ~2 s: only when a spectral stage is set up

    return colour


def _sample(sd: Any, bands_nm: np.ndarray, what: str) -> np.ndarray:
    """colour (multi-)spectral distribution ``sd`` at ``bands_nm`` with its interpolator.

    ValueError (naming ``what`` and its range) for a band outside the data.
    """
    low, high = float(sd.wavelengths[0]), float(sd.wavelengths[-1])
    if bands_nm[0] < low or bands_nm[-1] > high:
        raise ValueError(
            f"{what} has data from {low:g} to {high:g} nm; the bands span "
            f"{bands_nm[0]:g} to {bands_nm[-1]:g} nm"
        )
    return np.asarray(sd[bands_nm], dtype=np.float64)


def _pick(mapping: Any, name: str, what: str) -> Any:
    """``mapping[name]`` or ValueError listing the names (with a close match first)."""
    if name in mapping:
        return mapping[name]
    import difflib

    names = [k for k in mapping if not str(k).islower() or " " in str(k)] or list(mapping)
    close = difflib.get_close_matches(name, [str(k) for k in mapping], n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ValueError(f"unknown {what} {name!r}; {hint}choose from {', '.join(map(str, names))}")


# -- illuminants -------------------------------------------------------------------------
def illuminant_names() -> list[str]:
    """colour's illuminant names (``colour.SDS_ILLUMINANTS``) and ``flat_photons``."""
    return [*_colour().SDS_ILLUMINANTS, FLAT_PHOTONS]


def illuminant_photons(name: str, bands_nm: np.ndarray) -> np.ndarray:
    """Relative photon spectrum of an illuminant at the band centres: S(λ_b)·λ_b.

    Parameters
    ----------
    name : a key of ``colour.SDS_ILLUMINANTS`` (``D65``, ``A``, ``E``, ``FL2``,
        ``LED-B1``, ...) or ``flat_photons``.
    bands_nm : band centres, nm.

    Returns
    -------
    (B,) float64, relative (the scene sets the level); ``flat_photons`` gives ones.
    """
    bands = np.asarray(bands_nm, dtype=np.float64)
    if name == FLAT_PHOTONS:
        return np.ones_like(bands)
    sd = _pick(_colour().SDS_ILLUMINANTS, name, "illuminant")
    return _sample(sd, bands, f"illuminant {name!r}") * bands  # power → photons: × λ/(h·c)


# -- reflectances ------------------------------------------------------------------------
def chart_names() -> list[str]:
    """colour's ColorChecker data sets (``colour.SDS_COLOURCHECKERS``)."""
    return list(_colour().SDS_COLOURCHECKERS)


def colourchecker_reflectances(
    name: str, bands_nm: np.ndarray
) -> tuple[np.ndarray, tuple[str, ...]]:
    """The 24 ColorChecker patches' spectral reflectances at the band centres.

    Parameters
    ----------
    name : a key of ``colour.SDS_COLOURCHECKERS`` (``BabelColor Average``,
        ``ColorChecker N Ohta``, ``ISO 17321-1``).
    bands_nm : band centres, nm.

    Returns
    -------
    ((24, B) float64 reflectances, in the chart's reading order (dark skin … black),
    the patch names).
    """
    patches = _pick(_colour().SDS_COLOURCHECKERS, name, "ColorChecker")
    bands = np.asarray(bands_nm, dtype=np.float64)
    names = tuple(patches)
    rows = [_sample(patches[n], bands, f"ColorChecker {name!r}") for n in names]
    return np.stack(rows), names


# -- camera sensitivities ----------------------------------------------------------------
def camera_names() -> list[str]:
    """colour's measured camera sensitivities (``colour.MSDS_CAMERA_SENSITIVITIES``)."""
    return list(_colour().MSDS_CAMERA_SENSITIVITIES)


def camera_sensitivities(name: str, bands_nm: np.ndarray) -> np.ndarray:
    """A camera's relative R, G, B spectral sensitivities at the band centres.

    Returns
    -------
    (3, B) float64, as colour ships them (the Nikon 5100 and Sigma SD Merrill NPL data
    peak at 1 per channel).
    """
    msds = _pick(_colour().MSDS_CAMERA_SENSITIVITIES, name, "camera")
    bands = np.asarray(bands_nm, dtype=np.float64)
    return np.maximum(_sample(msds, bands, f"camera {name!r}").T, 0.0)  # -2e-19 → 0


# -- observer ---------------------------------------------------------------------------
def colour_matching_functions(
    bands_nm: np.ndarray, observer: str = "CIE 1931 2 Degree Standard Observer"
) -> np.ndarray:
    """The CIE colour-matching functions x̄, ȳ, z̄ at the band centres.

    Returns
    -------
    (3, B) float64 (``colour.MSDS_CMFS[observer]``, as colour ships them: ȳ peaks at 1).
    """
    msds = _pick(_colour().MSDS_CMFS, observer, "observer")
    bands = np.asarray(bands_nm, dtype=np.float64)
    return _sample(msds, bands, f"observer {observer!r}").T


# -- RGB → reflectance -------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Recovery:
    """An RGB → reflectance recovery that is linear on each ordering sector of RGB.

    Smits (1999) is linear wherever the order of R, G, B is fixed; Mallett & Yuksel
    (2019) is linear everywhere. Write a pixel's value in its sector's cone,
    rgb = a·(1, 1, 1) + b·(1 − e_lo) + c·e_hi with a = min, b = mid − min, c = max − mid
    (e_k the unit vector of channel k, lo/hi the smallest/largest channel); then
    f(rgb) = a·f(1, 1, 1) + b·f(1 − e_lo) + c·f(e_hi). The seven spectra are colour's
    own function evaluated at those vertices, so the result is colour's, per pixel,
    without a Python call per pixel (tests/sensors/test_spectra.py checks it against
    colour's function).

    Attributes
    ----------
    method : ``mallett2019`` or ``smits1999``.
    white : (B,) f(1, 1, 1).
    pairs : (3, B) f(1 − e_k): the spectrum of the two channels other than k at 1.
    singles : (3, B) f(e_k).
    linear : f is linear everywhere (then ``singles`` alone define it).
    """

    method: str
    white: np.ndarray
    pairs: np.ndarray
    singles: np.ndarray
    linear: bool

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """(..., 3) linear RGB → (..., B) reflectance, in ``rgb``'s float dtype."""
        rgb = np.asarray(rgb)
        dtype = rgb.dtype if np.issubdtype(rgb.dtype, np.floating) else np.dtype(np.float64)
        if self.linear:
            return np.einsum(
                "...c,cb->...b", rgb.astype(dtype, copy=False), self.singles.astype(dtype)
            )
        order = np.argsort(rgb, axis=-1, kind="stable")
        ranked = np.take_along_axis(rgb, order, axis=-1).astype(dtype, copy=False)
        lo, hi = order[..., 0], order[..., 2]
        a = ranked[..., :1]
        b = ranked[..., 1:2] - ranked[..., :1]
        c = ranked[..., 2:] - ranked[..., 1:2]
        out = a * self.white.astype(dtype)
        out += b * self.pairs.astype(dtype)[lo]
        out += c * self.singles.astype(dtype)[hi]
        return out


def recovery(method: str, bands_nm: np.ndarray) -> Recovery:
    """The RGB → reflectance recovery ``method`` on the band grid (see :class:`Recovery`).

    Parameters
    ----------
    method : ``mallett2019`` (colour.recovery.RGB_to_sd_Mallett2019, linear sRGB, its
        basis spans 380–780 nm) or ``smits1999`` (colour.recovery.RGB_to_sd_Smits1999,
        380–720 nm).
    bands_nm : band centres, nm.
    """
    r = _colour().recovery
    functions = {"mallett2019": r.RGB_to_sd_Mallett2019, "smits1999": r.RGB_to_sd_Smits1999}
    f = _pick(functions, method, "recovery method")
    bands = np.asarray(bands_nm, dtype=np.float64)

    def at(rgb: tuple[float, float, float]) -> np.ndarray:
        return _sample(f(np.asarray(rgb, dtype=np.float64)), bands, f"recovery {method!r}")

    eye = np.eye(3)
    return Recovery(
        method=method,
        white=at((1.0, 1.0, 1.0)),
        pairs=np.stack([at(tuple(1.0 - eye[k])) for k in range(3)]),
        singles=np.stack([at(tuple(eye[k])) for k in range(3)]),
        linear=method == "mallett2019",
    )
