"""Bootstrap over frames: resample each level's frame pairs with replacement.

Each replicate draws, independently for every level, as many pairs as it has (with
replacement) and recomputes a statistic of the resampled levels. With few pairs per
level the bootstrap underestimates a variance: for a mean of n values it gives
``(n − 1)/n`` of the unbiased ``s²/n``. So the standard error is the replicates'
standard deviation times ``sqrt(n̄ / (n̄ − 1))`` (n̄ the harmonic mean of the pairs per
level), and the 95 % interval is ``value ± t_{0.975, ν} · SE`` with ``ν = Σ (n_l − 1)``
the pooled degrees of freedom (a Student-t interval; it tends to ±1.96 SE with many
frames). A replicate where the statistic fails (e.g. no level below 70 % of
saturation) is dropped and counted.

References
----------
B. Efron, R. J. Tibshirani, *An Introduction to the Bootstrap* (Chapman & Hall, 1993),
chapters 6 (the bootstrap SE) and 12 (bootstrap-t style intervals); the (n − 1)/n
factor: ibid., section 5.2 (the plug-in variance of a mean).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats

__all__ = ["DEFAULT_REPLICATES", "bootstrap"]

DEFAULT_REPLICATES = 200


def bootstrap(
    statistic: Callable[[list[np.ndarray]], dict[str, float]],
    pair_counts: Sequence[int],
    *,
    replicates: int = DEFAULT_REPLICATES,
    seed: int = 0,
) -> tuple[dict[str, dict[str, float]], int]:
    """Bootstrap ``statistic`` over the pairs of each level.

    Parameters
    ----------
    statistic : takes one index array per level (which pairs to use) and returns named
        floats.
    pair_counts : pairs per level.
    replicates : number of bootstrap replicates.
    seed : the generator's seed (same seed, same intervals).

    Returns
    -------
    (``name → {"stderr", "t95"}``, number of failed replicates): the corrected standard
    error and the t quantile for a 95 % interval ``value ± t95 · stderr``.
    """
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {}
    failed = 0
    for _ in range(replicates):
        picks = [rng.integers(0, n, n) for n in pair_counts]
        try:
            result = statistic(picks)
        except ValueError:
            failed += 1
            continue
        for name, value in result.items():
            values.setdefault(name, []).append(float(value))
    counts = np.asarray(pair_counts, dtype=np.float64)
    n_bar = counts.size / float(np.sum(1.0 / counts))
    inflate = math.sqrt(n_bar / (n_bar - 1.0)) if n_bar > 1 else math.inf
    t95 = float(stats.t.ppf(0.975, max(float(np.sum(counts - 1)), 1.0)))
    out = {}
    for name, vals in values.items():
        a = np.asarray(vals)
        a = a[np.isfinite(a)]
        if a.size < 2:
            continue
        out[name] = {"stderr": float(a.std(ddof=1)) * inflate, "t95": t95}
    return out, failed
