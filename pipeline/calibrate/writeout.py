"""Write a calibration folder atomically: sensor.yaml, fit.json, maps, report.html.

Everything goes into a hidden temporary folder beside ``DIR`` and is renamed into place
at the end; an interrupted or failed calibration leaves nothing that looks complete.
An existing calibration folder (one holding ``fit.json``) is replaced; any other
existing folder is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pipeline.errors import UserError
from pipeline.files import written_folder

__all__ = ["FIT_JSON", "SENSOR_YAML", "write_folder"]

FIT_JSON = "fit.json"
SENSOR_YAML = "sensor.yaml"


def _sensor_yaml(rows: list[dict[str, Any]], notes: list[str], source: str) -> str:
    head = [
        f"# sensorlab calibrate: the digital twin of the sensor that took {source}",
        "# Paste this `sensor:` list into a run config (dataset, model, run) and run it.",
        *(f"# note: {n}" for n in notes),
    ]
    body = yaml.safe_dump({"sensor": rows}, sort_keys=False, default_flow_style=None)
    return "\n".join(head) + "\n" + body


def write_folder(
    folder: str | Path,
    fit: dict[str, Any],
    rows: list[dict[str, Any]],
    notes: list[str],
    *,
    source: str,
    maps: dict[str, np.ndarray] | None = None,
    report: bool = True,
) -> Path:
    """Write ``folder`` (see the module docstring), with its report unless ``report`` is
    False; returns the folder."""
    from pipeline.report import write_report
    from pipeline.store import write_json_atomic

    folder = Path(folder)
    if folder.exists() and not (folder / FIT_JSON).is_file():
        raise UserError("exists and is not a calibration folder", file=folder, key="--out")
    with written_folder(folder) as tmp:
        (tmp / SENSOR_YAML).write_text(_sensor_yaml(rows, notes, source), encoding="utf-8")
        write_json_atomic(tmp / FIT_JSON, fit)
        for name, array in (maps or {}).items():
            np.save(tmp / f"{name}.npy", array)
        if report:
            write_report(tmp)
    return folder
