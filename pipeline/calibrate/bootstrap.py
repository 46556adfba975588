"""Bootstrap over frames: resample each level's frame pairs with replacement.

Each replicate draws, independently for every level, as many pairs as it has (with
replacement) and recomputes a statistic of the resampled levels. With few pairs per
level the bootstrap underestimates a variance: for a mean of n values it gives
``(n − 1)/n`` of the unbiased ``s²/n``. So the standard error is the replicates'
standard deviation times ``sqrt(n̄ / (n̄ − 1))`` (n̄ the harmonic mean of the pairs per
level), and the 95 % interval is ``value ± t_{0.975, ν} · SE`` (a Student-t interval).

Its degrees of freedom ν are each figure's own: a figure that rests on a few levels
(the system gain K, a fit through the origin, is carried by the top levels of its fit
range) has an SE estimated from few pairs, so its studentized error has heavy tails and
the pooled ``Σ (n_l − 1)`` would give intervals too short. ν is the Welch–Satterthwaite
value ``ν = (Σ_l v_l)² / Σ_l v_l² / (n_l − 1)`` over the levels, each level's share
``v_l`` of the variance from a delete-one-pair jackknife within the level
(``v_l = (n_l − 1)/n_l · Σ_p (θ_(l,p) − θ̄_(l))²``; for a mean per level it is exactly
``s_l²/n_l``, so ν is Welch's). A replicate (or a jackknife subset) where the statistic
fails (e.g. no level below 70 % of saturation) is dropped and counted.

References
----------
B. Efron, R. J. Tibshirani, *An Introduction to the Bootstrap* (Chapman & Hall, 1993),
chapters 6 (the bootstrap SE), 11 (the jackknife) and 12 (bootstrap-t style
intervals); the (n − 1)/n factor: ibid., section 5.2 (the plug-in variance of a mean).
F. E. Satterthwaite, "An approximate distribution of estimates of variance
components", Biometrics Bulletin 2 (1946) 110–114.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from scipy import stats

__all__ = ["DEFAULT_REPLICATES", "bootstrap", "level_dof"]

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
    (``name → {"stderr", "t95", "dof"}``, number of failed replicates and jackknife
    subsets): the corrected standard error, the t quantile for a 95 % interval
    ``value ± t95 · stderr`` and its degrees of freedom (:func:`level_dof`).
    """
    rng = np.random.default_rng(seed)
    values, failed = _collect(
        statistic, ([rng.integers(0, n, n) for n in pair_counts] for _ in range(replicates))
    )
    counts = np.asarray(pair_counts, dtype=np.float64)
    n_bar = counts.size / float(np.sum(1.0 / counts))
    inflate = math.sqrt(n_bar / (n_bar - 1.0)) if n_bar > 1 else math.inf
    dof, jack_failed = level_dof(statistic, pair_counts)
    pooled = max(float(np.sum(counts - 1)), 1.0)
    out = {}
    for name, vals in values.items():
        a = np.asarray(vals)
        a = a[np.isfinite(a)]
        if a.size < 2:
            continue
        nu = dof.get(name, pooled)
        out[name] = {
            "stderr": float(a.std(ddof=1)) * inflate,
            "t95": float(stats.t.ppf(0.975, nu)),
            "dof": nu,
        }
    return out, failed + jack_failed


def level_dof(
    statistic: Callable[[list[np.ndarray]], dict[str, float]], pair_counts: Sequence[int]
) -> tuple[dict[str, float], int]:
    """Welch–Satterthwaite degrees of freedom of each figure over the levels.

    Parameters
    ----------
    statistic, pair_counts : as for :func:`bootstrap`.

    Returns
    -------
    (``name → ν``, failed subsets): ``ν = (Σ v_l)² / Σ v_l²/(n_l − 1)`` with ``v_l`` the
    delete-one-pair jackknife variance of level l (levels of one pair give none; a
    figure without jackknife variance is left out, and then takes the pooled ν).
    """
    full = [np.arange(n) for n in pair_counts]
    shares: dict[str, list[tuple[float, int]]] = {}
    failed = 0
    for level, n in enumerate(pair_counts):
        if n < 2:
            continue
        deleted, level_failed = _collect(
            statistic,
            ([*full[:level], np.delete(full[level], p), *full[level + 1 :]] for p in range(n)),
        )
        failed += level_failed
        for name, vals in deleted.items():
            a = np.asarray(vals)
            if a.size == n and np.all(np.isfinite(a)):
                v = (n - 1) / n * float(np.sum((a - a.mean()) ** 2))
                shares.setdefault(name, []).append((v, n))
    dof = {}
    for name, parts in shares.items():
        v = np.array([p[0] for p in parts])
        n = np.array([p[1] for p in parts], dtype=np.float64)
        den = float(np.sum(v**2 / (n - 1)))
        if den > 0:
            dof[name] = max(float(np.sum(v)) ** 2 / den, 1.0)
    return dof, failed


def _collect(
    statistic: Callable[[list[np.ndarray]], dict[str, float]], resamples: Iterable[list[np.ndarray]]
) -> tuple[dict[str, list[float]], int]:
    """Each figure's values over ``resamples`` (pair indices per level), and how many
    resamples the statistic refused (ValueError: too few distinct pairs, say)."""
    values: dict[str, list[float]] = {}
    failed = 0
    for picks in resamples:
        try:
            result = statistic(picks)
        except ValueError:
            failed += 1
            continue
        for name, value in result.items():
            values.setdefault(name, []).append(float(value))
    return values, failed
