"""Detect what a folder holds and write its ``report.html``."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.errors import UserError

__all__ = ["REPORT_HTML", "folder_kind", "write_report"]

REPORT_HTML = "report.html"

# What marks each kind of folder, checked in this order.
_MARKERS = (
    ("sweep", "sweep.json"),
    ("characterize", "datasheet.json"),
    ("calibrate", "fit.json"),
    ("train", "history.csv"),
    ("run", "manifest.json"),
)


def folder_kind(folder: Path) -> str:
    """``"sweep"``, ``"characterize"``, ``"calibrate"``, ``"train"`` or ``"run"``: what
    ``folder`` holds.

    Raises
    ------
    UserError : not a folder, or none of the files that mark a sensorlab result.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError("no such folder", file=str(folder))
    for kind, marker in _MARKERS:
        if (folder / marker).is_file():
            return kind
    wanted = ", ".join(marker for _, marker in _MARKERS)
    raise UserError(f"not a sensorlab result folder (none of {wanted})", file=str(folder))


def _builders() -> dict[str, Callable[[Path], dict[str, Any]]]:
    from pipeline.report import calibrate, characterize, run, sweep, train

    return {
        "run": run.context,
        "sweep": sweep.context,
        "train": train.context,
        "characterize": characterize.context,
        "calibrate": calibrate.context,
    }


def write_report(folder: str | Path) -> Path:
    """Write ``<folder>/report.html`` for a run, sweep, training, characterisation or
    calibration folder.

    Parameters
    ----------
    folder : the result folder.

    Returns
    -------
    Path : the report file (written through a temporary file and a rename).

    Raises
    ------
    UserError : the folder is not a sensorlab result folder.
    """
    from pipeline.report.render import render

    folder = Path(folder)
    kind = folder_kind(folder)
    html = render(kind, _builders()[kind](folder))
    path = folder / REPORT_HTML
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(html, encoding="utf-8")
    os.replace(tmp, path)
    return path
