"""Small file helpers shared by the writers (run store, weights, ONNX files)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import UserError

__all__ = ["folder_lock", "ordinary_mode", "owned_folder", "written_folder"]


def ordinary_mode(path: str | Path, *, folder: bool = False) -> None:
    """Give a file (0666) or folder (0777) made by mkstemp/mkdtemp the umask's usual mode."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if folder else 0o666) & ~umask)


@contextlib.contextmanager
def written_folder(folder: str | Path) -> Iterator[Path]:
    """Write a folder all at once: yields a hidden temporary folder beside ``folder``.

    When the block ends normally the temporary folder replaces ``folder`` (an existing
    one is moved aside first, then removed); when it raises, the temporary folder is
    removed and ``folder`` is left as it was. A reader never sees a half-written folder.
    """
    folder = Path(folder)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
    except OSError as exc:
        raise UserError(f"cannot write: {exc.strerror or exc}", file=folder.parent) from None
    old = None
    try:
        ordinary_mode(tmp, folder=True)
        yield tmp
        if folder.exists():
            old = folder.parent / f".{folder.name}.old-{os.getpid()}"
            os.replace(folder, old)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def folder_lock(folder: Path, *, what: str, file: str | Path | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (released by the OS if the process dies).

    Parameters
    ----------
    folder : the folder to lock (its ``.lock`` file).
    what : what writes it (``sweep``, ``design``), for the error.
    file : the file that named the folder, for the error.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with open(folder / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"another {what} is writing to {folder}", file=file) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def owned_folder(
    folder: Path, *, what: str, file: str | Path | None = None, make: Path | None = None
) -> Iterator[None]:
    """Create ``folder`` (or ``make``, a folder inside it) with its parents, then hold
    :func:`folder_lock` on ``folder``: a folder that cannot be made is a UserError naming
    it and the ``out`` key of ``file``."""
    try:
        (make or folder).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"cannot write to {folder}: {exc.strerror or exc}", file=file, key="out"
        ) from None
    with folder_lock(folder, what=what, file=file):
        yield
