"""Small file helpers shared by the writers (run store, weights, ONNX files)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ordinary_mode"]


def ordinary_mode(path: str | Path, *, folder: bool = False) -> None:
    """Give a file (0666) or folder (0777) made by mkstemp/mkdtemp the umask's usual mode."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if folder else 0o666) & ~umask)
