"""The dark-noise distribution fit against scipy.stats (densities and samples), and the
bootstrap's standard error against the analytic one of a mean."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from scipy.integrate import trapezoid

from pipeline.calibrate.bootstrap import bootstrap, level_dof
from pipeline.calibrate.noise_dist import fit_noise_distribution, standard_logpdf, tukey_logpdf


@pytest.mark.parametrize("lam", [-0.3, -0.1, 0.0, 0.14, 0.5, 1.2])
def test_tukey_logpdf_matches_scipy(lam: float) -> None:
    z = np.linspace(-6, 6, 401) if lam <= 0 else np.linspace(-0.95 / lam, 0.95 / lam, 401)
    np.testing.assert_allclose(tukey_logpdf(z, lam), stats.tukeylambda.logpdf(z, lam), atol=1e-5)


@pytest.mark.parametrize(("dist", "shape"), [("student_t", 5.0), ("tukey_lambda", -0.1)])
def test_standard_logpdf_has_unit_variance_per_sigma(dist: str, shape: float) -> None:
    # ∫ x² f(x) dx = σ² for the scaled density (numerical quadrature)
    x = np.linspace(-400, 400, 800_001)
    f = np.exp(standard_logpdf(dist, shape, x, 2.0))
    assert trapezoid(f, x) == pytest.approx(1.0, abs=2e-3)
    assert trapezoid(x**2 * f, x) == pytest.approx(4.0, rel=0.03)


def test_fit_recovers_a_student_t_shape() -> None:
    x = 3.0 * stats.t.rvs(5.0, size=20_000, random_state=np.random.default_rng(2))
    fit = fit_noise_distribution(x)
    assert fit["dist"] == "student_t"
    assert abs(fit["shape"] - 5.0) < 3 * fit["shape_stderr"]
    assert fit["sigma"] == pytest.approx(3.0 * np.sqrt(5 / 3), rel=0.05)


def test_fit_recovers_a_tukey_lambda_shape() -> None:
    x = stats.tukeylambda.rvs(-0.15, size=20_000, random_state=np.random.default_rng(3))
    fit = fit_noise_distribution(x)
    assert fit["dist"] == "tukey_lambda"
    assert abs(fit["shape"] + 0.15) < 3 * fit["shape_stderr"]


def test_gaussian_noise_is_not_called_heavy_tailed() -> None:
    fit = fit_noise_distribution(np.random.default_rng(4).normal(0, 2, 20_000))
    # the Gaussian, or the Tukey-λ that is indistinguishable from it (λ ≈ 0.135)
    assert fit["dist"] == "gaussian" or (
        fit["dist"] == "tukey_lambda" and abs(fit["shape"] - 0.135) < 0.03
    )
    assert fit["sigma"] == pytest.approx(2.0, rel=0.02)


def test_bootstrap_standard_error_of_a_mean() -> None:
    data = np.random.default_rng(5).normal(10, 3, 400)
    result, failed = bootstrap(
        lambda picks: {"mean": float(data[picks[0]].mean())}, [data.size], replicates=400
    )
    assert failed == 0
    assert result["mean"]["stderr"] == pytest.approx(3 / np.sqrt(400), rel=0.15)
    assert result["mean"]["t95"] == pytest.approx(stats.t.ppf(0.975, 399))


def test_bootstrap_corrects_its_small_sample_bias() -> None:
    # a mean of n = 4 values: the plain bootstrap variance is (n - 1)/n of s²/n; the
    # corrected SE averages to the true sd/sqrt(n) much closer (over many data sets)
    rng = np.random.default_rng(6)
    ses = []
    for _ in range(200):
        data = rng.normal(0, 1, 4)
        result, _ = bootstrap(
            lambda picks, d=data: {"m": float(d[picks[0]].mean())},
            [4],
            replicates=200,
            seed=int(rng.integers(1 << 30)),
        )
        ses.append(result["m"]["stderr"] ** 2)
    # E[s²/n] = 1/4: the corrected bootstrap variance is unbiased for it
    assert np.mean(ses) == pytest.approx(0.25, rel=0.1)


def test_level_dof_is_welchs_for_means_per_level() -> None:
    # a sum of two levels' means: the jackknife share of each level is s_l²/n_l, so the
    # degrees of freedom are Welch-Satterthwaite's from the sample variances
    rng = np.random.default_rng(7)
    data = [rng.normal(0, 3, 5), rng.normal(0, 1, 12)]
    dof, failed = level_dof(
        lambda picks: {"sum": float(sum(d[p].mean() for d, p in zip(data, picks, strict=True)))},
        [5, 12],
    )
    v = [d.var(ddof=1) / d.size for d in data]
    welch = sum(v) ** 2 / sum(vi**2 / (d.size - 1) for vi, d in zip(v, data, strict=True))
    assert failed == 0
    assert dof["sum"] == pytest.approx(welch, rel=1e-9)
    assert 4 < dof["sum"] < 15  # the noisy 5-value level dominates: far below 15 pooled
