"""The shipped models in data/models/: they load, their configs run, and the default run
reports the accuracy they were shipped with."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import ROOT

from pipeline.cnn.model import load_model
from pipeline.runner import run

MODELS = ROOT / "data" / "models"


#: the spectral-CFA study's models (docs/results/spectral-cfa.md) and the validation
#: accuracy each must reach: RGBW takes its chroma from half as many pixels, at the
#: resolution of the sparse colour planes (demosaic: rgbw_fusion; measured 0.957 with white
#: balance and 0.954 without, 0.946 with the bilinear demosaic that ignored W); half the
#: procedural label is colour (red or blue, about the same luminance), which a monochrome
#: sensor cannot see, so its ceiling is near 0.5
SPECTRAL = {
    "spectral-rggb-wb": 0.95,
    "spectral-rggb-nowb": 0.95,
    "spectral-rgbw-wb": 0.93,
    "spectral-rgbw-nowb": 0.93,
    "spectral-mono": 0.4,
}


@pytest.mark.parametrize(
    "name", ["procedural32-default", "procedural32-clean", "digits32", *SPECTRAL]
)
def test_shipped_model_folder_is_complete_and_loads(name):
    folder = MODELS / name
    for part in ("model.yaml", "model.npz", "config.yaml", "metrics.json", "history.csv"):
        assert (folder / part).is_file(), part
    model = load_model(folder / "model.yaml")  # refuses weights made for another graph
    assert model.input_shape == (3, 32, 32) and len(model.class_names) == 10
    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert config["model"] == {"path": "model.yaml", "weights": "model.npz"}
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["accuracy"] >= SPECTRAL.get(name, 0.95)  # validation, when trained
    assert not (folder / "report.html").exists()  # 150 kB that the folder does not need


def test_default_run_accuracy_is_pinned(tmp_path):
    """configs/default.yaml: 1,000 test images through the 10-bit sensor; measured 0.993."""
    result = run(ROOT / "configs" / "default.yaml", store=False, progress=False)
    assert result.metrics["n"] == 1000
    assert 0.98 <= result.metrics["accuracy"] <= 1.0
    assert result.class_names[0] == "red_disk"


def test_fewer_bits_cost_accuracy_in_dim_light():
    """The reason the study exists: at 200 photons per pixel a 6-bit linear ADC leaves the
    mean signal below one code and the classifier fails; 10 bits keep it working."""
    low, high = (
        run(
            ROOT / "configs" / "default.yaml",
            store=False,
            progress=False,
            set={"sensor.adc.bits": bits, "sensor.scene.mean_photons": 200, "dataset.n": 300},
        ).metrics["accuracy"]
        for bits in (6, 10)
    )
    assert high > 0.9 and low < 0.7


def test_run_with_a_model_writes_the_confusion_matrix_picture(tmp_path):
    result = run(
        ROOT / "configs" / "default.yaml",
        progress=False,
        set={"dataset.n": 40, "run.out": str(tmp_path), "run.name": "r"},
    )
    assert sorted(p.name for p in result.path.iterdir()) == [
        "arrays.zarr",
        "confusion.png",
        "manifest.json",
        "samples.png",
    ]
    assert (result.path / "confusion.png").stat().st_size > 5000
    assert len(result.metrics["confusion_matrix"]) == 10
