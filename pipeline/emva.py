"""EMVA 1288 (Release 4.0 Linear) photon-transfer analysis, as plain functions on arrays.

The linear camera model (all quantities per pixel, averaged over the pixels)::

    μ_y  = μ_y.dark + K η μ_p                               mean signal, DN
    σ²_y = K² σ²_d + σ²_q + K (μ_y − μ_y.dark)              temporal variance, DN²
    SNR  = η μ_p / sqrt(σ²_d + σ²_q / K² + η μ_p)

with K the system gain (DN/e⁻), η the quantum efficiency, μ_p the mean photons per
pixel, σ_d the temporal dark noise (e⁻) and σ²_q = 1/12 DN² the quantisation noise.

Measurement (two frames A, B per exposure level, and dark frames):

- :func:`pair_statistics`: ``μ_y = (mean(y_A) + mean(y_B)) / 2`` and
  ``σ²_y = var(y_A − y_B) / 2`` (the difference removes every fixed pattern).
- :func:`photon_transfer`: the saturation point is the level of maximum temporal
  variance; K is the slope of ``σ²_y − σ²_y.dark`` against ``μ_y − μ_y.dark`` and the
  responsivity ``R = ηK`` the slope of ``μ_y − μ_y.dark`` against ``μ_p``, both fitted
  through the origin over the levels up to 70 % of saturation; then σ_d, μ_p.min
  (SNR = 1), μ_e.sat, SNR_max and the dynamic range.
- :func:`spatial_variance` and :func:`nonuniformity`: DSNU (e⁻) and PRNU (%) from the
  spatial variance of averaged frames, with the temporal noise left in the average
  removed.
- :func:`spatial_decomposition` and :func:`line_nonuniformity`: the averaged frame's
  spatial variance split into row, column and pixel parts (DSNU and PRNU per part), and
  the row temporal noise from per-frame row means.

References
----------
EMVA Standard 1288, Release 4.0 Linear: "Standard for Characterization of Image Sensors
and Cameras" (European Machine Vision Association, 2021): section 2 (model), section 6
(photon transfer, eqs. for σ²_y from two frames, K, R, η, σ_d, saturation, μ_p.min,
SNR_max, DR) and section 8 (spatial nonuniformity: DSNU₁₂₈₈, PRNU₁₂₈₈, and their row,
column and pixel parts).
The reference implementation: https://github.com/EMVA1288/emva1288 (``emva1288`` on
PyPI; ``process/data.py`` and ``process/results.py`` hold the row/column equations).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "FIT_FRACTION",
    "SIGMA_Q2_DN2",
    "PhotonTransfer",
    "SpatialDecomposition",
    "decomposition_from_moments",
    "fit_mask",
    "fit_through_origin",
    "line_nonuniformity",
    "mean_decomposition",
    "nonuniformity",
    "pair_statistics",
    "photon_transfer",
    "ratio_bits",
    "ratio_db",
    "saturation_index",
    "sensitivity_threshold_e",
    "snr_model",
    "spatial_decomposition",
    "spatial_variance",
    "temporal_dark_noise_e",
]

#: Quantisation noise variance of a uniform quantiser, in DN².
SIGMA_Q2_DN2 = 1.0 / 12.0
#: K and R are fitted over the levels up to this fraction of the saturation signal.
FIT_FRACTION = 0.7
#: Below this dark variance (DN²) quantisation noise hides the dark noise: σ_d is then
#: only bounded, σ_d < 0.40 / K (EMVA 1288 Release 4.0 Linear, section 6.3).
MIN_DARK_VARIANCE_DN2 = 0.24
UPPER_BOUND_SIGMA_Y_DARK_DN = 0.40


def pair_statistics(y_a: ArrayLike, y_b: ArrayLike) -> tuple[float, float]:
    """Mean and temporal variance of one exposure level from two frames.

    Parameters
    ----------
    y_a, y_b : two frames (DN) taken at the same exposure, any shape (the same).

    Returns
    -------
    (mu_y, var_y) : ``μ_y = (mean(y_A) + mean(y_B)) / 2`` in DN and
    ``σ²_y = mean(((y_A − μ_A) − (y_B − μ_B))²) / 2`` in DN².
    """
    a = np.asarray(y_a, dtype=np.float64)
    b = np.asarray(y_b, dtype=np.float64)
    if a.shape != b.shape or a.size < 2:
        raise ValueError("pair_statistics needs two frames of the same shape")
    return float((a.mean() + b.mean()) / 2), float(np.var(a - b) / 2)


def spatial_variance(frames: ArrayLike) -> tuple[float, float]:
    """Spatial variance of the average of L frames, with its temporal part removed.

    ``s²_y = var_x(⟨y⟩) − σ²_y / L``, where ``⟨y⟩`` is the per-pixel average over the L
    frames and ``σ²_y`` the temporal variance per pixel (unbiased, averaged over pixels).

    Parameters
    ----------
    frames : ``(L, ...)`` with L ≥ 2 frames at one exposure level (DN).

    Returns
    -------
    (s2_y, mu_y) : spatial variance (DN²) and mean (DN).
    """
    y = np.asarray(frames, dtype=np.float64)
    if y.ndim < 2 or y.shape[0] < 2:
        raise ValueError("spatial_variance needs at least two frames, stacked on axis 0")
    n_frames = y.shape[0]
    mean_frame = y.mean(axis=0)
    temporal = float(np.mean(np.var(y, axis=0, ddof=1)))
    return float(np.var(mean_frame, ddof=1) - temporal / n_frames), float(mean_frame.mean())


def nonuniformity(
    dark_frames: ArrayLike, flat_frames: ArrayLike, system_gain_dn_per_e: float
) -> tuple[float, float]:
    """DSNU₁₂₈₈ (e⁻) and PRNU₁₂₈₈ (%) from dark frames and flat frames at ~50 % saturation.

    ``DSNU = s_y.dark / K`` and ``PRNU = sqrt(s²_y.50 − s²_y.dark) / (μ_y.50 − μ_y.dark)``.
    A simulated flat field is perfectly uniform, so no high-pass filter is applied
    (the standard filters out illumination gradients of a real light source).

    Parameters
    ----------
    dark_frames, flat_frames : ``(L, ...)`` stacks (DN), L ≥ 2 each.
    system_gain_dn_per_e : K in DN/e⁻.

    Returns
    -------
    (dsnu_e, prnu_pct) ; a negative variance estimate (no pattern, sampling noise) gives 0.
    """
    s2_dark, mu_dark = spatial_variance(dark_frames)
    s2_flat, mu_flat = spatial_variance(flat_frames)
    dsnu_e = float(np.sqrt(max(s2_dark, 0.0)) / system_gain_dn_per_e)
    prnu_pct = float(100.0 * np.sqrt(max(s2_flat - s2_dark, 0.0)) / (mu_flat - mu_dark))
    return dsnu_e, prnu_pct


@dataclasses.dataclass(frozen=True)
class SpatialDecomposition:
    """The averaged frame's spatial variance in row, column and pixel parts (DN, DN²).

    Attributes
    ----------
    mean_dn : μ_y, the mean of the averaged frame.
    total_dn2 : s²_y, its spatial variance with the temporal part removed.
    row_dn2, col_dn2, pixel_dn2 : s²_y.row, s²_y.col, s²_y.pixel.
    temporal_dn2 : σ²_y.stack, the temporal variance per pixel (mean over pixels).
    row_temporal_dn2 : σ²_y.row.temporal, the temporal variance shared by a row's pixels.
    col_temporal_dn2 : σ²_y.col.temporal, the same for a column's pixels (0 when not
        measured).
    """

    mean_dn: float
    total_dn2: float
    row_dn2: float
    col_dn2: float
    pixel_dn2: float
    temporal_dn2: float
    row_temporal_dn2: float
    col_temporal_dn2: float = 0.0


def spatial_decomposition(frames: ArrayLike, *, col_temporal: bool = False) -> SpatialDecomposition:
    """Split the spatial variance of L averaged frames into row, column and pixel parts.

    With ``⟨y⟩`` the average of the L frames (M rows, N columns), ``μ_y[m]`` its row
    means, ``μ_y[n]`` its column means and ``σ²_s`` the temporal variance per pixel
    (unbiased over the L frames, mean over pixels), EMVA 1288 R4.0 Linear, section 8::

        s²_y     = var(⟨y⟩) − σ²_s / L                          (ddof 1)
        s²_y.cav = (1/N) Σ_n (μ_y[n] − μ_y)² − σ²_pix.t / (L M) − σ²_col.t / L
        s²_y.rav = (1/M) Σ_m (μ_y[m] − μ_y)² − σ²_pix.t / (L N) − σ²_row.t / L
        s²_y.col   = ((MN − M) s²_y.cav − N (s²_y − s²_y.rav)) / (MN − M − N)
        s²_y.row   = ((MN − N) s²_y.rav − M (s²_y − s²_y.cav)) / (MN − M − N)
        s²_y.pixel = MN (s²_y − s²_y.cav − s²_y.rav) / (MN − M − N)

    which solve ``s²_y = s²_row + s²_col + s²_pixel``, ``s²_cav = s²_col + s²_pixel/M``,
    ``s²_rav = s²_row + s²_pixel/N``. The row temporal noise σ²_row.t (a noise shared by
    the pixels of a row in one frame) comes from the per-frame row means ``μ_l[m]``: their
    temporal variance ``v = mean_m var_l(μ_l[m])`` is ``σ²_row.t + σ²_pix.t / N`` with
    ``σ²_pix.t = σ²_s − σ²_row.t − σ²_col.t`` (a column's noise averages over the row
    like the pixels'), so ``σ²_row.t = (N v − σ²_s) / (N − 1)``; the column temporal noise
    σ²_col.t likewise from the per-frame column means (``col_temporal``; else 0). A row's
    noise is common to every column mean (and a column's to every row mean), so it does
    not enter s²_y.cav (s²_y.rav). Without line temporal noise the corrections are the
    standard's.

    Parameters
    ----------
    frames : ``(L, M, N)`` with L ≥ 2 frames at one exposure level (DN), M, N ≥ 2.
    col_temporal : also measure the column temporal noise (False: assume none).

    Returns
    -------
    :class:`SpatialDecomposition` (variances may come out slightly negative from
    sampling noise when a part is absent).
    """
    y = np.asarray(frames, dtype=np.float64)
    if y.ndim != 3 or y.shape[0] < 2 or min(y.shape[1:]) < 2:
        raise ValueError("spatial_decomposition needs (L, M, N) frames with L, M, N >= 2")
    return decomposition_from_moments(
        y.mean(axis=0),
        float(np.mean(np.var(y, axis=0, ddof=1))),
        float(np.mean(np.var(y.mean(axis=2), axis=0, ddof=1))),
        y.shape[0],
        col_means_var_dn2=(
            float(np.mean(np.var(y.mean(axis=1), axis=0, ddof=1))) if col_temporal else None
        ),
    )


def decomposition_from_moments(
    mean_frame: ArrayLike,
    temporal_dn2: float,
    row_means_var_dn2: float,
    n_frames: int,
    *,
    col_means_var_dn2: float | None = None,
) -> SpatialDecomposition:
    """:func:`spatial_decomposition` from running moments instead of the frame stack.

    The same equations, for a caller that streams frames (memory flat in L).

    Parameters
    ----------
    mean_frame : ``(M, N)`` the average of the L frames (DN).
    temporal_dn2 : σ²_s, the per-pixel temporal variance (ddof 1 over the L frames),
        averaged over the pixels (DN²).
    row_means_var_dn2 : ``mean_m var_l(μ_l[m])``, the temporal variance (ddof 1) of the
        per-frame row means, averaged over the rows (DN²).
    n_frames : L ≥ 2.
    col_means_var_dn2 : the same for the per-frame column means, or None (no column
        temporal noise).
    """
    mean_frame = np.asarray(mean_frame, dtype=np.float64)
    if mean_frame.ndim != 2 or n_frames < 2 or min(mean_frame.shape) < 2:
        raise ValueError("decomposition_from_moments needs an (M, N) mean of L >= 2 frames")
    m, n = mean_frame.shape
    temporal = float(temporal_dn2)
    mu = float(mean_frame.mean())
    row_temporal = (n * float(row_means_var_dn2) - temporal) / (n - 1)
    col_temporal = 0.0
    if col_means_var_dn2 is not None:
        col_temporal = (m * float(col_means_var_dn2) - temporal) / (m - 1)
    pixel_temporal = temporal - row_temporal - col_temporal
    s2 = float(np.var(mean_frame, ddof=1)) - temporal / n_frames
    s2_cav = (
        float(np.mean((mean_frame.mean(axis=0) - mu) ** 2))
        - pixel_temporal / (n_frames * m)
        - col_temporal / n_frames
    )
    s2_rav = (
        float(np.mean((mean_frame.mean(axis=1) - mu) ** 2))
        - pixel_temporal / (n_frames * n)
        - row_temporal / n_frames
    )
    denom = m * n - m - n
    return SpatialDecomposition(
        mean_dn=mu,
        total_dn2=s2,
        row_dn2=((m * n - n) * s2_rav - m * (s2 - s2_cav)) / denom,
        col_dn2=((m * n - m) * s2_cav - n * (s2 - s2_rav)) / denom,
        pixel_dn2=m * n * (s2 - s2_cav - s2_rav) / denom,
        temporal_dn2=temporal,
        row_temporal_dn2=row_temporal,
        col_temporal_dn2=col_temporal,
    )


def mean_decomposition(parts: list[SpatialDecomposition]) -> SpatialDecomposition:
    """The field-wise mean of decompositions, e.g. of the CFA phases of one colour."""
    if not parts:
        raise ValueError("mean_decomposition needs at least one decomposition")
    return SpatialDecomposition(
        **{
            f.name: float(np.mean([getattr(p, f.name) for p in parts]))
            for f in dataclasses.fields(SpatialDecomposition)
        }
    )


def line_nonuniformity(
    dark: SpatialDecomposition, bright: SpatialDecomposition, system_gain_dn_per_e: float
) -> dict[str, float]:
    """Row, column and pixel DSNU (e⁻) and PRNU (%), and the row temporal noise (e⁻).

    ``DSNU_part = s_y.part.dark / K`` and
    ``PRNU_part = sqrt(s²_y.part − s²_y.part.dark) / (μ_y − μ_y.dark)`` (EMVA 1288 R4.0
    Linear, section 8), for part = row, col, pixel; ``σ_row.t = sqrt(σ²_row.t.dark) / K``.
    A negative variance estimate (no such pattern, sampling noise) gives 0.

    Returns
    -------
    ``{row_offset_fpn_e, col_offset_fpn_e, dsnu_pixel_e, row_gain_fpn_pct,
    col_gain_fpn_pct, prnu_pixel_pct, row_temporal_noise_e}``.
    """
    k = system_gain_dn_per_e
    signal = bright.mean_dn - dark.mean_dn

    def dsnu(var: float) -> float:
        return float(np.sqrt(max(var, 0.0)) / k)

    def prnu(bright_var: float, dark_var: float) -> float:
        return float(100.0 * np.sqrt(max(bright_var - dark_var, 0.0)) / signal)

    return {
        "row_offset_fpn_e": dsnu(dark.row_dn2),
        "col_offset_fpn_e": dsnu(dark.col_dn2),
        "dsnu_pixel_e": dsnu(dark.pixel_dn2),
        "row_gain_fpn_pct": prnu(bright.row_dn2, dark.row_dn2),
        "col_gain_fpn_pct": prnu(bright.col_dn2, dark.col_dn2),
        "prnu_pixel_pct": prnu(bright.pixel_dn2, dark.pixel_dn2),
        "row_temporal_noise_e": dsnu(dark.row_temporal_dn2),
    }


def saturation_index(var_y: ArrayLike) -> int:
    """Index of the saturation point: the level of maximum temporal variance."""
    return int(np.argmax(np.asarray(var_y, dtype=np.float64)))


def fit_mask(
    mu_y: ArrayLike, mu_y_dark: ArrayLike, sat_index: int, fraction: float = FIT_FRACTION
) -> np.ndarray:
    """Levels used by the K and R fits: from dark up to ``fraction`` of the saturation signal."""
    signal = np.asarray(mu_y, dtype=np.float64) - np.asarray(mu_y_dark, dtype=np.float64)
    signal = np.broadcast_to(signal, np.shape(mu_y))
    mask = signal <= fraction * signal[sat_index]
    mask[sat_index + 1 :] = False
    return mask


def fit_through_origin(x: ArrayLike, y: ArrayLike) -> float:
    """Least-squares slope of ``y = a·x`` (a line through the origin)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    denom = float(np.dot(x, x))
    if denom <= 0:
        raise ValueError("fit_through_origin needs at least one non-zero x")
    return float(np.dot(x, y) / denom)


def temporal_dark_noise_e(
    var_y_dark: float, system_gain_dn_per_e: float, *, var_q_dn2: float = SIGMA_Q2_DN2
) -> tuple[float, bool]:
    """Temporal dark noise σ_d in e⁻, quantisation noise removed.

    ``σ_d = sqrt(σ²_y.dark − σ²_q) / K``. When ``σ²_y.dark < 0.24 DN²`` quantisation
    dominates and only an upper limit ``0.40 / K`` is known (EMVA 1288 R4.0 Linear).

    Returns
    -------
    (sigma_d_e, is_upper_bound)
    """
    if var_y_dark < MIN_DARK_VARIANCE_DN2:
        return UPPER_BOUND_SIGMA_Y_DARK_DN / system_gain_dn_per_e, True
    return float(np.sqrt(var_y_dark - var_q_dn2) / system_gain_dn_per_e), False


def snr_model(
    mu_p: ArrayLike,
    *,
    qe: float,
    sigma_d_e: float,
    system_gain_dn_per_e: float,
    var_q_dn2: float = SIGMA_Q2_DN2,
) -> np.ndarray:
    """The EMVA 1288 SNR: ``η μ_p / sqrt(σ²_d + σ²_q / K² + η μ_p)``.

    Parameters
    ----------
    mu_p : mean photons per pixel.
    qe : quantum efficiency η (electrons per photon).
    sigma_d_e : temporal dark noise σ_d in e⁻.
    system_gain_dn_per_e : K in DN/e⁻.
    var_q_dn2 : quantisation noise σ²_q in DN² (1/12 for a uniform quantiser).
    """
    mu_e = qe * np.asarray(mu_p, dtype=np.float64)
    return mu_e / np.sqrt(sigma_d_e**2 + var_q_dn2 / system_gain_dn_per_e**2 + mu_e)


def sensitivity_threshold_e(
    sigma_d_e: float, system_gain_dn_per_e: float, *, var_q_dn2: float = SIGMA_Q2_DN2
) -> float:
    """Absolute sensitivity threshold μ_e.min: the signal (e⁻) at SNR = 1.

    Solving ``μ_e = sqrt(σ²_d + σ²_q/K² + μ_e)`` gives
    ``μ_e.min = sqrt(σ²_d + σ²_q/K² + 1/4) + 1/2`` (EMVA 1288 R4.0 Linear).
    """
    return float(np.sqrt(sigma_d_e**2 + var_q_dn2 / system_gain_dn_per_e**2 + 0.25) + 0.5)


def ratio_db(ratio: float) -> float:
    """``20 log10(ratio)``: an amplitude ratio in dB."""
    return float(20.0 * np.log10(ratio))


def ratio_bits(ratio: float) -> float:
    """``log2(ratio)``: a ratio in bits (stops)."""
    return float(np.log2(ratio))


@dataclasses.dataclass(frozen=True)
class PhotonTransfer:
    """The photon-transfer results of one channel, in EMVA 1288 units.

    Attributes
    ----------
    system_gain_dn_per_e : K.
    responsivity_dn_per_photon : R = ηK.
    quantum_efficiency : η (electrons per photon; ×100 for %).
    mu_y_dark_dn, sigma_y_dark_dn : dark signal and temporal dark noise in DN.
    sigma_d_e : temporal dark noise σ_d in e⁻ (quantisation noise removed).
    sigma_d_is_upper_bound : True when σ²_y.dark < 0.24 DN² (σ_d is then an upper limit).
    saturation_index : level of the saturation point.
    mu_p_sat, mu_e_sat : saturation capacity in photons and electrons (η μ_p.sat).
    mu_y_sat_dn : mean signal at saturation.
    mu_p_min, mu_e_min : absolute sensitivity threshold (SNR = 1).
    snr_max : the model SNR at saturation (≈ sqrt(μ_e.sat)).
    dynamic_range : μ_p.sat / μ_p.min.
    fit_mask : the levels used by the K and R fits.
    mu_p, mu_y, var_y, snr : the measured curves (SNR = (μ_y − μ_y.dark) / σ_y).
    """

    system_gain_dn_per_e: float
    responsivity_dn_per_photon: float
    quantum_efficiency: float
    mu_y_dark_dn: float
    sigma_y_dark_dn: float
    sigma_d_e: float
    sigma_d_is_upper_bound: bool
    saturation_index: int
    mu_p_sat: float
    mu_e_sat: float
    mu_y_sat_dn: float
    mu_p_min: float
    mu_e_min: float
    snr_max: float
    dynamic_range: float
    fit_mask: np.ndarray
    mu_p: np.ndarray
    mu_y: np.ndarray
    var_y: np.ndarray
    snr: np.ndarray

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready values (lists for the curves)."""
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            out[field.name] = value.tolist() if isinstance(value, np.ndarray) else value
        return out


def photon_transfer(
    mu_p: ArrayLike,
    mu_y: ArrayLike,
    var_y: ArrayLike,
    mu_y_dark: ArrayLike,
    var_y_dark: ArrayLike,
    *,
    fraction: float = FIT_FRACTION,
    var_q_dn2: float = SIGMA_Q2_DN2,
) -> PhotonTransfer:
    """The EMVA 1288 photon-transfer analysis of one channel.

    Parameters
    ----------
    mu_p : mean photons per pixel at each level (increasing, from dark to beyond
        saturation).
    mu_y, var_y : mean (DN) and temporal variance (DN²) at each level, e.g. from
        :func:`pair_statistics`.
    mu_y_dark, var_y_dark : dark mean and temporal variance: one value (constant
        exposure time) or one per level.
    fraction : the fits use the levels up to this fraction of the saturation signal.
    var_q_dn2 : quantisation noise variance in DN².

    Returns
    -------
    :class:`PhotonTransfer`.

    References
    ----------
    EMVA 1288 Release 4.0 Linear, section 6.
    """
    mu_p = np.asarray(mu_p, dtype=np.float64)
    mu_y = np.asarray(mu_y, dtype=np.float64)
    var_y = np.asarray(var_y, dtype=np.float64)
    if not (mu_p.shape == mu_y.shape == var_y.shape) or mu_p.ndim != 1:
        raise ValueError("mu_p, mu_y and var_y must be 1-D arrays of the same length")
    dark_mu = np.broadcast_to(np.asarray(mu_y_dark, dtype=np.float64), mu_p.shape)
    dark_var = np.broadcast_to(np.asarray(var_y_dark, dtype=np.float64), mu_p.shape)
    sat = saturation_index(var_y)
    mask = fit_mask(mu_y, dark_mu, sat, fraction)
    if np.count_nonzero(mask & (mu_p > 0)) < 2:
        raise ValueError("fewer than two levels below 70 % of saturation: add levels")
    signal = mu_y - dark_mu
    gain = fit_through_origin(signal[mask], (var_y - dark_var)[mask])
    if gain <= 0:
        raise ValueError("the photon transfer curve does not rise: no system gain")
    responsivity = fit_through_origin(mu_p[mask], signal[mask])
    qe = responsivity / gain
    var_dark = float(np.mean(dark_var))
    sigma_d, upper = temporal_dark_noise_e(var_dark, gain, var_q_dn2=var_q_dn2)
    mu_e_min = sensitivity_threshold_e(sigma_d, gain, var_q_dn2=var_q_dn2)
    mu_p_sat = float(mu_p[sat])
    mu_e_sat = qe * mu_p_sat
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.where(var_y > 0, signal / np.sqrt(np.maximum(var_y, 0)), 0.0)
    return PhotonTransfer(
        system_gain_dn_per_e=gain,
        responsivity_dn_per_photon=responsivity,
        quantum_efficiency=qe,
        mu_y_dark_dn=float(np.mean(dark_mu)),
        sigma_y_dark_dn=float(np.sqrt(var_dark)),
        sigma_d_e=sigma_d,
        sigma_d_is_upper_bound=upper,
        saturation_index=sat,
        mu_p_sat=mu_p_sat,
        mu_e_sat=mu_e_sat,
        mu_y_sat_dn=float(mu_y[sat]),
        mu_p_min=mu_e_min / qe,
        mu_e_min=mu_e_min,
        snr_max=float(
            snr_model(
                mu_p_sat,
                qe=qe,
                sigma_d_e=sigma_d,
                system_gain_dn_per_e=gain,
                var_q_dn2=var_q_dn2,
            )
        ),
        dynamic_range=mu_e_sat / mu_e_min,
        fit_mask=mask,
        mu_p=mu_p,
        mu_y=mu_y,
        var_y=var_y,
        snr=snr,
    )
