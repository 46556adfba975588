"""The sweep's figures (matplotlib, Agg backend).

- ``accuracy.png``: accuracy against the x axis (by default the bit depth) with the
  Wilson 95 % interval as a band, one line per combination of the other axes;
- ``snr.png``: the same for ``snr_db`` (when the sweep measures SNR);
- ``samples_grid.png``: one recorded image (``plot.sample``) of one stage (by default
  the last sensor stage) across the x axis (columns) and the other axes (rows), read
  from the cells' recorded arrays.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.samples import display_image
from pipeline.sweep.spec import SweepPlan

__all__ = ["default_x_axis", "write_plots"]


def default_x_axis(axes: Sequence[str]) -> str:
    """The axis whose key ends in ``bits`` (the bit depth), else the first."""
    for key in axes:
        if key.rstrip("]").split(".")[-1].endswith("bits"):
            return key
    return axes[0]


def write_plots(
    plan: SweepPlan, rows: Sequence[dict[str, Any]], sensor_names: Sequence[str]
) -> list[Path]:
    """Write the figures for the finished cells' ``rows``; returns the files written."""
    if not rows:
        return []
    import matplotlib

    matplotlib.use("Agg")
    x_key = plan.spec.plot.x or default_x_axis(plan.axes)
    written = []
    curves = (
        ("accuracy", "accuracy_lo", "accuracy_hi", "accuracy (Wilson 95 % band)", "accuracy.png"),
        ("snr_db", None, None, "SNR vs noise-free reference (dB)", "snr.png"),
    )
    for metric, lo, hi, ylabel, filename in curves:
        if any(_finite(r.get(metric)) for r in rows):
            path = plan.folder / filename
            _curve_figure(plan, rows, x_key, metric, lo, hi, ylabel, path)
            written.append(path)
    stage = plan.spec.plot.stage or (sensor_names[-1] if sensor_names else "dataset")
    grid = plan.folder / "samples_grid.png"
    if _grid_figure(plan, rows, x_key, stage, grid):
        written.append(grid)
    return written


def _groups(
    plan: SweepPlan, rows: Sequence[dict[str, Any]], x_key: str
) -> list[tuple[str, list[dict]]]:
    """Rows grouped by the values of every axis but ``x_key`` (first-seen order)."""
    others = [a for a in plan.axes if a != x_key]
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(repr(row[a]) for a in others), []).append(row)
    out = []
    for members in groups.values():
        label = ", ".join(f"{_short_key(a)}={members[0][a]}" for a in others) or "all cells"
        out.append((label, members))
    return out


def _x_positions(plan: SweepPlan, rows: Sequence[dict], x_key: str) -> tuple[dict, bool]:
    values = [r[x_key] for r in rows]
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    if numeric:
        return {repr(v): float(v) for v in values}, True
    order = []
    for v in values:
        if repr(v) not in order:
            order.append(repr(v))
    return {tag: float(i) for i, tag in enumerate(order)}, False


def _curve_figure(
    plan: SweepPlan,
    rows: Sequence[dict],
    x_key: str,
    metric: str,
    lo: str | None,
    hi: str | None,
    ylabel: str,
    path: Path,
) -> None:
    import matplotlib.pyplot as plt

    pos, numeric = _x_positions(plan, rows, x_key)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, members in _groups(plan, rows, x_key):
        members = sorted(members, key=lambda r: pos[repr(r[x_key])])
        xs = np.array([pos[repr(r[x_key])] for r in members])
        ys = np.array([_num(r.get(metric)) for r in members])
        (line,) = ax.plot(xs, ys, marker="o", ms=4, label=label)
        if lo and hi:
            los = np.array([_num(r.get(lo)) for r in members])
            his = np.array([_num(r.get(hi)) for r in members])
            ax.fill_between(xs, los, his, color=line.get_color(), alpha=0.2, linewidth=0)
    ticks = sorted(set(pos.values()))
    if not numeric:
        labels = {p: tag for tag, p in pos.items()}
        ax.set_xticks(ticks, [labels[t].strip("'") for t in ticks])
    elif len(ticks) <= 16 and all(float(t).is_integer() for t in ticks):
        ax.set_xticks(ticks, [str(int(t)) for t in ticks])
    ax.set_xlabel(x_key)
    ax.set_ylabel(ylabel)
    if metric == "accuracy":
        ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(f"sweep {plan.folder.name}", fontsize=10)
    if len(plan.axes) > 1:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    _save(fig, path)


def _grid_figure(plan: SweepPlan, rows: Sequence[dict], x_key: str, stage: str, path: Path) -> bool:
    import matplotlib.pyplot as plt
    import zarr

    sample = plan.spec.plot.sample
    pos, _ = _x_positions(plan, rows, x_key)
    columns = sorted(set(pos.values()))
    tags = {p: t for t, p in pos.items()}
    groups = _groups(plan, rows, x_key)[: plan.spec.plot.max_rows]
    images: dict[tuple[int, float], np.ndarray] = {}
    for g, (_, members) in enumerate(groups):
        for row in members:
            store = plan.cells_dir / row["cell"] / "arrays.zarr"
            if not store.exists():
                continue
            group = zarr.open_group(str(store), mode="r")
            if stage not in group.array_keys():
                continue
            arr = group[stage]
            if arr.shape[0] <= sample:
                continue
            attrs = dict(arr.attrs.get("signal_attrs") or {})
            value = np.asarray(arr[sample])
            images[(g, pos[repr(row[x_key])])] = display_image(value, arr.attrs["unit"], attrs)
    if not images:
        return False
    n_rows, n_cols = len(groups), len(columns)
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(1.6 * n_cols + 1.2, 1.6 * n_rows + 0.6), squeeze=False
    )
    for g, (label, _) in enumerate(groups):
        for c, x in enumerate(columns):
            ax = axes[g][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if (g, x) in images:
                ax.imshow(images[(g, x)], interpolation="nearest")
            else:
                ax.set_axis_off()
            if g == 0:
                ax.set_title(f"{_short_key(x_key)}={tags[x].strip(chr(39))}", fontsize=8)
            if c == 0:
                ax.set_ylabel(label.replace(", ", "\n"), fontsize=7)
    fig.suptitle(f"{stage}, image {sample}", fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    return True


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    os.replace(tmp, path)


def _short_key(key: str) -> str:
    return key.rstrip("]").replace("[", ".").split(".")[-1]


def _num(value: Any) -> float:
    return float(value) if _finite(value) else math.nan


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
