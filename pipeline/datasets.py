"""Datasets (interim: the dataset helper's full module replaces this file)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Literal, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pipeline.errors import UserError
from pipeline.stage import SignalInfo, Unit


class Dataset(ABC):
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]
    dtype: np.dtype
    encoding: str

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray | None]: ...

    def info(self) -> SignalInfo:
        return SignalInfo(Unit.IMAGE, self.image_shape, self.dtype, {"encoding": self.encoding})

    def batches(
        self, batch_size: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray | None, np.ndarray]]:
        for start in range(0, len(self), batch_size):
            stop = min(start + batch_size, len(self))
            x, y = self.read(start, stop)
            yield x, y, np.arange(start, stop)


class ArrayDataset(Dataset):
    def __init__(self, x, y=None, class_names=None, encoding="auto"):
        self.x = np.asarray(x)
        self.y = None if y is None else np.asarray(y, dtype=np.int64)
        n_classes = 0 if self.y is None else int(self.y.max()) + 1
        self.class_names = tuple(class_names or (f"c{i}" for i in range(n_classes)))
        self.image_shape = tuple(self.x.shape[1:])
        self.dtype = self.x.dtype
        if encoding == "auto":
            encoding = {np.dtype(np.uint8): "srgb8", np.dtype(np.uint16): "linear16"}.get(
                self.x.dtype, "float"
            )
        self.encoding = encoding

    def __len__(self):
        return len(self.x)

    def read(self, start, stop):
        return self.x[start:stop], None if self.y is None else self.y[start:stop]


class NpzConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["npz"]
    path: str = Field(..., description="A .npz file with x (N,H,W,3) and y (N,).")
    limit: int | None = Field(None, ge=1)


DatasetConfig = Annotated[Union[NpzConfig], Field(discriminator="kind")]  # noqa: UP007


def open_dataset(cfg, *, base_dir: Path) -> Dataset:
    path = Path(cfg.path)
    path = path if path.is_absolute() else base_dir / path
    if not path.is_file():
        raise UserError(f"file not found: {path}", key="dataset.path")
    with np.load(path) as f:
        x, y = f["x"], f["y"] if "y" in f else None
    if cfg.limit:
        x, y = x[: cfg.limit], None if y is None else y[: cfg.limit]
    return ArrayDataset(x, y)
