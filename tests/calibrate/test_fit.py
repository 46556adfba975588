"""The fit recovers the simulated sensor's parameters; the streaming statistics equal the
in-memory EMVA 1288 equations of pipeline.emva on the same stack."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from calibrate.testsensor import TRUE_ADC, TRUE_PD
from pipeline import emva
from pipeline.calibrate import calibrate
from pipeline.calibrate.stream import LevelAccumulator


def test_stream_equals_the_stack_equations() -> None:
    rng = np.random.default_rng(0)
    rows = rng.normal(0, 2, (32, 1))
    stack = 100 + rows + rng.normal(0, 3, (32, 48)) + rng.normal(0, 1.5, (9, 32, 48))
    stack += rng.normal(0, 0.7, (9, 32, 1))  # row temporal noise
    stack += rng.normal(0, 0.5, (9, 1, 48))  # column temporal noise
    acc = LevelAccumulator((32, 48), (1, 1))
    for frame in stack:
        acc.add(frame)
    stats = acc.finish()
    ref = emva.spatial_decomposition(stack, col_temporal=True)
    got = stats.decomposition((1, 1), 0, 0)
    fields = ("mean_dn", "total_dn2", "row_dn2", "col_dn2", "pixel_dn2")
    for field in (*fields, "row_temporal_dn2", "col_temporal_dn2"):
        assert getattr(got, field) == pytest.approx(getattr(ref, field), rel=1e-9, abs=1e-12)
    # the pairs: (0, 1), (2, 3), ... ; the 9th frame has no partner
    for p in range(4):
        mu, var = emva.pair_statistics(stack[2 * p], stack[2 * p + 1])
        assert stats.pair_mean_dn[p, 0, 0] == pytest.approx(mu)
        assert stats.pair_var_dn2[p, 0, 0] == pytest.approx(var)


@pytest.mark.parametrize(
    ("name", "true"),
    [
        ("system_gain_dn_per_e", TRUE_ADC["system_gain_dn_per_e"]),
        ("black_level_dn", TRUE_ADC["black_level_dn"]),
        ("read_noise_e", TRUE_PD["read_noise_e"]),
        ("full_well_e", TRUE_PD["full_well_e"]),
        ("dark_current_e_per_s", TRUE_PD["dark_current_e_per_s"]),
        ("dsnu_e", TRUE_PD["dsnu_e"]),
        ("prnu_pct", TRUE_PD["prnu_pct"]),
        ("row_noise_e", TRUE_PD["row_noise_e"]),
        ("col_noise_e", TRUE_PD["col_noise_e"]),
        ("row_offset_fpn_e", TRUE_PD["row_offset_fpn_e"]),
        ("col_offset_fpn_e", TRUE_PD["col_offset_fpn_e"]),
        ("row_gain_fpn_pct", TRUE_PD["row_gain_fpn_pct"]),
        ("col_gain_fpn_pct", TRUE_PD["col_gain_fpn_pct"]),
    ],
)
def test_fit_recovers_the_true_parameter(calibrated, name: str, true: float) -> None:
    fig = calibrated[1]["sensor"][name]
    # within 4 standard errors (the 95 % coverage itself is the round-trip test's)
    assert abs(fig["value"] - true) <= 4 * fig["stderr"], fig
    assert fig["stderr"] < 0.3 * true


def test_qe_per_channel(calibrated) -> None:
    for letter, true in zip("RGB", TRUE_PD["qe"], strict=True):
        fig = calibrated[1]["channels"][letter]["quantum_efficiency"]
        assert fig["value"] == pytest.approx(true, rel=0.02)


def test_folder_holds_the_twin_the_fit_and_the_maps(calibrated) -> None:
    folder, fit = calibrated
    assert json.loads((folder / "fit.json").read_text())["cfa"] == "RGGB"
    rows = yaml.safe_load((folder / "sensor.yaml").read_text())["sensor"]
    assert [r["stage"] for r in rows] == ["scene", "photodetector", "adc", "raw"]
    assert rows[2]["bits"] == 12 and rows[2]["black_level_dn"] == 200
    assert rows[1]["col_noise_e"] == pytest.approx(fit["sensor"]["col_noise_e"]["value"], rel=1e-4)
    assert np.load(folder / "dsnu_map.npy").shape == (64, 64)
    prnu = np.load(folder / "prnu_map.npy")
    assert prnu.mean() == pytest.approx(1.0)
    report = (folder / "report.html").read_text()
    assert len(report) > 10_000
    assert "<title>sensorlab: calibration twin</title>" in report  # not the temporary name
    # every figure has a value, a standard error and an interval around the value
    for name, fig in fit["sensor"].items():
        low, high = fig["ci95"]
        assert low <= fig["value"] <= high or fig["value"] == 0, name


def test_black_level_error_against_the_nominal(sim_manifest, tmp_path) -> None:
    spec = yaml.safe_load(sim_manifest.read_text())
    manifest = sim_manifest.parent / "with_black.yaml"
    manifest.write_text(yaml.safe_dump({**spec, "black_level_dn": 199}))
    _, fit = calibrate(manifest, tmp_path / "out", replicates=20, report=False)
    error = fit["sensor"]["black_level_error_dn"]
    assert error["value"] == pytest.approx(fit["sensor"]["black_level_dn"]["value"] - 199)
    assert error["ci95"][0] < 1.0 < error["ci95"][1]  # the true black level is 200
    rows = yaml.safe_load((tmp_path / "out" / "sensor.yaml").read_text())["sensor"]
    assert rows[2]["black_level_dn"] == 199  # the nominal, the rest as offset_lsb
    assert rows[2]["offset_lsb"] == pytest.approx(error["value"], abs=1e-3)
