"""samples.png: a few images through every recorded stage, side by side."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.stage import read_attr
from sensors.colour import linear_to_srgb

__all__ = [
    "MAX_DISPLAY_PX",
    "confusion_figure",
    "display_image",
    "display_levels",
    "offset_note",
    "prediction_text",
    "samples_figure",
    "samples_grid",
]

_CHANNEL = {"R": 0, "G": 1, "B": 2}
MAX_DISPLAY_PX = 256  # larger images are area-averaged down to at most this many pixels


def display_levels(x: np.ndarray, unit: str, attrs: Mapping[str, Any]) -> tuple[float, float]:
    """The linear values shown as black and white: ``(lo, hi)``.

    ``hi`` is the image's 99.5th percentile (DN less the black level); ``lo`` is 0, or
    the image's minimum when that is negative (an offset display: negative values stay
    visible, zero is a dark grey; see :func:`offset_note`).
    """
    x = _linear(x, unit, attrs)
    if x.size == 0:
        return 0.0, 1.0
    lo = min(0.0, float(x.min()))
    hi = float(np.percentile(x, 99.5))
    return lo, hi if hi > lo else lo + 1.0


def offset_note(x: np.ndarray, unit: str, attrs: Mapping[str, Any]) -> str | None:
    """Where zero sits in an offset display (``"min -0.03 black, 0 = grey 0.21"``), or None."""
    if unit == "image" and read_attr(attrs, "encoding") == "srgb8":
        return None
    lo, hi = display_levels(x, unit, attrs)
    if lo >= 0.0:
        return None
    zero = float(linear_to_srgb(np.array((0.0 - lo) / (hi - lo))))
    return f"min {lo:.3g} black, 0 = grey {zero:.2f}"


def display_image(
    x: np.ndarray, unit: str, attrs: Mapping[str, Any], *, max_px: int = MAX_DISPLAY_PX
) -> np.ndarray:
    """An (H,W,3) float image in [0,1] for display.

    8-bit sRGB dataset images are shown as they are. Everything else is linear light
    (photons, electrons, DN less the black level, the raw stage's linear RGB): it is
    mapped from :func:`display_levels` ``(lo, hi)`` to [0, 1], then given the sRGB
    display curve, so that dim and bright images are both visible; quantisation steps
    stay visible as posterisation, negative values as shades below the zero grey.
    A mosaic is shown as a mosaic, each photosite in its filter's colour.

    Images larger than ``max_px`` are area-averaged by a whole factor first (a mosaic per
    filter colour, over blocks of whole filter tiles), so a downscaled panel shows no
    moiré; the average is taken in linear light.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 3 and read_attr(attrs, "spectral"):
        x = spectral_display_rgb(x, read_attr(attrs, "wavelength_nm"))
    srgb8 = unit == "image" and read_attr(attrs, "encoding") == "srgb8"
    if srgb8:
        x = x / 255.0
    else:
        lo, hi = display_levels(x, unit, attrs)
        x = np.clip((_linear(x, unit, attrs) - lo) / (hi - lo), 0.0, 1.0)
    tile = read_attr(attrs, "cfa_tile") if x.ndim == 2 else None
    if tile:
        rgb, weight = _mosaic_planes(x, tile)
        step = (len(tile), len(tile[0]))
    else:
        rgb = x[..., None] if x.ndim == 2 else x
        rgb = np.repeat(rgb, 3, axis=2) if rgb.shape[-1] == 1 else rgb[..., :3]
        weight, step = np.ones_like(rgb), (1, 1)
    f = _factor(rgb.shape[:2], max_px, step)
    if f > 1:
        rgb = _block_sum(rgb, f) / _block_sum(weight, f)
    return np.clip(rgb if srgb8 else linear_to_srgb(rgb), 0.0, 1.0)


#: Display only: the bands a spectral panel averages into its blue, green and red, nm.
SPECTRAL_DISPLAY_EDGES_NM = (490.0, 590.0)


def spectral_display_rgb(x: np.ndarray, wavelength_nm: Sequence[float]) -> np.ndarray:
    """(H, W, B) photons per band → (H, W, 3) for display: the mean of the bands at
    ≥ 590 nm (red), 490–590 nm (green) and < 490 nm (blue); a missing range is black.
    A picture of where the light is, not a colorimetric rendering."""
    bands = np.asarray(wavelength_nm, dtype=np.float64)
    blue_end, red_start = SPECTRAL_DISPLAY_EDGES_NM
    groups = (bands >= red_start, (bands >= blue_end) & (bands < red_start), bands < blue_end)
    planes = [x[..., g].mean(axis=-1) if g.any() else np.zeros(x.shape[:-1]) for g in groups]
    return np.stack(planes, axis=-1)


def _linear(x: np.ndarray, unit: str, attrs: Mapping[str, Any]) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x - float(read_attr(attrs, "black_level_dn", 0.0)) if unit == "DN" else x


def _mosaic_planes(x: np.ndarray, tile: Any) -> tuple[np.ndarray, np.ndarray]:
    """Each photosite in its filter's colour, and which planes each photosite fills."""
    rgb = np.zeros((*x.shape, 3))
    weight = np.zeros((*x.shape, 3))
    th, tw = len(tile), len(tile[0])
    for r in range(th):
        for c in range(tw):
            letter = tile[r][c]
            if letter in _CHANNEL:
                rgb[r::th, c::tw, _CHANNEL[letter]] = x[r::th, c::tw]
                weight[r::th, c::tw, _CHANNEL[letter]] = 1.0
            else:  # panchromatic (W) or unknown: grey
                rgb[r::th, c::tw, :] = x[r::th, c::tw, None]
                weight[r::th, c::tw, :] = 1.0
    return rgb, weight


def _factor(shape: tuple[int, ...], max_px: int, step: tuple[int, int]) -> int:
    """The smallest whole factor, a multiple of the tile, that brings ``shape`` to max_px."""
    f = -(-max(shape) // max_px)
    if f <= 1:
        return 1
    m = int(np.lcm(*step))
    return -(-f // m) * m


def _block_sum(x: np.ndarray, f: int) -> np.ndarray:
    """Sums over f×f blocks (the last partial row and column of blocks dropped)."""
    h, w = x.shape[0] // f * f, x.shape[1] // f * f
    return x[:h, :w].reshape(h // f, f, w // f, f, x.shape[2]).sum(axis=(1, 3))


def prediction_text(
    predicted: int, true: int | None, class_names: Sequence[str] | None
) -> tuple[str, bool | None]:
    """The CNN panel's caption, ``"true T → P ✓"``, and whether the answer is right."""

    def name(k: int) -> str:
        return class_names[k] if class_names else str(k)

    if true is None:
        return f"→ {name(predicted)}", None
    right = int(true) == int(predicted)
    return f"true {name(int(true))}\n→ {name(predicted)} {'✓' if right else '✗ wrong'}", right


def samples_grid(
    arrays: Mapping[str, np.ndarray],
    chain: Any,
    n: int = 4,
    labels: np.ndarray | None = None,
) -> Any:
    """A matplotlib Figure: one row per image (first ``n``), one column per recorded stage.

    The CNN column shows the class probabilities with the true class (``labels``, when
    given) and the prediction; a wrong answer is captioned and drawn in red.
    Returns None when nothing was recorded.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    infos = {"dataset": chain.infos[0]}
    infos.update({name: chain.infos[i + 1] for i, name in enumerate(chain.names)})
    names = [name for name in arrays if name in infos]
    rows = min(n, min(len(arrays[name]) for name in names)) if names else 0
    if rows == 0:
        return None
    class_names = getattr(getattr(chain.classifier, "model", None), "class_names", None)
    fig = Figure(figsize=(2.2 * len(names), 2.4 * rows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, len(names), squeeze=False)
    for col, name in enumerate(names):
        info = infos[name]
        for row in range(rows):
            ax = axes[row][col]
            value = arrays[name][row]
            if info.attr("logits"):
                true = None if labels is None or row >= len(labels) else int(labels[row])
                _logit_panel(ax, value, true, class_names)
            else:
                unit = str(info.unit)
                ax.imshow(display_image(value, unit, info.attrs), interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                note = offset_note(value, unit, info.attrs)
                if note:
                    ax.set_xlabel(note, fontsize=5)
            if row == 0:
                ax.set_title(f"{name}\n[{info.unit}]", fontsize=8, loc="left")
    fig.suptitle(
        "first images through every stage (linear signals: per-image scaled, sRGB display curve)",
        fontsize=8,
    )
    fig.tight_layout()
    return fig


def _logit_panel(ax: Any, logits: np.ndarray, true: int | None, class_names: Any) -> None:
    z = logits.astype(np.float64) - logits.max()
    p = np.exp(z) / np.exp(z).sum()
    predicted = int(np.argmax(p))
    text, right = prediction_text(predicted, true, class_names)
    colours = np.full(len(p), "tab:blue", dtype=object)
    if true is not None:
        colours[predicted] = "tab:green" if right else "tab:red"
    ax.barh(np.arange(len(p)), p, color=list(colours))
    if true is not None and not right:
        ax.barh([true], [p[true]], color="none", edgecolor="tab:green", linewidth=1.2)
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_xlabel(text, fontsize=7, color="tab:red" if right is False else "black")
    ax.tick_params(labelsize=5)


def samples_figure(
    arrays: Mapping[str, np.ndarray],
    chain: Any,
    path: str | Path,
    n: int = 4,
    labels: np.ndarray | None = None,
) -> None:
    """Write :func:`samples_grid` to ``path`` (PNG); nothing when nothing was recorded."""
    fig = samples_grid(arrays, chain, n, labels)
    if fig is not None:
        fig.savefig(path, dpi=110)


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
