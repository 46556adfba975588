"""The accuracy–bits–energy trade-off: the Pareto front, as CSV and as a figure.

A point is one (curve, bits) at one light level and noise setting, with its held-out test
accuracy and its energy per pixel (:mod:`pipeline.design.energy`). It is on the front
when no other point of the same light and noise costs no more energy and is at least as
accurate, with one of the two strictly better.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["COLUMNS", "pareto_mask", "plot_pareto", "write_csv"]

COLUMNS = (
    "light",
    "noise",
    "bits",
    "curve",
    "full_scale_e",
    "val_accuracy",
    "test_correct",
    "test_n",
    "test_accuracy",
    "test_lo",
    "test_hi",
    "adc_pj",
    "readout_pj",
    "energy_pj",
    "on_front",
)
_STYLE = {
    "designed": ("tab:red", "o"),
    "linear": ("tab:blue", "s"),
    "log": ("tab:green", "^"),
    "sqrt": ("tab:orange", "v"),
    "equal_probability": ("tab:purple", "D"),
    "lloyd_max": ("tab:brown", "P"),
    "linear_ranged": ("tab:cyan", "s"),
    "log_ranged": ("tab:olive", "^"),
    "sqrt_ranged": ("tab:pink", "v"),
}


def pareto_mask(energy: Sequence[float], accuracy: Sequence[float]) -> np.ndarray:
    """True where a point is not dominated (lower energy is better, higher accuracy)."""
    e = np.asarray(energy, dtype=np.float64)
    a = np.asarray(accuracy, dtype=np.float64)
    no_worse = (e[None, :] <= e[:, None]) & (a[None, :] >= a[:, None])
    better = (e[None, :] < e[:, None]) | (a[None, :] > a[:, None])
    return ~np.any(no_worse & better, axis=1)


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write ``rows`` (:data:`COLUMNS`) to ``path`` atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(row.get(k)) for k in COLUMNS})
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(buf.getvalue(), encoding="utf-8")
    os.replace(tmp, path)


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def plot_pareto(path: Path, rows: Sequence[dict[str, Any]], title: str = "") -> Path:
    """One panel per light level (a row of panels per noise setting): test accuracy with
    its Wilson interval against energy per pixel (ticks name the bits), one marker per
    curve, and the Pareto front as a dashed step line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lights = sorted({r["light"] for r in rows})
    noises = list(dict.fromkeys(r["noise"] for r in rows))
    fig, axes = plt.subplots(
        len(noises),
        len(lights),
        figsize=(4.4 * len(lights), 3.8 * len(noises) + 0.6),
        squeeze=False,
        sharey=True,
    )
    for i, noise in enumerate(noises):
        for j, light in enumerate(lights):
            ax = axes[i][j]
            _panel(ax, [r for r in rows if r["light"] == light and r["noise"] == noise])
            label = f"{light:g} photons" + (f", noise {noise}" if len(noises) > 1 else "")
            ax.set_title(label)
            if i == len(noises) - 1:
                ax.set_xlabel("energy per pixel, pJ (ADC + readout)")
            if j == 0:
                ax.set_ylabel("test accuracy (95 % Wilson)")
    curves = list(dict.fromkeys(r["curve"] for r in rows))
    handles = [
        plt.Line2D(
            [],
            [],
            color=_STYLE.get(c, _OTHER)[0],
            marker=_STYLE.get(c, _OTHER)[1],
            linestyle="",
            label=c,
        )
        for c in curves
    ]
    handles.append(plt.Line2D([], [], color="black", linestyle="--", label="Pareto front"))
    fig.legend(
        handles=handles, loc="lower center", ncol=min(len(handles), 7), frameon=False, fontsize=8
    )
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.08, 1, 0.96 if title else 1))
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


_OTHER = ("grey", "x")


def _panel(ax: Any, rows: Sequence[dict[str, Any]]) -> None:
    ax.set_xscale("log")
    ax.grid(True, alpha=0.3)
    ticks = sorted({(r["energy_pj"], r["bits"]) for r in rows})
    curves = list(dict.fromkeys(r["curve"] for r in rows))
    dodge = 0.012  # decades between neighbouring curves' markers at one bit depth
    for k, curve in enumerate(curves):
        mine = sorted((r for r in rows if r["curve"] == curve), key=lambda r: r["energy_pj"])
        colour, marker = _STYLE.get(curve, _OTHER)
        shift = 10 ** ((k - (len(curves) - 1) / 2) * dodge)
        x = np.array([r["energy_pj"] for r in mine]) * shift
        y = np.array([r["test_accuracy"] for r in mine])
        err = np.array(
            [[r["test_accuracy"] - r["test_lo"], r["test_hi"] - r["test_accuracy"]] for r in mine]
        ).T
        ax.errorbar(
            x,
            y,
            yerr=err,
            color=colour,
            marker=marker,
            linestyle="-",
            lw=0.8,
            ms=5,
            capsize=2,
            alpha=1.0 if curve == "designed" else 0.55,
            zorder=3 if curve == "designed" else 2,
        )
    front = sorted((r for r in rows if r["on_front"]), key=lambda r: r["energy_pj"])
    if front:
        ax.step(
            [r["energy_pj"] for r in front],
            [r["test_accuracy"] for r in front],
            where="post",
            color="black",
            linestyle="--",
            lw=1,
            zorder=1,
        )
    ax.set_xticks([e for e, _ in ticks])
    ax.set_xticklabels([f"{b} b\n{e:.2g}" for e, b in ticks], fontsize=8)
    ax.minorticks_off()
    lo, hi = ticks[0][0], ticks[-1][0]
    ax.set_xlim(lo / 1.15, hi * 1.15)
