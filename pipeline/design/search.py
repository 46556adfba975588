"""CMA-ES over threshold tables: ask, score, tell, checkpoint each generation.

The optimiser is the ``cma`` package's :class:`cma.CMAEvolutionStrategy` (N. Hansen,
"The CMA Evolution Strategy: A Tutorial", arXiv:1604.00772), a gradient-free search
suited to a noisy, piecewise-constant objective such as a validation accuracy. It moves
the log-increment vector of :mod:`pipeline.design.parameterise`, so every candidate is a
valid table.

Determinism and resuming: every random draw of the search goes through
:class:`KeyedNormal`, whose ``k``-th draw is ``default_rng([seed, k])``, not NumPy's
global generator; the strategy (with that counter) is saved after each generation
(``on_generation``), and :func:`run_search` continues from a saved state exactly as an
uninterrupted search would have.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["KeyedNormal", "SearchState", "new_state", "run_search"]

_TAG = 0xCAE5  # domain tag of the search's random keys


class KeyedNormal:
    """``randn(lam, n)`` for cma: draw ``k`` is ``default_rng([tag, seed, k])``'s normals.

    Picklable, and its state is the counter ``k``, saved with the strategy.
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)
        self.count = 0

    def __call__(self, *shape: int) -> np.ndarray:
        rng = np.random.default_rng([_TAG, self.seed, self.count])
        self.count += 1
        return rng.standard_normal(shape)


@dataclass
class SearchState:
    """A search between generations: what a checkpoint holds.

    Attributes
    ----------
    es : the CMA-ES strategy (its mean, step size, covariance, evolution paths).
    generation : generations finished.
    best_x, best_fitness : the best candidate evaluated so far.
    history : one row per generation (generation, best, median, sigma, evaluations).
    """

    es: Any
    generation: int = 0
    best_x: np.ndarray | None = None
    best_fitness: float = -np.inf
    history: list[dict[str, float]] = field(default_factory=list)


def new_state(x0: np.ndarray, fitness0: float, *, sigma0: float, popsize: int, seed: int):
    """A fresh search from ``x0`` (whose fitness is ``fitness0``)."""
    import cma

    opts = {
        "popsize": int(popsize),
        "randn": KeyedNormal(seed),
        "seed": np.nan,  # do not touch NumPy's global generator
        "verbose": -9,
        "verb_log": 0,
        "verb_disp": 0,
        "tolflatfitness": 10**9,  # a flat accuracy is expected; keep searching
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        es = cma.CMAEvolutionStrategy(np.asarray(x0, dtype=np.float64), float(sigma0), opts)
    return SearchState(es=es, best_x=np.array(x0, dtype=np.float64), best_fitness=fitness0)


def run_search(
    state: SearchState,
    fitness: Callable[[np.ndarray], float],
    generations: int,
    *,
    on_generation: Callable[[SearchState], None] | None = None,
) -> SearchState:
    """Run CMA-ES (maximising ``fitness``) until ``generations`` generations are done.

    Parameters
    ----------
    state : from :func:`new_state`, or a saved state to continue.
    fitness : candidate vector → fitness (higher is better).
    generations : total generations (those already in ``state`` count).
    on_generation : called after each generation (a checkpoint).
    """
    es = state.es
    while state.generation < generations:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            candidates = es.ask()
            values = [float(fitness(np.asarray(x))) for x in candidates]
            es.tell(candidates, [-v for v in values])  # cma minimises
        i = int(np.argmax(values))
        if values[i] > state.best_fitness:
            state.best_fitness, state.best_x = values[i], np.array(candidates[i])
        state.generation += 1
        state.history.append(
            {
                "generation": state.generation,
                "best": max(values),
                "median": float(np.median(values)),
                "best_so_far": state.best_fitness,
                "sigma": float(es.sigma),
            }
        )
        if on_generation is not None:
            on_generation(state)
    return state
