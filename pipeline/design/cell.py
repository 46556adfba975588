"""One search: the best N-bit table for one light level and noise setting.

:func:`run_cell` runs where it is scheduled (in-process or on a Dask worker) from a
:class:`SearchTask` of plain data. It

1. builds the chain once and reads the cached front-end images (validation, test);
2. scores the fixed curves (linear, log, sqrt with the base's gain) and the fitted tables
   (equal-probability, Lloyd–Max) on the validation images;
3. starts CMA-ES from the best of the initial tables, checkpointing each generation;
4. scores the winner — the best table the search evaluated, initial tables included, so
   never worse than a start on validation — and every baseline once on the test images,
   which the search never saw, with Wilson 95 % intervals;
5. writes ``result.json`` (:mod:`pipeline.design.store`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import load_config
from pipeline.design.front import FrontImages, adc_position, load_front
from pipeline.design.initial import FITTED, initial_tables
from pipeline.design.objective import Backend, Score, fine_tuned_model, score
from pipeline.design.parameterise import thresholds_from_vector, vector_from_thresholds
from pipeline.design.search import new_state, run_search
from pipeline.design.spec import RANGED_STARTS, DesignCell, DesignSpec, canonical_hash
from pipeline.design.store import (
    front_path,
    load_checkpoint,
    range_dir,
    read_result,
    save_checkpoint,
    search_dir,
    write_result,
)
from pipeline.errors import UserError
from pipeline.metrics import wilson_interval
from pipeline.registry import default_registry
from pipeline.runner import Chain, build_chain, load_config_model, open_config_dataset

__all__ = [
    "FIXED_CURVES",
    "RANGE_FORMAT",
    "Scorer",
    "SearchTask",
    "run_cell",
    "score_record",
    "setup_cell",
]

FIXED_CURVES = ("linear", "log", "sqrt")
RANGE_FORMAT = 1  # part of every range-match key: bump when its result would change


@dataclass(frozen=True)
class SearchTask:
    """Everything a worker needs for one search (plain data: pickled to workers).

    Attributes
    ----------
    cell : light, bits, noise.
    key : the search's hash (its folder and reuse key).
    inputs_key : the hash of what any scoring of this cell reads — run config, model,
        validation, test and fine-tuning images — without the search's options.
    front_key : the hash of its (light, noise) front-end images.
    raw : the cell's run config as a plain dict.
    base_file, base_dir : the base config (named in errors) and its folder.
    spec : the design spec as plain data.
    folder : the design folder.
    """

    cell: DesignCell
    key: str
    inputs_key: str
    front_key: str
    raw: dict
    base_file: str
    base_dir: str
    spec: dict
    folder: str

    @property
    def range_key(self) -> str:
        """The hash of this cell's range match (:mod:`pipeline.design.ranged`): its
        inputs and the range options; the search's options do not enter."""
        return canonical_hash(
            {"format": RANGE_FORMAT, "inputs": self.inputs_key, "range": self.spec["range_match"]}
        )


class Scorer:
    """Scores back chains on one split, fine-tuning a fresh model copy first if asked."""

    def __init__(self, spec: DesignSpec, loaded: Any, train: FrontImages | None) -> None:
        self.spec, self.loaded, self.train = spec, loaded, train

    def __call__(self, back: Chain, images: FrontImages) -> Score:
        model = None
        ft = self.spec.fine_tune
        if ft is not None and self.train is not None:
            model = fine_tuned_model(
                back,
                self.train,
                self.loaded.config.train,
                load_config_model(self.loaded),
                epochs=ft.epochs,
                lr=ft.lr,
            )
        return score(back, images.signal, images.labels, images.keys, model)


def score_record(s: Score) -> dict[str, Any]:
    """A score as stored: right answers, n, accuracy and its Wilson 95 % interval."""
    lo, hi = wilson_interval(s.correct, s.n)
    return {"correct": s.correct, "n": s.n, "accuracy": s.accuracy, "lo": lo, "hi": hi}


def run_cell(task: SearchTask) -> dict[str, Any]:
    """Run (or finish, or reuse) one search; returns its record (also in result.json).

    Times in the record add up every attempt (an interrupted search, resumed, counts
    both parts): ``search_seconds`` from scoring the starts to the last generation,
    ``wall_seconds`` all of it (building the chain, scoring the winner and baselines).
    """
    t0 = time.perf_counter()
    where = search_dir(Path(task.folder), task.cell.id, task.key)
    done = read_result(where)
    if done is not None and done.get("key") == task.key:
        return done
    spec = DesignSpec.model_validate(task.spec)
    backend, scorer, splits = setup_cell(task, spec)
    val, test = splits[spec.validation.split], splits[spec.test.split]
    step = spec.search.min_step
    fixed = {c: backend.fixed(c) for c in FIXED_CURVES}
    transfers = {c: chain.infos[1].attrs["adc_transfer"] for c, chain in fixed.items()}
    transfers |= _ranged_transfers(task, spec, backend)
    names = sorted(set(spec.initial) | set(FITTED))
    size = {"bits": backend.bits, "n_thresholds": backend.n_thresholds}
    full_well = backend.full_well_e
    tables, skipped = initial_tables(
        names, transfers, val.signal / full_well, full_well_e=full_well, **size
    )
    scale_e = _table_full_scale(task, spec, backend)
    starts_at = tables  # start tables in fractions of the searched table's full scale
    if scale_e != full_well:
        starts_at, skipped = initial_tables(
            names, transfers, val.signal / scale_e, full_well_e=scale_e, **size
        )

    def fitness(z: np.ndarray) -> float:
        return scorer(backend.table(thresholds_from_vector(z, min_step=step), scale_e), val).fitness

    saved = load_checkpoint(where)
    t_search = time.perf_counter()
    if saved is None:
        starts = {
            n: vector_from_thresholds(starts_at[n], min_step=step)
            for n in spec.initial
            if n in starts_at
        }
        if not starts:
            raise _no_start(task, skipped)
        initial = {n: fitness(z) for n, z in starts.items()}
        first = max(initial, key=lambda n: (initial[n], -spec.initial.index(n)))
        opts = spec.search
        state = new_state(
            starts[first], initial[first], sigma0=opts.sigma0, popsize=opts.popsize, seed=opts.seed
        )
        extra = {"initial_fitness": initial, "start": first}
        extra |= {"wall_seconds": 0.0, "search_seconds": 0.0}
    else:
        state, extra = saved
    wall_before, search_before = extra["wall_seconds"], extra["search_seconds"]

    def spent() -> dict[str, float]:
        now = time.perf_counter()
        return {
            "wall_seconds": wall_before + now - t0,
            "search_seconds": search_before + now - t_search,
        }

    def checkpoint(s: Any) -> None:
        save_checkpoint(where, s, {**extra, **spent()})

    if saved is None:
        checkpoint(state)
    state = run_search(state, fitness, spec.search.generations, on_generation=checkpoint)
    search_seconds = spent()["search_seconds"]
    assert state.best_x is not None
    winner = thresholds_from_vector(state.best_x, min_step=step)
    candidates: dict[str, Chain] = {"designed": backend.table(winner, scale_e), **fixed}
    candidates |= {n: backend.table(tables[n]) for n in FITTED if n in tables}
    record = {
        "key": task.key,
        "cell": task.cell.id,
        "light": task.cell.light,
        "bits": task.cell.bits,
        "noise": task.cell.noise,
        "black_level_dn": backend.black_level_dn,
        "full_well_e": backend.full_well_e,
        "table_full_scale_e": scale_e,
        "n_thresholds": backend.n_thresholds,
        "thresholds": winner.tolist(),
        "start": extra["start"],
        "initial_fitness": extra["initial_fitness"],
        "skipped_initial": skipped,
        "curves": {
            name: {"val": score_record(scorer(back, val)), "test": score_record(scorer(back, test))}
            for name, back in candidates.items()
        },
        "history": state.history,
        "evaluations": len(extra["initial_fitness"]) + spec.search.popsize * state.generation,
        "images": {"val": len(val), "test": len(test)},
        "search_seconds": round(search_seconds, 3),
        "wall_seconds": round(spent()["wall_seconds"], 3),
    }
    write_result(where, record)
    return record


def setup_cell(
    task: SearchTask, spec: DesignSpec
) -> tuple[Backend, Scorer, dict[str, FrontImages]]:
    """The chain's back end, the scorer and the cached images of every split read."""
    registry = default_registry()
    loaded = load_config(task.raw, registry=registry, base_dir=task.base_dir)
    loaded.file = task.base_file
    info = open_config_dataset(loaded, split=spec.validation.split).info()
    chain = build_chain(loaded, info, registry=registry)
    backend = Backend(chain, adc_position(chain, loaded.file), loaded.file)
    names = [spec.validation.split, spec.test.split]
    names += [spec.fine_tune.split] if spec.fine_tune is not None else []
    splits = {n: load_front(front_path(Path(task.folder), task.front_key, n)) for n in names}
    train = splits[spec.fine_tune.split] if spec.fine_tune is not None else None
    return backend, Scorer(spec, loaded, train), splits


def _range_record(task: SearchTask) -> dict[str, Any]:
    """The cell's finished range match (:mod:`pipeline.design.ranged`)."""
    record = read_result(range_dir(Path(task.folder), task.cell.id, task.range_key))
    if record is None or record.get("key") != task.range_key:
        raise UserError(f"search {task.cell.id}: its range match has not run")
    return record


def _table_full_scale(task: SearchTask, spec: DesignSpec, backend: Backend) -> float:
    """The searched table's full scale, electrons: the full well, or (``table_full_scale:
    range_matched``) that of the range-matched curve with the best validation fitness."""
    if spec.table_full_scale == "full_well":
        return backend.full_well_e
    curves = _range_record(task)["curves"].values()
    best = max(curves, key=lambda c: max(c["val_fitness"]))
    chosen = best["full_scale_e"]
    return float(best["default_full_scale_e"] if chosen is None else chosen)


def _ranged_transfers(task: SearchTask, spec: DesignSpec, backend: Backend) -> dict[str, Any]:
    """``<curve>_ranged`` → the adc_transfer of that curve at its range-matched full scale,
    for the ranged starts the spec names (read from the cell's finished range match)."""
    names = [n for n in spec.initial if n in RANGED_STARTS]
    if not names:
        return {}
    record = _range_record(task)
    out = {}
    for name in names:
        curve = name.removesuffix("_ranged")
        chain = backend.fixed(curve, record["curves"][curve]["full_scale_e"])
        out[name] = chain.infos[1].attrs["adc_transfer"]
    return out


def _no_start(task: SearchTask, skipped: dict[str, str]) -> UserError:
    why = "; ".join(f"{k}: {v}" for k, v in skipped.items())
    return UserError(f"search {task.cell.id}: no initial table could be made ({why})")
