"""What a ``.npy`` array or ``.npz`` member declares, checked before its data is read.

A ``.npy`` header states a shape and a dtype; a zip directory states each member's size
and compressed size. A hostile or damaged file can declare terabytes in a few hundred
bytes, so readers call :func:`npz_member_header` (or :func:`npy_header`) first and compare
the declared bytes with what the file holds and with :mod:`pipeline.limits`.
"""

from __future__ import annotations

import ast
import math
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from pipeline import limits
from pipeline.errors import UserError

__all__ = ["NpyHeader", "check_npz", "npy_header", "npz_member_header"]

_BIG_MEMBER_BYTES = 16 << 20  # the compression-ratio guard looks at members above this


@dataclass(frozen=True)
class NpyHeader:
    """A ``.npy`` header: shape, dtype, memory order and the header's length in bytes."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran: bool
    header_bytes: int

    @property
    def nbytes(self) -> int:
        """Bytes of data the header declares."""
        return math.prod(self.shape) * self.dtype.itemsize


def npy_header(f: BinaryIO) -> NpyHeader:
    """Read a ``.npy`` header from ``f`` (positioned at the magic string), not the data.

    Raises
    ------
    ValueError : not a ``.npy`` header, an unknown version, or an object (pickle) dtype.
    """
    start = f.tell() if f.seekable() else 0
    version = np.lib.format.read_magic(f)
    readers = {
        (1, 0): np.lib.format.read_array_header_1_0,
        (2, 0): np.lib.format.read_array_header_2_0,
    }
    if version == (3, 0):
        shape, fortran, dtype = _read_header_3_0(f)
    elif version in readers:
        shape, fortran, dtype = readers[version](f)
    else:
        raise ValueError(f"unknown .npy version {version}")
    if dtype.hasobject:
        raise ValueError("holds Python objects (pickles are not loaded)")
    if any(int(n) < 0 for n in shape):
        raise ValueError(f"negative shape {tuple(shape)}")
    used = (f.tell() - start) if f.seekable() else 0
    return NpyHeader(tuple(int(s) for s in shape), dtype, bool(fortran), used)


def _read_header_3_0(f: BinaryIO) -> tuple[tuple[int, ...], bool, np.dtype]:
    """A version 3.0 header (2.0's layout, UTF-8 text), which NumPy reads only privately."""
    (length,) = struct.unpack("<I", f.read(4))
    if length > 1 << 20:
        raise ValueError(f"header of {length} bytes")
    text = f.read(length).decode("utf-8")
    d = ast.literal_eval(text)
    if not isinstance(d, dict) or not {"descr", "fortran_order", "shape"} <= set(d):
        raise ValueError(f"bad header {text[:60]!r}")
    return tuple(d["shape"]), bool(d["fortran_order"]), np.lib.format.descr_to_dtype(d["descr"])


def npz_member_header(
    zf: zipfile.ZipFile, name: str, *, what: str, file: str | Path, key: str | None = None
) -> NpyHeader:
    """The header of ``.npz`` member ``name``, checked against its zip entry and the limits.

    Only the header bytes are decompressed. Refused: a declared size that differs from the
    zip entry's size, a member that compresses more than the ``zip_ratio`` limit (a zip
    bomb), and data beyond the ``array_bytes`` limit.

    Raises
    ------
    UserError : one line naming ``what``, ``file`` and ``key``.
    """
    info = zf.getinfo(name)
    label = f"{what} {Path(name).stem!r}"
    try:
        with zf.open(info) as f:
            header = npy_header(_Counting(f))
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, SyntaxError) as exc:
        raise UserError(f"cannot read {label}: {exc}", file=file, key=key) from None
    header_len = header.header_bytes
    if header.nbytes + header_len != info.file_size:
        raise UserError(
            f"{label} declares shape {header.shape} of {header.dtype} "
            f"({header.nbytes:,} bytes) but the file holds {max(info.file_size - header_len, 0):,}",
            file=file,
            key=key,
        )
    compressed = info.compress_type != zipfile.ZIP_STORED
    if compressed and info.file_size > _BIG_MEMBER_BYTES:
        ratio = info.file_size / max(info.compress_size, 1)
        limits.check("zip_ratio", ratio, what=f"{label} (compressed)", file=file, key=key)
    return header


def check_npz(path: str | Path, *, what: str, key: str | None = None) -> None:
    """Check every ``.npy`` member of the ``.npz`` at ``path`` before it is loaded whole.

    Raises
    ------
    UserError : a member fails :func:`npz_member_header`, or all together exceed the
        ``array_bytes`` limit.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            total = 0
            for name in zf.namelist():
                if name.endswith(".npy"):
                    total += npz_member_header(zf, name, what=what, file=path, key=key).nbytes
    except FileNotFoundError:
        raise UserError(f"{what} not found", file=path, key=key) from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise UserError(f"cannot read {what} (.npz expected): {exc}", file=path, key=key) from None
    limits.check("array_bytes", total, what=f"{what} (all arrays)", file=path, key=key)


class _Counting:
    """A read-only stream that knows its position (zip member streams may not seek)."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self._pos += len(data)
        return data

    def tell(self) -> int:
        return self._pos

    def seekable(self) -> bool:
        return True
