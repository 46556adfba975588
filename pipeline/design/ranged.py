"""Range-matched baselines: each fixed curve at the full scale that suits the light.

A fixed curve at the ADC's default gain spends its codes up to the full well; at low
light the signal uses a few of them. The analog gain before the ADC (its full scale) is
free in a real sensor, so the fair fixed baseline is the curve at its best full scale.
For each curve of ``range_match.curves`` :func:`run_range` tries the base's gain and
``points`` full scales log-spaced from the ``quantile`` of the validation signal up to
the full well (:func:`full_scale_grid`), keeps the one with the best validation fitness
(:class:`pipeline.design.objective.Score`; ties to the first tried, the base's gain),
and scores it once on the test images, which the choice never saw.

The full scale ``FS`` (electrons) enters the ADC exactly as the designed table's does:
``system_gain_dn_per_e = 2**N / (FS · analog_gain)``
(:meth:`pipeline.design.objective.Backend.gain_update`), so the curve's input
``s / FS`` reaches its top code at ``FS`` and clips above it. The fitted tables
(equal-probability, Lloyd–Max) need no range matching: they are fitted to the validation
signal itself (:mod:`pipeline.design.initial`).

A range match runs on the cached front-end images of its search's cell
(:mod:`pipeline.design.front`), is keyed by its cell's inputs and the range options
(:attr:`pipeline.design.cell.SearchTask.range_key`) and stored as
``ranges/<cell id>-<key>/result.json`` (:func:`pipeline.design.store.range_dir`), so it
is reused and resumed like a search. It runs before the searches, which may start from
its curves (``initial: [..., log_ranged]``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from pipeline.design.cell import SearchTask, score_record, setup_cell
from pipeline.design.spec import DesignSpec, RangeOptions
from pipeline.design.store import range_dir, read_result, write_result

__all__ = ["full_scale_grid", "run_range"]

_MIN_FULL_SCALE_E = 1.0  # the grid never starts below one electron


def full_scale_grid(
    signal_e: ArrayLike, full_well_e: float, *, points: int, quantile: float
) -> np.ndarray:
    """``points`` full scales (electrons), log-spaced from the signal's ``quantile`` (at
    least one electron) up to ``full_well_e``; one point gives the full well."""
    top = float(full_well_e)
    low = float(np.quantile(np.asarray(signal_e, dtype=np.float64), quantile))
    low = min(max(low, _MIN_FULL_SCALE_E), top)
    if points == 1:
        return np.array([top])
    return np.geomspace(low, top, points)


def run_range(task: SearchTask) -> dict[str, Any]:
    """Range-match the fixed curves of one cell (or reuse a finished match); returns its
    record, also written to ``result.json``.

    Record: ``curves`` maps each curve to ``full_scale_e`` (the chosen full scale, None
    for the base's gain), ``default_full_scale_e`` (the base's), the ``grid_e`` tried and
    each one's ``val_fitness`` (the base's gain first), and ``val`` / ``test`` scores
    with Wilson 95 % intervals.
    """
    t0 = time.perf_counter()
    key = task.range_key
    where = range_dir(Path(task.folder), task.cell.id, key)
    done = read_result(where)
    if done is not None and done.get("key") == key:
        return done
    spec = DesignSpec.model_validate(task.spec)
    options: RangeOptions | None = spec.range_match
    if options is None:
        raise ValueError("the design has no range_match options")
    backend, scorer, splits = setup_cell(task, spec)
    val, test = splits[spec.validation.split], splits[spec.test.split]
    grid = full_scale_grid(
        val.signal, backend.full_well_e, points=options.points, quantile=options.quantile
    )
    tried: list[float | None] = [None, *grid.tolist()]
    curves = {}
    for curve in options.curves:
        chains = [backend.fixed(curve, fs) for fs in tried]
        scores = [scorer(chain, val) for chain in chains]
        fitness = [sc.fitness for sc in scores]
        best = int(np.argmax(fitness))  # the first of equals: the base's gain wins ties
        default = chains[0].infos[1].attrs["adc_transfer"]["full_scale"]
        curves[curve] = {
            "full_scale_e": tried[best],
            "default_full_scale_e": float(default),
            "grid_e": grid.tolist(),
            "val_fitness": fitness,
            "val": score_record(scores[best]),
            "test": score_record(scorer(chains[best], test)),
        }
    record = {
        "key": key,
        "inputs_key": task.inputs_key,
        "cell": task.cell.id,
        "light": task.cell.light,
        "bits": task.cell.bits,
        "noise": task.cell.noise,
        "full_well_e": backend.full_well_e,
        "curves": curves,
        "images": {"val": len(val), "test": len(test)},
        "wall_seconds": round(time.perf_counter() - t0, 3),
    }
    write_result(where, record)
    return record
