"""design_adc end to end: held-out test images, reuse, exact resume, Dask, bad input."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml
from conftest import ROOT, sensorlab

import pipeline.design.cell as cell_module
from pipeline.design import design_adc
from pipeline.design.front import load_front
from pipeline.errors import UserError
from pipeline.metrics import wilson_interval

TINY = {
    "base": str(ROOT / "configs" / "default.yaml"),
    "set": {"dataset.n": 48, "run.samples": 0},
    "lights": [200],
    "bits": [3],
    "validation": {"split": "val", "images": 24},
    "test": {"split": "test", "images": 40},
    "search": {"popsize": 4, "generations": 2, "seed": 1},
}


def _design(tmp_path, name="d.yaml", **changes):
    path = tmp_path / name
    path.write_text(yaml.safe_dump({**TINY, **changes}, sort_keys=False))
    return path


def _records(result):
    return {r["cell"]: r for r in result.records}


def test_the_winner_and_every_baseline_are_scored_on_images_the_search_never_saw(tmp_path):
    result = design_adc(_design(tmp_path), out=tmp_path / "out", progress=False)
    (rec,) = result.records
    assert set(rec["curves"]) == {
        "designed",
        "linear",
        "log",
        "sqrt",
        "equal_probability",
        "lloyd_max",
    }
    # the winner is the best table evaluated, the initial tables among them
    designed_val = rec["curves"]["designed"]["val"]["accuracy"]
    assert designed_val >= max(np.floor(f * 24) / 24 for f in rec["initial_fitness"].values())
    assert rec["images"] == {"val": 24, "test": 40}
    for res in rec["curves"].values():
        test = res["test"]
        assert test["n"] == 40
        assert (test["lo"], test["hi"]) == pytest.approx(wilson_interval(test["correct"], 40))
    fronts = {p.name.rsplit("-", 1)[1]: load_front(p) for p in (result.path / "fronts").iterdir()}
    assert set(fronts) == {"val.npz", "test.npz"}
    assert not set(fronts["val.npz"].keys) & set(fronts["test.npz"].keys)
    t = np.asarray(rec["thresholds"])
    assert t.size == rec["n_thresholds"] == 7 and np.all(np.diff(t) > 0)
    with open(result.path / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 9 and {r["curve"] for r in rows} >= {"designed", "linear", "log_ranged"}
    assert any(r["on_front"] == "True" for r in rows)
    assert (result.path / "pareto.png").stat().st_size > 0


def test_a_finished_search_is_reused_and_an_interrupted_one_resumes_exactly(tmp_path, monkeypatch):
    design = _design(tmp_path)
    whole = design_adc(design, out=tmp_path / "a", progress=False)
    again = design_adc(design, out=tmp_path / "a", progress=False)
    assert again.computed == []
    assert again.reused == ["light200-bits3-default", "ranges/light200-bits3-default"]

    save = cell_module.save_checkpoint

    def save_then_stop(path, state, extra):
        save(path, state, extra)
        if state.generation == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(cell_module, "save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        design_adc(design, out=tmp_path / "b", progress=False)
    monkeypatch.setattr(cell_module, "save_checkpoint", save)
    (folder,) = (tmp_path / "b" / "d" / "searches").iterdir()
    assert (folder / "checkpoint.pkl").is_file() and not (folder / "result.json").exists()
    resumed = design_adc(design, out=tmp_path / "b", progress=False)
    a, b = whole.records[0], resumed.records[0]
    assert a["thresholds"] == b["thresholds"]
    assert a["history"] == b["history"] and a["curves"] == b["curves"]
    assert not (folder / "checkpoint.pkl").exists()


def test_another_search_setting_is_another_search(tmp_path):
    first = design_adc(_design(tmp_path), out=tmp_path / "o", progress=False)
    other = design_adc(
        _design(tmp_path, search={**TINY["search"], "seed": 2}), out=tmp_path / "o", progress=False
    )
    assert other.computed == ["light200-bits3-default"]
    assert first.records[0]["key"] != other.records[0]["key"]
    spec = json.loads((first.path / "design.json").read_text())
    assert (
        spec["spec"]["search"]["seed"] == 2 and len(list((first.path / "searches").iterdir())) == 2
    )


@pytest.mark.slow
def test_a_dask_worker_gives_the_same_record(tmp_path):
    local = design_adc(_design(tmp_path), out=tmp_path / "a", progress=False)
    dask = design_adc(_design(tmp_path), out=tmp_path / "b", workers=1, progress=False)
    a, b = local.records[0], dask.records[0]
    for key in ("search_seconds", "wall_seconds"):
        a.pop(key), b.pop(key)
    assert a == b


@pytest.mark.slow
def test_a_fine_tuned_search_trains_on_the_train_split_and_scores_on_test(tmp_path):
    design = _design(
        tmp_path,
        fine_tune={"epochs": 1, "images": 24, "lr": 1e-3},
        search={"popsize": 2, "generations": 1},
    )
    result = design_adc(design, out=tmp_path / "out", progress=False)
    fronts = {p.name.rsplit("-", 1)[1]: load_front(p) for p in (result.path / "fronts").iterdir()}
    assert set(fronts) == {"val.npz", "test.npz", "train.npz"} and len(fronts["train.npz"]) == 24
    assert not set(fronts["train.npz"].keys) & set(fronts["test.npz"].keys)
    assert result.records[0]["curves"]["designed"]["test"]["n"] == 40


@pytest.mark.parametrize(
    ("changes", "key", "fragment"),
    [
        ({"serach": {}}, "serach", "unknown key (did you mean 'search'?)"),
        ({"test": {"split": "val"}}, "test.split", "the search never sees"),
        ({"bits": [0]}, "bits[0]", "greater than or equal to 1"),
        ({"base": "nowhere.yaml"}, "base", "base config not found"),
        ({"noise": {"dark": {"sensor.scene.mean_photons": 5}}}, "noise.dark", "set by the design"),
        ({"lights": [20, 20]}, "lights", "listed twice"),
        ({"set": {"model": None}}, "model", "needs a model"),  # named in the base config
        ({"set": {"sensor.adc.rounding": "nearest"}}, "sensor[3].adc.rounding", "takes rounding"),
    ],
)
def test_bad_input_is_one_line_naming_file_and_key_and_writes_nothing(
    tmp_path, changes, key, fragment
):
    design = _design(tmp_path, **changes)
    with pytest.raises(UserError) as info:
        design_adc(design, out=tmp_path / "out", progress=False)
    text = str(info.value)
    assert "\n" not in text and fragment in text and f": {key}: " in text
    file = TINY["base"] if key.startswith(("model", "sensor")) else str(design)
    assert text.startswith(f"{file}: ")
    assert not (tmp_path / "out").exists()


def test_the_cli_exits_2_with_one_line(tmp_path):
    design = _design(tmp_path, search={"popsize": 1})
    proc = sensorlab("design-adc", design, "--out", tmp_path / "out", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "search.popsize" in proc.stderr and "d.yaml" in proc.stderr
    assert not (tmp_path / "out").exists()
