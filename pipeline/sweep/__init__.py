"""Sweeps: one config run over a grid (or list) of values of its keys, resumable, on any engine.

``run_sweep("configs/sweeps/bitdepth.yaml", workers=2)`` or ``sensorlab sweep FILE``.
Modules: :mod:`~pipeline.sweep.spec` (the sweep file), :mod:`~pipeline.sweep.check`
(every cell validated up front), :mod:`~pipeline.sweep.cell` (one cell, on any engine),
:mod:`~pipeline.sweep.snr`, :mod:`~pipeline.sweep.results` (results.csv),
:mod:`~pipeline.sweep.plots`, :mod:`~pipeline.sweep.engine` (in-process and Dask).
"""

from __future__ import annotations

from typing import Any

from pipeline.sweep.command import register

__all__ = ["SweepResult", "register", "run_sweep"]


def __getattr__(name: str) -> Any:
    # Lazy: the command line imports this package for ``register`` on every call.
    if name in ("run_sweep", "SweepResult"):
        from pipeline.sweep import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'pipeline.sweep' has no attribute {name!r}")
