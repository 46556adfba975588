"""``folder``: one sub-folder per class of PNG, JPEG or TIFF images, 8- or 16-bit.

``path/<class>/<image>``; class names are the sorted sub-folder names, or an explicit
``classes`` list (which fixes the label order; a sub-folder not in it is an error).
Images are read with OpenCV, unchanged (16-bit stays 16-bit), converted from OpenCV's
BGR order to RGB; grayscale becomes three equal channels and alpha is dropped. All images
must share one size and bit depth, checked as they are read (the first file in sorted
order sets them), unless ``resize`` is given. Files are read per batch, never all at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import cv2
import numpy as np
from PIL import Image
from pydantic import Field

from pipeline import limits
from pipeline.datasets.base import IndexedDataset, encoding_for_dtype
from pipeline.datasets.splits import FractionFields, apply_limit, split_indices
from pipeline.errors import UserError, did_you_mean

__all__ = ["IMAGE_SUFFIXES", "FolderConfig", "FolderDataset", "read_image"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
_BITS = {np.dtype(np.uint8): "8-bit", np.dtype(np.uint16): "16-bit", np.dtype(np.float32): "float"}

Px = Annotated[int, Field(ge=1, le=65536)]


class FolderConfig(FractionFields):
    """Images in one sub-folder per class."""

    kind: Literal["folder"] = Field(description="Image files, one sub-folder per class.")
    path: str = Field(
        description="Folder holding one sub-folder per class (relative to the config)."
    )
    classes: list[str] | None = Field(
        None,
        min_length=1,
        description="Class names in label order; default the sorted sub-folder names.",
    )
    resize: tuple[Px, Px] | None = Field(
        None, description="Resize every image to [H, W] px (area interpolation when shrinking)."
    )


class FolderDataset(IndexedDataset):
    """Images in ``root/<class>/``; see the module docstring.

    Parameters
    ----------
    root : the folder.
    classes : class names in label order, or ``None`` for the sorted sub-folder names.
    resize : ``(H, W)`` in px, or ``None`` to require one size.
    split, seed, val_fraction, test_fraction, limit : see :mod:`pipeline.datasets.splits`.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        classes: list[str] | None = None,
        resize: tuple[int, int] | None = None,
        split: str = "test",
        seed: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        limit: int | None = None,
    ) -> None:
        root = Path(root)
        self.root = root
        self.resize = None if resize is None else (int(resize[0]), int(resize[1]))
        self._files, labels, self.class_names = _scan(root, classes)
        self._labels = labels
        first = read_image(self._files[0], key="dataset.path")
        self._first = (self._files[0], first.shape[:2], first.dtype)
        self.dtype = first.dtype
        self.encoding = encoding_for_dtype(first.dtype, key="dataset.path")
        h, w = self.resize or first.shape[:2]
        self.image_shape = (h, w, 3)
        index = split_indices(
            labels,
            len(self._files),
            split=split,
            seed=seed,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
        )
        self._index = apply_limit(index, limit, split=split)

    def sources(self, start: int, stop: int) -> list[str]:
        """Images ``[start, stop)``'s files, relative to the dataset folder (``cat/01.png``)."""
        start, stop = self._check_range(start, stop)
        return [self._files[i].relative_to(self.root).as_posix() for i in self._index[start:stop]]

    def _load(self, index: np.ndarray) -> np.ndarray:
        out = np.empty((len(index), *self.image_shape), self.dtype)
        first_file, first_hw, first_dtype = self._first
        for j, i in enumerate(index.tolist()):
            path = self._files[i]
            img = read_image(path, key="dataset.path")
            if img.dtype != first_dtype:
                raise UserError(
                    f"{path} is {_BITS[img.dtype]} but {first_file} is {_BITS[first_dtype]}: "
                    "all images must have the same bit depth",
                    key="dataset.path",
                )
            if self.resize is not None:
                img = _resized(img, self.resize)
            elif img.shape[:2] != first_hw:
                raise UserError(
                    f"{path} is {_hw(img.shape)} but {first_file} is {_hw(first_hw)} (H x W px): "
                    "all images must be the same size (or set resize: [H, W])",
                    key="dataset.path",
                )
            out[j] = img
        return out


def read_image(path: Path, *, key: str | None = None) -> np.ndarray:
    """One image file as RGB ``(H, W, 3)``, dtype as stored (uint8, uint16 or float32).

    OpenCV decodes BGR(A); this returns RGB, repeats grayscale to three channels and drops
    alpha. Decoding from bytes (``imdecode``) also works for non-ASCII paths.
    """
    check_image_header(path, key=key)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}", key=key) from None
    img = _decode_quietly(data) if data.size else None
    if img is None:
        raise UserError(f"cannot decode {path} as an image", key=key)
    if img.dtype not in _BITS:
        raise UserError(f"{path} has unsupported pixel type {img.dtype}", key=key)
    if img.ndim == 2:
        img = img[:, :, None]
    channels = img.shape[2]
    if channels in (1, 2):  # gray, gray + alpha
        return np.repeat(img[:, :, :1], 3, axis=2)
    if channels in (3, 4):  # BGR, BGRA
        return np.ascontiguousarray(img[:, :, 2::-1])
    raise UserError(f"{path} has {channels} channels; expected 1, 3 or 4", key=key)


def check_image_header(path: Path, *, key: str | None = None) -> None:
    """Refuse an image file whose header declares more than the ``decoded_pixels`` limit.

    Only the header is read (Pillow opens lazily); files Pillow cannot identify are left
    to OpenCV, which has its own limit (2^30 pixels).
    """
    saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # we check, not Pillow
    try:
        with Image.open(path) as im:
            count = im.size[0] * im.size[1]
    except (OSError, ValueError, SyntaxError):  # unidentified or damaged: OpenCV decides
        return
    finally:
        Image.MAX_IMAGE_PIXELS = saved
    limits.check("decoded_pixels", count, what=f"image {path}", key=key)


def _decode_quietly(data: np.ndarray) -> np.ndarray | None:
    """``cv2.imdecode`` without OpenCV's ``[ WARN ]`` lines (a damaged file is our error)."""
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        return cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    finally:
        cv2.utils.logging.setLogLevel(level)


def _scan(root: Path, classes: list[str] | None) -> tuple[list[Path], np.ndarray, tuple[str, ...]]:
    """Image files (sorted by class folder, then name), their labels, and the class names."""
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise UserError(f"image folder {root} {what}", key="dataset.path")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        loose = [p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
        hint = " (it holds images directly: put each class's images in its own sub-folder)"
        raise UserError(
            f"image folder {root} has no class sub-folders{hint if loose else ''}",
            key="dataset.path",
        )
    if classes is None:
        names = [p.name for p in folders]
    else:
        names = [str(c) for c in classes]
        if len(set(names)) != len(names):
            dup = sorted({c for c in names if names.count(c) > 1})
            raise UserError(f"classes lists {', '.join(dup)} more than once", key="dataset.classes")
        for p in folders:
            if p.name not in names:
                raise UserError(
                    f"unknown label {p.name!r}: sub-folder {p} is not in classes"
                    + did_you_mean(p.name, names),
                    key="dataset.classes",
                )
    label_of = {name: k for k, name in enumerate(names)}
    files: list[Path] = []
    labels: list[int] = []
    for folder in folders:
        found = sorted(
            p
            for p in folder.iterdir()
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith(".")
        )
        if not found and classes is None:
            raise UserError(
                f"class folder {folder} has no images ({', '.join(IMAGE_SUFFIXES)})",
                key="dataset.path",
            )
        files += found
        labels += [label_of[folder.name]] * len(found)
    if not files:
        raise UserError(f"image folder {root} has no images", key="dataset.path")
    return files, np.asarray(labels, np.int64), tuple(names)


def _resized(img: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    h, w = hw
    if img.shape[:2] == (h, w):
        return img
    shrink = h < img.shape[0] and w < img.shape[1]
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(img, (w, h), interpolation=interp)


def _hw(shape: tuple[int, ...]) -> str:
    return f"{shape[0]}x{shape[1]}"
