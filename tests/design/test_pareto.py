"""The Pareto front: no point on it is dominated, every point off it is."""

from __future__ import annotations

import numpy as np

from pipeline.design.pareto import pareto_mask


def test_a_hand_made_front():
    energy = [1, 2, 2, 3, 4]
    accuracy = [0.5, 0.7, 0.6, 0.7, 0.9]
    assert pareto_mask(energy, accuracy).tolist() == [True, True, False, False, True]


def test_the_mask_matches_the_definition_on_random_points():
    rng = np.random.default_rng(0)
    e = rng.integers(1, 6, 60).astype(float)
    a = rng.integers(0, 8, 60) / 8
    mask = pareto_mask(e, a)
    for i in range(60):
        dominated = any(
            e[j] <= e[i] and a[j] >= a[i] and (e[j] < e[i] or a[j] > a[i]) for j in range(60)
        )
        assert mask[i] == (not dominated)
