"""Per-channel histograms of DN images with the black and white levels marked."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from pipeline.report.figures import figure, figure_uri
from pipeline.stage import read_attr

__all__ = ["channel_values", "dn_histogram_uri"]

_TINT = {"R": "tab:red", "G": "tab:green", "B": "tab:blue"}
_MAX_BINS = 1024  # one bin per code up to 10 bits; wider codes share bins


def channel_values(x: np.ndarray, attrs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Every pixel value of ``x`` (N,H,W) mosaic or (N,H,W,C) planes, by colour channel.

    A mosaic is split by its colour filter tile (``attrs["cfa_tile"]``); planes are
    named R, G, B by position (``c0``, ``c1``... beyond three or without a tile).
    """
    x = np.asarray(x)
    tile = read_attr(attrs, "cfa_tile")
    if x.ndim == 3:
        if not tile:
            return {"all": x.ravel()}
        th, tw = len(tile), len(tile[0])
        parts: dict[str, list[np.ndarray]] = {}
        for r in range(th):
            for c in range(tw):
                parts.setdefault(str(tile[r][c]), []).append(x[:, r::th, c::tw].ravel())
        return {k: np.concatenate(v) for k, v in parts.items()}
    names = ["R", "G", "B"] if x.shape[-1] == 3 else [f"c{i}" for i in range(x.shape[-1])]
    return {name: x[..., i].ravel() for i, name in enumerate(names)}


def dn_histogram_uri(x: np.ndarray, attrs: Mapping[str, Any], title: str) -> str:
    """Histogram panels (one per channel, log counts) of DN images as a PNG data URI.

    Parameters
    ----------
    x : DN images, (N,H,W) mosaic or (N,H,W,C) planes.
    attrs : the signal's attrs: ``bits``, ``black_level_dn``, ``white_level_dn``, ``cfa_tile``.
    title : the figure's title.
    """
    channels = channel_values(x, attrs)
    bits = int(read_attr(attrs, "bits", 16))
    top = (1 << bits) - 1
    step = max(1, (top + 1) // _MAX_BINS)
    edges = np.arange(-0.5, top + step + 0.5, step)
    fig, axes = figure(3.2 * len(channels), 2.6, ncols=len(channels), squeeze=False)
    for ax, (name, values) in zip(axes[0], channels.items(), strict=True):
        ax.hist(values, bins=edges, color=_TINT.get(name, "0.3"), histtype="stepfilled")
        ax.set_yscale("log")
        for key, style, label in (
            ("black_level_dn", "--", "black"),
            ("white_level_dn", ":", "white"),
        ):
            level = read_attr(attrs, key)
            if level is not None:
                level = float(level)
                ax.axvline(level, color="k", ls=style, lw=1, label=f"{label} {level:g} DN")
        ax.set_xlim(-0.5 - step, top + step)
        ax.set_xlabel("DN")
        ax.set_title(f"{name}  ({values.size} px)", fontsize=9)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("pixels")
    fig.suptitle(title, fontsize=9)
    return figure_uri(fig)
