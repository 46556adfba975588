"""``npz``: images and labels in a NumPy ``.npz`` file.

Arrays: ``x`` ``(N, H, W, 3)`` uint8 (sRGB), uint16 (linear) or float32/float64 (linear),
or grayscale ``(N, H, W)`` / ``(N, H, W, 1)`` (read as three equal channels, like the
folder reader); optionally ``y`` ``(N,)`` integer labels (needed to train or to measure
accuracy, not to run a sensor) and ``class_names`` ``(K,)`` strings. Files
written with ``np.savez`` (uncompressed) are memory-mapped, so only the images of each
batch are read; ``np.savez_compressed`` files are decompressed whole on open. Pickled
objects are never loaded. Checked on open: the keys, ranks and dtypes, labels in range,
and no NaN or inf in float images (scanned in chunks).
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from pipeline import limits
from pipeline.datasets.base import ArrayDataset, check_images, check_labels
from pipeline.datasets.splits import FractionFields, apply_limit, split_indices
from pipeline.errors import UserError
from pipeline.npyfile import npz_member_header

__all__ = ["NpzConfig", "open_npz", "read_npz_member"]

_KEY = "dataset.path"
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature ... file name length, extra length


class NpzConfig(FractionFields):
    """Images ``x`` and labels ``y`` in a ``.npz`` file."""

    kind: Literal["npz"] = Field(description="A NumPy .npz file.")
    path: str = Field(
        description=".npz file with x (N,H,W,3) or grayscale (N,H,W), and optionally "
        "labels y (N,) and class_names (relative to the config)."
    )
    classes: list[str] | None = Field(
        None, min_length=1, description="Class names in label order; default the file's."
    )


def open_npz(
    path: str | Path,
    *,
    classes: list[str] | None = None,
    split: str = "all",
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    limit: int | None = None,
) -> ArrayDataset:
    """Open a ``.npz`` dataset (see the module docstring) as an :class:`ArrayDataset`.

    Raises
    ------
    UserError : key ``dataset.path`` for a missing file or bad arrays.
    """
    path = Path(path)
    if not path.is_file():
        what = "is not a file" if path.exists() else "does not exist"
        raise UserError(f"npz file {path} {what}", key=_KEY)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UserError(f"{path} is not an .npz file ({exc})", key=_KEY) from None
    with zf:
        members = {Path(n).stem: n for n in zf.namelist() if n.endswith(".npy")}
        if "x" not in members:
            found = ", ".join(sorted(members)) or "none"
            raise UserError(f"{path} has no array 'x' (arrays: {found})", key=_KEY)
        x = read_npz_member(path, zf, members["x"])
        y = read_npz_member(path, zf, members["y"]) if "y" in members else None
        names = classes
        if names is None and "class_names" in members:
            stored = read_npz_member(path, zf, members["class_names"])
            if stored.ndim != 1 or stored.dtype.kind not in "US":
                raise UserError(
                    f"class_names must be a 1-D array of strings, got {stored.dtype} "
                    f"shape {stored.shape}",
                    key=_KEY,
                )
            names = [s.decode() if isinstance(s, bytes) else str(s) for s in stored.tolist()]
    check_images(x.shape, x.dtype, key=_KEY)
    labels = None if y is None else check_labels(np.asarray(y), len(x), names, key=_KEY)
    index = split_indices(
        labels,
        len(x),
        split=split,
        seed=seed,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
    )
    index = apply_limit(index, limit, split=split)
    return ArrayDataset(x, labels, names, index=index, key=_KEY)


def read_npz_member(path: Path, zf: zipfile.ZipFile, name: str) -> np.ndarray:
    """One array of an open ``.npz``: memory-mapped when stored uncompressed, else loaded.

    Object (pickled) arrays are refused.
    """
    info = zf.getinfo(name)
    header = npz_member_header(zf, name, what="array", file=path, key=_KEY)
    if Path(name).stem == "x" and len(header.shape) >= 3:
        limits.check("dataset_images", header.shape[0], what=f"x in {path}", key=_KEY)
        pixels = header.shape[1] * header.shape[2]
        limits.check("image_pixels", pixels, what=f"x in {path}", key=_KEY)
    try:
        if info.compress_type != zipfile.ZIP_STORED:
            limits.check("array_bytes", header.nbytes, what=f"{name} in {path}", key=_KEY)
            with zf.open(info) as f:
                return np.lib.format.read_array(f, allow_pickle=False)
        with open(path, "rb") as f:
            f.seek(info.header_offset)
            signature, name_len, extra_len = _LOCAL_HEADER.unpack(f.read(_LOCAL_HEADER.size))
            if signature != b"PK\x03\x04":
                raise ValueError("bad zip local header")
            f.seek(info.header_offset + _LOCAL_HEADER.size + name_len + extra_len)
            version = np.lib.format.read_magic(f)
            read_header = {
                (1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0,
            }.get(version)
            if read_header is None:  # version 3.0 (utf-8 field names): load normally
                with zf.open(info) as g:
                    return np.lib.format.read_array(g, allow_pickle=False)
            shape, fortran, dtype = read_header(f)
            offset = f.tell()
        if dtype.hasobject:
            raise ValueError("holds Python objects (pickles are not loaded)")
        if int(np.prod(shape)) == 0:
            return np.empty(shape, dtype)
        order = "F" if fortran else "C"
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order=order)
    except ValueError as exc:
        raise UserError(
            f"cannot read array {Path(name).stem!r} of {path}: {exc}", key=_KEY
        ) from None
