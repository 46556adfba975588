"""Running a sweep: check every cell, skip finished ones, compute the rest on an engine.

Engines: in-process (default), a Dask ``LocalCluster`` of N single-threaded worker
processes (``workers=N``), or an existing Dask cluster (``scheduler="tcp://host:port"``;
its workers must see the sweep folder and the data at the same paths). Each cell is one
task; it writes its own run folder, so the parent only assembles ``results.csv`` from the
cells' records. Cells are independent and seeded from their configs, so every engine
and any number of workers give the same arrays and the same table, bit for bit.

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
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipeline import limits
from pipeline.errors import UserError
from pipeline.progress import progress as progress_reporter
from pipeline.registry import Registry, default_registry
from pipeline.store import write_json_atomic
from pipeline.sweep.cell import CellTask, damage, execute_cell, is_complete, read_record
from pipeline.sweep.check import CheckedCell, check_plan
from pipeline.sweep.plots import write_plots
from pipeline.sweep.results import collect_rows, columns, write_csv_atomic
from pipeline.sweep.spec import SweepPlan, load_plan

__all__ = ["SweepResult", "run_sweep"]

_DASK_HINT = "install the optional extra: pip install 'sensorlab[dask]'"


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
    if workers is not None and scheduler is not None:
        raise UserError("give --workers or --scheduler, not both")
    if workers is not None and (isinstance(workers, bool) or int(workers) < 1):
        raise UserError(f"--workers must be at least 1, got {workers}")
    if workers is not None:
        limits.check("workers", int(workers), what="--workers", key="workers")
    if workers is not None or scheduler is not None:
        _import_distributed()
    plan = load_plan(source, out=out, overrides=set, base_dir=base_dir)
    checked = check_plan(plan, registry or default_registry())
    damaged: dict[str, str] = {}
    pending, _ = _split_cells(plan, checked, {})  # read-only: refuses mixed records early
    use_dask = workers is not None or scheduler is not None
    with contextlib.ExitStack() as stack:
        # Connect before writing anything: a cluster that cannot start leaves no folder.
        client = (
            stack.enter_context(_dask_client(workers, scheduler)) if use_dask and pending else None
        )
        try:
            plan.cells_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(
                f"cannot write to {plan.folder}: {exc.strerror or exc}", file=plan.file, key="out"
            ) from None
        stack.enter_context(_folder_lock(plan))
        # again, now that the folder is ours; damaged cells are recomputed
        pending, skipped = _split_cells(plan, checked, damaged)
        _remove_leftovers(plan, pending)
        _write_sweep_json(plan, workers, scheduler)
        cols = columns(plan)
        cache: dict[str, dict[str, Any]] = {}
        write_csv_atomic(plan.folder / "results.csv", collect_rows(plan, cache), cols)
        tasks = [_task(plan, c, registry) for c in pending]
        if use_dask and tasks and client is None:  # cells went missing since the first look
            client = stack.enter_context(_dask_client(workers, scheduler))
        computed: list[str] = []
        bar = _progress_bar(plan, len(skipped), progress)
        try:
            engine = _run_dask(client, tasks) if client is not None else _run_in_process(tasks)
            for task, _record in engine:
                computed.append(task.cell_id)
                write_csv_atomic(plan.folder / "results.csv", collect_rows(plan, cache), cols)
                bar.update(1)
        finally:
            bar.close()
            write_csv_atomic(plan.folder / "results.csv", collect_rows(plan, cache), cols)
        rows = collect_rows(plan, cache)
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


@contextlib.contextmanager
def _folder_lock(plan: SweepPlan) -> Iterator[None]:
    """Hold an exclusive lock on the sweep folder (released by the OS if the process dies)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with open(plan.folder / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"another sweep is writing to {plan.folder}", file=plan.file) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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


def _task(plan: SweepPlan, c: CheckedCell, registry: Registry | None) -> CellTask:
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


# --------------------------------------------------------------------------- engines
def _run_in_process(tasks: Sequence[CellTask]) -> Iterator[tuple[CellTask, dict]]:
    for task in tasks:
        try:
            record = execute_cell(task)
        except Exception as exc:
            raise _in_cell(exc, task) from None
        yield task, record


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise UserError(f"--workers and --scheduler need Dask distributed; {_DASK_HINT}") from None
    return distributed


@contextlib.contextmanager
def _dask_client(workers: int | None, scheduler: str | None) -> Iterator[Any]:
    """A Dask client: on the cluster at ``scheduler``, or on a new local cluster."""
    import logging

    distributed = _import_distributed()
    if scheduler is not None:
        try:
            client = distributed.Client(scheduler, timeout="10s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise UserError(
                f"cannot connect to the Dask scheduler at {scheduler}: {exc}", key="--scheduler"
            ) from None
        with client:
            yield client
        return
    with (
        distributed.LocalCluster(
            n_workers=int(workers or 1),
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",  # any free port: never collides with another cluster
            silence_logs=logging.ERROR,
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def _run_dask(client: Any, tasks: Sequence[CellTask]) -> Iterator[tuple[CellTask, dict]]:
    """One task per cell; results in the order they finish."""
    import distributed

    futures = {client.submit(execute_cell, t, pure=False): t for t in tasks}
    try:
        for future in distributed.as_completed(futures):
            task = futures[future]
            try:
                record = future.result()
            except Exception as exc:
                raise _in_cell(exc, task) from None
            yield task, record
    finally:
        client.cancel(list(futures))


def _in_cell(exc: Exception, task: CellTask) -> Exception:
    """The error with the cell it came from (a UserError stays one line)."""
    if isinstance(exc, UserError):
        return type(exc)(f"cell {task.cell_id}: {exc.message}", file=exc.file, key=exc.key)
    note = getattr(exc, "add_note", None)
    if note is not None:
        note(f"in sweep cell {task.cell_id}")
    return exc
