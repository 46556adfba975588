"""samples.png: a few images through every recorded stage, side by side."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.stage import read_attr

__all__ = ["confusion_figure", "display_image", "samples_figure"]

_CHANNEL = {"R": 0, "G": 1, "B": 2}


def display_image(x: np.ndarray, unit: str, attrs: Mapping[str, Any]) -> np.ndarray:
    """An (H,W,3) float image in [0,1] for display.

    8-bit sRGB dataset images are shown as they are. Everything else is linear light
    (photons, electrons, DN less the black level, the raw stage's linear RGB): it is
    scaled so the image's 99.5th percentile is white, then given the sRGB display curve,
    so that dim and bright images are both visible; quantisation steps stay visible as
    posterisation. A mosaic is shown as a mosaic, each photosite in its filter's colour.
    """
    x = np.asarray(x, dtype=np.float64)
    if unit == "image" and read_attr(attrs, "encoding") == "srgb8":
        x = x / 255.0
    else:
        if unit == "DN":
            x = x - float(read_attr(attrs, "black_level_dn", 0.0))
        top = np.percentile(x, 99.5) if x.size else 1.0
        x = np.clip(x / top if top > 0 else x, 0.0, 1.0)
        x = np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055)
    x = np.clip(x, 0.0, 1.0)
    if x.ndim == 2:
        tile = read_attr(attrs, "cfa_tile")
        if tile:
            rgb = np.zeros((*x.shape, 3))
            th, tw = len(tile), len(tile[0])
            for r in range(th):
                for c in range(tw):
                    letter = tile[r][c]
                    if letter in _CHANNEL:
                        rgb[r::th, c::tw, _CHANNEL[letter]] = x[r::th, c::tw]
                    else:  # panchromatic (W) or unknown: grey
                        rgb[r::th, c::tw, :] = x[r::th, c::tw, None]
            return rgb
        return np.repeat(x[..., None], 3, axis=2)
    if x.shape[-1] == 1:
        return np.repeat(x, 3, axis=2)
    return x[..., :3]


def samples_figure(
    arrays: Mapping[str, np.ndarray], chain: Any, path: str | Path, n: int = 4
) -> None:
    """Write a grid: one row per image (first ``n``), one column per recorded stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    infos = {"dataset": chain.infos[0]}
    infos.update({name: chain.infos[i + 1] for i, name in enumerate(chain.names)})
    names = [name for name in arrays if name in infos]
    rows = min(n, min(len(arrays[name]) for name in names)) if names else 0
    if rows == 0:
        return
    class_names = getattr(getattr(chain.classifier, "model", None), "class_names", None)
    fig, axes = plt.subplots(
        rows, len(names), figsize=(2.2 * len(names), 2.2 * rows), squeeze=False
    )
    for col, name in enumerate(names):
        info = infos[name]
        for row in range(rows):
            ax = axes[row][col]
            value = arrays[name][row]
            if info.attr("logits"):
                z = value.astype(np.float64) - value.max()
                p = np.exp(z) / np.exp(z).sum()
                ax.barh(np.arange(len(p)), p, color="tab:blue")
                ax.set_xlim(0, 1)
                ax.invert_yaxis()
                label = class_names[int(np.argmax(p))] if class_names else str(int(np.argmax(p)))
                ax.set_xlabel(f"→ {label}", fontsize=7)
                ax.tick_params(labelsize=5)
            else:
                ax.imshow(display_image(value, str(info.unit), info.attrs), interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
            if row == 0:
                ax.set_title(f"{name}\n[{info.unit}]", fontsize=8, loc="left")
    fig.suptitle(
        "first images through every stage (linear signals: per-image scaled, sRGB display curve)",
        fontsize=8,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def confusion_figure(metrics: Mapping[str, Any], path: str | Path) -> None:
    """confusion.png: counts of true class (rows) against predicted class (columns), with
    per-class accuracy on the row labels and the overall accuracy in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(metrics["confusion_matrix"])
    names = list(metrics["class_names"])
    per_class = metrics["per_class_accuracy"]
    k = len(names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * k, 0.8 + 0.5 * k))
    ax.imshow(cm, cmap="Blues")
    for i in range(k):
        for j in range(k):
            if cm[i, j]:
                colour = "white" if cm[i, j] > cm.max() / 2 else "black"
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7, color=colour)
    rows = [f"{n} ({per_class[n]:.0%})" if per_class[n] is not None else n for n in names]
    ax.set_xticks(range(k), names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(k), rows, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (per-class accuracy)")
    lo, hi = metrics["accuracy_ci95"]
    ax.set_title(
        f"accuracy {metrics['accuracy']:.3f} (95% CI {lo:.3f}–{hi:.3f}), n = {metrics['n']}",
        fontsize=8,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
