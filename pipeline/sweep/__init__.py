"""Sweeps: one config run over a grid (or list) of values of its keys, resumable, on any engine.

``run_sweep("configs/bitdepth.yaml", workers=2)`` or ``sensorlab sweep FILE``
(:mod:`pipeline.cli.sweep`). Modules: :mod:`~pipeline.sweep.spec` (the sweep file),
:mod:`~pipeline.sweep.check` (every cell validated up front), :mod:`~pipeline.sweep.cell`
(one cell, on any engine), :mod:`~pipeline.sweep.snr`, :mod:`~pipeline.sweep.results`
(results.csv), :mod:`~pipeline.sweep.plots`, :mod:`~pipeline.sweep.engine` (in-process and
Dask).
"""

from __future__ import annotations

from typing import Any

__all__ = ["SweepResult", "run_sweep"]


def __getattr__(name: str) -> Any:
    # Lazy: importing a submodule (a Dask worker unpickling a task) need not load the engine.
    if name in ("run_sweep", "SweepResult"):
        from pipeline.sweep import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'pipeline.sweep' has no attribute {name!r}")
