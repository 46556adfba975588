"""Classification metrics against known values."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.metrics import classification_metrics, wilson_interval


@pytest.mark.parametrize(
    ("k", "n", "expected"),
    [
        (50, 100, (0.4038, 0.5962)),  # p = 0.5: symmetric about it
        (0, 10, (0.0, 0.2775)),  # no successes: the Wald interval would collapse to 0
        (10, 10, (0.7225, 1.0)),
        (81, 263, (0.2553, 0.3662)),
    ],
)
def test_wilson_interval_known_values(k, n, expected):
    """Values from Wilson's formula (z = 1.96) as tabulated by Newcombe, Stat. Med. 17 (1998)
    857-872, and checked by hand: centre (p + z²/2n)/(1 + z²/n)."""
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(expected[0], abs=5e-5)
    assert hi == pytest.approx(expected[1], abs=5e-5)


def test_classification_metrics():
    labels = np.array([0, 0, 1, 1, 2, 2])
    preds = np.array([0, 1, 1, 1, 2, 0])
    m = classification_metrics(labels, preds, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["per_class_accuracy"] == {"a": 0.5, "b": 1.0, "c": 0.5}
