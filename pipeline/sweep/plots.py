"""The sweep's figures (matplotlib, Agg backend).

- ``accuracy.png``: accuracy against the x axis (by default the bit depth) with the
  Wilson 95 % interval as a band; one panel per light level (the axis named in
  :data:`LIGHT_KEYS`, if swept), one line per combination of the remaining axes;
- ``snr.png``: the same for ``snr_db`` (when the sweep measures SNR);
- ``samples_grid.png``: one recorded image (``plot.sample``) of one stage (by default
  the last sensor stage) across the x axis (columns) and the other axes (rows: all of
  them unless ``plot.max_rows`` caps them, which the title then says), read from the
  cells' recorded arrays. Negative values are shown below a zero grey that each panel
  names (see :func:`pipeline.samples.offset_note`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.samples import display_image, offset_note
from pipeline.sweep.spec import SweepPlan

__all__ = [
    "LIGHT_KEYS",
    "curve_figure",
    "default_x_axis",
    "panel_axis",
    "shown_rows",
    "write_plots",
]

# Config keys (last part) that set the light level: an axis over one of them gets a
# panel per value in the curve figures.
LIGHT_KEYS = ("mean_photons", "photons_at_white", "illuminance_lux", "exposure_s")


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
            band = (lo, hi) if lo and hi else None
            title = f"sweep {plan.folder.name}"
            _save(curve_figure(rows, plan.axes, x_key, metric, band, ylabel, title), path)
            written.append(path)
    stage = plan.spec.plot.stage or (sensor_names[-1] if sensor_names else "dataset")
    grid = plan.folder / "samples_grid.png"
    if _grid_figure(plan, rows, x_key, stage, grid):
        written.append(grid)
    return written


def panel_axis(axes: Sequence[str], x_key: str) -> str | None:
    """The axis that gets one panel per value: the first light-level axis other than x."""
    for key in axes:
        if key != x_key and _short_key(key) in LIGHT_KEYS:
            return key
    return None


def _groups(
    plan: SweepPlan | Sequence[str], rows: Sequence[dict[str, Any]], x_key: str
) -> list[tuple[str, list[dict]]]:
    """Rows grouped by the values of every axis but ``x_key`` (first-seen order)."""
    axes = plan.axes if isinstance(plan, SweepPlan) else plan
    others = [a for a in axes if a != x_key]
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(repr(row[a]) for a in others), []).append(row)
    out = []
    for members in groups.values():
        label = ", ".join(f"{_short_key(a)}={members[0][a]}" for a in others) or "all cells"
        out.append((label, members))
    return out


def _x_positions(rows: Sequence[dict], x_key: str) -> tuple[dict, bool]:
    values = [r[x_key] for r in rows]
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    if numeric:
        return {repr(v): float(v) for v in values}, True
    order = []
    for v in values:
        if repr(v) not in order:
            order.append(repr(v))
    return {tag: float(i) for i, tag in enumerate(order)}, False


def curve_figure(
    rows: Sequence[dict],
    axes: Sequence[str],
    x_key: str,
    metric: str,
    band: tuple[str, str] | None,
    ylabel: str,
    title: str,
) -> Any:
    """A matplotlib Figure of ``metric`` against ``x_key``, one panel per light level.

    Parameters
    ----------
    rows : the sweep's table rows (axis values and metrics).
    axes : the sweep's axes; :func:`panel_axis` picks the one split into panels.
    x_key : the axis on the x axis.
    metric : the row key plotted; ``band`` the (low, high) keys of its interval, if any.
    ylabel, title : labels.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pos, numeric = _x_positions(rows, x_key)
    split = panel_axis(axes, x_key)
    panels: dict[str, list[dict]] = {}
    for row in rows:
        panels.setdefault(repr(row[split]) if split else "", []).append(row)
    keys = list(panels)
    if split and all(_finite(panels[k][0][split]) for k in keys):
        keys.sort(key=lambda k: float(panels[k][0][split]))
    ncols = min(3, len(keys))
    nrows = -(-len(keys) // ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.4 * nrows + 0.4))
    FigureCanvasAgg(fig)
    grid = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
    curve_axes = [a for a in axes if a != split]
    for k, key in enumerate(keys):
        ax = grid[k // ncols][k % ncols]
        groups = _groups(curve_axes, panels[key], x_key)
        for label, members in groups:
            members = sorted(members, key=lambda r: pos[repr(r[x_key])])
            xs = np.array([pos[repr(r[x_key])] for r in members])
            ys = np.array([_num(r.get(metric)) for r in members])
            (line,) = ax.plot(xs, ys, marker="o", ms=4, label=label)
            if band:
                los = np.array([_num(r.get(band[0])) for r in members])
                his = np.array([_num(r.get(band[1])) for r in members])
                ax.fill_between(xs, los, his, color=line.get_color(), alpha=0.2, linewidth=0)
        _x_ticks(ax, pos, numeric)
        ax.set_xlabel(x_key)
        ax.grid(alpha=0.3)
        if metric == "accuracy":
            ax.set_ylim(-0.02, 1.02)
        if split:
            ax.set_title(f"{_short_key(split)} = {panels[key][0][split]}", fontsize=9)
        if len(groups) > 1:
            ax.legend(fontsize=7, loc="best")
    for k in range(len(keys), nrows * ncols):
        grid[k // ncols][k % ncols].set_axis_off()
    for r in range(nrows):
        grid[r][0].set_ylabel(ylabel)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def _x_ticks(ax: Any, pos: dict, numeric: bool) -> None:
    ticks = sorted(set(pos.values()))
    if not numeric:
        labels = {p: tag for tag, p in pos.items()}
        ax.set_xticks(ticks, [labels[t].strip("'") for t in ticks])
    elif len(ticks) <= 16 and all(float(t).is_integer() for t in ticks):
        ax.set_xticks(ticks, [str(int(t)) for t in ticks])


def shown_rows(groups: list, max_rows: int | None) -> tuple[list, str]:
    """The grid's rows (all, or the first ``max_rows``) and the title's note on a cap."""
    if max_rows is None or len(groups) <= max_rows:
        return groups, ""
    return groups[:max_rows], f" (first {max_rows} of {len(groups)} rows: plot.max_rows)"


def _grid_figure(plan: SweepPlan, rows: Sequence[dict], x_key: str, stage: str, path: Path) -> bool:
    import matplotlib.pyplot as plt
    import zarr

    sample = plan.spec.plot.sample
    pos, _ = _x_positions(rows, x_key)
    columns = sorted(set(pos.values()))
    tags = {p: t for t, p in pos.items()}
    groups, cap_note = shown_rows(_groups(plan, rows, x_key), plan.spec.plot.max_rows)
    images: dict[tuple[int, float], tuple[np.ndarray, str | None]] = {}
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
            unit = arr.attrs["unit"]
            images[(g, pos[repr(row[x_key])])] = (
                display_image(value, unit, attrs),
                offset_note(value, unit, attrs),
            )
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
                image, note = images[(g, x)]
                ax.imshow(image, interpolation="nearest")
                if note:
                    ax.set_xlabel(note, fontsize=5)
            else:
                ax.set_axis_off()
            if g == 0:
                ax.set_title(f"{_short_key(x_key)}={tags[x].strip(chr(39))}", fontsize=8)
            if c == 0:
                ax.set_ylabel(label.replace(", ", "\n"), fontsize=7)
    fig.suptitle(f"{stage}, image {sample}{cap_note}", fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    return True


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)  # a pyplot figure; a bare Figure needs no closing
    os.replace(tmp, path)


def _short_key(key: str) -> str:
    return key.rstrip("]").replace("[", ".").split(".")[-1]


def _num(value: Any) -> float:
    return float(value) if _finite(value) else math.nan


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
