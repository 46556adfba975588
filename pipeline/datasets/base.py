"""The dataset interface, the in-memory :class:`ArrayDataset`, and array checks shared by readers.

A dataset is a sized, read-only sequence of RGB images ``(H, W, 3)`` with optional
integer labels, read in contiguous ranges so that a run streams it in batches and
memory stays flat whatever its size. Pixel values are kept as stored; ``encoding``
says how to interpret them (the scene stage reads it from :meth:`Dataset.info`):

- ``"srgb8"``: ``uint8`` codes of the sRGB transfer curve (IEC 61966-2-1);
- ``"linear16"``: ``uint16`` codes proportional to linear light, 65535 = full scale;
- ``"float"``: ``float32`` linear light, 1.0 = full scale.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence

import numpy as np

from pipeline.errors import UserError
from pipeline.stage import SignalInfo, Unit

__all__ = [
    "ENCODINGS",
    "ArrayDataset",
    "Dataset",
    "IndexedDataset",
    "check_finite",
    "check_images",
    "check_labels",
    "default_class_names",
    "encoding_for_dtype",
]

ENCODINGS = ("srgb8", "linear16", "float")
_ENCODING_DTYPE = {
    "srgb8": np.dtype(np.uint8),
    "linear16": np.dtype(np.uint16),
    "float": np.dtype(np.float32),
}
# Images per chunk when scanning a (possibly memory-mapped) array for NaN/inf.
_SCAN_CHUNK = 256


class Dataset(ABC):
    """A sized sequence of images ``(H, W, 3)`` and optional labels, read by index range.

    Attributes
    ----------
    class_names : one name per label value (label ``k`` is ``class_names[k]``).
    image_shape : ``(H, W, 3)`` of every image.
    dtype : the stored pixel dtype: ``uint8``, ``uint16`` or ``float32``.
    encoding : ``"srgb8"``, ``"linear16"`` or ``"float"`` (see the module docstring).
    """

    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]
    dtype: np.dtype
    encoding: str

    @abstractmethod
    def __len__(self) -> int:
        """Number of images."""

    @abstractmethod
    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Images ``[start, stop)`` as ``(n, H, W, 3)`` in :attr:`dtype`, and labels ``(n,)``
        int64 (``None`` for an unlabelled dataset)."""

    def image_keys(self, start: int, stop: int) -> np.ndarray:
        """A stable identity (int64 >= 0) for each image ``[start, stop)``.

        Stages key their per-image noise by it, so an image gets the same noise whatever
        the split, limit or batch it is read in, and two different images of the dataset
        (say image 0 of train and image 0 of val) never share a noise draw. Default: the
        position; readers of a stored pool use the position in the store.
        """
        return np.arange(start, stop, dtype=np.int64)

    def sources(self, start: int, stop: int) -> list[str] | None:
        """Where images ``[start, stop)`` come from (a file name each), or None for a
        dataset without per-image files (the default)."""
        return None

    def info(self) -> SignalInfo:
        """What the dataset gives the first stage: unit IMAGE, one image's shape and dtype,
        and ``attrs={"encoding": ...}``."""
        return SignalInfo(
            unit=Unit.IMAGE,
            shape=self.image_shape,
            dtype=self.dtype,
            attrs={"encoding": self.encoding},
        )

    def batches(
        self, batch_size: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray | None, np.ndarray]]:
        """Stream the dataset: ``(x, y, global_index)`` per batch of at most ``batch_size``.

        ``global_index`` (int64) is each image's index in this dataset, the key that
        per-image random generators use; the concatenated batches equal ``read(0, len)``.
        """
        batch_size = int(batch_size)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        n = len(self)
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            x, y = self.read(start, stop)
            yield x, y, np.arange(start, stop, dtype=np.int64)

    def _check_range(self, start: int, stop: int) -> tuple[int, int]:
        start, stop, n = int(start), int(stop), len(self)
        if not 0 <= start <= stop <= n:
            raise IndexError(f"read({start}, {stop}) outside 0..{n}")
        return start, stop

    def __repr__(self) -> str:
        h, w, _ = self.image_shape
        return (
            f"<{type(self).__name__}: {len(self)} images {h}x{w} {self.encoding}, "
            f"{len(self.class_names)} classes>"
        )


class IndexedDataset(Dataset):
    """A dataset that selects stored items by index: ``read`` loads ``index[start:stop]``.

    Subclasses set the attributes, ``self._index`` (int64 positions in the store, in
    reading order) and ``self._labels`` (the store's labels or ``None``), and implement
    :meth:`_load`.
    """

    _index: np.ndarray
    _labels: np.ndarray | None

    def __len__(self) -> int:
        return len(self._index)

    def image_keys(self, start: int, stop: int) -> np.ndarray:
        """The images' positions in the store (the same image, the same key, in any split)."""
        return np.asarray(self._index[start:stop], dtype=np.int64)

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray | None]:
        start, stop = self._check_range(start, stop)
        index = self._index[start:stop]
        x = self._load(index)
        y = None if self._labels is None else self._labels[index].astype(np.int64)
        return x, y

    @abstractmethod
    def _load(self, index: np.ndarray) -> np.ndarray:
        """Images at store positions ``index`` (any order), ``(len(index), H, W, 3)``."""


class ArrayDataset(IndexedDataset):
    """Images already in memory (or memory-mapped), for the Python API and tests.

    Parameters
    ----------
    x : images ``(N, H, W, 3)``, or grayscale ``(N, H, W)`` / ``(N, H, W, 1)`` read as three
        equal channels; uint8, uint16, float32 (float64 is read as float32).
    y : labels ``(N,)``, integers in ``0..K-1``, or ``None``.
    class_names : ``K`` names; default ``c0, c1, ...`` up to the largest label.
    encoding : ``"auto"`` (from the dtype: uint8 → srgb8, uint16 → linear16,
        float → float) or one of ``srgb8``, ``linear16``, ``float`` matching the dtype.

    Raises
    ------
    UserError : for a wrong shape or dtype, NaN/inf, or labels out of range.
    """

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray | Sequence[int] | None = None,
        class_names: Sequence[str] | None = None,
        encoding: str = "auto",
        *,
        index: np.ndarray | None = None,
        key: str | None = None,
        check_values: bool = True,
    ) -> None:
        x = x if isinstance(x, np.ndarray) else np.asarray(x)
        self._x = x
        self.dtype = check_images(x.shape, x.dtype, key=key)
        self.image_shape = (int(x.shape[1]), int(x.shape[2]), 3)
        self.encoding = encoding_for_dtype(self.dtype, encoding, key=key)
        if check_values and self.dtype.kind == "f":
            check_finite(x, key=key)
        if y is None:
            self._labels = None
            self.class_names = tuple(class_names) if class_names is not None else ()
        else:
            self._labels = check_labels(y, len(x), class_names, key=key)
            if class_names is None:
                class_names = default_class_names(int(self._labels.max(initial=-1)) + 1)
            self.class_names = tuple(str(c) for c in class_names)
        self._index = (
            np.arange(len(x), dtype=np.int64) if index is None else np.asarray(index, np.int64)
        )

    def _load(self, index: np.ndarray) -> np.ndarray:
        if len(index) == 0:
            return np.empty((0, *self.image_shape), self.dtype)
        # Read in ascending store order (friendly to memory-mapped files), then restore order.
        order = np.argsort(index, kind="stable")
        out = np.empty((len(index), *self.image_shape), self.dtype)
        images = self._x[index[order]]
        out[order] = images[..., None] if images.ndim == 3 else images  # gray: broadcast
        return out


def default_class_names(n_classes: int) -> tuple[str, ...]:
    """``("c0", "c1", ...)``: names for labels that come without any."""
    return tuple(f"c{i}" for i in range(n_classes))


def check_images(shape: tuple[int, ...], dtype: np.dtype, *, key: str | None) -> np.dtype:
    """Check an image array's shape and dtype; return the dtype it is read as.

    RGB ``(N, H, W, 3)`` or grayscale ``(N, H, W)`` / ``(N, H, W, 1)`` (read as three equal
    channels, like the folder reader). float64 is accepted and read as float32; other
    dtypes than uint8/uint16/float are errors.
    """
    dtype = np.dtype(dtype)
    if not (len(shape) == 3 or (len(shape) == 4 and shape[3] in (1, 3))):
        raise UserError(
            f"x must have shape (N, H, W, 3), or (N, H, W) or (N, H, W, 1) for grayscale, "
            f"got {tuple(shape)}",
            key=key,
        )
    if shape[1] < 1 or shape[2] < 1:
        raise UserError(f"x has empty images, shape {tuple(shape)}", key=key)
    if dtype in (np.uint8, np.uint16, np.float32):
        return dtype
    if dtype == np.float64:
        return np.dtype(np.float32)
    raise UserError(f"x must be uint8, uint16 or float32, got {dtype}", key=key)


def encoding_for_dtype(dtype: np.dtype, encoding: str = "auto", *, key: str | None = None) -> str:
    """The encoding of images stored as ``dtype``; checks an explicit ``encoding`` fits."""
    dtype = np.dtype(dtype)
    auto = {"u": {1: "srgb8", 2: "linear16"}}.get(dtype.kind, {}).get(dtype.itemsize)
    if dtype.kind == "f":
        auto = "float"
    if auto is None:
        raise UserError(f"no image encoding for dtype {dtype}", key=key)
    if encoding == "auto":
        return auto
    if encoding not in ENCODINGS:
        raise UserError(
            f"unknown encoding {encoding!r} (choose from auto, {', '.join(ENCODINGS)})", key=key
        )
    if encoding != auto:
        raise UserError(
            f"encoding {encoding!r} needs {_ENCODING_DTYPE[encoding]} images, got {dtype}", key=key
        )
    return encoding


def check_finite(x: np.ndarray, *, key: str | None, name: str = "x") -> None:
    """Raise ``UserError("x contains NaN at image 3")`` for the first image with NaN or inf.

    Scans in chunks of images so a memory-mapped array is never loaded whole.
    """
    for start in range(0, len(x), _SCAN_CHUNK):
        chunk = np.asarray(x[start : start + _SCAN_CHUNK])
        bad = ~np.isfinite(chunk).reshape(len(chunk), -1).all(axis=1)
        if bad.any():
            i = int(np.argmax(bad))
            what = "NaN" if np.isnan(chunk[i]).any() else "inf"
            raise UserError(f"{name} contains {what} at image {start + i}", key=key)


def check_labels(
    y: np.ndarray | Sequence[int],
    n_images: int,
    class_names: Sequence[str] | None,
    *,
    key: str | None,
) -> np.ndarray:
    """Check labels ``(N,)`` are integers in ``0..K-1`` (K = len(class_names) when given).

    Returns them as int64.
    """
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n_images:
        raise UserError(f"y must have shape ({n_images},) to match x, got {y.shape}", key=key)
    if y.dtype.kind not in "iu":
        raise UserError(f"y must hold integer labels, got dtype {y.dtype}", key=key)
    y = y.astype(np.int64)
    if class_names is not None:
        names = [str(c) for c in class_names]
        if len(set(names)) != len(names):
            raise UserError(f"class_names has duplicates: {names}", key=key)
        n_classes = len(names)
    else:
        n_classes = None
    bad = (y < 0) if n_classes is None else ((y < 0) | (y >= n_classes))
    if bad.any():
        i = int(np.argmax(bad))
        allowed = "labels must be >= 0" if n_classes is None else f"outside 0..{n_classes - 1}"
        raise UserError(f"y has label {int(y[i])} at image {i}: {allowed}", key=key)
    return y
