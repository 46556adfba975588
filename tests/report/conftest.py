"""Small result folders of every kind (run, sweep, training, characterisation) for the reports."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = ROOT / "configs" / "default.yaml"
SMALL = ["dataset.n=8", "run.batch_size=8", "run.record.images=4"]


@pytest.fixture(scope="session")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of the default config on 8 images, every stage recorded."""
    from pipeline.runner import run

    out = tmp_path_factory.mktemp("runs")
    result = run(DEFAULT, set=[*SMALL, f"run.out={out}", "run.name=small"], progress=False)
    assert result.path is not None
    return result.path


@pytest.fixture(scope="session")
def sweep_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2 light levels × 2 curves × 2 bit depths sweep of 8 images with SNR."""
    from pipeline.sweep.engine import run_sweep

    out = tmp_path_factory.mktemp("sweeps")
    spec = {
        "base": str(DEFAULT),
        "set": {
            "dataset.n": 8,
            "run.batch_size": 8,
            "run.samples": 0,
            "run.record": {"stages": ["raw"], "images": 2},
        },
        "axes": {
            "sensor.scene.mean_photons": [20, 2000],
            "sensor.adc.curve": ["linear", "sqrt"],
            "sensor.adc.bits": [1, 4],
        },
        "snr": {"images": 8},
        "out": str(out),
        "name": "small",
    }
    return run_sweep(spec, progress=False).path


@pytest.fixture(scope="session")
def characterize_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An EMVA 1288 datasheet of the default sensor on small frames."""
    from pipeline.characterize import MIN_LEVELS, MIN_SIZE, characterize_config

    out = tmp_path_factory.mktemp("characterize") / "sheet"
    folder, _ = characterize_config(DEFAULT, out=out, levels=MIN_LEVELS, size=2 * MIN_SIZE)
    return folder


@pytest.fixture(scope="session")
def train_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the shipped model's training folder (the report must not touch data/)."""
    dest = tmp_path_factory.mktemp("models") / "procedural32-default"
    shutil.copytree(ROOT / "data" / "models" / "procedural32-default", dest)
    return dest
