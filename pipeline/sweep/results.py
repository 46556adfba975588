"""The sweep's table: one row per finished cell, assembled from the cells' records.

Columns of ``results.csv``:

- ``cell``: the cell id (its run folder is ``cells/<cell>``);
- one column per axis (the dotted config key), the cell's value;
- ``n``: images evaluated; ``correct``; ``accuracy`` with its Wilson 95 % score interval
  ``accuracy_lo``, ``accuracy_hi`` (from the run's metrics; empty without a model or labels);
- ``snr_db``: see :mod:`pipeline.sweep.snr` (empty when no SNR is measured, or when the
  noise-free, 24-bit reference is all zero: a black scene has no signal to compare with);
- ``psnr_db``, ``ssim``: the raw image's PSNR and SSIM against the ideal sensor (the
  cell run's metrics, see :mod:`pipeline.quality`; empty without a raw stage);
- ``wall_seconds``: the cell's wall time (training, SNR and run) where it was computed;
- ``trained_model``: the model the cell was evaluated with (``train`` modes only).

Numbers are written with ``repr`` (shortest text that reads back to the same float).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.sweep.cell import is_complete, read_record
from pipeline.sweep.snr import SnrSums
from pipeline.sweep.spec import SweepPlan

__all__ = ["METRIC_COLUMNS", "collect_rows", "write_csv_atomic"]

METRIC_COLUMNS = (
    "n",
    "correct",
    "accuracy",
    "accuracy_lo",
    "accuracy_hi",
    "snr_db",
    "psnr_db",
    "ssim",
)


def collect_rows(
    plan: SweepPlan, cache: dict[str, dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """Rows (plain Python values) for every complete cell, in cell order.

    ``cache`` keeps rows already read (a finished cell's record does not change while
    the sweep holds its folder), so rewriting the table after every cell stays cheap.
    """
    rows = []
    for cell in plan.cells:
        if cache is not None and cell.id in cache:
            rows.append(cache[cell.id])
            continue
        folder = plan.cells_dir / cell.id
        if not is_complete(folder):
            continue
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        record = read_record(folder)
        metrics = manifest.get("metrics") or {}
        lo, hi = metrics.get("accuracy_ci95") or (None, None)
        snr = record.get("snr") or {}
        row: dict[str, Any] = {"cell": cell.id, **cell.overrides}
        row.update(
            n=metrics.get("n", manifest.get("dataset", {}).get("images")),
            correct=metrics.get("correct"),
            accuracy=metrics.get("accuracy"),
            accuracy_lo=lo,
            accuracy_hi=hi,
            snr_db=_snr_db(snr),
            psnr_db=metrics.get("psnr_db"),
            ssim=metrics.get("ssim"),
            wall_seconds=record.get("wall_seconds"),
        )
        if plan.spec.train != "none":
            row["trained_model"] = (record.get("trained_model") or {}).get("path")
        if cache is not None:
            cache[cell.id] = row
        rows.append(row)
    return rows


def columns(plan: SweepPlan) -> list[str]:
    cols = ["cell", *plan.axes, *METRIC_COLUMNS, "wall_seconds"]
    return [*cols, "trained_model"] if plan.spec.train != "none" else cols


def write_csv_atomic(path: Path, rows: Sequence[dict[str, Any]], cols: Sequence[str]) -> None:
    """Write ``rows`` as CSV through a temporary file and a rename."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(cols)
    for row in rows:
        writer.writerow([_text(row.get(c)) for c in cols])
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(buf.getvalue(), encoding="utf-8")
    os.replace(tmp, path)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, float):
        return repr(value)
    return json.dumps(value)


def _snr_db(snr: dict[str, Any]) -> float | None:
    """The SNR in dB from the recorded sums (exact; +inf survives the JSON)."""
    if not snr:
        return None
    return SnrSums(float(snr["signal_sq"]), float(snr["noise_sq"])).db
