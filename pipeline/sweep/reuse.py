"""What a process keeps between sweep cells: the dataset's images and the loaded model.

Cells of a sweep usually share their dataset and their model; a worker (or the
in-process engine) keeps both in :func:`pipeline.sweep.dask_engine.cached` instead of
generating or reading the images and loading the model again for every cell. A dataset
is kept as a :class:`SnapshotDataset` when its images fit in :data:`SNAPSHOT_BYTES`, keyed
by the sweep run's token, its folder and its config (so a later sweep on a long-lived
worker reads the files again); a model by the token and its files' paths, sizes and
modification times. Arrays are the same bit for bit: a snapshot gives exactly what the
dataset's ``read`` gave.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import LoadedConfig
from pipeline.datasets import Dataset
from pipeline.runner import load_config_model, open_config_dataset
from pipeline.stage import SignalInfo
from pipeline.sweep.dask_engine import cached

__all__ = ["SNAPSHOT_BYTES", "SnapshotDataset", "cell_dataset", "cell_model"]

SNAPSHOT_BYTES = 256 * 2**20  # larger datasets are streamed from their source every cell
_READ_IMAGES = 1024  # images per read while taking a snapshot


class SnapshotDataset(Dataset):
    """A dataset's images and labels held in memory; everything else asked of the source.

    Parameters
    ----------
    source : the dataset (its ``read`` is called once, in ranges of 1024 images).
    """

    def __init__(self, source: Dataset) -> None:
        self.source = source
        self.class_names = source.class_names
        self.image_shape = source.image_shape
        self.dtype = source.dtype
        self.encoding = source.encoding
        xs, ys = [], []
        for lo in range(0, len(source), _READ_IMAGES):
            x, y = source.read(lo, min(lo + _READ_IMAGES, len(source)))
            xs.append(x)
            ys.append(y)
        n = len(source)
        self._x = np.concatenate(xs) if xs else np.zeros((0, *self.image_shape), self.dtype)
        self._y = None if not ys or ys[0] is None else np.concatenate(ys)
        assert len(self._x) == n
        self._x.flags.writeable = False

    @property
    def nbytes(self) -> int:
        """Bytes held."""
        return self._x.nbytes + (0 if self._y is None else self._y.nbytes)

    def __len__(self) -> int:
        return len(self._x)

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray | None]:
        start, stop = self._check_range(start, stop)
        y = None if self._y is None else self._y[start:stop].copy()
        return self._x[start:stop].copy(), y

    def image_keys(self, start: int, stop: int) -> np.ndarray:
        return self.source.image_keys(start, stop)

    def sources(self, start: int, stop: int) -> list[str] | None:
        return self.source.sources(start, stop)

    def info(self) -> SignalInfo:
        return self.source.info()


def cell_dataset(loaded: LoadedConfig, token: str) -> Dataset:
    """The config's dataset: a snapshot kept in this process for the sweep run ``token``
    when its images fit in :data:`SNAPSHOT_BYTES`, else the dataset itself."""
    dataset = open_config_dataset(loaded)
    size = len(dataset) * math.prod(dataset.image_shape) * np.dtype(dataset.dtype).itemsize
    if not token or size > SNAPSHOT_BYTES:
        return dataset
    config = json.dumps(loaded.config.dataset.model_dump(mode="json"), sort_keys=True)
    key = ("sweep-dataset", token, str(loaded.base_dir), config)
    return cached(key, lambda: SnapshotDataset(dataset), nbytes=lambda s: s.nbytes)


def cell_model(loaded: LoadedConfig, token: str) -> Any:
    """The config's model (None without one), kept in this process for the sweep run
    ``token`` while its files stay the same (path, size, modification time); loaded
    afresh when ``token`` is empty."""
    ref = loaded.config.model
    if ref is None:
        return None
    if not token:
        return load_config_model(loaded)
    graph = loaded.resolve(ref.path)
    weights = loaded.resolve(ref.weights) if ref.weights else graph.with_suffix(".npz")
    key = ("sweep-model", token, _stamp(graph), _stamp(weights))
    return cached(key, lambda: load_config_model(loaded), nbytes=_model_bytes)


def _stamp(path: Path) -> tuple[str, int, int] | str:
    try:
        st = path.stat()
    except OSError:
        return str(path)  # a missing file: load_config_model reports it
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def _model_bytes(model: Any) -> int:
    """Bytes of a model's parameters and buffers (0 for a model that does not list them)."""
    arrays = getattr(model, "state_arrays", None)
    return sum(a.nbytes for a in arrays().values()) if arrays is not None else 0
