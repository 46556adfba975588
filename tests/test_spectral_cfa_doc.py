"""docs/results/spectral_cfa.py: the study's electrons per pixel and its plot."""

from __future__ import annotations

import csv
import importlib.util

import pytest
from conftest import ROOT


@pytest.fixture(scope="module")
def study():
    path = ROOT / "docs" / "results" / "spectral_cfa.py"
    spec = importlib.util.spec_from_file_location("spectral_cfa", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_mono_pixel_collects_its_qe_times_the_photons_of_all_bands(study):
    """The scene puts 3 × mean_photons over all bands on the average pixel; a flat QE of
    0.6 turns them into 0.6 · 3 · mean_photons electrons, whatever the illuminant (the
    photodetector gives float32: rel 1e-5)."""
    for light in ("D65", "A"):
        per = study.electrons_per_pixel("mono", light, 200, images=4)
        assert per == {"W": pytest.approx(0.6 * 3 * 200, rel=1e-5)}


def test_an_rgbw_sensor_reports_each_pixel_colour_and_its_w_matches_mono(study):
    per = study.electrons_per_pixel("RGBW", "D65", 20, images=4)
    assert set(per) == set("RGBW")
    assert per["W"] == pytest.approx(0.6 * 3 * 20, rel=1e-5)
    assert all(0 < per[c] < per["W"] for c in "RGB")  # a colour filter passes part


def test_plot_draws_the_results_table(study, tmp_path):
    rows = []
    for model, cfa, wb in (("procedural32-default", "RGGB", "none"), ("m", "mono", "none")):
        for light in study.ILLUMINANTS:
            for photons in study.PHOTONS:
                rows.append(
                    {
                        "model.path": f"../data/models/{model}/model.yaml",
                        "sensor.photodetector.cfa": cfa,
                        "sensor.raw.white_balance": wb,
                        "sensor.scene.illuminant": light,
                        "sensor.scene.mean_photons": photons,
                        "accuracy": 0.5,
                        "accuracy_lo": 0.45,
                        "accuracy_hi": 0.55,
                    }
                )
    results = tmp_path / "r.csv"
    study.write_csv(results, rows)
    labels = {study.row_label(r) for r in csv.DictReader(open(results))}
    assert labels == {"RGGB, no WB, shipped RGB model", "mono"}
    study.plot(results, tmp_path / "a.png")
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"


def test_mean_codes_are_the_electrons_times_the_system_gain(study):
    """The ADC's centred pedestal keeps the mean code unbiased even below one LSB:
    mean DN above black = K · (signal + dark) electrons, K = 0.0959 DN/e⁻ (10 bits over
    the 10,000 e⁻ full well), dark = 5 e⁻/s · 0.01 s."""
    per = study.codes("mono", "D65", 20, images=8)
    assert per["W"]["mean_dn"] == pytest.approx(0.0959 * (0.6 * 3 * 20 + 0.05), abs=0.05)
    assert per["W"]["at_black"] < 0.01


def test_shape_and_colour_split_a_confusion_matrix(study):
    """Counted image by image: a red disk called a blue disk has the shape right and the
    colour wrong; a red disk called a red ring the other way round."""
    names = [f"{c}_{s}" for c in ("red", "blue") for s in ("disk", "square", "ring")]
    truth = ["red_disk"] * 3 + ["blue_ring"] * 2 + ["red_square"]
    called = ["red_disk", "blue_disk", "red_ring", "blue_ring", "red_ring", "blue_disk"]
    matrix = [[0] * len(names) for _ in names]
    for t, c in zip(truth, called, strict=True):
        matrix[names.index(t)][names.index(c)] += 1
    split = study.shape_and_colour(matrix, names)
    same = [(t.split("_"), c.split("_")) for t, c in zip(truth, called, strict=True)]
    assert split == {
        "n": 6,
        "shape_correct": sum(t[1] == c[1] for t, c in same),  # 4
        "colour_correct": sum(t[0] == c[0] for t, c in same),  # 3
    }
    assert split["shape_correct"] == 4 and split["colour_correct"] == 3
