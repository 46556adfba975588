"""A small simulated RGGB sensor's frames and its calibration, shared by the tests."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from calibrate.testsensor import simulate_manifest
from pipeline.cli import main


@pytest.fixture(scope="session")
def sim_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return simulate_manifest(tmp_path_factory.mktemp("calibrate-frames"))


@pytest.fixture(scope="session")
def calibrated_cli(sim_manifest: Path, tmp_path_factory: pytest.TempPathFactory):
    """``sensorlab calibrate`` of the test sensor through the command line (60 bootstrap
    replicates, with maps and the report): (status, printed text, folder, fit)."""
    out = tmp_path_factory.mktemp("calibrate-out") / "twin"
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        status = main(
            ["calibrate", str(sim_manifest), "--out", str(out), "--replicates", "60", "--maps"]
        )
    return status, text.getvalue(), out, json.loads((out / "fit.json").read_text())


@pytest.fixture(scope="session")
def calibrated(calibrated_cli):
    """(folder, fit) of the test sensor (see ``calibrated_cli``)."""
    return calibrated_cli[2], calibrated_cli[3]
