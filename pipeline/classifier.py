"""The classifier stage: a CNN from pipeline.cnn applied to the sensor chain's output."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.stage import Batch, SignalInfo, Stage, StageError, Unit

__all__ = ["ClassifierStage"]


class ClassifierStage(Stage):
    """Class scores (logits) of a CNN for each image.

    Takes planes (N,H,W,C) or a mosaic (N,H,W) and feeds the CNN (N,C,H,W) float32.
    Built by the runner from the config's ``model:`` section, not from a YAML row.
    """

    name = "cnn"
    kind = "classifier"
    takes = (Unit.UNITLESS, Unit.IMAGE, Unit.DN)  # DN: a CNN that learns from the codes
    gives = Unit.UNITLESS

    def __init__(self, model: Any, *, index: int = 0, seed: int = 0) -> None:
        super().__init__(None, seed=seed, index=index)
        self.model = model

    def setup(self, info: SignalInfo) -> SignalInfo:
        shape = info.shape if len(info.shape) == 3 else (*info.shape, 1)
        chw = (shape[2], shape[0], shape[1])
        expected = tuple(self.model.input_shape)
        if chw != expected:
            raise StageError(
                f"the model takes (C,H,W) = {expected}, the sensor chain gives {chw} "
                f"(from image shape {info.shape})",
                key="path",
            )
        k = len(self.model.class_names)
        return SignalInfo(Unit.UNITLESS, (k,), np.float32, {**info.attrs, "logits": True})

    def process(self, x: np.ndarray, batch: Batch) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 3:
            x = x[:, None, :, :]
        else:
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        return np.asarray(self.model.forward(x, train=False), dtype=np.float32)
