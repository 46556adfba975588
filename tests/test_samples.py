"""samples.png and the display of recorded images: true class and prediction, no moiré,
negative values visible."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.config import load_config
from pipeline.runner import build_chain, open_config_dataset, run
from pipeline.samples import (
    display_image,
    display_levels,
    offset_note,
    prediction_text,
    samples_grid,
    spectral_display_rgb,
)

ROOT = Path(__file__).resolve().parents[1]
BAYER = [["R", "G"], ["G", "B"]]


def _srgb(v: float) -> float:
    """IEC 61966-2-1 encoding, written out here."""
    return 12.92 * v if v <= 0.0031308 else 1.055 * v ** (1 / 2.4) - 0.055


def test_prediction_text_names_the_true_class_and_marks_wrong_answers() -> None:
    names = ["disk", "ring"]
    assert prediction_text(1, 1, names) == ("true ring\n→ ring ✓", True)
    assert prediction_text(0, 1, names) == ("true ring\n→ disk ✗ wrong", False)
    assert prediction_text(0, None, names) == ("→ disk", None)


def test_cnn_column_shows_true_class_and_prediction() -> None:
    loaded = load_config(ROOT / "configs" / "default.yaml", ["dataset.n=4", "run.batch_size=4"])
    chain = build_chain(loaded, open_config_dataset(loaded).info())
    result = run(loaded, store=False, progress=False)
    names = chain.classifier.model.class_names
    labels = result.predictions.copy()
    labels[0] = (labels[0] + 1) % len(names)  # image 0: a wrong answer
    fig = samples_grid(result.arrays, chain, 2, labels=labels)
    captions = [ax.get_xlabel() for ax in fig.axes if ax.get_xlabel().startswith("true")]
    assert captions == [
        f"true {names[labels[0]]}\n→ {names[result.predictions[0]]} ✗ wrong",
        f"true {names[labels[1]]}\n→ {names[labels[1]]} ✓",
    ]


def test_large_mosaic_is_area_averaged_per_filter_colour_without_moire() -> None:
    grey = np.full((1024, 1024), 100.0)  # a flat field: every photosite alike
    out = display_image(grey, "electrons", {"cfa_tile": BAYER}, max_px=256)
    assert out.shape == (256, 256, 3)
    np.testing.assert_allclose(out, 1.0)  # uniform white at every pixel, R = G = B
    small = display_image(grey[:32, :32], "electrons", {"cfa_tile": BAYER}, max_px=256)
    assert small.shape == (32, 32, 3)  # shown 1:1, as a mosaic
    np.testing.assert_allclose(small[:2, :2], [[[1, 0, 0], [0, 1, 0]], [[0, 1, 0], [0, 0, 1]]])


def test_large_planes_are_area_averaged_in_linear_light() -> None:
    stripes = np.zeros((1000, 1000, 3))
    stripes[:, ::2] = 1.0  # one-pixel stripes alias to bands if decimated
    out = display_image(stripes, "photons", {}, max_px=256)
    assert out.shape == (250, 250, 3)
    np.testing.assert_allclose(out, _srgb(0.5), rtol=1e-12)


def test_negative_values_are_shown_below_a_marked_zero() -> None:
    x = np.array([[[-0.1], [0.0]], [[0.5], [1.0]]]).repeat(3, axis=2)
    lo, hi = display_levels(x, "unitless", {})
    assert lo == -0.1 and hi == np.percentile(x, 99.5)
    out = display_image(x, "unitless", {})
    assert out[0, 0, 0] == 0.0 and out[0, 1, 0] == _srgb(0.1 / (hi + 0.1)) > 0.0
    assert offset_note(x, "unitless", {}) == f"min -0.1 black, 0 = grey {_srgb(0.1 / 1.1):.2f}"
    assert offset_note(np.abs(x), "unitless", {}) is None


def test_dn_below_the_black_level_counts_as_negative() -> None:
    dn = np.array([[60, 64], [100, 200]], dtype=np.uint16)
    assert display_levels(dn, "DN", {"black_level_dn": 64})[0] == -4.0


def test_a_spectral_panel_shows_long_bands_red_and_short_bands_blue() -> None:
    bands = (450.0, 550.0, 650.0, 700.0)
    x = np.zeros((4, 4, 4))
    x[:2, :, 2:] = 100.0  # light at 650 and 700 nm in the top half
    x[2:, :, 0] = 100.0  # light at 450 nm in the bottom half
    attrs = {"spectral": True, "wavelength_nm": bands}
    np.testing.assert_array_equal(spectral_display_rgb(x, bands)[0, 0], [100.0, 0.0, 0.0])
    shown = display_image(x, "photons", attrs)
    assert shown[0, 0, 0] > 0.9 and shown[0, 0, 1:].max() == 0.0
    assert shown[3, 0, 2] > 0.9 and shown[3, 0, :2].max() == 0.0
