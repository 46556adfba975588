"""One sweep cell, computed where it is scheduled (in-process or on a Dask worker).

A cell's record is its run folder ``cells/<id>/`` written by the runner (atomically:
``manifest.json`` appears with the folder's final rename) plus ``cell.json``, written
by the sweep after the run (atomically) with what the runner does not know: the cell's
axis values, its SNR, the trained model, the wall time, the fingerprint that a rerun
compares before reusing the record, and ``checksum``: the SHA-256 of every other file
of the folder. A cell is complete when both files exist; a rerun reuses it only when
:func:`damage` finds nothing (readable records, the checksum matches), else it is
recomputed and reported.

Training hook
-------------
``train: per_cell`` and ``train: fine_tune`` call ::

    pipeline.train.train_cell(loaded_config, out_dir, *, init) -> Path | (Path, Path)

with the cell's :class:`~pipeline.config.LoadedConfig` (its ``model:`` names the base
model), an empty folder to write into, and ``init="scratch"`` (per_cell: the base model's
graph with fresh weights) or ``init="base"`` (fine_tune: start from the base model's
weights). It returns the trained model YAML (weights ``<stem>.npz`` beside it), or the
pair (model YAML, weights). The cell is then evaluated with that model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import UserError
from pipeline.registry import Registry, default_registry
from pipeline.runner import Comparison, RunResult, run
from pipeline.store import write_json_atomic
from pipeline.sweep.check import load_cell, reference_raw, train_hook
from pipeline.sweep.reuse import cell_dataset, cell_model
from pipeline.sweep.snr import SnrSums

__all__ = [
    "CELL_RECORD",
    "CellTask",
    "damage",
    "execute_cell",
    "execute_cells",
    "folder_checksum",
    "is_complete",
    "read_record",
    "warm_up",
]

CELL_RECORD = "cell.json"
TRAINED_RECORD = "trained.json"


@dataclass(frozen=True)
class CellTask:
    """Everything a worker needs to compute one cell (plain data: it is pickled to workers).

    Attributes
    ----------
    cell_id, index, overrides : the cell.
    raw : the cell's run config as a plain dict (``run.out`` is the absolute cells folder).
    base_file, base_dir : the base config file (for errors, manifests) and its folder.
    models_dir : where trained models go (``train`` modes).
    train : none, per_cell or fine_tune.
    snr : the sweep's ``snr`` options as a dict, or None.
    fingerprint : written to cell.json; a rerun reuses the record only if it matches.
    registry : stage registry (None: the worker's installed stages).
    run_token : names the sweep run: the process keeps the dataset's images between
        cells of one run (:mod:`pipeline.sweep.reuse`); empty: it does not.
    """

    cell_id: str
    index: int
    overrides: dict
    raw: dict
    base_file: str
    base_dir: str
    models_dir: str
    train: str
    snr: dict | None
    fingerprint: dict
    registry: Registry | None = None
    run_token: str = ""


def is_complete(cell_dir: Path) -> bool:
    """True when the cell's run folder and its sweep record were both written."""
    return (cell_dir / "manifest.json").is_file() and (cell_dir / CELL_RECORD).is_file()


def read_record(cell_dir: Path) -> dict[str, Any]:
    """The cell's ``cell.json``."""
    return json.loads((cell_dir / CELL_RECORD).read_text(encoding="utf-8"))


def folder_checksum(folder: Path) -> str:
    """SHA-256 over the relative path and bytes of every file in ``folder`` except
    ``cell.json`` (in sorted path order): the fingerprint of a cell's records."""
    digest = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != CELL_RECORD)
    for path in files:
        digest.update(path.relative_to(folder).as_posix().encode("utf-8") + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def damage(cell_dir: Path) -> str | None:
    """What is wrong with a complete cell's records, or None when they are intact.

    Checked: ``cell.json`` and ``manifest.json`` parse as JSON objects and the folder's
    files match the checksum in ``cell.json`` (records written before checksums existed
    are checked for readability only).
    """
    record: Any = None
    for name in (CELL_RECORD, "manifest.json"):
        try:
            data = json.loads((cell_dir / name).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            return f"{name} is unreadable ({type(exc).__name__})"
        if not isinstance(data, dict):
            return f"{name} is not a JSON object"
        record = data if name == CELL_RECORD else record
    expected = record.get("checksum")
    if expected is not None and expected != folder_checksum(cell_dir):
        return "its files changed since they were written (checksum mismatch)"
    return None


def warm_up() -> None:
    """Import what a cell's first run would (a worker runs this as it starts, while the
    parent checks the cells): every installed stage, the PSNR/SSIM metrics (skimage
    imports them, and scipy.stats, lazily) and matplotlib, with the fonts its first PNG
    loads (the run's figures)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity  # noqa: F401

    fig = plt.figure(figsize=(1, 1))
    fig.text(0.5, 0.5, "0")
    fig.savefig(io.BytesIO(), format="png")
    plt.close(fig)

    registry = default_registry()
    for name in registry.names():
        registry.get(name)


def execute_cells(tasks: list[CellTask]) -> list[dict[str, Any]]:
    """Compute cells one after the other (one engine task: a group of cells that share a
    dataset and a model, which this process keeps between them). An error names its cell.

    Returns the cell records, in order.
    """
    records = []
    for task in tasks:
        try:
            records.append(execute_cell(task))
        except Exception as exc:
            raise in_cell(exc, task.cell_id) from None
    return records


def in_cell(exc: Exception, cell_id: str) -> Exception:
    """The error with the cell it came from (a UserError stays one line)."""
    if isinstance(exc, UserError):
        return type(exc)(f"cell {cell_id}: {exc.message}", file=exc.file, key=exc.key)
    note = getattr(exc, "add_note", None)
    if note is not None:
        note(f"in sweep cell {cell_id}")
    return exc


def execute_cell(task: CellTask) -> dict[str, Any]:
    """Compute one cell: train (if asked), run with the SNR measured on the way (if asked),
    write cell.json.

    The SNR compares the cell's first ``snr.images`` images with the noise-free reference
    while the run streams them (:class:`pipeline.runner.Comparison`): the cell's chain
    runs once, and the reference chain once more only when it differs from the run's
    PSNR/SSIM reference.

    Returns the cell record (also written to ``cells/<id>/cell.json``).
    """
    t0 = time.perf_counter()
    registry = task.registry or default_registry()
    base_dir = Path(task.base_dir)
    raw = task.raw
    trained = None
    if task.train != "none":
        trained = _trained_model(task, registry)
        raw = {**raw, "model": trained}
    loaded = load_cell(raw, task.base_file, base_dir, registry)
    snr = None
    compare = []
    if task.snr is not None:
        ref_raw = reference_raw(task.raw, task.snr["reference"])
        snr = SnrSums()
        reference = load_cell(ref_raw, task.base_file, base_dir, registry)
        compare.append(Comparison(reference, snr, task.snr.get("stage"), task.snr["images"]))
    result = run(
        loaded,
        registry=registry,
        progress=False,
        dataset=cell_dataset(loaded, task.run_token),
        model=cell_model(loaded, task.run_token),
        compare=compare,
    )
    assert result.path is not None
    record = {
        "cell": task.cell_id,
        "index": task.index,
        "overrides": task.overrides,
        "snr": None if snr is None else _snr_record(task, snr, result),
        "trained_model": trained,
        "wall_seconds": round(time.perf_counter() - t0, 6),
        "fingerprint": task.fingerprint,
        "checksum": folder_checksum(result.path),
    }
    write_json_atomic(result.path / CELL_RECORD, record)
    return record


def _snr_record(task: CellTask, sums: SnrSums, result: RunResult) -> dict[str, Any]:
    """cell.json's ``snr``: dB, compared stage, images, the sums, the reference overrides."""
    assert task.snr is not None
    sensor = [e["name"] for e in result.manifest["stages"][1:] if e["kind"] != "classifier"]
    return {
        "db": sums.db,
        "stage": task.snr.get("stage") or sensor[-1],
        "images": sums.images,
        "signal_sq": sums.signal_sq,
        "noise_sq": sums.noise_sq,
        "reference": task.snr["reference"],
    }


def _trained_model(task: CellTask, registry: Registry) -> dict[str, str | None]:
    """The cell's trained model ``{path, weights}``: reused if finished before, else trained.

    Training writes into a temporary folder renamed to ``models/<id>`` when done, so an
    interrupted training leaves nothing that looks finished.
    """
    root = Path(task.models_dir)
    final = root / task.cell_id
    marker = final / TRAINED_RECORD
    if marker.is_file():
        done = json.loads(marker.read_text(encoding="utf-8"))
        return _resolve_model(final, done)
    train_cell = train_hook()
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{task.cell_id}.partial-", dir=root))
    try:
        loaded = load_cell(task.raw, task.base_file, Path(task.base_dir), registry)
        init = "base" if task.train == "fine_tune" else "scratch"
        out = train_cell(loaded, tmp, init=init)
        model, weights = out if isinstance(out, tuple | list) else (out, None)
        done = {"model": _relative(Path(model), tmp), "weights": None}
        if weights is not None:
            done["weights"] = _relative(Path(weights), tmp)
        write_json_atomic(tmp / TRAINED_RECORD, done)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _resolve_model(final, done)


def _relative(path: Path, folder: Path) -> str:
    """``path`` relative to ``folder`` when inside it (so the folder can be renamed)."""
    try:
        return str(path.resolve().relative_to(folder.resolve()))
    except ValueError:
        return str(path.resolve())


def _resolve_model(folder: Path, done: dict) -> dict[str, str | None]:
    model = folder / done["model"]
    weights = folder / done["weights"] if done.get("weights") else None
    return {"path": str(model), "weights": None if weights is None else str(weights)}
