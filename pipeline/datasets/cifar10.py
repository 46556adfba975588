"""``cifar10``: the CIFAR-10 "python version" batches from a local folder (nothing is downloaded).

The folder holds ``data_batch_1`` .. ``data_batch_5``, ``test_batch`` and
``batches.meta`` as extracted from ``cifar-10-python.tar.gz``
(https://www.cs.toronto.edu/~kriz/cifar.html); pointing at the folder that contains
``cifar-10-batches-py`` works too. Each batch is a pickled dict with ``b"data"``
``(N, 3072)`` uint8 in channel-major (R plane, G plane, B plane) row-major order and
``b"labels"``; ``batches.meta`` has ``b"label_names"``. The pickles are read with an
unpickler that only accepts NumPy arrays and plain values, so a tampered file cannot run
code.

Splits: ``test`` is the official test batch; ``train`` and ``val`` divide the 50000
training images (``val_fraction`` of each class to val, chosen by the dataset's seed);
``all`` is both. Images are read in stored order (CIFAR's batches are already shuffled),
one batch file at a time, so memory stays near one batch file (30 MB).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from pipeline.datasets.base import IndexedDataset
from pipeline.datasets.splits import CommonFields, apply_limit, split_indices
from pipeline.errors import UserError

__all__ = ["TRAIN_FILES", "Cifar10Config", "Cifar10Dataset", "load_batch"]

TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
_KEY = "dataset.path"
_SOURCE = "cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html"


class Cifar10Config(CommonFields):
    """The CIFAR-10 python batches in a local folder."""

    kind: Literal["cifar10"] = Field(description="CIFAR-10 (python version), read locally.")
    path: str = Field(
        description="Folder with data_batch_1..5, test_batch, batches.meta "
        "(relative to the config)."
    )
    val_fraction: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="Fraction of each class of the training batches put in the val split.",
    )


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, numbers, strings and NumPy arrays; refuses any other global."""

    _ALLOWED: ClassVar[dict[tuple[str, str], Any]] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("numpy.core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
        ("numpy.core.multiarray", "scalar"): np._core.multiarray.scalar,
        ("numpy._core.multiarray", "scalar"): np._core.multiarray.scalar,
        ("_codecs", "encode"): __import__("codecs").encode,  # how protocol 2 stores bytes
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def load_batch(path: Path) -> dict[bytes, Any]:
    """One CIFAR pickle as a dict with bytes keys (safe: NumPy arrays and plain values only)."""
    try:
        with open(path, "rb") as f:
            obj = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as exc:
        raise UserError(f"cannot read CIFAR-10 file {path}: {exc}", key=_KEY) from None
    if not isinstance(obj, dict):
        raise UserError(f"{path} is not a CIFAR-10 batch (not a dict)", key=_KEY)
    return obj


class Cifar10Dataset(IndexedDataset):
    """CIFAR-10 from local python batches; see the module docstring.

    Parameters
    ----------
    root : the folder with the batches (or the folder containing ``cifar-10-batches-py``).
    split : ``train``, ``val``, ``test`` or ``all``.
    seed : chooses the validation images.
    val_fraction : fraction of each class of the training batches given to ``val``.
    limit : at most this many images.
    """

    image_shape = (32, 32, 3)
    dtype = np.dtype(np.uint8)
    encoding = "srgb8"

    def __init__(
        self,
        root: str | Path,
        *,
        split: str = "test",
        seed: int = 0,
        val_fraction: float = 0.1,
        limit: int | None = None,
    ) -> None:
        root = Path(root)
        if (root / "cifar-10-batches-py").is_dir():
            root = root / "cifar-10-batches-py"
        self.root = root
        files = {"test": (TEST_FILE,), "all": (*TRAIN_FILES, TEST_FILE)}.get(split, TRAIN_FILES)
        if not root.is_dir():
            raise UserError(
                f"CIFAR-10 folder {root} does not exist: extract {_SOURCE} and put its "
                f"{', '.join(TRAIN_FILES[:1])}..{TRAIN_FILES[-1]}, {TEST_FILE} and {META_FILE} "
                "in that folder (nothing is downloaded)",
                key=_KEY,
            )
        missing = [f for f in (*files, META_FILE) if not (root / f).is_file()]
        if missing:
            raise UserError(
                f"CIFAR-10 folder {root} lacks {', '.join(missing)}: put the files of {_SOURCE} "
                "there",
                key=_KEY,
            )
        self.class_names = _class_names(root / META_FILE)
        self._files = [root / f for f in files]
        counts, labels = [], []
        for path in self._files:
            _, batch_labels = self._decode(path, load_data=False)
            counts.append(len(batch_labels))
            labels.append(batch_labels)
        self._labels = np.concatenate(labels)
        self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        if split in ("train", "val"):
            index = split_indices(
                self._labels,
                len(self._labels),
                split=split,
                seed=seed,
                val_fraction=val_fraction,
                test_fraction=0.0,
                shuffle=False,
            )
        else:
            index = np.arange(len(self._labels), dtype=np.int64)
        self._index = apply_limit(index, limit, split=split)
        self._cache: tuple[int, np.ndarray] | None = None

    def _decode(self, path: Path, *, load_data: bool = True) -> tuple[np.ndarray, np.ndarray]:
        batch = load_batch(path)
        data, labels = batch.get(b"data"), batch.get(b"labels")
        if data is None or labels is None:
            raise UserError(f"{path} is not a CIFAR-10 batch (no data or labels)", key=_KEY)
        data = np.asarray(data)
        labels = np.asarray(labels)
        if data.ndim != 2 or data.shape[1] != 3072 or data.dtype != np.uint8:
            raise UserError(
                f"{path}: data must be (N, 3072) uint8, got {data.dtype} {data.shape}", key=_KEY
            )
        if labels.shape != (len(data),) or labels.dtype.kind not in "iu":
            raise UserError(f"{path}: labels must be {len(data)} integers", key=_KEY)
        bad = (labels < 0) | (labels >= len(self.class_names))
        if bad.any():
            i = int(np.argmax(bad))
            raise UserError(
                f"{path}: label {int(labels[i])} at image {i} is outside "
                f"0..{len(self.class_names) - 1}",
                key=_KEY,
            )
        images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1) if load_data else data[:0]
        return images, labels.astype(np.int64)

    def _batch_images(self, file_index: int) -> np.ndarray:
        if self._cache is None or self._cache[0] != file_index:
            images, _ = self._decode(self._files[file_index])
            self._cache = (file_index, images)
        return self._cache[1]

    def _load(self, index: np.ndarray) -> np.ndarray:
        out = np.empty((len(index), *self.image_shape), np.uint8)
        file_of = np.searchsorted(self._starts, index, side="right") - 1
        for fi in np.unique(file_of):  # ascending, so a sequential read loads each file once
            sel = np.flatnonzero(file_of == fi)
            out[sel] = self._batch_images(int(fi))[index[sel] - self._starts[fi]]
        return out


def _class_names(path: Path) -> tuple[str, ...]:
    meta = load_batch(path)
    names = meta.get(b"label_names")
    if not isinstance(names, list) or not names:
        raise UserError(f"{path} has no label_names", key=_KEY)
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
