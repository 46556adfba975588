"""The spectral-CFA study's figures beside its sweep (docs/results/spectral-cfa.md).

* ``electrons``: mean electrons per pixel, by pixel colour, for each CFA, illuminant and
  light level: the noise-free photodetector output (shot, read, dark and fixed-pattern
  noise off) of configs/spectral.yaml's chain on the first test images;
* ``codes``: what the 10-bit ADC delivers at 20 photons (every noise on): the mean code
  above black and the fraction of pixels at the black code, by pixel colour;
* ``colour``: the colour datasheet per CFA (ΔE2000 of the ColorChecker after the CCM for
  RGGB and RGBW, the luminance figures of the mono sensor's grey output), and what a
  CCM that also took the W pixels could reach, and the RGBW fusion's ΔE;
* ``plot``: accuracy against light from the sweep's results (spectral-cfa.csv), with the
  ablation (the RGBW cells with the bilinear demosaic that ignores W,
  spectral-cfa-rgbw-bilinear.csv, from the study's first run) dotted;
* ``samples``: one test image as each trained model sees it (from the sweep folder);
* ``shape_colour_table``: each cell's accuracy split into shape right and colour right
  (from the cells' confusion matrices): what a mono sensor keeps and what it cannot see.

Usage (from the repository root)::

    sensorlab sweep configs/spectral-cfa.yaml
    cp sweeps/spectral-cfa/results.csv docs/results/spectral-cfa.csv
    python docs/results/spectral_cfa.py       # writes the two CSVs and the PNG below
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "results"
CONFIG = ROOT / "configs" / "spectral.yaml"
CFAS = ("RGGB", "RGBW", "mono")
#: the ablation: the RGBW cells as the study first ran them (bilinear demosaic from the
#: colour pixels only, W in the auto gain), kept beside the W-aware rows
ABLATION = RESULTS / "spectral-cfa-rgbw-bilinear.csv"
ILLUMINANTS = ("D65", "A", "FL2")
PHOTONS = (20, 200, 2000)
NIKON = "Nikon 5100 (NPL)"
#: the noise-free photodetector: the mean electrons each pixel collects
NOISE_OFF = {
    "sensor.photodetector.shot_noise": False,
    "sensor.photodetector.read_noise_e": 0.0,
    "sensor.photodetector.dark_current_e_per_s": 0.0,
    "sensor.photodetector.prnu_pct": 0.0,
    "sensor.photodetector.dsnu_e": 0.0,
}


def _recorded(
    stage: str,
    cfa: str,
    illuminant: str,
    mean_photons: float,
    *,
    images: int,
    overrides: dict[str, Any] | None = None,
) -> tuple[np.ndarray, dict[str, Any], np.ndarray]:
    """One stage's output on the first ``images`` test images of the study's chain with
    this CFA, illuminant and light (no model): (float64 array, the stage's attrs, the
    CFA letter of each pixel)."""
    from pipeline.runner import run
    from sensors.photodetector import channel_map

    settings = {
        **(overrides or {}),
        "sensor.photodetector.cfa": cfa,
        "sensor.scene.illuminant": illuminant,
        "sensor.scene.mean_photons": mean_photons,
        "dataset.n": images,
        "model": None,
        "run.record": {"stages": [stage], "images": "all"},
        "run.samples": 0,
    }
    result = run(CONFIG, set=settings, store=False, progress=False)
    values = np.asarray(result.arrays[stage], dtype=np.float64)
    return values, result.stage(stage)["attrs"], channel_map(cfa, values.shape[1:3])


def electrons_per_pixel(
    cfa: str, illuminant: str, mean_photons: float, *, images: int = 64
) -> dict[str, float]:
    """Mean electrons per pixel of each colour (R, G, B, W present in the CFA), noise-free.

    Parameters
    ----------
    cfa : the photodetector's ``cfa``.
    illuminant : the scene's ``illuminant``.
    mean_photons : the scene's ``mean_photons`` (per band-summed channel, see the scene).
    images : how many test images (the first ones) are averaged.

    Returns
    -------
    ``{letter: mean e⁻ per pixel}`` for the letters of the CFA's tile.
    """
    electrons, _, letters = _recorded(
        "photodetector", cfa, illuminant, mean_photons, images=images, overrides=NOISE_OFF
    )
    return {c: float(electrons[:, letters == c].mean()) for c in "RGBW" if (letters == c).any()}


def codes(cfa: str, illuminant: str, mean_photons: float, *, images: int = 64) -> dict:
    """What the ADC delivers, with every noise on: per pixel colour, the mean code above
    the black level (DN) and the fraction of pixels at or below the black code.

    Returns
    -------
    ``{letter: {"mean_dn": float, "at_black": float}}``.
    """
    codes_dn, attrs, letters = _recorded("adc", cfa, illuminant, mean_photons, images=images)
    dn = codes_dn - float(attrs["black_level_dn"])
    return {
        c: {
            "mean_dn": float(dn[:, letters == c].mean()),
            "at_black": float((dn[:, letters == c] <= 0).mean()),
        }
        for c in "RGBW"
        if (letters == c).any()
    }


def codes_table(images: int = 64) -> list[dict[str, Any]]:
    """:func:`codes` for every CFA at 20 photons under D65 and A, as CSV rows."""
    rows = []
    for cfa in CFAS:
        for light in ("D65", "A"):
            per = codes(cfa, light, 20, images=images)
            for c, v in per.items():
                rows.append(
                    {
                        "cfa": cfa,
                        "illuminant": light,
                        "mean_photons": 20,
                        "pixel": c,
                        "mean_dn_above_black": round(v["mean_dn"], 3),
                        "fraction_at_black": round(v["at_black"], 3),
                    }
                )
    return rows


def electrons_table(images: int = 64) -> list[dict[str, Any]]:
    """:func:`electrons_per_pixel` for every CFA × illuminant × light, as CSV rows."""
    rows = []
    for cfa in CFAS:
        for light in ILLUMINANTS:
            for photons in PHOTONS:
                per = electrons_per_pixel(cfa, light, photons, images=images)
                rows.append(
                    {"cfa": cfa, "illuminant": light, "mean_photons": photons}
                    | {f"{c}_e": round(per.get(c, float("nan")), 3) for c in "RGBW"}
                )
    return rows


def w_aware_delta_e(illuminant: str) -> tuple[float, float]:
    """Mean and max ΔE2000 of a 3×4 least-squares CCM from (R, G, B, W) to XYZ (Nikon
    5100 R, G, B and a flat W of QE 0.6): what an RGBW sensor's W pixels could add to
    colour if the CCM used them (the raw stage's does not)."""
    from sensors import spectra, spectral
    from sensors.colour_correction import chart_camera_rgb, chart_xyz, delta_e2000, fit_ccm

    bands = spectral.band_grid(400.0, 700.0, 10.0)
    qe = spectral.qe_curves("camera", bands, qe=0.6, qe_w=0.6, camera=NIKON)  # rows R G B W
    reflectances, _ = spectra.colourchecker_reflectances("BabelColor Average", bands)
    light = spectra.illuminant_photons(illuminant, bands)
    rgbw = chart_camera_rgb(qe, light, reflectances)
    xyz, white = chart_xyz(illuminant)
    ccm = fit_ccm(rgbw, xyz)
    de = delta_e2000(rgbw @ ccm.T, xyz, white)
    return float(de.mean()), float(de.max())


def fusion_delta_e(illuminant: str) -> dict[str, float]:
    """ΔE2000 of the ColorChecker as the RGBW fusion delivers it (``demosaic:
    rgbw_fusion``, noiseless flat patches): each patch's camera RGB times ``W / Ŵ``
    (:func:`sensors.rgbw.w_coefficients` under the illuminant), then either a 3×3
    least-squares CCM fitted on those values (a pipeline calibrated on its own output) or
    the one fitted on the plain R, G, B (what ``ccm: fit`` applies today)."""
    from sensors import spectra, spectral
    from sensors.colour_correction import chart_camera_rgb, chart_xyz, delta_e2000, fit_ccm
    from sensors.rgbw import w_coefficients

    bands = spectral.band_grid(400.0, 700.0, 10.0)
    qe = spectral.qe_curves("camera", bands, qe=0.6, qe_w=0.6, camera=NIKON)  # rows R G B W
    reflectances, _ = spectra.colourchecker_reflectances("BabelColor Average", bands)
    light = spectra.illuminant_photons(illuminant, bands)
    rgbw = chart_camera_rgb(qe, light, reflectances)
    a = w_coefficients(qe[:3], qe[3], light, np.ones(3))
    fused = rgbw[:, :3] * (rgbw[:, 3] / (rgbw[:, :3] @ a))[:, None]
    xyz, white = chart_xyz(illuminant)
    own = delta_e2000(fused @ fit_ccm(fused, xyz).T, xyz, white)
    plain = delta_e2000(fused @ fit_ccm(rgbw[:, :3], xyz).T, xyz, white)
    return {
        "rgbw_fusion_de_mean": float(own.mean()),
        "rgbw_fusion_de_max": float(own.max()),
        "rgbw_fusion_plain_ccm_de_mean": float(plain.mean()),
        "rgbw_fusion_plain_ccm_de_max": float(plain.max()),
    }


def colour_table() -> list[dict[str, Any]]:
    """The colour datasheet per CFA and illuminant (the figures ``characterize`` reports)."""
    from sensors import spectral
    from sensors.colour_accuracy import colour_accuracy, luminance_accuracy

    bands = spectral.band_grid(400.0, 700.0, 10.0)
    qe = spectral.qe_curves("camera", bands, qe=0.6, qe_w=0.6, camera=NIKON)
    rows = []
    for light in ILLUMINANTS:
        rgb = colour_accuracy(qe, bands, illuminant=light)
        mono = luminance_accuracy(qe, bands, illuminant=light)
        w_mean, w_max = w_aware_delta_e(light)
        rows.append(
            {
                "illuminant": light,
                "rgb_de_mean": rgb["delta_e2000_mean"],
                "rgb_de_max": rgb["delta_e2000_max"],
                "rgbw_w_ccm_de_mean": w_mean,
                "rgbw_w_ccm_de_max": w_max,
                **fusion_delta_e(light),
                "mono_dl_mean": mono["delta_l_mean"],
                "mono_dl_max": mono["delta_l_max"],
                "mono_de_mean": mono["delta_e2000_mean"],
                "mono_de_max": mono["delta_e2000_max"],
                "grey_floor_de_mean": mono["delta_e2000_floor_mean"],
            }
        )
    return rows


def read_results(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def row_label(row: dict[str, str]) -> str:
    """``RGGB, WB`` / ``mono`` / ``RGGB, no WB, shipped RGB model`` for a results row."""
    cfa = row["sensor.photodetector.cfa"]
    label = (
        cfa
        if cfa == "mono"
        else (f"{cfa}, {'WB' if row['sensor.raw.white_balance'] != 'none' else 'no WB'}")
    )
    if "procedural32-default" in row["model.path"]:
        label += ", shipped RGB model"
    if cfa == "RGBW" and row.get("sensor.raw.demosaic", "bilinear") == "bilinear":
        label += ", bilinear (W unused)"
    return label


def plot(results: Path, png: Path, ablation: Path | None = None) -> None:
    """Accuracy (Wilson 95 %) against mean photons, a panel per illuminant; the
    ablation's rows (if given) dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_results(results) + (read_results(ablation) if ablation else [])
    labels = list(dict.fromkeys(row_label(r) for r in rows))
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.4), sharey=True)
    for ax, light in zip(axes, ILLUMINANTS, strict=True):
        for j, label in enumerate(labels):
            sel = [
                r for r in rows if row_label(r) == label and r["sensor.scene.illuminant"] == light
            ]
            x = np.array([float(r["sensor.scene.mean_photons"]) for r in sel])
            y = np.array([float(r["accuracy"]) for r in sel])
            lo = y - np.array([float(r["accuracy_lo"]) for r in sel])
            hi = np.array([float(r["accuracy_hi"]) for r in sel]) - y
            style = "--" if "shipped" in label else ":" if "W unused" in label else "-"
            ax.errorbar(
                x * (1 + 0.03 * (j - 3)),
                y,
                yerr=[lo, hi],
                fmt=style + "o",
                ms=4,
                capsize=2,
                label=label,
            )
        ax.set_xscale("log")
        ax.set_title(f"illuminant {light} (models trained under D65)")
        ax.set_xlabel("scene mean photons per pixel per channel")
        ax.axhline(0.1, color="0.6", lw=0.8, ls=":")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (1,000 test images, Wilson 95 %)")
    # below the panels: inside one it would hide that panel's points
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, fontsize=8, loc="lower center", ncol=5, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(png, dpi=110)
    plt.close(fig)


def shape_and_colour(confusion: np.ndarray, class_names: list[str]) -> dict[str, int]:
    """Split a procedural confusion matrix (classes ``<colour>_<shape>``) into how many
    images got the shape right and how many got the colour right, whatever the other.

    Returns
    -------
    ``{"n", "shape_correct", "colour_correct"}``.
    """
    m = np.asarray(confusion)
    colour = np.array([name.split("_", 1)[0] for name in class_names])
    shape = np.array([name.split("_", 1)[1] for name in class_names])
    return {
        "n": int(m.sum()),
        "shape_correct": int(m[shape[:, None] == shape[None, :]].sum()),
        "colour_correct": int(m[colour[:, None] == colour[None, :]].sum()),
    }


def shape_colour_table(sweep: Path) -> list[dict[str, Any]]:
    """:func:`shape_and_colour` for every cell of the sweep, with Wilson 95 % intervals."""
    import json

    from pipeline.metrics import wilson_interval

    out = []
    for row in read_results(sweep / "results.csv"):
        metrics = json.loads((sweep / "cells" / row["cell"] / "manifest.json").read_text())[
            "metrics"
        ]
        split = shape_and_colour(np.array(metrics["confusion_matrix"]), metrics["class_names"])
        entry = {
            "sensor": row_label(row),
            "illuminant": row["sensor.scene.illuminant"],
            "mean_photons": row["sensor.scene.mean_photons"],
            "accuracy": row["accuracy"],
        }
        for what in ("shape", "colour"):
            k = split[f"{what}_correct"]
            lo, hi = wilson_interval(k, split["n"])
            entry |= {
                what: round(k / split["n"], 3),
                f"{what}_lo": round(lo, 3),
                f"{what}_hi": round(hi, 3),
            }
        out.append(entry)
    return out


def samples(sweep: Path, png: Path, *, image: int = 0) -> None:
    """What each trained model sees: one test image's raw stage output (what the CNN
    takes), a row per sensor (with white balance where it has one), a column per light
    level and illuminant, from the sweep's recorded cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import zarr

    rows = read_results(sweep / "results.csv")
    wanted = ["RGGB, WB", "RGBW, WB", "mono", "RGGB, no WB"]
    columns = [(light, p) for light in ("D65", "A") for p in PHOTONS]
    fig, axes = plt.subplots(
        len(wanted), len(columns), figsize=(1.6 * len(columns), 1.8 * len(wanted))
    )
    for i, label in enumerate(wanted):
        for j, (light, photons) in enumerate(columns):
            (row,) = [
                r
                for r in rows
                if row_label(r) == label
                and r["sensor.scene.illuminant"] == light
                and float(r["sensor.scene.mean_photons"]) == photons
            ]
            raw = zarr.open_group(str(sweep / "cells" / row["cell"] / "arrays.zarr"), mode="r")
            x = np.asarray(raw["raw"][image], dtype=np.float64)
            ax = axes[i, j]
            ax.imshow(np.clip(x / 0.36, 0.0, 1.0) ** (1 / 2.2), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"{light}, {photons}", fontsize=8)
            if j == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.suptitle("raw stage output (auto gain to mean 0.18; shown ×1/0.36, gamma 2.2)", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def main() -> None:
    write_csv(RESULTS / "spectral-cfa-electrons.csv", electrons_table())
    write_csv(RESULTS / "spectral-cfa-codes.csv", codes_table())
    write_csv(
        RESULTS / "spectral-cfa-colour.csv",
        [
            {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}
            for r in colour_table()
        ],
    )
    plot(RESULTS / "spectral-cfa.csv", RESULTS / "spectral-cfa-accuracy.png", ABLATION)
    sweep = ROOT / "sweeps" / "spectral-cfa"
    if sweep.is_dir():  # the cells' records live in the sweep folder, not in git
        samples(sweep, RESULTS / "spectral-cfa-samples.png")
        write_csv(RESULTS / "spectral-cfa-shape-colour.csv", shape_colour_table(sweep))


if __name__ == "__main__":
    main()
