"""Range-matched baselines: each fixed curve at its best full scale, chosen on validation."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import yaml
from conftest import ROOT

from pipeline.design import design_adc
from pipeline.design.ranged import full_scale_grid
from pipeline.errors import UserError
from pipeline.metrics import wilson_interval

TINY = {
    "base": str(ROOT / "configs" / "default.yaml"),
    "set": {"dataset.n": 48, "run.samples": 0},
    "lights": [20],
    "bits": [3],
    "validation": {"split": "val", "images": 24},
    "test": {"split": "test", "images": 40},
    "search": {"popsize": 4, "generations": 1, "seed": 1},
    "range_match": {"points": 4, "curves": ["linear", "log"]},
}


def _design(tmp_path, **changes):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({**TINY, **changes}, sort_keys=False))
    return path


def test_the_grid_runs_log_spaced_from_the_signal_quantile_to_the_full_well():
    signal = np.arange(1.0, 1001.0)  # the 0.99 quantile (linear interpolation) is 990.01
    grid = full_scale_grid(signal, 10_000.0, points=5, quantile=0.99)
    assert grid[0] == pytest.approx(990.01) and grid[-1] == pytest.approx(10_000.0)
    np.testing.assert_allclose(grid[1:] / grid[:-1], (10_000.0 / 990.01) ** 0.25)


def test_the_grid_starts_at_one_electron_at_most_at_the_full_well_and_one_point_is_it():
    assert full_scale_grid(np.zeros(10), 100.0, points=3, quantile=0.99)[0] == 1.0
    np.testing.assert_array_equal(
        full_scale_grid(np.full(10, 500.0), 100.0, points=2, quantile=0.5), [100.0, 100.0]
    )
    np.testing.assert_array_equal(
        full_scale_grid(np.arange(9.0), 50.0, points=1, quantile=0.9), [50.0]
    )


def test_each_curve_keeps_its_best_validation_full_scale_and_is_scored_once_on_test(tmp_path):
    result = design_adc(_design(tmp_path), out=tmp_path / "out", progress=False)
    (rec,) = result.records
    (ranged,) = result.ranges
    assert set(ranged["curves"]) == {"linear", "log"}
    for curve, res in ranged["curves"].items():
        fitness = res["val_fitness"]
        assert len(fitness) == len(res["grid_e"]) + 1 == 5
        best = int(np.argmax(fitness))
        assert res["full_scale_e"] == [None, *res["grid_e"]][best]
        # the base's gain is the first tried: its score is the search's fixed-curve score
        base_val = rec["curves"][curve]["val"]
        assert np.floor(fitness[0] * 24 + 1e-9) == base_val["correct"]
        assert res["val"]["accuracy"] >= base_val["accuracy"]
        test = res["test"]
        assert test["n"] == 40
        assert (test["lo"], test["hi"]) == pytest.approx(wilson_interval(test["correct"], 40))
    # at 20 photons a full scale far below the full well wins for the linear curve
    assert ranged["curves"]["linear"]["full_scale_e"] < 0.1 * ranged["full_well_e"]
    with open(result.path / "results.csv", newline="") as f:
        rows = {r["curve"]: r for r in csv.DictReader(f)}
    assert {"linear_ranged", "log_ranged", "designed", "linear"} <= set(rows)
    assert float(rows["linear_ranged"]["full_scale_e"]) == pytest.approx(
        ranged["curves"]["linear"]["full_scale_e"], rel=1e-5
    )


def test_a_finished_range_match_is_reused_and_new_options_rerun_only_it(tmp_path):
    out = tmp_path / "out"
    first = design_adc(_design(tmp_path), out=out, progress=False)
    assert first.computed == ["ranges/light20-bits3-default", "light20-bits3-default"]
    again = design_adc(_design(tmp_path), out=out, progress=False)
    assert again.computed == [] and again.ranges == first.ranges
    changed = design_adc(_design(tmp_path, range_match={"points": 2}), out=out, progress=False)
    assert changed.computed == ["ranges/light20-bits3-default"]
    assert changed.records == first.records
    assert len(changed.ranges[0]["curves"]["linear"]["grid_e"]) == 2


def test_without_range_match_there_are_no_ranged_rows(tmp_path):
    result = design_adc(_design(tmp_path, range_match=None), out=tmp_path / "o", progress=False)
    assert result.ranges == [] and not (result.path / "ranges").exists()
    assert not any(r["curve"].endswith("_ranged") for r in result.rows)


def test_a_search_can_start_from_the_range_matched_curves(tmp_path):
    design = _design(tmp_path, initial=["linear", "linear_ranged", "log_ranged"])
    result = design_adc(design, out=tmp_path / "out", progress=False)
    assert result.computed == ["ranges/light20-bits3-default", "light20-bits3-default"]
    (rec,) = result.records
    assert set(rec["initial_fitness"]) == {"linear", "linear_ranged", "log_ranged"}
    # at 20 photons the range-matched linear start beats linear at the base's gain
    assert rec["initial_fitness"]["linear_ranged"] > rec["initial_fitness"]["linear"]
    best_start = max(rec["initial_fitness"].values())
    assert rec["curves"]["designed"]["val"]["correct"] >= np.floor(best_start * 24 + 1e-9)


def test_a_table_can_take_the_best_range_matched_full_scale(tmp_path):
    design = _design(
        tmp_path,
        initial=["linear", "linear_ranged"],
        range_match={"points": 4, "curves": ["linear"]},
        table_full_scale="range_matched",
    )
    result = design_adc(design, out=tmp_path / "out", progress=False)
    (rec,), (ranged,) = result.records, result.ranges
    best = max(ranged["curves"].values(), key=lambda c: max(c["val_fitness"]))
    want = best["full_scale_e"] or best["default_full_scale_e"]
    assert rec["table_full_scale_e"] == want < 0.1 * rec["full_well_e"]
    # at the curve's own full scale its table copy decodes (almost) like the curve: the
    # same right answers as the range-matched curve on validation
    start = rec["initial_fitness"]["linear_ranged"]
    assert np.floor(start * 24 + 1e-9) == ranged["curves"]["linear"]["val"]["correct"]
    assert rec["curves"]["designed"]["test"]["n"] == 40


def test_the_full_well_table_scale_keeps_the_searches_keys(tmp_path):
    out = tmp_path / "out"
    first = design_adc(_design(tmp_path), out=out, progress=False)
    same = design_adc(_design(tmp_path, table_full_scale="full_well"), out=out, progress=False)
    assert same.computed == [] and same.records == first.records
    assert first.records[0]["table_full_scale_e"] == first.records[0]["full_well_e"]


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"initial": ["sqrt_ranged"]}, "initial"),
        ({"initial": ["log_ranged"], "range_match": None}, "initial"),
        ({"table_full_scale": "range_matched", "range_match": None}, "table_full_scale"),
        ({"table_full_scale": "gain"}, "table_full_scale"),
        ({"range_match": {"quantile": 0}}, "range_match.quantile"),
        ({"range_match": {"points": 0}}, "range_match.points"),
        ({"range_match": {"curves": ["table"]}}, "range_match.curves[0]"),
    ],
)
def test_bad_range_options_are_one_line_and_write_nothing(tmp_path, changes, key):
    design = _design(tmp_path, **changes)
    with pytest.raises(UserError) as info:
        design_adc(design, out=tmp_path / "out", progress=False)
    assert "\n" not in str(info.value) and f"{design}: {key}: " in str(info.value)
    assert not (tmp_path / "out").exists()
