"""A small simulated RGGB sensor's frames and its calibration, shared by the tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from calibrate.testsensor import simulate_manifest
from pipeline.calibrate import calibrate


@pytest.fixture(scope="session")
def sim_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return simulate_manifest(tmp_path_factory.mktemp("calibrate-frames"))


@pytest.fixture(scope="session")
def calibrated(sim_manifest: Path, tmp_path_factory: pytest.TempPathFactory):
    """(folder, fit) of the test sensor, 60 bootstrap replicates, with maps."""
    out = tmp_path_factory.mktemp("calibrate-out") / "twin"
    return calibrate(sim_manifest, out, replicates=60, maps=True)
