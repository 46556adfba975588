"""The run store: one folder per run, written atomically.

Layout of a finished run folder::

    <out>/<name>/
        manifest.json   resolved config, seed, versions, per-stage time, arrays, metrics
        arrays.zarr/    zarr v3 group, one array per recorded stage, chunked by image,
                        each with attributes unit, stage, index and the signal's attrs;
                        provenance/ holds each recorded image's label, dataset image
                        key and (folder datasets) file name
        samples.png     a few images through every stage

The folder is built under a hidden temporary name beside its final place
(``.<name>.partial-<random>``, holding an ``owner.pid`` file with the writer's process id)
and renamed when complete, so an interrupted run leaves nothing that looks like a finished
one. A later run into the same folder removes such partial folders when they are older
than itself and their owner process is gone, and says so on stderr. Of two runs with the
same name started together, the first to rename wins; the other is refused in one line.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from pipeline import limits
from pipeline.errors import UserError
from pipeline.files import ordinary_mode

__all__ = [
    "RunWriter",
    "check_run_name_free",
    "jsonable",
    "ordinary_mode",
    "remove_stale_partials",
    "write_json_atomic",
]

_CHUNK_BYTES = 1 << 20  # aim for ~1 MiB chunks, whole images per chunk
OWNER_FILE = "owner.pid"  # inside a partial folder: the process id that writes it
_STARTED = time.time()  # about when this process started (the store is imported early)


class RunWriter:
    """Builds a run folder under a temporary name; :meth:`commit` makes it final.

    Parameters
    ----------
    out_root : folder that receives run folders; created if missing.
    name : the run folder's final name.
    overwrite : replace an existing folder of that name (default: refuse).
    """

    def __init__(self, out_root: str | Path, name: str, *, overwrite: bool = False) -> None:
        limits.check("name_chars", len(name), what="the run folder name", key="run.name")
        self.out_root = Path(out_root)
        self.name = name
        self.final = self.out_root / name
        if not overwrite:
            check_run_name_free(self.out_root, name)
        self.overwrite = overwrite
        try:
            self.out_root.mkdir(parents=True, exist_ok=True)
            remove_stale_partials(self.out_root)
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=self.out_root))
            ordinary_mode(self.tmp, folder=True)  # mkdtemp makes 0700
            (self.tmp / OWNER_FILE).write_text(f"{os.getpid()}\n", encoding="utf-8")
        except OSError as exc:
            raise UserError(
                f"cannot write to {self.out_root}: {exc.strerror or exc}", key="run.out"
            ) from None
        self._group: zarr.Group | None = None
        self._arrays: dict[str, zarr.Array] = {}

    # -- arrays ------------------------------------------------------------------
    @property
    def group(self) -> zarr.Group:
        if self._group is None:
            self._group = zarr.open_group(str(self.tmp / "arrays.zarr"), mode="w")
        return self._group

    def create_array(
        self,
        name: str,
        shape: tuple[int, ...],
        dtype: Any,
        attributes: Mapping[str, Any],
    ) -> None:
        """Declare a recorded array of ``shape`` = (images, *image_shape), chunked by image."""
        per_image = int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize
        images_per_chunk = max(1, min(shape[0] or 1, _CHUNK_BYTES // max(per_image, 1)))
        self._arrays[name] = self.group.create_array(
            name,
            shape=shape,
            chunks=(images_per_chunk, *shape[1:]),
            dtype=np.dtype(dtype),
            attributes=jsonable(dict(attributes)),
            fill_value=0,
        )

    def save_array(
        self, name: str, values: np.ndarray | list[str], attributes: Mapping[str, Any]
    ) -> None:
        """Write a small whole array at once (``name`` may hold a group path, ``a/b``);
        a list of strings becomes a variable-length UTF-8 array."""
        if isinstance(values, list):
            from zarr.dtype import VariableLengthUTF8

            array = self.group.create_array(
                name, shape=(len(values),), dtype=VariableLengthUTF8(), attributes=attributes
            )
            if values:
                array[:] = np.asarray(values, dtype=object)
            return
        self.group.create_array(name, data=np.asarray(values), attributes=dict(attributes))

    def write(self, name: str, start: int, values: np.ndarray) -> None:
        """Write ``values`` at images ``[start, start + len(values))`` of array ``name``."""
        self._arrays[name][start : start + len(values)] = values

    # -- finishing ---------------------------------------------------------------
    def path(self, filename: str) -> Path:
        """Where to write an extra file of the run (inside the temporary folder)."""
        return self.tmp / filename

    def commit(self, manifest: Mapping[str, Any]) -> Path:
        """Write manifest.json last, then rename the folder into place; returns the final path."""
        write_json_atomic(self.tmp / "manifest.json", manifest)
        (self.tmp / OWNER_FILE).unlink(missing_ok=True)
        if self.final.exists() and self.overwrite:
            shutil.rmtree(self.final)
        try:
            os.replace(self.tmp, self.final)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.EISDIR, errno.ENOTDIR):
                raise
            self.abort()
            raise UserError(
                f"another run wrote {self.final} first (started at the same time with the same "
                "name); nothing of this run was kept",
                key="run.name",
            ) from None
        return self.final

    def abort(self) -> None:
        """Remove the temporary folder (an interrupted or failed run)."""
        shutil.rmtree(self.tmp, ignore_errors=True)


def check_run_name_free(out_root: str | Path, name: str) -> None:
    """Refuse a run folder that exists already (checked before any work is done).

    Raises
    ------
    UserError : key ``run.name``, saying how to go on.
    """
    final = Path(out_root) / name
    if final.exists():
        raise UserError(
            f"run folder {final} already exists; pick another name "
            "(--name, run.name) or folder (--out, run.out), or remove it",
            key="run.name",
        )


def remove_stale_partials(out_root: Path) -> list[Path]:
    """Remove partial run folders in ``out_root`` left by killed runs; report them on stderr.

    A partial folder (``.<name>.partial-*``) is stale when it was last changed before this
    process started and the process id in its ``owner.pid`` is not running (a folder
    without that file counts as ownerless). Returns the folders removed.
    """
    started = _STARTED - 1.0  # conservative: a folder changed after our start is not stale
    removed = []
    for folder in sorted(out_root.glob(".*.partial-*")):
        try:
            if not folder.is_dir() or folder.stat().st_mtime >= started:
                continue
            if _owner_alive(folder / OWNER_FILE):
                continue
        except OSError:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    if removed:
        print(
            f"sensorlab: removed {len(removed)} partial folder(s) of interrupted runs in "
            f"{out_root}",
            file=sys.stderr,
        )
    return removed


def _owner_alive(owner_file: Path) -> bool:
    """True when ``owner_file`` names a running process (not this one)."""
    try:
        pid = int(owner_file.read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return False
    if pid <= 0 or pid == os.getpid():
        return pid == os.getpid()
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON to ``path`` through a temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(jsonable(data), indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def jsonable(obj: Any) -> Any:
    """Plain JSON types from NumPy scalars/arrays, tuples, paths and enums."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None if np.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "value") and isinstance(getattr(obj, "value", None), str):
        return obj.value
    return obj
