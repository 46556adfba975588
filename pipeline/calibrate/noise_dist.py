"""The temporal dark noise's distribution: Gaussian, Tukey-λ or Student-t, by likelihood.

Each candidate is scaled to the rms σ (the parametrisation of sensorlab's
``read_noise_dist``: ``σ · Z`` with Z of unit variance), and fitted by maximum
likelihood in (shape, log σ) with Nelder–Mead on scipy.stats' densities:

- ``gaussian``: ``x / σ ~ N(0, 1)`` (closed form, σ² = mean(x²));
- ``student_t``: ``x / s ~ t_ν`` with ``s = σ sqrt((ν − 2)/ν)``, ν > 2;
- ``tukey_lambda``: ``x / s ~ TukeyLambda(λ)`` with ``s = σ / sqrt(var(λ))``, λ > −1/2.
  Its density has no closed form: ``f(Q(u)) = 1 / Q'(u)`` with the quantile function
  ``Q(u) = (u^λ − (1 − u)^λ) / λ`` and ``Q'(u) = u^(λ−1) + (1 − u)^(λ−1)``;
  :func:`tukey_logpdf` inverts Q by interpolation on a fine logit grid (100× faster
  than scipy.stats.tukeylambda, which it matches to 1e-6: a test holds it).

The winner has the lowest Akaike information criterion ``2k − 2 ln L`` (k = 1 for the
Gaussian, 2 for the others), so a heavy tail must pay for its extra parameter. The
shape's standard error comes from the observed information (the inverse Hessian of
−ln L by central differences).

References
----------
H. Akaike, "A new look at the statistical model identification", IEEE Trans. Autom.
Control 19 (1974) 716.
K. Wei et al., "A physics-based noise formation model for extreme low-light raw
denoising", CVPR 2020 (Tukey-λ read noise).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike
from scipy import optimize, stats

__all__ = ["DISTS", "fit_noise_distribution", "standard_logpdf", "tukey_logpdf"]

DISTS = ("gaussian", "tukey_lambda", "student_t")
NU_MIN, NU_MAX = 2.05, 500.0
LAMBDA_MIN, LAMBDA_MAX = -0.45, 1.5


def standard_logpdf(dist: str, shape: float | None, x: ArrayLike, sigma: float) -> np.ndarray:
    """Log density of ``σ · Z`` (Z of unit variance) at ``x``.

    Parameters
    ----------
    dist : gaussian, tukey_lambda or student_t.
    shape : ν (student_t) or λ (tukey_lambda); ignored for gaussian.
    x : values (same unit as σ).
    sigma : the rms σ > 0.
    """
    x = np.asarray(x, dtype=np.float64)
    if dist == "gaussian":
        return stats.norm.logpdf(x, scale=sigma)
    assert shape is not None
    if dist == "student_t":
        s = sigma * math.sqrt((shape - 2.0) / shape)
        return stats.t.logpdf(x / s, shape) - math.log(s)
    s = sigma / math.sqrt(float(stats.tukeylambda.var(shape)))
    return tukey_logpdf(x / s, shape) - math.log(s)


_LOGIT_GRID = np.linspace(-40.0, 40.0, 16_001)


def tukey_logpdf(z: ArrayLike, lam: float) -> np.ndarray:
    """Log density of the standard Tukey-λ distribution at ``z`` (see the module docstring).

    Outside the support (``|z| ≥ 1/λ`` for λ > 0) the log density is −inf.
    """
    z = np.asarray(z, dtype=np.float64)
    t = _LOGIT_GRID
    log_u, log_v = -np.logaddexp(0.0, -t), -np.logaddexp(0.0, t)  # log u, log(1 − u)
    if abs(lam) < 1e-12:
        q = t
    else:
        q = (np.expm1(lam * log_u) - np.expm1(lam * log_v)) / lam
    tz = np.interp(z, q, t)
    lu, lv = -np.logaddexp(0.0, -tz), -np.logaddexp(0.0, tz)
    out = -np.logaddexp((lam - 1.0) * lu, (lam - 1.0) * lv)
    if lam > 0:
        out[np.abs(z) >= 1.0 / lam] = -np.inf
    return out


def _shape_of(dist: str, u: float) -> float:
    """The unconstrained parameter u → the shape (ν = 2 + e^u; λ clipped to its range)."""
    return NU_MIN + math.exp(u) if dist == "student_t" else u


def fit_noise_distribution(samples: ArrayLike) -> dict:
    """Fit the three candidates to zero-mean noise samples; pick by AIC.

    Parameters
    ----------
    samples : 1-D noise values (e.g. e⁻), fixed patterns already removed.

    Returns
    -------
    ``{"dist", "shape", "shape_stderr", "sigma", "candidates": {name: {"shape",
    "sigma", "log_likelihood", "aic"}}}``; ``shape`` is None for the Gaussian.
    """
    x = np.asarray(samples, dtype=np.float64).ravel()
    x = x - x.mean()
    if x.size < 100 or not np.std(x) > 0:
        raise ValueError("fitting a noise distribution needs at least 100 varying samples")
    sigma0 = float(np.sqrt(np.mean(x**2)))
    fits = {"gaussian": _gaussian(x, sigma0)}
    for dist, u0 in (("student_t", math.log(10.0)), ("tukey_lambda", 0.0)):
        fits[dist] = _heavy(dist, x, u0, sigma0)
    best = min(fits, key=lambda name: fits[name]["aic"])
    return {
        "dist": best,
        "shape": fits[best]["shape"],
        "shape_stderr": fits[best]["shape_stderr"],
        "sigma": fits[best]["sigma"],
        "candidates": fits,
    }


def _gaussian(x: np.ndarray, sigma: float) -> dict:
    ll = float(stats.norm.logpdf(x, scale=sigma).sum())
    return {
        "shape": None,
        "shape_stderr": None,
        "sigma": sigma,
        "log_likelihood": ll,
        "aic": 2 * 1 - 2 * ll,
    }


def _heavy(dist: str, x: np.ndarray, u0: float, sigma0: float) -> dict:
    def nll(theta: np.ndarray) -> float:
        u, log_sigma = theta
        if dist == "student_t" and not -10 < u < math.log(NU_MAX - NU_MIN):
            return 1e300
        if dist == "tukey_lambda" and not LAMBDA_MIN < u < LAMBDA_MAX:
            return 1e300
        value = -float(standard_logpdf(dist, _shape_of(dist, u), x, math.exp(log_sigma)).sum())
        return value if math.isfinite(value) else 1e300

    start = np.array([u0, math.log(sigma0)])
    result = optimize.minimize(
        nll, start, method="Nelder-Mead", options={"xatol": 1e-4, "fatol": 1e-3, "maxiter": 400}
    )
    u, log_sigma = result.x
    shape = _shape_of(dist, float(u))
    u_se = _stderr(nll, result.x)
    shape_se = u_se * (shape - NU_MIN) if dist == "student_t" else u_se
    ll = -float(result.fun)
    return {
        "shape": shape,
        "shape_stderr": shape_se,
        "sigma": math.exp(log_sigma),
        "log_likelihood": ll,
        "aic": 2 * 2 - 2 * ll,
    }


def _stderr(nll: Callable[[np.ndarray], float], theta: np.ndarray, step: float = 1e-3) -> float:
    """Standard error of ``theta[0]`` from the inverse Hessian of ``nll`` (central differences)."""
    h = np.zeros((2, 2))
    e = np.eye(2) * step
    for i in range(2):
        for j in range(2):
            h[i, j] = (
                nll(theta + e[i] + e[j])
                - nll(theta + e[i] - e[j])
                - nll(theta - e[i] + e[j])
                + nll(theta - e[i] - e[j])
            ) / (4 * step * step)
    try:
        cov = np.linalg.inv(h)
    except np.linalg.LinAlgError:
        return float("nan")
    return float(math.sqrt(cov[0, 0])) if cov[0, 0] > 0 else float("nan")
