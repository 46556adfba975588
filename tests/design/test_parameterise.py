"""Vector ↔ table: every vector gives a valid table that reaches every code."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipeline.design.parameterise import thresholds_from_vector, vector_from_thresholds
from sensors.curves import quantize

STEP = 1e-6


@settings(max_examples=200, deadline=None)
@given(arrays(np.float64, st.integers(2, 80), elements=st.floats(-50, 50)))
def test_every_vector_gives_increasing_thresholds_inside_the_range(z):
    t = thresholds_from_vector(z, min_step=STEP)
    assert t.shape == (z.size - 1,)
    gaps = np.diff(np.concatenate([[0.0], t, [1.0]]))
    assert np.all(gaps >= STEP - 1e-12)  # a cumulative sum near 1 rounds by ~1e-16
    assert gaps.sum() == pytest.approx(1.0)


@settings(max_examples=100, deadline=None)
@given(arrays(np.float64, st.integers(2, 64), elements=st.floats(-8, 8)), st.integers(0, 4))
def test_each_code_above_black_is_reached_between_its_thresholds(z, black):
    # quantize's table equation: a signal between thresholds k and k + 1 (and from the
    # last one to full scale) gives code black + k + 1, zero gives the black code
    bits = 7
    t = thresholds_from_vector(z[: (1 << bits) - black], min_step=1e-4)
    inside = np.concatenate([[0.0], (t[:-1] + t[1:]) / 2, [(t[-1] + 1) / 2]])
    codes = quantize(inside, bits, curve="table", thresholds=t, black_level=black)
    np.testing.assert_array_equal(codes, black + np.arange(t.size + 1))


def test_thresholds_survive_the_round_trip():
    rng = np.random.default_rng(0)
    t = np.sort(rng.uniform(0.001, 0.9, 30))
    back = thresholds_from_vector(vector_from_thresholds(t, min_step=STEP), min_step=STEP)
    np.testing.assert_allclose(back, t, rtol=0, atol=2 * STEP)


def test_a_table_beyond_full_scale_is_brought_inside():
    t = np.array([0.2, 0.7, 1.3])  # the last threshold past full scale
    back = thresholds_from_vector(vector_from_thresholds(t))
    assert np.all((back > 0) & (back < 1)) and np.all(np.diff(back) > 0)
    np.testing.assert_allclose(back, t / 1.3, atol=1e-5)  # rescaled into [0, 1]


def test_too_many_thresholds_for_the_step_is_an_error():
    with pytest.raises(ValueError, match="min_step"):
        thresholds_from_vector(np.zeros(200), min_step=0.01)
