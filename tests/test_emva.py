"""EMVA 1288 analysis functions against the standard's equations.

Synthetic inputs are built from the model equations in the test itself; statistical
checks state n and use 5-sigma bounds derived from it (std of a mean σ/sqrt(n), of a
sample variance σ²·sqrt(2/(n-1))).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline import emva
from pipeline.emva import (
    fit_through_origin,
    nonuniformity,
    pair_statistics,
    photon_transfer,
    sensitivity_threshold_e,
    snr_model,
    spatial_variance,
    temporal_dark_noise_e,
)


def test_pair_statistics_remove_the_fixed_pattern():
    n = 100_000
    rng = np.random.default_rng(0)
    pattern = 50.0 * rng.standard_normal(n)  # spatial std 50 DN ≫ temporal std 3 DN
    y_a = 1000.0 + pattern + 3.0 * rng.standard_normal(n)
    y_b = 1000.0 + pattern + 3.0 * rng.standard_normal(n)
    mu, var = pair_statistics(y_a, y_b)
    # mean: pattern's sample mean (std 50/sqrt(n)) + temporal (3/sqrt(2n))
    assert mu == pytest.approx(1000.0, abs=5 * math.hypot(50 / math.sqrt(n), 3 / math.sqrt(2 * n)))
    assert var == pytest.approx(9.0, abs=5 * 9.0 * math.sqrt(2 / (n - 1)))
    # a common offset between the frames (EMVA: mean removed from each frame) is ignored
    assert pair_statistics(y_a + 5.0, y_b)[1] == pytest.approx(var)
    with pytest.raises(ValueError):
        pair_statistics(y_a, y_b[:-1])


def _spatial_tolerance(s2, noise_var, frames, n):
    """5-sigma bound of the spatial-variance estimate of L = frames averaged frames.

    Error sources: the noise left in the mean frame (variance σ²/L, its sample variance
    over n pixels), its covariance with the pattern (std 2·s·σ/sqrt(L n)), and the
    temporal-variance estimate that is subtracted.
    """
    left = noise_var / frames
    return 5 * math.sqrt(
        (left * math.sqrt(2 / n)) ** 2
        + 4 * s2 * left / n
        + (left * math.sqrt(2 / (n * (frames - 1)))) ** 2
    )


def test_spatial_variance_of_averaged_frames():
    n, frames, sigma, s = 50_000, 8, 4.0, 2.0
    rng = np.random.default_rng(1)
    pattern = s * rng.standard_normal(n)
    y = 200.0 + pattern + sigma * rng.standard_normal((frames, n))
    s2, mu = spatial_variance(y)
    assert s2 == pytest.approx(
        np.var(pattern, ddof=1), abs=_spatial_tolerance(s**2, sigma**2, frames, n)
    )
    assert mu == pytest.approx(200.0 + pattern.mean(), abs=5 * sigma / math.sqrt(n * frames))


def test_nonuniformity_gives_dsnu_in_electrons_and_prnu_in_percent():
    n, frames, k = 40_000, 16, 0.5
    rng = np.random.default_rng(2)
    dsnu_e, prnu = 3.0, 0.01
    offset = dsnu_e * rng.standard_normal(n)
    gain = 1 + prnu * rng.standard_normal(n)
    signal_e, read_e = 5000.0, 2.0
    dark = 100 + k * (offset + read_e * rng.standard_normal((frames, n)))
    noise = np.sqrt(signal_e + read_e**2) * rng.standard_normal((frames, n))
    flat = 100 + k * (offset + gain * signal_e + noise)
    got_dsnu, got_prnu = nonuniformity(dark, flat, k)
    # targets: the patterns' own sample std; tolerances from the spatial-variance bound
    # (in e-², halved for a std), the flat's bound also covering the dark's subtraction
    s2_dsnu = np.var(offset, ddof=1)
    tol_dark = _spatial_tolerance(s2_dsnu, read_e**2, frames, n)
    assert got_dsnu == pytest.approx(np.sqrt(s2_dsnu), rel=0.5 * tol_dark / s2_dsnu)
    s2_prnu = np.var(gain * signal_e, ddof=1)
    tol_flat = _spatial_tolerance(s2_prnu + s2_dsnu, signal_e + read_e**2, frames, n) + tol_dark
    tol_flat += 5 * 2 * np.sqrt(s2_dsnu * s2_prnu / n)  # sample covariance of the two patterns
    expected_prnu = 100 * np.sqrt(s2_prnu) / signal_e
    assert got_prnu == pytest.approx(expected_prnu, rel=0.5 * tol_flat / s2_prnu)


def _model_curves(k, qe, sigma_d, mu_y_dark, full_well, mu_p):
    """Noise-free EMVA model curves with a hard clip at the full well."""
    mu_e = np.minimum(qe * mu_p, full_well)
    mu_y = mu_y_dark + k * mu_e
    var_dark = k**2 * sigma_d**2 + 1 / 12
    var_y = var_dark + k**2 * mu_e
    var_y[qe * mu_p > full_well] = var_dark  # a clipped pixel keeps only the dark noise
    return mu_y, var_y, var_dark


def test_photon_transfer_recovers_the_model_parameters_exactly():
    k, qe, sigma_d, dark, full_well = 0.3, 0.62, 5.0, 120.0, 9000.0
    mu_p = np.linspace(0, 1.3 * full_well / qe, 40)
    mu_y, var_y, var_dark = _model_curves(k, qe, sigma_d, dark, full_well, mu_p)
    r = photon_transfer(mu_p, mu_y, var_y, dark, var_dark)
    assert r.system_gain_dn_per_e == pytest.approx(k, rel=1e-12)
    assert r.quantum_efficiency == pytest.approx(qe, rel=1e-12)
    assert r.responsivity_dn_per_photon == pytest.approx(qe * k, rel=1e-12)
    assert r.sigma_d_e == pytest.approx(sigma_d, rel=1e-12)
    assert not r.sigma_d_is_upper_bound
    assert r.mu_y_dark_dn == dark
    # saturation: the last level at or below the full well (maximum variance)
    sat = int(np.flatnonzero(qe * mu_p <= full_well)[-1])
    assert r.saturation_index == sat
    assert r.mu_p_sat == mu_p[sat] and r.mu_e_sat == pytest.approx(qe * mu_p[sat])
    # fit range: levels up to 70 % of the saturation signal
    assert np.array_equal(r.fit_mask, k * qe * mu_p <= 0.7 * k * qe * mu_p[sat])
    # SNR = 1 threshold, dynamic range and SNR_max from their definitions
    mu_e_min = math.sqrt(sigma_d**2 + 1 / 12 / k**2 + 0.25) + 0.5
    assert r.mu_e_min == pytest.approx(mu_e_min)
    assert r.mu_p_min == pytest.approx(mu_e_min / qe)
    assert r.dynamic_range == pytest.approx(qe * mu_p[sat] / mu_e_min)
    e_sat = qe * mu_p[sat]
    assert r.snr_max == pytest.approx(e_sat / math.sqrt(sigma_d**2 + 1 / 12 / k**2 + e_sat))
    assert r.snr[5] == pytest.approx((mu_y[5] - dark) / math.sqrt(var_y[5]))
    d = r.as_dict()
    assert isinstance(d["mu_p"], list) and d["system_gain_dn_per_e"] == r.system_gain_dn_per_e


def test_quantisation_limited_dark_noise_is_an_upper_bound():
    sigma, upper = temporal_dark_noise_e(0.2, 0.5)
    assert upper and sigma == pytest.approx(0.40 / 0.5)
    sigma, upper = temporal_dark_noise_e(1.0, 0.5)
    assert not upper and sigma == pytest.approx(math.sqrt(1 - 1 / 12) / 0.5)


def test_snr_model_and_threshold():
    mu_p = np.array([0.0, 10.0, 1e3, 1e5])
    qe, sigma_d, k = 0.5, 3.0, 0.2
    expected = qe * mu_p / np.sqrt(sigma_d**2 + (1 / 12) / k**2 + qe * mu_p)
    assert np.allclose(snr_model(mu_p, qe=qe, sigma_d_e=sigma_d, system_gain_dn_per_e=k), expected)
    mu_e_min = sensitivity_threshold_e(sigma_d, k)
    # the threshold is where the SNR is exactly 1
    assert snr_model(mu_e_min, qe=1.0, sigma_d_e=sigma_d, system_gain_dn_per_e=k) == pytest.approx(
        1
    )
    # shot-noise limit: SNR -> sqrt(eta mu_p)
    assert snr_model(1e9, qe=qe, sigma_d_e=sigma_d, system_gain_dn_per_e=k) == pytest.approx(
        math.sqrt(qe * 1e9), rel=1e-6
    )


def test_fit_through_origin_matches_least_squares():
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 10, 50)
    y = 2.5 * x + rng.normal(0, 0.5, 50)
    expected = np.linalg.lstsq(x[:, None], y, rcond=None)[0][0]
    assert fit_through_origin(x, y) == pytest.approx(expected)
    with pytest.raises(ValueError):
        fit_through_origin([0.0, 0.0], [1.0, 2.0])


def test_photon_transfer_needs_levels_below_saturation():
    mu_p = np.array([0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="levels"):
        photon_transfer(mu_p, np.array([0.0, 10.0, 20.0]), np.array([1.0, 50.0, 2.0]), 0.0, 1.0)


# -- row / column / pixel decomposition (EMVA 1288 R4.0, section 8) ---------------------------
def _estimate_sd(part_var, residual_var, count):
    """Std of a sample variance of ``count`` values of (part + residual) minus the residual's
    expectation: the part's covariance with the residual and the residual's own scatter."""
    return math.sqrt(4 * part_var * residual_var / count + 2 * residual_var**2 / count)


def test_spatial_decomposition_recovers_row_column_pixel_and_row_temporal_parts():
    m, n, frames = 300, 400, 8
    s_row, s_col, s_pix, s_row_t, s_pix_t = 1.5, 1.0, 2.0, 0.8, 3.0
    rng = np.random.default_rng(4)
    row, col = s_row * rng.standard_normal(m), s_col * rng.standard_normal(n)
    pix = s_pix * rng.standard_normal((m, n))
    row_t = s_row_t * rng.standard_normal((frames, m))
    y = (
        500.0
        + row[:, None]
        + col[None, :]
        + pix
        + row_t[:, :, None]
        + s_pix_t * rng.standard_normal((frames, m, n))
    )
    d = emva.spatial_decomposition(y)
    # compared with the realised patterns' sample variances; bounds 5 sigma of what is
    # left in the row (column) means: the pixel pattern and the temporal noise over L frames
    left_row = s_pix**2 / n + s_pix_t**2 / (frames * n) + s_row_t**2 / frames
    left_col = s_pix**2 / m + s_pix_t**2 / (frames * m)
    assert d.row_dn2 == pytest.approx(
        np.var(row, ddof=1), abs=5 * _estimate_sd(s_row**2, left_row, m)
    )
    assert d.col_dn2 == pytest.approx(
        np.var(col, ddof=1), abs=5 * _estimate_sd(s_col**2, left_col, n)
    )
    assert d.pixel_dn2 == pytest.approx(
        np.var(pix, ddof=1), abs=5 * _estimate_sd(s_pix**2, s_pix_t**2 / frames, m * n) + 0.02
    )
    assert d.total_dn2 == pytest.approx(d.row_dn2 + d.col_dn2 + d.pixel_dn2, rel=0.01)
    # row temporal noise: m·(L − 1) degrees of freedom, plus the pixel noise in a row mean
    dof = m * (frames - 1)
    assert d.row_temporal_dn2 == pytest.approx(
        np.var(row_t, axis=0, ddof=1).mean(),
        abs=5 * _estimate_sd(s_row_t**2, s_pix_t**2 / n, dof),
    )
    assert d.temporal_dn2 == pytest.approx(s_row_t**2 + s_pix_t**2, rel=5 * math.sqrt(2 / dof))
    assert d.mean_dn == pytest.approx(y.mean())


def test_column_temporal_noise_is_measured_and_kept_out_of_the_pixel_part():
    # y = pixel pattern + pixel temporal noise + column temporal noise v_l[n]: per-frame
    # column means vary by σ²_col.t + σ²_pix.t/M; without col_temporal the pixel part
    # loses σ²_col.t/L (it is taken as pixel noise), with it the pattern is recovered
    m, n, frames, s_pix, s_pix_t, s_col_t = 300, 200, 6, 1.0, 2.0, 1.5
    rng = np.random.default_rng(11)
    pix = s_pix * rng.standard_normal((m, n))
    col_t = s_col_t * rng.standard_normal((frames, n))
    y = 50.0 + pix + col_t[:, None, :] + s_pix_t * rng.standard_normal((frames, m, n))
    d = emva.spatial_decomposition(y, col_temporal=True)
    dof = n * (frames - 1)
    assert d.col_temporal_dn2 == pytest.approx(
        np.var(col_t, axis=0, ddof=1).mean(), abs=5 * _estimate_sd(s_col_t**2, s_pix_t**2 / m, dof)
    )
    tolerance = 5 * _estimate_sd(s_pix**2, s_pix_t**2 / frames, m * n)
    assert d.pixel_dn2 == pytest.approx(np.var(pix, ddof=1), abs=tolerance)
    left_col = s_pix**2 / m + s_pix_t**2 / (frames * m) + s_col_t**2 / frames
    assert d.col_dn2 == pytest.approx(0.0, abs=5 * _estimate_sd(0.0, left_col, n))
    biased = emva.spatial_decomposition(y).pixel_dn2
    assert biased == pytest.approx(d.pixel_dn2 - d.col_temporal_dn2 / frames, rel=0.05)


def test_spatial_decomposition_without_structure_gives_no_row_or_column_part():
    m, n, frames = 200, 250, 4
    rng = np.random.default_rng(5)
    y = 10.0 + 2.0 * rng.standard_normal((m, n)) + rng.standard_normal((frames, m, n))
    d = emva.spatial_decomposition(y)
    # the row part estimates 0 with the sampling std of the row means' variance
    left_row, left_col = 4.0 / n + 1 / (frames * n), 4.0 / m + 1 / (frames * m)
    assert abs(d.row_dn2) < 5 * left_row * math.sqrt(2 / m)
    assert abs(d.col_dn2) < 5 * left_col * math.sqrt(2 / n)
    assert abs(d.row_temporal_dn2) < 5 * (1 / n) * math.sqrt(2 / (m * (frames - 1)))
    with pytest.raises(ValueError, match="L, M, N"):
        emva.spatial_decomposition(y[0])


def test_line_nonuniformity_converts_to_electrons_and_percent():
    def parts(mean, row, col, pixel, row_t=0.0):
        return emva.SpatialDecomposition(mean, row + col + pixel, row, col, pixel, 1.0, row_t)

    dark = parts(100.0, row=0.04, col=0.01, pixel=0.25, row_t=0.09)
    bright = parts(1100.0, row=0.04 + 25.0, col=0.01 + 16.0, pixel=0.25 + 100.0)
    got = emva.line_nonuniformity(dark, bright, system_gain_dn_per_e=0.5)
    assert got == pytest.approx(
        {
            "row_offset_fpn_e": 0.2 / 0.5,
            "col_offset_fpn_e": 0.1 / 0.5,
            "dsnu_pixel_e": 0.5 / 0.5,
            "row_gain_fpn_pct": 100 * 5.0 / 1000.0,
            "col_gain_fpn_pct": 100 * 4.0 / 1000.0,
            "prnu_pixel_pct": 100 * 10.0 / 1000.0,
            "row_temporal_noise_e": 0.3 / 0.5,
        }
    )
    # a negative estimate (no pattern) is 0, not NaN
    assert (
        emva.line_nonuniformity(parts(0, -0.1, 0, 0), parts(1, -0.2, 0, 0), 1.0)["row_offset_fpn_e"]
        == 0.0
    )
