"""``design_adc``: run (or resume) every search of a design file and write its tables.

Every cell's chain is built and checked before anything is written, so a bad design file
fails with one line and leaves no folder. Then, in ``<out>/<name>/``
(:mod:`pipeline.design.store`): the front-end images of each (light, noise) are computed
once, each cell's range-matched fixed curves without a finished record run
(:func:`pipeline.design.ranged.run_range`, when the file has ``range_match``), then each
search without a finished record (:func:`pipeline.design.cell.run_cell`, in-process or on
Dask; it may start from the range-matched curves), and
``results.csv``, ``pareto.csv`` and ``pareto.png`` are written from all finished records.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import limits
from pipeline.config import LoadedConfig, load_config
from pipeline.design.cell import SearchTask, run_cell
from pipeline.design.energy import pixel_energy_pj
from pipeline.design.front import adc_position, front_images, save_front
from pipeline.design.objective import Backend
from pipeline.design.parameterise import thresholds_from_vector
from pipeline.design.pareto import pareto_mask, plot_pareto, write_csv
from pipeline.design.ranged import run_range
from pipeline.design.spec import DesignCell, DesignPlan, canonical_hash, load_design
from pipeline.design.store import front_path, range_dir, read_result, search_dir
from pipeline.errors import UserError
from pipeline.files import owned_folder
from pipeline.progress import progress as progress_reporter
from pipeline.registry import Registry, default_registry
from pipeline.runner import build_chain, open_config_dataset
from pipeline.store import write_json_atomic
from pipeline.sweep.dask_engine import open_engine

__all__ = ["DesignResult", "design_adc", "table_rows"]

DESIGN_FORMAT = 1  # part of every search key: bump when a search's result would change


@dataclass
class DesignResult:
    """What :func:`design_adc` gives back.

    Attributes
    ----------
    path : the design folder.
    rows : one dict per (search, curve): the rows of results.csv.
    records : every finished search's record (result.json), in the design's order.
    ranges : every finished range match's record (:mod:`pipeline.design.ranged`).
    computed, reused : the searches and range matches (``ranges/<cell id>``) run by this
        call, and those found finished.
    figures : the figures written.
    wall_seconds : this call's wall time.
    """

    path: Path
    rows: list[dict[str, Any]]
    records: list[dict[str, Any]]
    ranges: list[dict[str, Any]]
    computed: list[str]
    reused: list[str]
    figures: list[Path]
    wall_seconds: float


def design_adc(
    source: str | Path,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    out: str | Path | None = None,
    progress: bool | None = None,
) -> DesignResult:
    """Run or resume the design file ``source``.

    Parameters
    ----------
    source : the design YAML (:mod:`pipeline.design.spec`).
    workers : run searches on a local Dask cluster of this many worker processes.
    scheduler : run searches on the Dask cluster at this address.
    out : folder that receives the design folder (default: the file's ``out``).
    progress : False for no progress lines.

    Raises
    ------
    UserError : a bad design file or base config (before anything is written), a design
        folder another process is writing, a missing Dask.
    """
    t0 = time.perf_counter()
    if workers is not None and scheduler is not None:
        raise UserError("give --workers or --scheduler, not both")
    if workers is not None:
        limits.check("workers", int(workers), what="--workers", key="workers")
    plan = load_design(source, out=out)
    registry = default_registry()
    tasks = _tasks(plan, registry)
    with owned_folder(plan.folder, what="design", file=plan.file):
        write_json_atomic(plan.folder / "design.json", _description(plan, tasks))
        _ensure_fronts(plan, tasks, registry)
        pending = [t for t in tasks if _finished(plan, t) is None]
        reused = [t.cell.id for t in tasks if t not in pending]
        matched = tasks if plan.spec.range_match is not None else []
        pending_ranges = [t for t in matched if _range_finished(plan, t) is None]
        reused += [f"ranges/{t.cell.id}" for t in matched if t not in pending_ranges]
        computed: list[str] = []
        bar = progress_reporter(
            len(tasks) + len(matched),
            desc=f"design {plan.folder.name}",
            unit="search",
            show=progress is not False,
            initial=len(reused),
            every_pct=0,
        )
        # the sweep's task engine: in-process, a local Dask cluster or a scheduler
        engine_at = (workers, scheduler) if (pending or pending_ranges) else (None, None)
        with open_engine(*engine_at) as engine:
            try:
                # range matches first: a search may start from their curves
                for task, _record in engine.map(run_range, pending_ranges):
                    computed.append(f"ranges/{task.cell.id}")
                    bar.update(1)
                for task, _record in engine.map(run_cell, pending):
                    computed.append(task.cell.id)
                    bar.update(1)
            finally:
                bar.close()
        records = [r for t in tasks if (r := _finished(plan, t)) is not None]
        ranges = [r for t in matched if (r := _range_finished(plan, t)) is not None]
        rows = table_rows(plan, records, ranges)
        write_csv(plan.folder / "results.csv", rows)
        write_csv(plan.folder / "pareto.csv", [r for r in rows if r["on_front"]])
        figures = (
            [plot_pareto(plan.folder / "pareto.png", rows, title=plan.folder.name)] if rows else []
        )
    return DesignResult(
        path=plan.folder,
        rows=rows,
        records=records,
        ranges=ranges,
        computed=computed,
        reused=reused,
        figures=figures,
        wall_seconds=time.perf_counter() - t0,
    )


def table_rows(
    plan: DesignPlan,
    records: list[dict[str, Any]],
    ranges: Sequence[dict[str, Any]] = (),
) -> list[dict[str, Any]]:
    """One row per (search, curve) and per (range match, curve) — the latter named
    ``<curve>_ranged``, with its ``full_scale_e`` (empty: the base's gain) — with test
    accuracy, energy and ``on_front`` (per light level and noise setting)."""
    rows = []
    named = [(rec, "{}") for rec in records] + [(rec, "{}_ranged") for rec in ranges]
    for rec, pattern in named:
        adc_pj, readout_pj = pixel_energy_pj(int(rec["bits"]), plan.spec.energy)
        for curve, res in rec["curves"].items():
            test = res["test"]
            rows.append(
                {
                    "light": rec["light"],
                    "noise": rec["noise"],
                    "bits": rec["bits"],
                    "curve": pattern.format(curve),
                    "full_scale_e": res.get("full_scale_e"),
                    "val_accuracy": res["val"]["accuracy"],
                    "test_correct": test["correct"],
                    "test_n": test["n"],
                    "test_accuracy": test["accuracy"],
                    "test_lo": test["lo"],
                    "test_hi": test["hi"],
                    "adc_pj": adc_pj,
                    "readout_pj": readout_pj,
                    "energy_pj": adc_pj + readout_pj,
                }
            )
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["light"], row["noise"]), []).append(row)
    for group in groups.values():
        mask = pareto_mask([r["energy_pj"] for r in group], [r["test_accuracy"] for r in group])
        for row, on in zip(group, mask, strict=True):
            row["on_front"] = bool(on)
    return rows


# --------------------------------------------------------------------------- planning
def _tasks(plan: DesignPlan, registry: Registry) -> list[SearchTask]:
    """Every search's task, each cell's chain built and checked (nothing written)."""
    spec = plan.spec
    options = spec.model_dump(
        mode="json", include={"validation", "test", "initial", "search", "fine_tune"}
    )
    if spec.table_full_scale != "full_well":  # only when set: earlier searches keep their keys
        options["table_full_scale"] = spec.table_full_scale
    tasks = []
    models: dict[str, str] = {}
    for cell in plan.cells:
        raw = plan.cell_raw(cell)
        loaded = _load(plan, raw, cell, registry)
        chain = build_chain(
            loaded, _dataset(loaded, spec.validation.split).info(), registry=registry
        )
        index = adc_position(chain, loaded.file)
        backend = Backend(chain, index, loaded.file)
        if backend.n_thresholds < 1:
            raise UserError(
                f"a {cell.bits}-bit ADC with black level {backend.black_level_dn} leaves no code "
                "above black to design",
                file=plan.file,
                key="bits",
            )
        backend.table(thresholds_from_vector(np.zeros(backend.n_thresholds + 1)))  # it builds
        for split in _splits(plan):
            _dataset(loaded, split)
        config = loaded.config.plain()
        config.pop("run", None)
        front = {k: config.get(k) for k in ("dataset", "seed", "sensor_seed")}
        front["sensor"] = config["sensor"][:index]
        front_key = canonical_hash({"front": front, "splits": _splits(plan)})
        ref = str(loaded.raw.get("model"))
        if ref not in models:
            models[ref] = _model_hash(loaded)
        model_key = models[ref]
        key = canonical_hash(
            {"format": DESIGN_FORMAT, "config": config, "model": model_key, "spec": options}
        )
        images = {k: options[k] for k in ("validation", "test", "fine_tune")}
        inputs_key = canonical_hash({"config": config, "model": model_key, "images": images})
        tasks.append(
            SearchTask(
                cell=cell,
                key=key,
                inputs_key=inputs_key,
                front_key=front_key,
                raw=raw,
                base_file=plan.base_file,
                base_dir=str(plan.base_dir),
                spec=spec.model_dump(mode="json"),
                folder=str(plan.folder.resolve()),
            )
        )
    return tasks


def _load(plan: DesignPlan, raw: dict, cell: DesignCell, registry: Registry) -> LoadedConfig:
    try:
        loaded = load_config(raw, registry=registry, base_dir=plan.base_dir)
    except UserError as exc:
        raise UserError(
            f"search {cell.id}: {exc.message}", file=plan.base_file, key=exc.key
        ) from None
    loaded.file = plan.base_file
    return loaded


def _dataset(loaded: LoadedConfig, split: str) -> Any:
    dataset = open_config_dataset(loaded, split=split)
    if len(dataset) == 0:
        raise UserError(f"split {split!r} has no images", file=loaded.file, key="dataset")
    return dataset


def _splits(plan: DesignPlan) -> dict[str, int | str]:
    """Which splits the searches read, and how many images of each."""
    spec = plan.spec
    splits = {spec.validation.split: spec.validation.images, spec.test.split: spec.test.images}
    if spec.fine_tune is not None:
        splits[spec.fine_tune.split] = spec.fine_tune.images
    return splits


def _model_hash(loaded: LoadedConfig) -> str:
    """SHA-256 over the model's files (graph and weights)."""
    ref = loaded.config.model
    if ref is None:
        raise UserError("designing an ADC needs a model", file=loaded.file, key="model")
    path = loaded.resolve(ref.path)
    weights = loaded.resolve(ref.weights) if ref.weights else path.with_suffix(".npz")
    digest = hashlib.sha256()
    for file in (path, weights):
        if file.is_file():
            digest.update(file.read_bytes())
    return digest.hexdigest()


def _description(plan: DesignPlan, tasks: list[SearchTask]) -> dict[str, Any]:
    ranged = tasks if plan.spec.range_match is not None else []
    return {
        "design_file": plan.file,
        "base": plan.base_file,
        "spec": plan.spec.model_dump(mode="json"),
        "spec_hash": canonical_hash([t.key for t in tasks] + [t.range_key for t in ranged]),
        "searches": [
            {
                "id": t.cell.id,
                "key": t.key,
                "folder": search_dir(plan.folder, t.cell.id, t.key).name,
            }
            for t in tasks
        ],
        "ranges": [
            {
                "id": t.cell.id,
                "key": t.range_key,
                "folder": range_dir(plan.folder, t.cell.id, t.range_key).name,
            }
            for t in ranged
        ],
        "updated_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


# --------------------------------------------------------------------------- running
def _finished(plan: DesignPlan, task: SearchTask) -> dict[str, Any] | None:
    record = read_result(search_dir(plan.folder, task.cell.id, task.key))
    return record if record is not None and record.get("key") == task.key else None


def _range_finished(plan: DesignPlan, task: SearchTask) -> dict[str, Any] | None:
    key = task.range_key
    record = read_result(range_dir(plan.folder, task.cell.id, key))
    return record if record is not None and record.get("key") == key else None


def _ensure_fronts(plan: DesignPlan, tasks: list[SearchTask], registry: Registry) -> None:
    """Compute and store each (light, noise)'s front-end images that are not stored yet."""
    (plan.folder / "fronts").mkdir(exist_ok=True)
    done: set[str] = set()
    for task in tasks:
        if task.front_key in done:
            continue
        done.add(task.front_key)
        missing = {
            split: n
            for split, n in _splits(plan).items()
            if not front_path(plan.folder, task.front_key, split).is_file()
        }
        if not missing:
            continue
        loaded = _load(plan, task.raw, task.cell, registry)
        dataset = _dataset(loaded, plan.spec.validation.split)
        chain = build_chain(loaded, dataset.info(), registry=registry, with_model=False)
        batch = loaded.config.run.batch_size
        for split, n in missing.items():
            images = front_images(loaded, chain, split, n, batch)
            save_front(front_path(plan.folder, task.front_key, split), images)
