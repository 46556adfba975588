"""The stage contract's random keys: per image, per sensor, never the same stream."""

from __future__ import annotations

import numpy as np
from conftest import ToyShot


def _draws(rng):
    return rng.standard_normal(8)


def test_image_and_pattern_streams_never_coincide():
    stage = ToyShot(seed=5, sensor_seed=5, index=1)
    patterns = [_draws(stage.pattern_rng(k)) for k in range(4)]
    # image keys that equal the pattern keys' other elements once zero-padded, and ordinary ones
    for key in (0, 1, 2, 1509, 0x5E5, 2**40, 2 * 2**40 + 7):
        (rng,) = stage.image_rngs([key])
        image = _draws(rng)
        assert not any(np.array_equal(image, p) for p in patterns), key


def test_keys_depend_on_seed_stage_and_image():
    a = ToyShot(seed=5, index=1)
    b = ToyShot(seed=6, index=1)
    c = ToyShot(seed=5, index=2)
    first = [_draws(r) for r in a.image_rngs([0, 1])]
    assert not np.array_equal(first[0], first[1])
    assert not np.array_equal(first[0], _draws(b.image_rngs([0])[0]))
    assert not np.array_equal(first[0], _draws(c.image_rngs([0])[0]))
    np.testing.assert_array_equal(first[1], _draws(a.image_rngs([1])[0]))  # repeatable
    # the sensor seed, not the run seed, decides the fixed pattern
    d = ToyShot(seed=99, sensor_seed=5, index=1)
    np.testing.assert_array_equal(_draws(a.pattern_rng()), _draws(d.pattern_rng()))
