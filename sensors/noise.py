"""Read-noise distributions with unit variance: Gaussian, Tukey-λ and Student-t.

Real CMOS read noise has heavier tails than a Gaussian (source-follower random
telegraph noise, flicker noise); the extreme-low-light denoising literature fits it
with a Tukey-λ or a Student-t distribution. Each distribution here is scaled to unit
standard deviation, so ``read_noise_e · draw`` has rms ``read_noise_e`` whatever the
shape:

- ``gaussian``: ``N(0, 1)``.
- ``student_t`` with ν > 2 degrees of freedom: ``var(t_ν) = ν / (ν − 2)``, so the draw
  is ``t_ν · sqrt((ν − 2) / ν)``. ν ≤ 2 has infinite variance.
- ``tukey_lambda`` with shape λ > −1/2: quantile function
  ``Q(u) = (u^λ − (1 − u)^λ) / λ`` (λ = 0: the logistic ``log(u / (1 − u))``), variance
  ``(2 / λ²) (1 / (1 + 2λ) − Γ(λ + 1)² / Γ(2λ + 2))`` and ``π² / 3`` at λ = 0; the draw
  is ``Q(U) / sqrt(var)`` with U uniform on (0, 1). λ ≤ −1/2 has infinite variance;
  λ ≈ 0.14 is close to a Gaussian, λ < 0 has heavier tails.

References
----------
J. W. Tukey, "The practical relationship between the common transformations of
percentages of counts and of amounts", Tech. Rep. 36, Princeton (1960); B. L. Joiner &
J. R. Rosenblatt, "Some properties of the range in samples from Tukey's symmetric lambda
distributions", JASA 66 (1971) 394 (the variance).
K. Wei, Y. Fu, J. Yang, H. Huang, "A physics-based noise formation model for extreme
low-light raw denoising", CVPR 2020 (Tukey-λ read noise, row noise).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from scipy.special import zeta

__all__ = ["READ_NOISE_DISTS", "ReadNoiseDist", "check_shape", "standard_draw", "variance"]

ReadNoiseDist = Literal["gaussian", "tukey_lambda", "student_t"]
READ_NOISE_DISTS = ("gaussian", "tukey_lambda", "student_t")

#: At |λ| below this the Tukey-λ draw is the logistic (λ = 0) and its variance π²/3.
_TUKEY_ZERO = 1e-12
#: Below this |λ| the variance's log-gamma difference is summed as its Taylor series.
_TUKEY_SERIES = 1e-2
#: Uniform draws are kept this far inside (0, 1), so that Q(u) stays finite.
_U_EPS = 2.0**-54


def check_shape(dist: str, shape: float | None) -> str | None:
    """Why ``shape`` does not fit ``dist`` (one line), or None when it does."""
    if dist == "gaussian":
        return None if shape is None else "applies only to tukey_lambda and student_t"
    if shape is None:
        return f"{dist} needs read_noise_shape (λ for tukey_lambda, ν for student_t)"
    if dist == "student_t" and not shape > 2:
        return f"student_t needs ν > 2 (finite variance), got {shape}"
    if dist == "tukey_lambda" and not shape > -0.5:
        return f"tukey_lambda needs λ > -0.5 (finite variance), got {shape}"
    return None


def variance(dist: str, shape: float | None = None) -> float:
    """The variance of the unscaled distribution (see the module docstring)."""
    if dist == "gaussian":
        return 1.0
    problem = check_shape(dist, shape)
    if problem:
        raise ValueError(problem)
    assert shape is not None
    if dist == "student_t":
        return shape / (shape - 2.0)
    return _tukey_variance(shape)


def _tukey_variance(lam: float) -> float:
    """``(2/λ²)(1/(1+2λ) − Γ(λ+1)²/Γ(2λ+2))``, evaluated without cancellation.

    With ``Γ(2λ+2) = (1+2λ) Γ(1+2λ)`` it is ``−2 expm1(d) / (λ² (1+2λ))`` for
    ``d = 2 lnΓ(1+λ) − lnΓ(1+2λ) = Σ_{k≥2} (−1)^k ζ(k) (2 − 2^k) λ^k / k`` (the Taylor
    series of lnΓ(1+x); the linear terms cancel), summed directly for small |λ|.
    """
    if abs(lam) < _TUKEY_ZERO:
        return math.pi**2 / 3.0
    if abs(lam) < _TUKEY_SERIES:
        d = sum((-1) ** k * zeta(k) * (2 - 2**k) * lam**k / k for k in range(2, 14))
    else:
        d = 2.0 * math.lgamma(1.0 + lam) - math.lgamma(1.0 + 2.0 * lam)
    return -2.0 * math.expm1(d) / (lam**2 * (1.0 + 2.0 * lam))


def standard_draw(
    dist: str,
    shape: float | None,
    size: tuple[int, ...],
    rng: np.random.Generator,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Draw ``size`` values of ``dist`` scaled to zero mean and unit variance.

    Parameters
    ----------
    dist : ``gaussian``, ``tukey_lambda`` or ``student_t``.
    shape : λ (tukey_lambda) or ν (student_t); None for gaussian.
    size : the output shape.
    rng : the generator (gaussian uses one ``standard_normal`` call, as before).
    out : an optional float64 array of ``size`` to write the values into (the same
        draws; gaussian then fills it without a copy).

    Returns
    -------
    float64 array of ``size`` (``out`` when given).
    """
    if dist == "gaussian":
        if out is not None:
            return rng.standard_normal(out=out)
        return rng.standard_normal(size)
    draw = _scaled_draw(dist, shape, size, rng)
    if out is None:
        return draw
    out[...] = draw
    return out


def _scaled_draw(
    dist: str, shape: float | None, size: tuple[int, ...], rng: np.random.Generator
) -> np.ndarray:
    """A unit-variance Student-t or Tukey-λ draw of ``size`` (see :func:`standard_draw`)."""
    scale = 1.0 / math.sqrt(variance(dist, shape))
    assert shape is not None
    if dist == "student_t":
        return scale * rng.standard_t(shape, size)
    u = np.clip(rng.random(size), _U_EPS, 1.0 - _U_EPS)
    if abs(shape) < _TUKEY_ZERO:
        q = np.log(u / (1.0 - u))
    else:
        # u^λ − (1−u)^λ with expm1: no cancellation at small |λ|
        q = (np.expm1(shape * np.log(u)) - np.expm1(shape * np.log1p(-u))) / shape
    return scale * q
