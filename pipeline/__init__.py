"""sensorlab's pipeline: config, stage registry, runner, run store, CNN engine and CLI."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "run"]


def run(config: Any, **overrides: Any) -> Any:
    """Run a config (a path, a dict or a Config) and return its :class:`RunResult`.

    ``overrides`` are dotted keys with ``__`` for dots, e.g. ``run__batch_size=7``,
    or pass ``set={"sensor.adc.bits": 4}``.
    """
    from pipeline.runner import run as _run

    return _run(config, **overrides)
