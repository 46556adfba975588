"""The photodetector array: photons to electrons.

Per pixel x = (row y, column c), in the order the code runs::

    gain       g(x) = (1 + PRNU·z(x)) (1 + G_row·r(y)) (1 + G_col·k(c))   (PRNU, row/col gain)
    dark rate  D(x) = D · (1 + DCNU·d(x))                      (dark-current non-uniformity)
    mean       λ = g(x) · QE · photons(channel of x) + D(x) · t    (CFA, gains, dark current)
    charge     e = Poisson(λ) + o(x)                 (photon + dark shot noise, DSNU offset)
    clipped    e = min(e, full_well)
    output     e + σ_r·n + σ_row·m(y) + σ_col·v(c) + O_row·a(y) + O_col·b(c)
                                    (read, row and column temporal, row/col offset)

``z, r, k, d, a, b`` are fixed patterns of the sensor (standard normal, drawn once from
the sensor seed, one tag each, not per image); ``n`` (the read-noise distribution, unit
variance: :mod:`sensors.noise`), ``m(y)`` (standard normal, one value per row) and
``v(c)`` (standard normal, one value per column, from :meth:`Stage.image_line_rng`
with its own tag, so every row band of an image adds the same column values) are drawn
per image. Each factor ``(1 + …)`` is clipped at 0. ``o(x)`` is the dark-signal
non-uniformity (a fixed offset, e⁻ rms), independent of the exposure; the dark-current
non-uniformity DCNU instead scales the dark rate, so its spatial variance
``(D · t · DCNU)²`` grows with t², and its electrons carry shot noise. Photon and dark
shot noise are one Poisson draw, as the sum of two independent Poisson variables is
Poisson. The full well clips the charge; read noise, row noise and the row/column
offsets come from the readout chain (source follower, column amplifiers, row drivers)
after the charge is held, so they are added after the clip. Negative values (from the
zero-mean offsets and noise) are kept: the ADC's black level holds them.

Row and column patterns are what EMVA 1288 (Release 4.0, section 8) separates from
pixel non-uniformity: the averaged dark frame's row-mean variance is ``O_row²`` (plus
``σ_row²/L`` over L frames), its column-mean variance ``O_col²``; a flat field of mean
signal S adds ``(S·G_row)²`` and ``(S·G_col)²``. Temporal line noise shows in the
per-frame line means: a frame's column means (over H rows) vary from frame to frame by
``σ_col² + σ²/H`` (σ² the pixels' other temporal variance), its row means (over W
columns) by ``σ_row² + σ²/W``.

Colour filter array: a mosaic sensor detects one channel per pixel, chosen by a tile
repeated over the array (Bayer in its four phases, RGBW, mono); a ``stacked`` sensor
(three layers, like a Foveon X3) detects all three channels at every pixel (each layer
with its own row and column patterns). A ``W`` (panchromatic) pixel has no colour
filter: it collects the photons of all three channels, ``λ = QE_W · (R + G + B)``; a
``mono`` sensor is all W pixels. A ``mono`` sensor also takes one (H, W, 1) plane that
already holds ``R + G + B`` (a scene with ``channels: gray``): ``λ = QE_W · photons``,
the same mean without the three planes' optics and sums.

Spectral input (the scene's ``spectral`` attr: photons per band at ``wavelength_nm``):
each photosite's channel has a spectral QE curve (``qe_curves``: Gaussian filters,
colour-science's measured camera sensitivities or a CSV, optional IR-cut filter;
:mod:`sensors.spectral`), and ``photons(channel of x)`` above becomes the integral
``Σ_b QE_ch(λ_b) · photons_b`` (then ``QE`` in the mean is 1). The bands are integrated
per batch before any noise is drawn, so the noise path is the same as for RGB input.

References
----------
EMVA Standard 1288, Release 4.0 Linear (2021), section 2: the linear sensor model
(η, dark signal, shot noise, temporal dark noise, saturation) and section 8
(DSNU and PRNU).
B. E. Bayer, "Color imaging array", US patent 3,971,065 (1976).
J. R. Janesick, *Photon Transfer* (SPIE, 2007), chapters 2 and 5 (shot noise,
fixed-pattern noise).
K. Wei, Y. Fu, J. Yang, H. Huang, "A physics-based noise formation model for extreme
low-light raw denoising", CVPR 2020 (row noise, heavy-tailed read noise).
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from numpy.typing import ArrayLike
from pydantic import Field

from pipeline.stage import (
    Batch,
    SignalInfo,
    Stage,
    StageError,
    StageParams,
    TileGroup,
    Unit,
    param,
)
from sensors import noise, spectral

__all__ = [
    "CFA_TILES",
    "DEFAULT_EXPOSURE_S",
    "PhotodetectorStage",
    "cfa_weights",
    "channel_map",
    "channel_selector",
    "expected_electrons",
    "fixed_pattern",
    "line_pattern",
    "shot_noise",
]

#: Channel letters of each colour filter array's tile, row-major. ``W`` is panchromatic.
#: RGBW: a 4×4 tile with W on a checkerboard (half the pixels, for sensitivity) and the
#: colour pixels of each 2×2 quadrant in Bayer order by quadrant (G R / B G), in the
#: style of Kodak's panchromatic "CFA 2.0" patterns (Compton & Hamilton, 2007).
CFA_TILES: dict[str, tuple[tuple[str, ...], ...]] = {
    "RGGB": (("R", "G"), ("G", "B")),
    "BGGR": (("B", "G"), ("G", "R")),
    "GRBG": (("G", "R"), ("B", "G")),
    "GBRG": (("G", "B"), ("R", "G")),
    "RGBW": (
        ("W", "G", "W", "R"),
        ("G", "W", "R", "W"),
        ("W", "B", "W", "G"),
        ("B", "W", "G", "W"),
    ),
    "mono": (("W",),),
}
CFAS = (*CFA_TILES, "stacked")


def _has_w(cfa: str) -> bool:
    return any("W" in row for row in CFA_TILES[cfa])


CHANNELS = ("R", "G", "B")

#: Exposure time used when neither the parameter nor the scene's attrs give one.
DEFAULT_EXPOSURE_S = 0.01

#: Mean above which shot noise is drawn from the Gaussian approximation N(λ, λ): there
#: its skewness 1/sqrt(λ) is 1 % and its excess kurtosis 1/λ is 1e-4, below anything an
#: image statistic can show, and the draw is ~2.5× faster than NumPy's Poisson sampler.
DEFAULT_POISSON_GAUSSIAN_ABOVE = 1e4

#: pattern_rng tags, one per fixed pattern (never reuse one: changing one parameter must
#: not change another pattern).
PRNU_TAG, DSNU_TAG, ROW_OFFSET_TAG, COL_OFFSET_TAG, ROW_GAIN_TAG, COL_GAIN_TAG, DCNU_TAG = range(7)
#: image_line_rng tag of the column temporal noise (per image, shared by its tiles)
COL_NOISE_TAG = 0

Fraction01 = Annotated[float, Field(ge=0, le=1)]
PositiveNm = Annotated[float, Field(gt=0)]
CFA = Literal["RGGB", "BGGR", "GRBG", "GBRG", "RGBW", "mono", "stacked"]


# -- plain functions -------------------------------------------------------------------
def channel_map(cfa: str, shape: tuple[int, int]) -> np.ndarray:
    """The channel letter of every pixel of an ``(H, W)`` mosaic sensor.

    Parameters
    ----------
    cfa : one of ``RGGB, BGGR, GRBG, GBRG, RGBW, mono`` (not ``stacked``).
    shape : ``(H, W)`` in pixels; the tile repeats from pixel (0, 0) and is cut at the
        right and bottom edges.

    Returns
    -------
    An ``(H, W)`` array of one-letter strings (``"R"``, ``"G"``, ``"B"``, ``"W"``).
    """
    if cfa not in CFA_TILES:
        raise ValueError(f"cfa must be one of {', '.join(CFA_TILES)}, got {cfa!r}")
    tile = np.array(CFA_TILES[cfa])
    h, w = shape
    reps = (-(-h // tile.shape[0]), -(-w // tile.shape[1]))
    return np.tile(tile, reps)[:h, :w]


def cfa_weights(
    cfa: str, shape: tuple[int, int], *, qe: ArrayLike = 0.6, qe_w: float = 0.6
) -> np.ndarray:
    """Per-pixel, per-channel quantum efficiency: the CFA sampling as weights.

    Parameters
    ----------
    cfa : a colour filter array name (see :data:`CFA_TILES`) or ``"stacked"``.
    shape : ``(H, W)`` in pixels.
    qe : quantum efficiency (electrons per photon) of the R, G, B channels: one number
        or three.
    qe_w : quantum efficiency of a panchromatic (W, mono) pixel, per photon of any channel.

    Returns
    -------
    ``(H, W, 3)`` float64 weights ``w``: a mosaic pixel's mean electrons are
    ``sum_c w[y, x, c] · photons[y, x, c]``; a stacked sensor's layer ``c`` gives
    ``w[y, x, c] · photons[y, x, c]``.
    """
    qe_rgb = np.broadcast_to(np.asarray(qe, dtype=np.float64), (3,))
    h, w = shape
    if cfa == "stacked":
        return np.broadcast_to(qe_rgb, (h, w, 3)).copy()
    letters = channel_map(cfa, shape)
    weights = np.zeros((h, w, 3))
    for c, letter in enumerate(CHANNELS):
        weights[..., c] = np.where(letters == letter, qe_rgb[c], 0.0)
    weights[letters == "W"] = qe_w
    return weights


def channel_selector(cfa: str, shape: tuple[int, int]) -> np.ndarray:
    """Which spectral QE curve each photosite has, as one-hot weights.

    Returns
    -------
    ``(H, W, 4)`` float64 over the curves R, G, B, W (:data:`sensors.spectral.CURVE_CHANNELS`)
    for a mosaic, ``(H, W, 3)`` ones for ``stacked`` (each layer its own curve).
    """
    h, w = shape
    if cfa == "stacked":
        return np.ones((h, w, 3))
    letters = channel_map(cfa, shape)
    return np.stack([letters == c for c in spectral.CURVE_CHANNELS], axis=-1).astype(np.float64)


def expected_electrons(
    photons: ArrayLike,
    cfa: str = "RGGB",
    *,
    qe: ArrayLike = 0.6,
    qe_w: float = 0.6,
    dark_current_e_per_s: float = 0.0,
    exposure_s: float = DEFAULT_EXPOSURE_S,
    prnu_gain: ArrayLike | None = None,
) -> np.ndarray:
    """Mean electrons per pixel, before any temporal noise: CFA, QE, PRNU, dark current.

    Parameters
    ----------
    photons : ``(N, H, W, 3)`` mean photons per pixel and channel during the exposure, or
        ``(N, H, W, 1)`` all the light in one plane (for ``mono``).
    cfa, qe, qe_w : see :func:`cfa_weights`.
    dark_current_e_per_s : mean dark current in e⁻/s.
    exposure_s : exposure time in s.
    prnu_gain : optional per-pixel gain (``(H, W)`` for a mosaic, ``(H, W, 3)`` for
        stacked), e.g. from :func:`fixed_pattern`.

    Returns
    -------
    float64 mean electrons, ``(N, H, W)`` for a mosaic or ``(N, H, W, 3)`` for stacked;
    negative photon values (e.g. optics ringing) count as zero light.
    """
    photons = np.asarray(photons)
    if photons.shape[-1] == 1 and cfa != "mono":
        raise ValueError(f"one photon plane has no colours for cfa {cfa}: use cfa mono")
    weights = cfa_weights(cfa, photons.shape[1:3], qe=qe, qe_w=qe_w)
    if prnu_gain is not None:
        gain = np.asarray(prnu_gain, dtype=np.float64)
        weights *= gain if gain.ndim == 3 else gain[..., None]
    return _mean_electrons(
        photons, weights, stacked=cfa == "stacked", dark_e=dark_current_e_per_s * exposure_s
    )


def _mean_electrons(
    photons: np.ndarray, weights: np.ndarray, *, stacked: bool, dark_e: float | np.ndarray
) -> np.ndarray:
    # The channel is selected (weighted) BEFORE any noise is drawn: noise is per pixel, so
    # drawing it on the one detected channel is the same distribution as detecting a
    # noisy signal, at a third of the cost (and a mosaic stays a mosaic).
    if stacked:
        lam = np.multiply(photons, weights, dtype=np.float64)
    elif photons.shape[-1] == 1:  # one plane of all the light into panchromatic pixels
        lam = np.multiply(photons[..., 0], weights[..., 0], dtype=np.float64)
    else:
        # Σ_c photons·w, summed as (R + B) + G: the order of the np.einsum this replaced
        # (3× slower), so a W pixel's mean keeps its last bit; a colour pixel has a single
        # non-zero term, exact in any order.
        lam = np.multiply(photons[..., 0], weights[..., 0], dtype=np.float64)
        lam += np.multiply(photons[..., 2], weights[..., 2], dtype=np.float64)
        lam += np.multiply(photons[..., 1], weights[..., 1], dtype=np.float64)
        for c in range(3, weights.shape[-1]):  # spectral mosaics: the W channel's own curve
            lam += np.multiply(photons[..., c], weights[..., c], dtype=np.float64)
    if np.ndim(dark_e) or dark_e:  # a per-pixel map (dark-current non-uniformity) or D·t
        lam += dark_e
    np.maximum(lam, 0.0, out=lam)  # NaN stays NaN (checked by the caller)
    return lam


def shot_noise(
    mean: ArrayLike,
    rng: np.random.Generator,
    *,
    poisson_gaussian_above: float | None = DEFAULT_POISSON_GAUSSIAN_ABOVE,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Draw Poisson counts of the given means (photon and dark-current shot noise).

    Parameters
    ----------
    mean : non-negative mean counts (any shape).
    rng : the generator to draw from.
    poisson_gaussian_above : means above this are drawn from the Gaussian approximation
        ``N(λ, λ)`` (same mean and variance, continuous); ``None`` draws Poisson everywhere.
    out : an optional float64 array of ``mean``'s shape to write the counts into (the
        same draws; it saves a copy).

    Returns
    -------
    float64 counts, same shape as ``mean`` (``out`` when given).
    """
    lam = np.asarray(mean, dtype=np.float64)
    if out is None:
        out = np.empty(lam.shape)
    if poisson_gaussian_above is None or not lam.max(initial=0.0) > poisson_gaussian_above:
        out[...] = rng.poisson(lam)
        return out
    big = lam > poisson_gaussian_above
    if big.all():
        out[...] = lam + np.sqrt(lam) * rng.standard_normal(lam.shape)
        return out
    out[~big] = rng.poisson(lam[~big])
    lam_big = lam[big]
    out[big] = lam_big + np.sqrt(lam_big) * rng.standard_normal(lam_big.shape)
    return out


def fixed_pattern(
    shape: tuple[int, ...],
    *,
    prnu_pct: float,
    dsnu_e: float,
    prnu_rng: np.random.Generator,
    dsnu_rng: np.random.Generator,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Draw a sensor's PRNU gain and DSNU offset patterns (Gaussian, zero-mean deviations).

    Parameters
    ----------
    shape : the pattern's shape: ``(H, W)`` for a mosaic, ``(H, W, 3)`` for stacked.
    prnu_pct : photo-response non-uniformity, rms of the gain in % (gain = 1 + z·prnu/100,
        clipped at 0).
    dsnu_e : dark-signal non-uniformity, rms offset in e⁻.
    prnu_rng, dsnu_rng : the generators (separate, so that changing one parameter does not
        change the other pattern).

    Returns
    -------
    (gain, offset_e) : float64 arrays of ``shape``, or None where the rms is 0.
    """
    gain = None
    if prnu_pct > 0:
        gain = 1.0 + (prnu_pct / 100.0) * prnu_rng.standard_normal(shape)
        np.maximum(gain, 0.0, out=gain)
    offset = dsnu_e * dsnu_rng.standard_normal(shape) if dsnu_e > 0 else None
    return gain, offset


def line_pattern(
    shape: tuple[int, ...], along: Literal["row", "col"], rms: float, rng: np.random.Generator
) -> np.ndarray:
    """One zero-mean Gaussian value per row (or per column), broadcastable to ``shape``.

    Parameters
    ----------
    shape : the frame's shape, ``(H, W)`` or ``(H, W, 3)``.
    along : ``"row"`` gives shape ``(H, 1[, 3])``, ``"col"`` gives ``(1, W[, 3])``.
    rms : the standard deviation of the values.
    rng : the generator.

    Returns
    -------
    float64 ``rms · N(0, 1)`` values.
    """
    line = list(shape)
    line[1 if along == "row" else 0] = 1
    return rms * rng.standard_normal(tuple(line))


def _gain(pattern: np.ndarray) -> np.ndarray:
    """``1 + pattern`` clipped at 0 (a gain cannot be negative)."""
    return np.maximum(1.0 + pattern, 0.0)


#: Parameters that only spectral input reads.
_SPECTRAL_KEYS = (
    "qe_curves",
    "camera",
    "qe_csv_path",
    "filter_centre_nm",
    "filter_fwhm_nm",
    "ir_cut_nm",
    "ir_cut_edge_nm",
)


def _refuse_changed(params: StageParams, keys: tuple[str, ...], needs: str) -> None:
    """StageError on the first of ``keys`` set away from its default: it would be unused."""
    for key in keys:
        if getattr(params, key) != type(params).model_fields[key].default:
            raise StageError(f"only read with {needs}; this chain would ignore it", key=key)


def _exposure_s(own_s: float | None, scene_s: float | None) -> float:
    """The one exposure time, s: the scene's, else this stage's, else the default.

    Raises StageError (key ``exposure_s``) when both are set and differ.
    """
    if own_s is not None and scene_s is not None and float(own_s) != float(scene_s):
        raise StageError(
            f"{own_s:g} s disagrees with the scene's exposure_s {scene_s:g} s; "
            "set it once, on the scene",
            key="exposure_s",
        )
    for value in (scene_s, own_s):
        if value is not None:
            return float(value)
    return DEFAULT_EXPOSURE_S


# -- the stage -------------------------------------------------------------------------
class PhotodetectorStage(Stage):
    """The photodetector array: photons ``(N, H, W, 3)`` (or one plane ``(N, H, W, 1)``
    for ``mono``) → electrons.

    Output: ``(N, H, W)`` for a mosaic CFA, ``(N, H, W, 3)`` for ``stacked``, in
    ``output_dtype`` (float32 by default: exact to < 0.01 e⁻ up to 1e5 e⁻, the ADC then
    works in float64). Temporal noise (shot, read, row) comes from :meth:`image_rngs` (the
    same arrays for any batch split), column noise from :meth:`image_line_rng`; the fixed
    patterns (PRNU, DSNU, row/column offsets and gains, dark-current non-uniformity) from
    :meth:`pattern_rng`, one tag each, drawn once in :meth:`setup`, so one sensor seed is
    one physical sensor. The equations and their order are in the module docstring.

    Output attrs: ``cfa``, ``cfa_tile`` (absent for stacked), ``full_well_e``,
    ``exposure_s``. The exposure time is set once: the scene's ``exposure_s`` attr, else
    the parameter (a chain with no scene), else :data:`DEFAULT_EXPOSURE_S`; both set and
    different is an error. It only scales the dark current (the input photons are already
    counted per exposure).
    """

    name = "photodetector"
    kind = "photodetector"
    takes = (Unit.PHOTONS,)
    gives = Unit.ELECTRONS

    class Params(StageParams):
        cfa: CFA = param(
            "RGGB", doc="Colour filter array: RGGB, BGGR, GRBG, GBRG, RGBW, mono, stacked."
        )
        qe: Fraction01 | tuple[Fraction01, Fraction01, Fraction01] = param(
            0.6,
            unit="e-/photon",
            doc="Quantum efficiency of R, G, B pixels (one value or three); spectral input: "
            "the Gaussian filters' peaks or the camera curves' scale.",
        )
        qe_w: Fraction01 = param(
            0.6, unit="e-/photon", doc="Quantum efficiency of panchromatic (W, mono) pixels."
        )
        full_well_e: float = param(10_000.0, unit="e-", doc="Full-well capacity.", gt=0)
        read_noise_e: float = param(
            2.0, unit="e-", doc="Read noise (rms, of read_noise_dist).", ge=0
        )
        read_noise_dist: noise.ReadNoiseDist = param(
            "gaussian", doc="Read-noise distribution: gaussian, tukey_lambda, student_t."
        )
        read_noise_shape: float | None = param(
            None, doc="Shape of read_noise_dist: λ > -0.5 (tukey_lambda) or ν > 2 (student_t)."
        )
        row_noise_e: float = param(
            0.0, unit="e-", doc="Row temporal noise (rms, one value per row per image).", ge=0
        )
        col_noise_e: float = param(
            0.0,
            unit="e-",
            doc="Column temporal noise (rms, one value per column per image).",
            ge=0,
        )
        row_offset_fpn_e: float = param(
            0.0, unit="e-", doc="Row offset fixed-pattern noise (rms over rows).", ge=0
        )
        col_offset_fpn_e: float = param(
            0.0, unit="e-", doc="Column offset fixed-pattern noise (rms over columns).", ge=0
        )
        row_gain_fpn_pct: float = param(
            0.0, unit="%", doc="Row gain fixed-pattern noise (rms over rows).", ge=0
        )
        col_gain_fpn_pct: float = param(
            0.0, unit="%", doc="Column gain fixed-pattern noise (rms over columns).", ge=0
        )
        dark_current_e_per_s: float = param(5.0, unit="e-/s", doc="Mean dark current.", ge=0)
        exposure_s: float | None = param(
            None,
            unit="s",
            doc="Exposure time, for a chain without a scene; default: the scene's "
            "exposure_s, else 0.01 s (setting both to different values is an error).",
            gt=0,
        )
        prnu_pct: float = param(
            0.5, unit="%", doc="Photo-response non-uniformity (gain rms).", ge=0
        )
        dsnu_e: float = param(0.5, unit="e-", doc="Dark-signal non-uniformity (offset rms).", ge=0)
        dark_current_nonuniformity_pct: float = param(
            0.0, unit="%", doc="Dark-current non-uniformity (rms of each pixel's rate).", ge=0
        )
        shot_noise: bool = param(True, doc="Draw photon and dark shot noise (False: mean signal).")
        poisson_gaussian_above: float | None = param(
            DEFAULT_POISSON_GAUSSIAN_ABOVE,
            unit="e-",
            doc="Draw shot noise from N(λ, λ) above this mean; null: always Poisson.",
            gt=0,
        )
        output_dtype: Literal["float32", "float64"] = param("float32", doc="Output dtype.")
        qe_curves: Literal["gaussian", "camera", "csv"] = param(
            "gaussian",
            doc="Spectral input: QE curves from Gaussian filters (peak qe), colour-science's "
            "camera sensitivities (scaled by qe) or a CSV (absolute QE).",
        )
        camera: str = param(
            "Nikon 5100 (NPL)", doc="qe_curves: camera: a colour.MSDS_CAMERA_SENSITIVITIES name."
        )
        qe_csv_path: str | None = param(
            None, doc="qe_curves: csv: columns wavelength_nm, R, G, B (W optional).", path=True
        )
        filter_centre_nm: tuple[PositiveNm, PositiveNm, PositiveNm] = param(
            (610.0, 550.0, 465.0), unit="nm", doc="qe_curves: gaussian: R, G, B filter centres."
        )
        filter_fwhm_nm: tuple[PositiveNm, PositiveNm, PositiveNm] = param(
            (100.0, 100.0, 100.0), unit="nm", doc="qe_curves: gaussian: R, G, B filter FWHM."
        )
        ir_cut_nm: float | None = param(
            None, unit="nm", doc="Spectral input: IR-cut filter's 50 % wavelength (none).", gt=0
        )
        ir_cut_edge_nm: float = param(
            20.0, unit="nm", doc="IR-cut filter: 90 % → 10 % transition width (0: a step).", ge=0
        )

    def setup(self, info: SignalInfo) -> SignalInfo:
        p = self.params
        if info.unit != Unit.PHOTONS:
            raise StageError(f"photodetector takes photons, got {info.unit}")
        is_spectral = bool(info.attr("spectral", False))
        if len(info.shape) != 3 or (info.shape[2] not in (1, 3) and not is_spectral):
            raise StageError(
                "photodetector takes (H, W, 3) photons (R, G, B), or one (H, W, 1) plane "
                f"for cfa: mono, got {info.shape}"
            )
        one_band = info.shape[2] == 1 and not is_spectral
        if one_band and p.cfa != "mono":
            raise StageError(
                f"one photon plane (a gray scene) has no colours for cfa {p.cfa}: use "
                "cfa: mono, or a scene with channels: rgb",
                key="cfa",
            )
        bands = len(info.attr("wavelength_nm") or ())
        if is_spectral and bands != info.shape[2]:
            raise StageError(
                f"spectral photons with {info.shape[2]} channels for {bands} wavelengths: "
                "need one band per wavelength"
            )
        if not is_spectral:
            _refuse_changed(p, _SPECTRAL_KEYS, "spectral photons (a scene with spectral: ...)")
        problem = noise.check_shape(p.read_noise_dist, p.read_noise_shape)
        if problem:
            raise StageError(problem, key="read_noise_shape")
        h, w = info.shape[:2]
        stacked = p.cfa == "stacked"
        self._exposure_s = _exposure_s(p.exposure_s, info.attr("exposure_s"))
        pattern_shape = (h, w, 3) if stacked else (h, w)
        gain, self._dsnu = fixed_pattern(
            pattern_shape,
            prnu_pct=p.prnu_pct,
            dsnu_e=p.dsnu_e,
            prnu_rng=self.pattern_rng(PRNU_TAG),
            dsnu_rng=self.pattern_rng(DSNU_TAG),
        )
        self._weights = cfa_weights(p.cfa, (h, w), qe=p.qe, qe_w=p.qe_w)
        if one_band:  # a mono sensor's weight per photon of the one plane
            self._weights = self._weights[..., :1].copy()
        self._curves = None  # spectral input: (K, B) QE curves, K = 4 (mosaic) or 3
        if is_spectral:
            self._curves = self._qe_curves(info.attr("wavelength_nm"), stacked)
            self._weights = channel_selector(p.cfa, (h, w))
        if gain is not None:
            self._weights *= gain if stacked else gain[..., None]
        for along, pct, tag in (
            ("row", p.row_gain_fpn_pct, ROW_GAIN_TAG),
            ("col", p.col_gain_fpn_pct, COL_GAIN_TAG),
        ):
            if pct > 0:
                line = _gain(line_pattern(pattern_shape, along, pct / 100, self.pattern_rng(tag)))
                self._weights *= line if stacked else line[..., None]
        self._dark_e = self._dark_electrons(pattern_shape)
        self._offsets = self._offset_pattern(pattern_shape)
        # after integration the channels are the photosites' colours, no longer bands
        dropped = {"cfa_tile", "spectral", "wavelength_nm"} if is_spectral else {"cfa_tile"}
        attrs = {k: v for k, v in info.attrs.items() if k not in dropped}
        attrs |= {"cfa": p.cfa, "full_well_e": p.full_well_e, "exposure_s": self._exposure_s}
        if not stacked:
            attrs["cfa_tile"] = CFA_TILES[p.cfa]
        if not is_spectral and not stacked and p.cfa != "mono" and _has_w(p.cfa):
            # for the raw stage's RGBW fusion: R, G, B QE and W's (per photon of any channel)
            qe_rgb = np.broadcast_to(np.asarray(p.qe, dtype=np.float64), (3,))
            attrs["qe_rgbw"] = (*map(float, qe_rgb), float(p.qe_w))
        if is_spectral:  # for the raw stage's white balance and colour correction
            attrs["spectral_qe"] = tuple(tuple(map(float, row)) for row in self._curves)
            attrs["spectral_qe_nm"] = tuple(info.attr("wavelength_nm"))
        self._out_shape = pattern_shape
        self._dtype = np.dtype(p.output_dtype)
        return SignalInfo(Unit.ELECTRONS, pattern_shape, self._dtype, attrs)

    def _qe_curves(self, bands_nm: tuple[float, ...], stacked: bool) -> np.ndarray:
        """Spectral QE of R, G, B, W (or R, G, B for stacked) on the signal's bands."""
        p = self.params
        try:
            curves = spectral.qe_curves(
                p.qe_curves,
                bands_nm,
                qe=p.qe,
                qe_w=p.qe_w,
                camera=p.camera,
                csv_path=p.qe_csv_path,
                centre_nm=p.filter_centre_nm,
                fwhm_nm=p.filter_fwhm_nm,
                ir_cut_nm=p.ir_cut_nm,
                ir_cut_edge_nm=p.ir_cut_edge_nm,
            )
        except ValueError as err:
            key = {"camera": "camera", "csv": "qe_csv_path"}.get(p.qe_curves, "filter_fwhm_nm")
            raise StageError(str(err), key=key) from None
        return curves[:3] if stacked else curves

    def _dark_electrons(self, shape: tuple[int, ...]) -> float | np.ndarray:
        """Mean dark electrons ``D·t``, or per pixel ``D·t·(1 + DCNU·d(x))`` (d ~ N(0, 1))."""
        p = self.params
        dark_e = p.dark_current_e_per_s * self._exposure_s
        if p.dark_current_nonuniformity_pct == 0 or dark_e == 0:
            return dark_e
        spread = p.dark_current_nonuniformity_pct / 100
        return dark_e * _gain(spread * self.pattern_rng(DCNU_TAG).standard_normal(shape))

    def _offset_pattern(self, shape: tuple[int, ...]) -> np.ndarray | None:
        """Row plus column offset FPN ``O_row·a(y) + O_col·b(c)`` in e⁻, or None."""
        p = self.params
        offsets = None
        for along, rms, tag in (
            ("row", p.row_offset_fpn_e, ROW_OFFSET_TAG),
            ("col", p.col_offset_fpn_e, COL_OFFSET_TAG),
        ):
            if rms > 0:
                line = line_pattern(shape, along, rms, self.pattern_rng(tag))
                offsets = line if offsets is None else offsets + line
        return None if offsets is None else np.broadcast_to(offsets, shape).copy()

    def process(self, x: np.ndarray, batch: Batch) -> np.ndarray:
        # Per tile group (a band of rows of a large image, or several small images up to
        # TILE_ELEMENTS in all), over the cores: each tile's noise comes from its own
        # generator, so the electrons do not depend on the batch size or the number of
        # threads; a group's float64 temporaries stay in cache, and the steps between the
        # draws run once per group, not once per small image.
        return self.map_tile_groups(self._electrons, x, batch, self._out_shape, self._dtype)

    def _electrons(self, photons: np.ndarray, group: TileGroup) -> np.ndarray:
        """Electrons of one tile group from its photons, (k, rows, W, 3) or spectral
        (k, rows, W, B): k images' bands of the same rows.

        Works in float64 (the stage's output dtype is applied when the group is stored):
        the Poisson sampler takes float64 means, and the float64 read-noise draws and sums
        keep a single-tile image's electrons bit for bit what they were before tiles.
        Each image's draws come from its tile's generator in the fixed order (shot, read,
        row noise); every other step is element by element, so an image gets the same
        electrons in any group.
        """
        p = self.params
        rows = group.rows
        # 1. the mean signal per photosite, before any noise: CFA, QE, gains, dark current
        if self._curves is not None:  # spectral: Σ_b QE(λ_b)·photons_b per channel
            photons = spectral.integrate_bands(photons, self._curves)
        dark_e = self._dark_e[rows] if np.ndim(self._dark_e) else self._dark_e
        lam = _mean_electrons(
            photons, self._weights[rows], stacked=p.cfa == "stacked", dark_e=dark_e
        )
        if np.isnan(lam).any():
            raise StageError("photodetector input contains NaN")
        # 2. temporal noise, always in this order per tile: shot noise, read noise, row
        #    noise; then column noise (its own per-image stream)
        e, read, row = self._temporal_draws(lam, group)
        if self._dsnu is not None:
            e += self._dsnu[rows]
        np.minimum(e, p.full_well_e, out=e)
        if read is not None:
            read *= p.read_noise_e
            e += read
        if row is not None:
            e += p.row_noise_e * row
        if p.col_noise_e > 0:  # each image's column values, the same in every tile
            col = np.empty((len(e), 1, *e.shape[2:]))
            for j, tile in enumerate(group.tiles):
                line = self.image_line_rng(tile.image_key, COL_NOISE_TAG)
                col[j] = line.standard_normal(col.shape[1:])
            e += p.col_noise_e * col
        if self._offsets is not None:
            e += self._offsets[rows]
        return e

    def _temporal_draws(
        self, lam: np.ndarray, group: TileGroup
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Each tile's draws from its generator: (charge, read noise, row noise).

        The charge is the shot-noise counts (float64), or ``lam`` itself without shot
        noise; read noise is unit-variance (:func:`sensors.noise.standard_draw`), row
        noise standard normal, one per row; None where the parameter is 0.
        """
        p = self.params
        e = np.empty_like(lam) if p.shot_noise else lam
        read = np.empty_like(lam) if p.read_noise_e > 0 else None
        row = np.empty((*lam.shape[:2], 1, *lam.shape[3:])) if p.row_noise_e > 0 else None
        if not (p.shot_noise or read is not None or row is not None):
            return e, read, row
        for j, tile in enumerate(group.tiles):
            rng = self.tile_rng(tile)
            if p.shot_noise:
                shot_noise(lam[j], rng, poisson_gaussian_above=p.poisson_gaussian_above, out=e[j])
            if read is not None:
                noise.standard_draw(
                    p.read_noise_dist, p.read_noise_shape, read.shape[1:], rng, read[j]
                )
            if row is not None:
                row[j] = rng.standard_normal(row.shape[1:])
        return e, read, row
