"""Bootstrap over frames: resample each level's frame pairs with replacement.

Each replicate draws, independently for every level, as many pairs as it has (with
replacement) and recomputes a statistic of the resampled levels; the figure's standard
error is the replicates' standard deviation and its 95 % interval the 2.5 and 97.5 %
percentiles (Efron's percentile interval). A replicate where the statistic fails (e.g.
no level below 70 % of saturation) is dropped and counted.

References
----------
B. Efron, R. J. Tibshirani, *An Introduction to the Bootstrap* (Chapman & Hall, 1993),
chapters 6 and 13.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

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
    (``name → {"stderr", "ci95_low", "ci95_high"}``, number of failed replicates)
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
    out = {}
    for name, vals in values.items():
        a = np.asarray(vals)
        a = a[np.isfinite(a)]
        if a.size < 2:
            continue
        low, high = np.percentile(a, [2.5, 97.5])
        out[name] = {
            "stderr": float(a.std(ddof=1)),
            "ci95_low": float(low),
            "ci95_high": float(high),
        }
    return out, failed
