"""Classification metrics: accuracy, per-class accuracy, confusion matrix, Wilson interval."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from pipeline.errors import UserError

__all__ = ["classification_metrics", "confusion_matrix", "wilson_interval"]


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, n_classes: int) -> np.ndarray:
    """``m[i, j]`` = how many images of true class i were predicted as class j.

    Raises
    ------
    UserError : a label outside ``0..n_classes-1`` (the data has classes the model lacks).
    """
    labels = np.asarray(labels, np.int64)
    bad = (labels < 0) | (labels >= n_classes)
    if bad.any():
        i = int(np.argmax(bad))
        raise UserError(
            f"label {int(labels[i])} (image {i}) is outside the model's {n_classes} classes "
            f"0..{n_classes - 1}",
            key="dataset",
        )
    m = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(m, (np.asarray(labels, np.int64), np.asarray(predictions, np.int64)), 1)
    return m


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95 % by default).

    Reference: E. B. Wilson, "Probable inference, the law of succession, and
    statistical inference", JASA 22 (1927) 209-212.
    """
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def classification_metrics(
    labels: np.ndarray, predictions: np.ndarray, class_names: Sequence[str]
) -> dict:
    """Accuracy (with its Wilson 95 % interval), per-class accuracy and the confusion matrix."""
    labels = np.asarray(labels, np.int64)
    predictions = np.asarray(predictions, np.int64)
    k = len(class_names)
    cm = confusion_matrix(labels, predictions, k)
    n = len(labels)
    correct = int(np.trace(cm))
    support = cm.sum(axis=1)
    per_class = {
        name: (float(cm[i, i] / support[i]) if support[i] else None)
        for i, name in enumerate(class_names)
    }
    lo, hi = wilson_interval(correct, n)
    return {
        "n": n,
        "correct": correct,
        "accuracy": correct / n if n else None,
        "accuracy_ci95": [lo, hi],
        "per_class_accuracy": per_class,
        "confusion_matrix": cm.tolist(),
        "class_names": list(class_names),
    }
