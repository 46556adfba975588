"""Running a sweep: check every cell, skip finished ones, compute the rest on an engine.

Engines (:mod:`pipeline.sweep.dask_engine`): in-process (default), a Dask ``LocalCluster``
of N single-threaded worker processes (``workers=N``), or an existing Dask cluster
(``scheduler="tcp://host:port"``; its workers must see the sweep folder and the data at
the same paths). A local cluster starts in the background while the cells are checked.
A Dask task computes a small group of cells (:func:`cell_groups`: cells that share a
dataset and a model, side by side) and the worker keeps the dataset's images and the
model between cells and tasks (:mod:`pipeline.sweep.reuse`). Each cell writes its own run
folder, so the parent only assembles ``results.csv`` from the cells' records. Cells are
independent and seeded from their configs, so every engine and any number of workers
give the same arrays and the same table, bit for bit.

The sweep folder::

    <out>/<name>/
        sweep.json          the sweep as resolved: base, --set, axes, every cell's id and values
        results.csv         one row per finished cell (see pipeline.sweep.results)
        accuracy.png, snr.png, samples_grid.png
        cells/<cell id>/    a run folder (manifest.json, arrays.zarr, samples.png) + cell.json
        models/<cell id>/   the cell's trained model (train: per_cell / fine_tune)
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import shutil
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipeline import limits
from pipeline.errors import UserError
from pipeline.files import owned_folder
from pipeline.progress import progress as progress_reporter
from pipeline.registry import Registry, default_registry
from pipeline.store import write_json_atomic
from pipeline.sweep.cell import (
    CellTask,
    damage,
    execute_cells,
    is_complete,
    read_record,
    warm_up,
)
from pipeline.sweep.check import CheckedCell, check_plan
from pipeline.sweep.dask_engine import Engine, import_distributed
from pipeline.sweep.plots import write_plots
from pipeline.sweep.results import collect_rows, columns, write_csv_atomic
from pipeline.sweep.spec import SweepPlan, load_plan

__all__ = ["GROUPS_PER_SLOT", "SweepResult", "cell_groups", "run_sweep"]

# Dask tasks per worker thread, at least: a task computes ceil(cells / (this · threads))
# cells, so a worker idles at most one small group at the end of a sweep.
GROUPS_PER_SLOT = 12


@dataclass
class SweepResult:
    """What a sweep gives back.

    Attributes
    ----------
    path : the sweep folder.
    table : one dict per finished cell (the rows of results.csv, as Python values).
    cells : every cell id, in order.
    computed : the cells computed by this call.
    skipped : the cells found complete and reused.
    plots : the figures written.
    wall_seconds : this call's wall time.
    damaged : complete cells whose records were damaged (id -> why), recomputed.
    """

    path: Path
    table: list[dict[str, Any]]
    cells: list[str]
    computed: list[str]
    skipped: list[str]
    plots: list[Path]
    wall_seconds: float
    damaged: dict[str, str] = field(default_factory=dict)


def run_sweep(
    source: str | Path | Mapping[str, Any],
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    out: str | Path | None = None,
    set: Mapping[str, Any] | Sequence[str] | None = None,
    registry: Registry | None = None,
    progress: bool | None = None,
    base_dir: str | Path | None = None,
    plots: bool = True,
) -> SweepResult:
    """Run (or resume) a sweep.

    Parameters
    ----------
    source : a sweep YAML path or the same content as a dict.
    workers : run on a local Dask cluster of this many single-threaded worker processes.
    scheduler : run on an existing Dask cluster at this address (``tcp://host:port``).
    out : folder that receives the sweep folder (default: the file's ``out``).
    set : overrides applied to the base config of every cell (``["run.batch_size=8"]``).
    registry : stage registry (default: installed stages); sent to workers with each task.
    progress : False for no progress over cells (default: a bar on a terminal, a line per
        cell in a log).
    base_dir : folder that ``base:`` is relative to when ``source`` is a dict.
    plots : write the figures.

    Returns
    -------
    SweepResult

    Raises
    ------
    UserError : a bad sweep file or cell (before anything runs), a finished cell recorded
        with another config, a busy sweep folder, a missing Dask.
    """
    t0 = time.perf_counter()
    _check_engine_options(workers, scheduler)
    plan = load_plan(source, out=out, overrides=set, base_dir=base_dir)
    engine = Engine(workers, scheduler, warm=warm_up)
    with contextlib.ExitStack() as stack:
        stack.callback(engine.close)
        if any(not is_complete(plan.cells_dir / c.id) for c in plan.cells):
            engine.start()  # in the background, while the cells are checked
        checked = check_plan(plan, registry or default_registry())
        pending, _ = _split_cells(plan, checked, {})  # read-only: refuses mixed records early
        if pending:
            engine.ready()  # a cluster that cannot start leaves no folder
        stack.enter_context(
            owned_folder(plan.folder, what="sweep", file=plan.file, make=plan.cells_dir)
        )
        damaged: dict[str, str] = {}
        pending, skipped = _split_cells(plan, checked, damaged)  # damaged: recomputed
        _remove_leftovers(plan, pending)
        _write_sweep_json(plan, workers, scheduler)
        tasks = _tasks(plan, pending, registry)
        computed = _compute(plan, engine, tasks, _progress_bar(plan, len(skipped), progress))
        closing = threading.Thread(target=engine.close, name="sensorlab-dask-close")
        closing.start()  # a local cluster takes 1-4 s to stop: meanwhile, the figures
        stack.callback(closing.join)
        rows = collect_rows(plan, {})
        figures = write_plots(plan, rows, checked[0].sensor_names) if plots else []
    order = {c.id: c.index for c in plan.cells}
    return SweepResult(
        path=plan.folder,
        table=rows,
        cells=[c.id for c in plan.cells],
        computed=sorted(computed, key=order.__getitem__),
        skipped=[c.cell.id for c in skipped],
        damaged=damaged,
        plots=figures,
        wall_seconds=time.perf_counter() - t0,
    )


def _check_engine_options(workers: int | None, scheduler: str | None) -> None:
    """Refuse both engines at once or a bad worker count; a missing Dask before anything."""
    if workers is not None and scheduler is not None:
        raise UserError("give --workers or --scheduler, not both")
    if workers is not None and (isinstance(workers, bool) or int(workers) < 1):
        raise UserError(f"--workers must be at least 1, got {workers}")
    if workers is not None:
        limits.check("workers", int(workers), what="--workers", key="workers")
    if workers is not None or scheduler is not None:
        import_distributed()


def _compute(plan: SweepPlan, engine: Engine, tasks: list[CellTask], bar: Any) -> list[str]:
    """Compute the cells on the engine, rewriting results.csv as groups finish; the ids
    of the cells computed (also when an error stops the sweep: the table keeps them)."""
    cols = columns(plan)
    cache: dict[str, dict[str, Any]] = {}
    csv_path = plan.folder / "results.csv"
    write_csv_atomic(csv_path, collect_rows(plan, cache), cols)
    computed: list[str] = []
    try:
        slots = engine.slots if tasks else 1
        for group, _records in engine.map(execute_cells, cell_groups(tasks, slots)):
            computed += [t.cell_id for t in group]
            write_csv_atomic(csv_path, collect_rows(plan, cache), cols)
            bar.update(len(group))
    finally:
        bar.close()
        write_csv_atomic(csv_path, collect_rows(plan, cache), cols)
    return computed


def cell_groups(tasks: Sequence[CellTask], slots: int) -> list[list[CellTask]]:
    """The cells as engine tasks: one cell each on one slot (in-process), else groups of
    at most ``ceil(len(tasks) / (GROUPS_PER_SLOT · slots))`` cells, cells that share a
    dataset and a model side by side (their worker loads them once), otherwise in order.

    Parameters
    ----------
    tasks : the cells to compute.
    slots : how many tasks the engine runs at once.
    """
    if slots <= 1:
        return [[t] for t in tasks]
    size = max(1, math.ceil(len(tasks) / (GROUPS_PER_SLOT * slots)))
    groups = []
    for _, same in itertools.groupby(sorted(tasks, key=_shared_inputs), key=_shared_inputs):
        cells = list(same)  # in cell order: the sort is stable
        groups += [cells[i : i + size] for i in range(0, len(cells), size)]
    return groups


def _shared_inputs(task: CellTask) -> str:
    """What cells can share in a worker: the dataset and the model their configs name."""
    return json.dumps([task.raw.get("dataset"), task.raw.get("model")], sort_keys=True, default=str)


# --------------------------------------------------------------------------- resume
def _split_cells(
    plan: SweepPlan, checked: list[CheckedCell], damaged: dict[str, str] | None = None
) -> tuple[list[CheckedCell], list[CheckedCell]]:
    """Split cells into (to compute, complete), reading the folder only.

    With ``damaged`` (a dict), a complete cell whose records fail
    :func:`~pipeline.sweep.cell.damage` is put to compute and ``damaged[id]`` says why.

    A complete cell recorded with another config or other sweep options is an error:
    reusing it would mix two sweeps in one table.
    """
    pending, done = [], []
    for c in checked:
        folder = plan.cells_dir / c.cell.id
        if is_complete(folder) and damaged is not None and (why := damage(folder)):
            damaged[c.cell.id] = why
            pending.append(c)
        elif is_complete(folder):
            recorded = read_record(folder).get("fingerprint")
            if recorded != c.fingerprint:
                where = _first_difference(recorded, c.fingerprint)
                raise UserError(
                    f"{folder} was computed with a different {where}; remove it or sweep into "
                    "another folder (--out, name:)",
                    file=plan.file,
                )
            done.append(c)
        else:
            pending.append(c)
    return pending, done


def _remove_leftovers(plan: SweepPlan, pending: list[CheckedCell]) -> None:
    """Remove what interrupted runs left: hidden partial folders, cells without cell.json."""
    for root in (plan.cells_dir, plan.models_dir):
        if root.is_dir():
            for leftover in root.glob(".*.partial-*"):
                shutil.rmtree(leftover, ignore_errors=True)
    for c in pending:
        folder = plan.cells_dir / c.cell.id
        if folder.exists():  # a run without its cell.json, or a folder someone emptied
            shutil.rmtree(folder)


def _first_difference(old: Any, new: Any, path: str = "") -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in [*old, *(k for k in new if k not in old)]:
            if old.get(key) != new.get(key):
                sub = f"{path}.{key}" if path else str(key)
                return _first_difference(old.get(key), new.get(key), sub)
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            if a != b:
                return _first_difference(a, b, f"{path}[{i}]")
    label = path.replace("config.", "", 1).replace("options.", "sweep option ", 1)
    label = label.replace("model_files.", "model file: ", 1)
    return f"{label or 'record'} ({_short(old)}, now {_short(new)})"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _write_sweep_json(plan: SweepPlan, workers: int | None, scheduler: str | None) -> None:
    engine = (
        {"kind": "dask", "scheduler": scheduler}
        if scheduler
        else {"kind": "dask-local", "workers": workers}
        if workers
        else {"kind": "in-process"}
    )
    write_json_atomic(
        plan.folder / "sweep.json",
        {
            "sweep_file": plan.file,
            "base": plan.base_file,
            "set": plan.set_overrides,
            "spec": plan.spec.model_dump(mode="json"),
            "axes": plan.axes,
            "cells": [{"id": c.id, "overrides": c.overrides} for c in plan.cells],
            "last_engine": engine,
            "updated_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    )


def _tasks(
    plan: SweepPlan, pending: list[CheckedCell], registry: Registry | None
) -> list[CellTask]:
    token = uuid.uuid4().hex  # this run: workers keep its dataset between cells
    return [_task(plan, c, registry, token) for c in pending]


def _task(plan: SweepPlan, c: CheckedCell, registry: Registry | None, token: str) -> CellTask:
    return CellTask(
        cell_id=c.cell.id,
        index=c.cell.index,
        overrides=c.cell.overrides,
        raw=c.raw,
        base_file=plan.base_file,
        base_dir=str(plan.base_dir),
        models_dir=str(plan.models_dir.resolve()),
        train=plan.spec.train,
        snr=c.snr,
        fingerprint=c.fingerprint,
        registry=registry,
        run_token=token,
    )


def _progress_bar(plan: SweepPlan, done: int, progress: bool | None) -> Any:
    """Progress over cells (:mod:`pipeline.progress`): a bar on a terminal, a line per
    finished cell with elapsed and remaining time in a log; off only when asked."""
    return progress_reporter(
        len(plan.cells),
        desc=f"sweep {plan.folder.name}",
        unit="cell",
        show=progress is not False,
        initial=done,
        every_pct=0,
    )
