"""An unconstrained vector ↔ a valid threshold table: every vector gives one.

A table ADC read with black level ``b`` gives a non-negative signal the codes
``b .. 2**N - 1`` through ``n = 2**N - 1 - b`` decision thresholds ``t_1 < ... < t_n``
(fractions of full scale; :func:`sensors.curves.quantize`, ``curve="table"``). The
search moves a vector ``z`` of ``n + 1`` reals; the thresholds are the cumulative sums of
``n + 1`` positive increments that fill the input range ``[0, 1]``::

    d = ε + (1 - (n + 1) ε) · softmax(z)          (d_i ≥ ε, Σ d_i = 1)
    t_k = d_1 + ... + d_k,   k = 1 .. n            (the last increment is 1 - t_n)

so every ``z`` gives strictly increasing thresholds in ``(0, 1)`` at least ``ε`` apart:
each code is reachable and the table is monotone, whatever the optimiser proposes.
``z`` lives in log-increment space (adding a constant to ``z`` changes nothing), so a
step of 1 in ``z_i`` scales one gap by ``e``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["thresholds_from_vector", "vector_from_thresholds"]


def _check_step(n_thresholds: int, min_step: float) -> None:
    if n_thresholds < 1:
        raise ValueError(f"a table needs at least one threshold, got {n_thresholds}")
    if not 0 < min_step * (n_thresholds + 1) < 1:
        raise ValueError(f"min_step {min_step} does not fit {n_thresholds + 1} gaps in [0, 1]")


def thresholds_from_vector(z: ArrayLike, *, min_step: float = 1e-6) -> np.ndarray:
    """The ``len(z) - 1`` thresholds (fractions of full scale) a vector ``z`` stands for.

    Parameters
    ----------
    z : any finite reals (log increments), one more than the thresholds wanted.
    min_step : the smallest gap between neighbouring thresholds (and from 0 and 1).

    Returns
    -------
    float64 thresholds, strictly increasing, in ``[min_step, 1 - min_step]``.
    """
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 1 or not np.all(np.isfinite(z)):
        raise ValueError("z must be a 1-D vector of finite numbers")
    n = z.size - 1
    _check_step(n, min_step)
    e = np.exp(z - z.max())
    d = min_step + (1.0 - (n + 1) * min_step) * (e / e.sum())
    return np.cumsum(d[:-1])


def vector_from_thresholds(thresholds: ArrayLike, *, min_step: float = 1e-6) -> np.ndarray:
    """A vector ``z`` with ``thresholds_from_vector(z) ≈ thresholds`` (exact up to rounding).

    Thresholds outside ``(0, 1)`` or closer than ``min_step`` are first moved to the
    nearest table the parameterisation can express (gaps floored at ``min_step``, the
    whole set rescaled into ``[0, 1]``), so any increasing table is a valid start.

    Returns
    -------
    ``len(thresholds) + 1`` log increments with mean 0.
    """
    t = np.asarray(thresholds, dtype=np.float64)
    if t.ndim != 1 or not np.all(np.isfinite(t)):
        raise ValueError("thresholds must be a 1-D vector of finite numbers")
    n = t.size
    _check_step(n, min_step)
    gaps = np.diff(np.concatenate([[0.0], t, [max(1.0, t[-1])]]))
    free = np.maximum(gaps - min_step, 0.0)
    if free.sum() <= 0:
        free = np.ones_like(free)
    share = free / free.sum()  # the softmax of z
    share = np.maximum(share, np.finfo(np.float64).tiny)
    z = np.log(share)
    return z - z.mean()
