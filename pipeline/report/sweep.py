"""What the page of a sweep folder shows: figures, the SNR table, the sortable cell table."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from pipeline.report.figures import file_uri

__all__ = ["context", "read_table", "snr_table"]


def context(folder: Path) -> dict[str, Any]:
    """Template values for ``sweep.html``."""
    sweep = json.loads((folder / "sweep.json").read_text(encoding="utf-8"))
    columns, rows = read_table(folder / "results.csv")
    axes = list(sweep.get("axes", []))
    spec = sweep.get("spec") or {}
    x_key = (spec.get("plot") or {}).get("x") or _default_x(axes)
    done = len(rows)
    return {
        "title": f"sweep {folder.name}",
        "summary": [
            ("sweep file", str(sweep.get("sweep_file"))),
            ("base config", str(sweep.get("base"))),
            ("overrides (set)", json.dumps(sweep.get("set"))),
            ("axes", ", ".join(f"{a} ({_count(sweep, a)} values)" for a in axes)),
            ("cells", f"{done} finished of {len(sweep.get('cells', []))}"),
            ("training", str(spec.get("train", "none"))),
            ("SNR reference", _reference_text(spec.get("snr"))),
            ("last engine", json.dumps(sweep.get("last_engine"))),
        ],
        "figures": [
            {"name": name, "uri": uri}
            for name in ("accuracy.png", "snr.png", "samples_grid.png")
            if (uri := file_uri(folder / name)) is not None
        ],
        "snr": snr_table(rows, axes, x_key),
        "columns": columns,
        "rows": rows,
    }


def read_table(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """``results.csv`` as (column names, rows of text); empty when missing."""
    if not path.is_file():
        return [], []
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def snr_table(rows: list[dict[str, str]], axes: list[str], x_key: str) -> dict[str, Any] | None:
    """SNR (dB) with the x axis across and the other axes' combinations down.

    Returns ``{"x_key", "xs", "rows": [(label, [text per x])]}`` or None without SNR.
    """
    if not rows or x_key not in axes or not any(r.get("snr_db") for r in rows):
        return None
    others = [a for a in axes if a != x_key]
    xs: list[str] = []
    table: dict[str, dict[str, str]] = {}
    for r in rows:
        if r[x_key] not in xs:
            xs.append(r[x_key])
        label = ", ".join(f"{_short(a)}={r[a]}" for a in others) or "all cells"
        table.setdefault(label, {})[r[x_key]] = format_db(r.get("snr_db"))
    if all(_is_number(x) for x in xs):
        xs.sort(key=float)
    return {
        "x_key": x_key,
        "xs": xs,
        "rows": [(label, [cells.get(x, "") for x in xs]) for label, cells in table.items()],
    }


def format_db(text: str | None) -> str:
    """A dB value from the table as text with two decimals ('' when not measured)."""
    if not text:
        return ""
    value = float(text)
    return f"{value:.2f}" if math.isfinite(value) else text


def _reference_text(snr: Any) -> str:
    """What the SNR was measured against, in words."""
    if snr is False:
        return "not measured (snr: false)"
    reference = snr.get("reference") if isinstance(snr, dict) else None
    if reference is None:
        return "the default ideal sensor: no shot, read or fixed-pattern noise, 24-bit linear ADC"
    return json.dumps(reference)


def _default_x(axes: list[str]) -> str:
    for key in axes:
        if key.rstrip("]").split(".")[-1].endswith("bits"):
            return key
    return axes[0] if axes else ""


def _count(sweep: dict[str, Any], axis: str) -> int:
    return len({json.dumps(c["overrides"].get(axis)) for c in sweep.get("cells", [])})


def _short(key: str) -> str:
    return key.rstrip("]").replace("[", ".").split(".")[-1]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
