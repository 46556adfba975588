"""CMA-ES: deterministic, independent of NumPy's global generator, resumable exactly."""

from __future__ import annotations

import pickle

import numpy as np

from pipeline.design.search import new_state, run_search


def _sphere(x: np.ndarray) -> float:
    return -float(np.sum((x - 1.0) ** 2))


def _search(seed: int, split_at: int | None, global_seed: int):
    np.random.seed(global_seed)  # noqa: NPY002 (the global generator must not matter)
    x0 = np.zeros(6)
    state = new_state(x0, _sphere(x0), sigma0=0.5, popsize=8, seed=seed)
    if split_at is not None:
        state = run_search(state, _sphere, split_at)
        state = pickle.loads(pickle.dumps(state))  # what a checkpoint does
        np.random.seed(global_seed + 1)  # noqa: NPY002
    return run_search(state, _sphere, 15)


def test_a_resumed_search_is_the_uninterrupted_one_bit_for_bit():
    a = _search(3, None, 0)
    b = _search(3, 6, 99)
    np.testing.assert_array_equal(a.best_x, b.best_x)
    assert a.history == b.history
    assert a.generation == b.generation == 15


def test_the_search_improves_on_its_start_and_keeps_the_best():
    s = _search(1, None, 0)
    assert s.best_fitness > _sphere(np.zeros(6)) / 4
    assert s.best_fitness == max(row["best"] for row in s.history)
    assert _search(2, None, 0).history != s.history  # the seed matters
