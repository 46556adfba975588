"""The classifier stage: a CNN from pipeline.cnn applied to the sensor chain's output."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.stage import Batch, SignalInfo, Stage, StageError, Unit

__all__ = ["ClassifierStage", "to_nchw"]


# Images per CNN call. Each image always sits in the same row of a call of this size
# (row = image key mod GROUP, empty rows zero), so its logits come from the same GEMM
# shapes and thread splits, hence bit for bit the same, whatever the run's batch size.
GROUP = 32


def to_nchw(x: np.ndarray) -> np.ndarray:
    """Sensor-chain output, (N, H, W, C) planes or an (N, H, W) mosaic, as the CNN's
    (N, C, H, W) float32 (C-contiguous). The one conversion of the sensor's layout to the
    CNN's: the classifier stage, training and export use it."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 3:
        return x[:, None, :, :]
    if x.ndim == 4:
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    raise ValueError(f"expected (N, H, W) or (N, H, W, C) images, got {x.shape}")


class ClassifierStage(Stage):
    """Class scores (logits) of a CNN for each image.

    Takes planes (N,H,W,C) or a mosaic (N,H,W) and feeds the CNN (N,C,H,W) float32, in
    calls of :data:`GROUP` images where each image has a fixed row, so that logits do not
    depend on how the run was batched. Built by the runner from the config's ``model:``
    section, not from a YAML row.
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
        x = to_nchw(x)
        slots = np.asarray(batch.image_index, dtype=np.int64) % GROUP
        # images that want the same row go to different calls: the k-th of them to call k
        order = np.argsort(slots, kind="stable")
        first = np.searchsorted(slots[order], slots[order])
        call = np.empty(len(x), dtype=np.int64)
        call[order] = np.arange(len(x)) - first
        out = np.empty((len(x), len(self.model.class_names)), dtype=np.float32)
        buf = np.zeros((GROUP, *x.shape[1:]), dtype=np.float32)
        for k in range(int(call.max()) + 1 if len(x) else 0):
            members = np.flatnonzero(call == k)
            buf[...] = 0.0
            buf[slots[members]] = x[members]
            logits = np.asarray(self.model.forward(buf, train=False), dtype=np.float32)
            out[members] = logits[slots[members]]
        return out
