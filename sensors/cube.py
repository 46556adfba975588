"""A user's hyperspectral cube file, opened with every check before anything is read.

The file is ``.npz`` with arrays ``cube`` and ``wavelengths_nm``, or ``.npy`` holding the
cube alone (its wavelengths come from the scene's ``cube_wavelengths_nm``). The cube is
(H, W, B) for one scene or (N, H, W, B) for N scenes (image key k of the dataset sees
scene k mod N): spectral reflectance, or radiance relative to a white surface under the
scene's illuminant, per band, ≥ 0. A ``.npy`` cube is memory-mapped and read a batch at
a time (memory stays flat for any size); an ``.npz`` member is read whole, so its
uncompressed size is checked against :data:`MAX_NPZ_CUBE_BYTES` first.

Every problem is a ValueError whose message names the file, the key and the problem.
"""

from __future__ import annotations

import dataclasses
import zipfile
from pathlib import Path

import numpy as np

from sensors.spectral import check_bands

__all__ = ["MAX_NPZ_CUBE_BYTES", "Cube", "open_cube"]

#: The largest ``.npz`` cube member read into memory (uncompressed); use ``.npy`` beyond.
MAX_NPZ_CUBE_BYTES = 1 << 30


@dataclasses.dataclass(frozen=True)
class Cube:
    """An opened cube: ``data`` (N, H, W, B) (memory-mapped for ``.npy``) and its bands."""

    path: Path
    data: np.ndarray
    wavelengths_nm: np.ndarray

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, B) of one scene."""
        return tuple(int(s) for s in self.data.shape[1:])  # type: ignore[return-value]

    def images(self, image_keys: np.ndarray) -> np.ndarray:
        """float32 (n, H, W, B) scenes for dataset image keys (scene key mod N).

        ValueError if a scene read holds NaN, infinity or negative values.
        """
        picks = np.asarray(image_keys, dtype=np.int64) % self.data.shape[0]
        out = np.stack([np.asarray(self.data[i], dtype=np.float32) for i in picks])
        _check_values(out, self.path, "cube")
        return out


def _fail(path: Path, key: str, problem: str) -> ValueError:
    return ValueError(f"hyperspectral cube {path}: {key}: {problem}")


def _check_values(values: np.ndarray, path: Path, key: str) -> None:
    if not np.isfinite(values).all():
        raise _fail(path, key, "holds NaN or infinity")
    if (values < 0).any():
        raise _fail(path, key, "holds negative values (a reflectance or radiance is >= 0)")


def _check_cube_array(cube: np.ndarray, path: Path, key: str) -> np.ndarray:
    """Shape and dtype checks (not values); (H, W, B) becomes (1, H, W, B)."""
    if not np.issubdtype(cube.dtype, np.number) or np.issubdtype(cube.dtype, np.complexfloating):
        raise _fail(path, key, f"must hold real numbers, got dtype {cube.dtype}")
    if cube.ndim not in (3, 4):
        raise _fail(path, key, f"must be (H, W, B) or (N, H, W, B), got shape {cube.shape}")
    if cube.size == 0:
        raise _fail(path, key, f"is empty (shape {cube.shape})")
    return cube[None] if cube.ndim == 3 else cube


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The ``cube`` and ``wavelengths_nm`` members, sizes checked before reading."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            for key in ("cube", "wavelengths_nm"):
                if key not in npz.files:
                    raise _fail(path, key, f"missing (the file has {sorted(npz.files)})")
            size = npz.zip.getinfo("cube.npy").file_size
            if size > MAX_NPZ_CUBE_BYTES:
                raise _fail(
                    path,
                    "cube",
                    f"is {size / 2**30:.3g} GiB uncompressed, more than "
                    f"{MAX_NPZ_CUBE_BYTES / 2**30:g} GiB; store it as .npy (memory-mapped)",
                )
            return npz["cube"], npz["wavelengths_nm"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as err:
        if str(err).startswith("hyperspectral cube"):
            raise
        raise _fail(path, "file", f"cannot read it as .npz: {err}") from None


def open_cube(path: str | Path, wavelengths_nm: tuple[float, ...] | None = None) -> Cube:
    """Open and check a hyperspectral cube file (see the module docstring).

    Parameters
    ----------
    path : a ``.npz`` (``cube`` and ``wavelengths_nm``) or ``.npy`` (the cube) file.
    wavelengths_nm : band centres for a ``.npy`` cube, nm; must be None for ``.npz``.

    Returns
    -------
    The :class:`Cube`.

    Raises
    ------
    ValueError naming the file, the key and the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise _fail(path, "file", "not found")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        if wavelengths_nm is not None:
            raise _fail(path, "wavelengths_nm", "an .npz cube carries its own wavelengths")
        cube, bands = _read_npz(path)
    elif suffix == ".npy":
        if wavelengths_nm is None:
            raise _fail(path, "wavelengths_nm", "an .npy cube needs cube_wavelengths_nm")
        try:
            cube = np.load(path, allow_pickle=False, mmap_mode="r")
        except (OSError, ValueError, EOFError) as err:
            raise _fail(path, "file", f"cannot read it as .npy: {err}") from None
        bands = np.asarray(wavelengths_nm)
    else:
        raise _fail(path, "file", f"must be .npz or .npy, got {suffix or 'no suffix'!r}")
    cube = _check_cube_array(np.asarray(cube) if suffix == ".npz" else cube, path, "cube")
    try:
        bands = check_bands(np.asarray(bands, dtype=np.float64).reshape(-1))
    except (ValueError, TypeError) as err:
        raise _fail(path, "wavelengths_nm", str(err)) from None
    if bands.size != cube.shape[-1]:
        raise _fail(
            path,
            "wavelengths_nm",
            f"{bands.size} wavelengths for {cube.shape[-1]} bands in the cube",
        )
    if suffix == ".npz":
        _check_values(cube, path, "cube")
    return Cube(path, cube, bands)
