"""The part of the sensor chain that no ADC curve changes, computed once and kept.

Scene, optics and photodetector do not depend on the ADC, and every stage keys its
noise by image identity and stage position (:mod:`pipeline.stage`), so the electrons
that reach the ADC are the same for every candidate table. The search streams each
split once through the stages before the ``adc`` (:func:`front_images`), stores them
(:func:`save_front`, :func:`load_front`), and runs only ADC, raw and CNN per candidate.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config import LoadedConfig
from pipeline.errors import UserError
from pipeline.runner import Chain, batch_for, open_config_dataset, stream

__all__ = ["FrontImages", "adc_position", "front_images", "load_front", "save_front"]


@dataclass
class FrontImages:
    """Images of one split as they reach the ADC.

    Attributes
    ----------
    signal : the stage before the ADC's output (electrons), one row per image.
    labels : class of each image (int64).
    keys : each image's identity in its dataset (the stages' noise keys), int64.
    """

    signal: np.ndarray
    labels: np.ndarray
    keys: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def adc_position(chain: Chain, file: str) -> int:
    """The index of the chain's one ``adc`` stage (UserError unless exactly one)."""
    found = [i for i, s in enumerate(chain.stages) if s.kind == "adc"]
    if len(found) != 1:
        raise UserError(
            f"the base chain needs exactly one adc stage to design, it has {len(found)}",
            file=file,
            key="sensor",
        )
    return found[0]


def front_images(
    loaded: LoadedConfig, chain: Chain, split: str, images: int | str, batch_size: int
) -> FrontImages:
    """Stream ``images`` (a count or "all") of ``split`` through the stages before the ADC.

    Raises
    ------
    UserError : the split is empty or its images have no labels.
    """
    dataset = open_config_dataset(loaded, split=split)
    stop = len(dataset) if images == "all" else min(int(images), len(dataset))
    if stop == 0:
        raise UserError(f"split {split!r} has no images", file=loaded.file, key="dataset")
    upto = adc_position(chain, loaded.file)
    signals, labels, keys = [], [], []
    for b in stream(chain, dataset, batch_size, upto=upto, stop=stop, file=loaded.file):
        if b.labels is None:
            raise UserError("the dataset has no labels to score", file=loaded.file, key="dataset")
        signals.append(b.last)
        labels.append(np.asarray(b.labels, dtype=np.int64))
        keys.append(np.asarray(batch_for(dataset, b.index).image_index, dtype=np.int64))
    return FrontImages(np.concatenate(signals), np.concatenate(labels), np.concatenate(keys))


def save_front(path: Path, front: FrontImages) -> None:
    """Write ``front`` to ``path`` (.npz) atomically."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as handle:
        np.savez(handle, signal=front.signal, labels=front.labels, keys=front.keys)
    os.replace(tmp, path)


def load_front(path: Path) -> FrontImages:
    """Read what :func:`save_front` wrote."""
    with np.load(path, allow_pickle=False) as data:
        return FrontImages(data["signal"], data["labels"], data["keys"])
