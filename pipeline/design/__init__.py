"""Task-driven ADC design: search N-bit transfer tables for a model's accuracy.

``design_adc("configs/design-adc.yaml")`` or ``sensorlab design-adc FILE``
(:mod:`pipeline.cli.design_adc`). Modules, one job each: :mod:`~pipeline.design.spec`
(the design file), :mod:`~pipeline.design.parameterise` (vector ↔ valid table),
:mod:`~pipeline.design.initial` (starting tables), :mod:`~pipeline.design.front` (the
ADC-independent images, computed once), :mod:`~pipeline.design.objective` (a candidate's
accuracy), :mod:`~pipeline.design.search` (CMA-ES), :mod:`~pipeline.design.energy`,
:mod:`~pipeline.design.pareto`, :mod:`~pipeline.design.store` (the design folder),
:mod:`~pipeline.design.cell` (one search; the searches run on the sweep's task engine,
:mod:`pipeline.sweep.dask_engine`) and :mod:`~pipeline.design.design` (all of it).
"""

from __future__ import annotations

from typing import Any

__all__ = ["DesignResult", "design_adc"]


def __getattr__(name: str) -> Any:
    # Lazy: a Dask worker unpickling a task imports only the modules it needs.
    if name in __all__:
        from pipeline.design import design

        return getattr(design, name)
    raise AttributeError(f"module 'pipeline.design' has no attribute {name!r}")
