"""What the page of a calibration folder shows: the fitted figures with their
uncertainty, the photon-transfer and SNR curves, the dark histogram against the fitted
noise distribution, and the row/column spectra of the dark frames."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.report.figures import figure, figure_uri

__all__ = ["context"]

_COLOURS = {"R": "tab:red", "G": "tab:green", "B": "tab:blue", "W": "0.3"}


def context(folder: Path) -> dict[str, Any]:
    """Template values for ``calibrate.html``."""
    fit = json.loads((folder / "fit.json").read_text(encoding="utf-8"))
    names = [k for k, v in fit["sensor"].items() if isinstance(v, dict)]
    channels = fit["channels"]
    rows = [
        (name, [_fmt(ch[name]) for ch in channels.values()], _fmt(fit["sensor"][name]))
        for name in names
    ]
    dist = fit.get("noise_distribution") or {}
    return {
        # the folder is written under a temporary name and renamed: fit.json has the final one
        "title": f"calibration {fit.get('folder', folder.name)}",
        "summary": [
            ("manifest", fit["manifest"]),
            ("CFA", fit["cfa"]),
            ("ADC bits", str(fit["bits"])),
            ("frame shape", "x".join(map(str, fit["frame_shape"]))),
            ("levels", str(len(fit["levels"]))),
            ("bootstrap replicates", str(fit["bootstrap"]["replicates"])),
            ("dark noise distribution", _dist_text(dist)),
        ],
        "channel_names": list(channels),
        "rows": rows,
        "notes": fit.get("notes", []),
        "ptc": _ptc(channels),
        "snr": _snr(channels),
        "histogram": _histogram(fit.get("dark_histogram"), dist),
        "spectra": _spectra(fit["spectra"]),
    }


def _fmt(fig: dict[str, Any]) -> str:
    value, se = fig.get("value"), fig.get("stderr")
    if value is None:
        return "n/a"
    return f"{value:.4g} ± {se:.2g}" if se is not None else f"{value:.4g}"


def _dist_text(dist: dict[str, Any]) -> str:
    if not dist:
        return "not fitted"
    shape = (
        "" if dist["shape"] is None else f", shape {dist['shape']:.3g} ± {dist['shape_stderr']:.2g}"
    )
    return f"{dist['dist']}{shape}, sigma {dist['sigma']:.3g} e- (lowest AIC)"


def _ptc(channels: dict[str, Any]) -> str:
    fig, ax = figure(6, 4)
    for name, ch in channels.items():
        c = ch["curves"]
        signal = np.asarray(c["mu_y_dn"]) - c["mu_y_dark_dn"]
        ax.loglog(
            np.maximum(signal, 1e-3),
            np.maximum(c["var_y_dn2"], 1e-3),
            "o-",
            ms=3,
            color=_COLOURS[name],
            label=name,
        )
    ax.set_xlabel("mean signal μ_y − μ_y.dark [DN]")
    ax.set_ylabel("temporal variance σ²_y [DN²]")
    ax.set_title("photon transfer")
    ax.legend()
    return figure_uri(fig)


def _snr(channels: dict[str, Any]) -> str:
    fig, ax = figure(6, 4)
    for name, ch in channels.items():
        c = ch["curves"]
        end = c["saturation_index"] + 1  # beyond saturation the SNR means nothing
        snr = np.maximum(c["snr"][:end], 1e-3)
        ax.loglog(c["level"][:end], snr, "o-", ms=3, color=_COLOURS[name], label=name)
    ax.set_xlabel("level (photons per pixel, or exposure s)")
    ax.set_ylabel("SNR")
    ax.set_title("signal-to-noise ratio")
    ax.legend()
    return figure_uri(fig)


def _histogram(hist: dict[str, Any] | None, dist: dict[str, Any]) -> str | None:
    if not hist:
        return None
    edges = np.asarray(hist["edges_e"])
    centres = (edges[:-1] + edges[1:]) / 2
    fig, ax = figure(6, 4)
    ax.semilogy(centres, np.maximum(hist["density"], 1e-7), "k.", label="dark frames")
    ax.semilogy(centres, hist["fitted_density"], "r-", label=f"fit: {dist.get('dist')}")
    ax.semilogy(centres, hist["gaussian_density"], "b--", lw=1, label="Gaussian, same σ")
    ax.set_xlabel("temporal dark noise [e⁻]")
    ax.set_ylabel("density")
    ax.set_title("dark noise histogram")
    ax.legend()
    return figure_uri(fig)


def _spectra(spectra: dict[str, Any]) -> str:
    fig, axes = figure(10, 3.6, ncols=2)
    for ax, which in zip(axes, ("row", "col"), strict=True):
        f = np.asarray(spectra[f"{which}_frequency"])[1:]
        for kind, style in (("fpn", "k-"), ("temporal", "r-")):
            ax.semilogy(
                f,
                np.maximum(np.asarray(spectra[f"{which}_{kind}_dn2"])[1:], 1e-9),
                style,
                lw=0.8,
                label=kind,
            )
        ax.set_xlabel(f"frequency [cycles per {which}]")
        ax.set_ylabel("power [DN²]")
        ax.set_title(f"dark {which} profile spectrum")
        ax.legend()
    return figure_uri(fig)
