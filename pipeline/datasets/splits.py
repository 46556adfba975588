"""Deterministic train/validation/test splits and the config fields every reader shares.

Which images fall in which split depends only on the dataset's own ``seed`` (never the
run seed), the split fractions and the labels: each class's images are shuffled with
``default_rng([seed, TAG, label])`` and the first ``round(test_fraction * n_class)`` go
to test, the next ``round(val_fraction * n_class)`` to validation, the rest to train
(stratified, so every split keeps the class balance). Within train, val and test, images
are read in a fixed shuffled order, so ``limit`` takes a class-mixed prefix and a smaller
limit is a prefix of a larger one; ``all`` is read in stored order (image i of the split
is item i of the store, so a record traces to its source by position too).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.errors import UserError

__all__ = ["SPLITS", "SPLIT_IDS", "CommonFields", "FractionFields", "apply_limit", "split_indices"]

SPLITS = ("train", "val", "test", "all")
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
Split = Literal["train", "val", "test", "all"]

# Second element of the split generators' seed keys: the assignment and the reading order
# use different tags so they are independent draws.
_ASSIGN_TAG = 0x5B11
_ORDER_TAG = 0x0DE5


class CommonFields(BaseModel):
    """Fields of every dataset config: which split, the dataset's own seed, an image limit."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    split: Split = Field(
        "test",
        description="Which images: train, val (validation), test, or all of them.",
    )
    seed: int = Field(
        0,
        ge=0,
        lt=2**63,
        description="The dataset's own seed: decides the split (and procedural images); "
        "independent of the run seed.",
    )
    limit: int | None = Field(
        None, ge=1, description="At most this many images (the first of the split), or all."
    )


class FractionFields(CommonFields):
    """Common fields plus the split fractions, for readers that split one pool of images."""

    val_fraction: float = Field(
        0.1, ge=0.0, le=1.0, description="Fraction of each class put in the validation split."
    )
    test_fraction: float = Field(
        0.2, ge=0.0, le=1.0, description="Fraction of each class put in the test split."
    )

    @model_validator(mode="after")
    def _fractions_fit(self) -> FractionFields:
        if self.val_fraction + self.test_fraction > 1.0:
            raise ValueError(
                f"val_fraction + test_fraction must be at most 1, got "
                f"{self.val_fraction} + {self.test_fraction}"
            )
        return self


def split_indices(
    labels: np.ndarray | None,
    n_items: int,
    *,
    split: str,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    shuffle: bool = True,
) -> np.ndarray:
    """Positions (int64) of the items in ``split``, in reading order.

    Parameters
    ----------
    labels : ``(n_items,)`` labels to stratify by, or ``None`` (one group).
    n_items : number of items in the pool.
    split : ``train``, ``val``, ``test`` or ``all``.
    seed : the dataset's seed.
    val_fraction, test_fraction : fractions of each class (rounded per class).
    shuffle : read train, val and test in a seeded shuffled order (default) or in
        stored order; ``all`` is always in stored order.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}")
    groups = np.zeros(n_items, np.int64) if labels is None else np.asarray(labels, np.int64)
    if split == "all":
        chosen = np.arange(n_items, dtype=np.int64)
    else:
        parts = []
        for label in np.unique(groups):
            members = np.flatnonzero(groups == label)
            rng = np.random.default_rng([seed, _ASSIGN_TAG, int(label)])
            members = members[rng.permutation(len(members))]
            n_test = round(test_fraction * len(members))
            n_val = min(round(val_fraction * len(members)), len(members) - n_test)
            bounds = {"test": (0, n_test), "val": (n_test, n_test + n_val)}
            lo, hi = bounds.get(split, (n_test + n_val, len(members)))
            parts.append(members[lo:hi])
        chosen = np.sort(np.concatenate(parts)) if parts else np.empty(0, np.int64)
    if shuffle and split != "all":
        order_key = SPLIT_IDS.get(split, 3)
        rng = np.random.default_rng([seed, _ORDER_TAG, order_key])
        chosen = chosen[rng.permutation(len(chosen))]
    return chosen.astype(np.int64)


def apply_limit(index: np.ndarray, limit: int | None, *, split: str) -> np.ndarray:
    """The first ``limit`` positions; an empty split is a user error."""
    if len(index) == 0:
        raise UserError(
            f"split {split!r} is empty (check the split fractions or the data)", key="dataset.split"
        )
    return index if limit is None else index[:limit]
