"""``digits``: scikit-learn's bundled handwritten digits, upscaled and made RGB.

1797 grayscale 8x8 images of the digits 0-9 (values 0..16, ink bright on dark), shipped
inside scikit-learn, so nothing is downloaded. scikit-learn is an optional extra
(``pip install 'sensorlab[digits]'``), imported only when this reader is used. Images are
scaled to 0..255, upscaled to ``size`` px with bilinear interpolation per batch, and
repeated to three equal channels (srgb8).
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np
from pydantic import Field

from pipeline.datasets.base import IndexedDataset
from pipeline.datasets.splits import FractionFields, apply_limit, split_indices
from pipeline.errors import UserError

__all__ = ["INSTALL_HINT", "DigitsConfig", "DigitsDataset", "load_sklearn_digits"]

INSTALL_HINT = "pip install 'sensorlab[digits]'"


class DigitsConfig(FractionFields):
    """scikit-learn's 8x8 digits, upscaled (needs the optional extra ``digits``)."""

    kind: Literal["digits"] = Field(description="scikit-learn's bundled handwritten digits.")
    size: int = Field(32, ge=8, le=1024, description="Output image side in px (square).")


def load_sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """The digits ``(1797, 8, 8)`` float (0..16) and labels ``(1797,)``, from scikit-learn.

    Raises
    ------
    UserError : when scikit-learn is not installed, saying how to install it.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise UserError(
            f"the digits dataset needs scikit-learn, which is not installed: {INSTALL_HINT}",
            key="dataset.kind",
        ) from None
    bunch = load_digits()
    return np.asarray(bunch.images), np.asarray(bunch.target, np.int64)


class DigitsDataset(IndexedDataset):
    """scikit-learn's digits at ``size`` x ``size`` px, RGB uint8 (srgb8).

    Parameters
    ----------
    size : output side in px.
    split, seed, val_fraction, test_fraction, limit : see :mod:`pipeline.datasets.splits`.
    """

    class_names = tuple(str(d) for d in range(10))
    dtype = np.dtype(np.uint8)
    encoding = "srgb8"

    def __init__(
        self,
        size: int = 32,
        *,
        split: str = "test",
        seed: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        limit: int | None = None,
    ) -> None:
        images, labels = load_sklearn_digits()
        # 0..16 -> 0..255 once (1797 x 64 values: small).
        self._small = np.rint(np.clip(images, 0, 16) * (255 / 16)).astype(np.uint8)
        self._labels = labels
        self.image_shape = (int(size), int(size), 3)
        index = split_indices(
            labels,
            len(labels),
            split=split,
            seed=seed,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
        )
        self._index = apply_limit(index, limit, split=split)

    def _load(self, index: np.ndarray) -> np.ndarray:
        side = self.image_shape[0]
        out = np.empty((len(index), *self.image_shape), np.uint8)
        for j, i in enumerate(index.tolist()):
            big = cv2.resize(self._small[i], (side, side), interpolation=cv2.INTER_LINEAR)
            out[j] = big[:, :, None]
        return out
