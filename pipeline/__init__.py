"""sensorlab's pipeline: config, stage registry, runner, run store, CNN engine and CLI.

``pipeline.run(config, ...)`` runs a config and returns its records; see
:func:`pipeline.runner.run` (imported on first use, so that plugins importing
:mod:`pipeline.stage` stay light).
"""

from __future__ import annotations

from typing import Any

from pipeline._version import __version__

__all__ = ["__version__", "run"]


def __getattr__(name: str) -> Any:
    if name == "run":
        from pipeline.runner import run

        return run
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
