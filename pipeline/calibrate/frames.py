"""Frame readers: one file → its 2-D raw frames (DN), one at a time.

- ``.npy``: one frame ``(H, W)`` or a stack ``(L, H, W)`` (memory-mapped, so a stack
  larger than memory streams);
- ``.npz``: every array of the archive in its stored order, each a frame or a stack;
- ``.tif``/``.tiff``: every page (16-bit greyscale; a multi-page file is a stack), through
  tifffile;
- ``.png``: one 16-bit (or 8-bit) single-channel image, through OpenCV;
- ``.dng`` and camera raw files (``.cr2 .cr3 .nef .arw .raf .orf .rw2 .pef .srw``): the
  visible raw mosaic before any processing, through rawpy (LibRaw).

Every failure is a :class:`UserError` naming the file. tifffile and rawpy come with the
``calibrate`` extra (``pip install 'sensorlab[calibrate]'``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline.errors import UserError

__all__ = ["RAW_SUFFIXES", "SUFFIXES", "read_frames"]

RAW_SUFFIXES = (".dng", ".cr2", ".cr3", ".nef", ".arw", ".raf", ".orf", ".rw2", ".pef", ".srw")
SUFFIXES = (".npy", ".npz", ".tif", ".tiff", ".png", *RAW_SUFFIXES)


def read_frames(path: str | Path) -> Iterator[np.ndarray]:
    """Yield the 2-D frames of one file (integer or float arrays, as stored).

    Raises
    ------
    UserError : missing file, unknown suffix, unreadable or empty file, not 2-D frames,
        NaN.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError("no such frame file", file=path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise UserError(
            f"unknown frame file type {suffix!r} (use {', '.join(SUFFIXES)})", file=path
        )
    reader = {".npy": _npy, ".npz": _npz, ".tif": _tiff, ".tiff": _tiff, ".png": _png}.get(
        suffix, _raw
    )
    count = 0
    try:
        for array in reader(path):
            for frame in _as_frames(array, path):
                count += 1
                yield frame
    except UserError:
        raise
    except Exception as exc:  # a library's own error on a damaged file
        raise UserError(f"cannot read frames: {' '.join(str(exc).split())}", file=path) from None
    if count == 0:
        raise UserError("cannot read frames: the file holds none", file=path)


def _as_frames(array: np.ndarray, path: Path) -> Iterator[np.ndarray]:
    if array.ndim == 2:
        stack = array[None]
    elif array.ndim == 3:
        stack = array
    else:
        raise UserError(f"frames must be (H, W) or (L, H, W), got shape {array.shape}", file=path)
    if not (np.issubdtype(stack.dtype, np.integer) or np.issubdtype(stack.dtype, np.floating)):
        raise UserError(f"frames must be numbers, got dtype {stack.dtype}", file=path)
    for frame in stack:
        frame = np.asarray(frame)
        if frame.dtype.kind == "f" and not np.isfinite(frame).all():
            raise UserError("frame contains NaN or infinity", file=path)
        yield frame


def _npy(path: Path) -> Iterator[np.ndarray]:
    yield np.load(path, mmap_mode="r", allow_pickle=False)


def _npz(path: Path) -> Iterator[np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        if not archive.files:
            raise UserError("archive holds no arrays", file=path)
        for name in archive.files:
            yield archive[name]


def _optional(module: str, path: Path):
    """Import a reader's library, or a UserError naming the extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(
            f"reading {path.suffix} frames needs {module}: pip install 'sensorlab[calibrate]'",
            file=path,
        ) from None


def _tiff(path: Path) -> Iterator[np.ndarray]:
    tifffile = _optional("tifffile", path)

    with tifffile.TiffFile(path) as tif:
        for page in tif.pages:
            yield page.asarray()


def _png(path: Path) -> Iterator[np.ndarray]:
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise UserError("OpenCV cannot decode this PNG", file=path)
    if image.ndim != 2:
        raise UserError(f"a raw frame PNG has one channel, got shape {image.shape}", file=path)
    yield image


def _raw(path: Path) -> Iterator[np.ndarray]:
    rawpy = _optional("rawpy", path)

    with rawpy.imread(str(path)) as raw:
        yield raw.raw_image_visible.copy()
