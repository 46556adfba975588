"""Sweeps: validation up front, results.csv, SNR, plots, resume, engines bit for bit, the CLI."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr
from conftest import ROOT, TOY_STAGES, write_plugin

from pipeline.cli.sweep import summary
from pipeline.config import load_config
from pipeline.errors import UserError
from pipeline.registry import Registry
from pipeline.runner import open_config_dataset, run
from pipeline.stage import Stage, StageParams, Unit, param
from pipeline.sweep import run_sweep
from pipeline.sweep.cell import folder_checksum, read_record
from pipeline.sweep.snr import SnrSums, snr_db


# --------------------------------------------------------------------------- toy stages
class ToyDetector(Stage):
    """Photons to electrons with switchable Poisson shot noise and Gaussian read noise."""

    name = "toy_det"
    takes = (Unit.PHOTONS,)
    gives = Unit.ELECTRONS

    class Params(StageParams):
        shot_noise: bool = param(True, doc="Poisson shot noise on.")
        read_noise_e: float = param(0.0, unit="e-", doc="Read noise rms.", ge=0)

    def setup(self, info):
        return info.evolve(unit=self.gives, dtype=np.float64)

    def process(self, x, batch):
        out = []
        for rng, xi in zip(self.image_rngs(batch.image_index), x, strict=True):
            e = rng.poisson(xi).astype(np.float64) if self.params.shot_noise else xi.copy()
            if self.params.read_noise_e > 0:
                e += rng.normal(0.0, self.params.read_noise_e, xi.shape)
            out.append(e)
        return np.stack(out)


class ToyRaw(Stage):
    """DN to [0, 1] floats (what a classifier takes)."""

    name = "toy_raw"
    takes = (Unit.DN,)
    gives = Unit.UNITLESS

    def setup(self, info):
        self.full_scale = float(2 ** info.attrs["bits"] - 1)
        return info.evolve(unit=self.gives, dtype=np.float32)

    def process(self, x, batch):
        return (x / self.full_scale).astype(np.float32)


STAGES = [*TOY_STAGES, ToyDetector, ToyRaw]
REFERENCE = {"sensor.toy_det.shot_noise": False, "sensor.toy_det.read_noise_e": 0.0}
BITS, PHOTONS = [2, 4, 8], [50, 500]


@pytest.fixture
def registry() -> Registry:
    return Registry(STAGES, entry_points=False)


@pytest.fixture
def sweep_file(tmp_path) -> Path:
    """A base config (toy chain, 40 labelled 8×8 images) and a 3×2 sweep over bits and light."""
    rng = np.random.default_rng(123)
    x = rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "toy.npz", x=x, y=np.arange(40) % 4)
    base = {
        "seed": 7,
        "dataset": {"kind": "npz", "path": "../toy.npz", "split": "all"},
        "sensor": [
            {"stage": "toy_scene", "photons": 500},
            {"stage": "toy_det", "read_noise_e": 1.5},
            {"stage": "toy_adc", "bits": 8},
            {"stage": "toy_raw"},
        ],
        "run": {"batch_size": 16, "record": {"images": "all"}, "samples": 0},
    }
    (tmp_path / "configs").mkdir()
    _dump(tmp_path / "configs" / "base.yaml", base)
    sweep = {
        "base": "base.yaml",
        "axes": {"sensor.toy_adc.bits": BITS, "sensor.toy_scene.photons": PHOTONS},
        "snr": {"reference": REFERENCE},
        "out": str(tmp_path / "sweeps"),
        "name": "bitdepth",
    }
    return _dump(tmp_path / "configs" / "sweep.yaml", sweep)


def _dump(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _arrays(cell_dir: Path) -> dict[str, np.ndarray]:
    group = zarr.open_group(str(cell_dir / "arrays.zarr"), mode="r")
    return {name: group[name][:] for name in group.array_keys()}


def _labels(config: Path, registry: Registry) -> np.ndarray:
    """The labels of a config's dataset, in the order the runner streams them."""
    dataset = open_config_dataset(load_config(config, registry=registry))
    return dataset.read(0, len(dataset))[1]


def _wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson (1927) score interval, written out independently of pipeline.metrics."""
    p = k / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - spread) / (1 + z * z / n), (centre + spread) / (1 + z * z / n)


# --------------------------------------------------------------------------- SNR
def test_snr_db_matches_the_definition():
    ref = np.array([[3.0, 4.0]])
    out = np.array([[3.0, 5.0]])
    assert snr_db(out, ref) == pytest.approx(10 * math.log10(25.0))  # Σref² = 25, Σd² = 1
    assert snr_db(ref, ref) == math.inf
    # a black reference has no signal to compare with: undefined, never nan or -inf
    assert snr_db(np.ones((1, 2)), np.zeros((1, 2))) is None
    assert snr_db(np.zeros((1, 2)), np.zeros((1, 2))) is None
    with pytest.raises(ValueError, match="shapes differ"):
        snr_db(np.zeros((1, 3)), np.zeros((1, 2)))
    # integer codes: the difference is taken in float64 (no uint wrap-around)
    assert snr_db(np.array([[2]], np.uint16), np.array([[4]], np.uint16)) == pytest.approx(
        10 * math.log10(16 / 4)
    )
    # batches accumulate to the same value as one call on everything
    rng = np.random.default_rng(0)
    ref = rng.uniform(0, 1, (10, 5, 5, 3))
    out = ref + rng.normal(0, 0.1, ref.shape)
    sums = SnrSums()
    for i in range(0, 10, 3):
        sums.add(out[i : i + 3], ref[i : i + 3])
    assert sums.images == 10
    assert sums.db == pytest.approx(snr_db(out, ref), rel=1e-12)
    # bit for bit the same for any batch split (no BLAS, images summed in order)
    for size in (1, 4, 10):
        other = SnrSums()
        for i in range(0, 10, size):
            other.add(out[i : i + size], ref[i : i + size])
        assert (other.signal_sq, other.noise_sq) == (sums.signal_sq, sums.noise_sq)


def test_snr_of_gaussian_noise_on_a_constant_is_20_log_c_over_sigma():
    rng = np.random.default_rng(1)
    ref = np.full((50, 64, 64), 2.0)
    out = ref + rng.normal(0.0, 0.25, ref.shape)
    assert snr_db(out, ref) == pytest.approx(20 * math.log10(2.0 / 0.25), abs=0.02)


# --------------------------------------------------------------------------- a whole sweep
def test_grid_sweep_writes_cells_table_and_plots(sweep_file, registry, tmp_path):
    res = run_sweep(sweep_file, registry=registry)
    folder = tmp_path / "sweeps" / "bitdepth"
    assert res.path == folder
    ids = [
        "c000-bits2-photons50",
        "c001-bits2-photons500",
        "c002-bits4-photons50",
        "c003-bits4-photons500",
        "c004-bits8-photons50",
        "c005-bits8-photons500",
    ]
    assert res.cells == ids and res.computed == ids and res.skipped == []
    rows = _read_csv(folder / "results.csv")
    assert list(rows[0]) == [
        "cell",
        "sensor.toy_adc.bits",
        "sensor.toy_scene.photons",
        "n",
        "correct",
        "accuracy",
        "accuracy_lo",
        "accuracy_hi",
        "snr_db",
        "psnr_db",
        "ssim",
        "wall_seconds",
    ]
    assert [r["cell"] for r in rows] == ids
    expected_axes = [(str(b), str(p)) for b in BITS for p in PHOTONS]
    assert [(r["sensor.toy_adc.bits"], r["sensor.toy_scene.photons"]) for r in rows] == (
        expected_axes
    )
    for row, table_row in zip(rows, res.table, strict=True):
        assert row["n"] == "40"
        assert row["accuracy"] == row["accuracy_lo"] == "" and row["correct"] == ""  # no model
        assert float(row["wall_seconds"]) > 0
        assert float(row["snr_db"]) == table_row["snr_db"]  # repr round-trips exactly

    base = tmp_path / "configs" / "base.yaml"
    for cell_id, (bits, photons), table_row in zip(ids, expected_axes, res.table, strict=True):
        cell_dir = folder / "cells" / cell_id
        manifest = json.loads((cell_dir / "manifest.json").read_text())
        assert manifest["config"]["run"]["name"] == cell_id
        assert manifest["config"]["sensor"][2]["bits"] == int(bits)
        assert manifest["config"]["sensor"][0]["photons"] == float(photons)
        # the cell's records are exactly a plain run of the base config with the cell's values
        overrides = {"sensor.toy_adc.bits": int(bits), "sensor.toy_scene.photons": int(photons)}
        direct = run(base, set=overrides, registry=registry, store=False)
        recorded = _arrays(cell_dir)
        assert sorted(recorded) == sorted(direct.arrays)
        for name, arr in direct.arrays.items():
            assert recorded[name].dtype == arr.dtype
            np.testing.assert_array_equal(recorded[name], arr)
        # SNR against an independent noise-free run, computed here from the definition
        ref = run(base, set={**overrides, **REFERENCE}, registry=registry, store=False)
        out, clean = direct.arrays["toy_raw"].astype(float), ref.arrays["toy_raw"].astype(float)
        expected = 10 * math.log10((clean**2).sum() / ((out - clean) ** 2).sum())
        assert table_row["snr_db"] == pytest.approx(expected, rel=1e-12)

    snr = {
        (r["sensor.toy_adc.bits"], r["sensor.toy_scene.photons"]): float(r["snr_db"]) for r in rows
    }
    assert snr[("8", "500")] > snr[("8", "50")]  # more light, less relative shot noise

    names = sorted(p.name for p in res.plots)
    assert names == ["samples_grid.png", "snr.png"]  # no model: no accuracy figure
    import matplotlib.image

    for p in res.plots:
        img = matplotlib.image.imread(p)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    grid = matplotlib.image.imread(folder / "samples_grid.png")
    assert grid.shape[1] > grid.shape[0]  # 3 bit depths across, 2 light levels down
    sweep_json = json.loads((folder / "sweep.json").read_text())
    assert [c["id"] for c in sweep_json["cells"]] == ids
    assert sweep_json["base"] == str(base)


def test_snr_of_shot_noise_alone_follows_poisson_statistics(tmp_path, registry, sweep_file):
    # Electrons with shot noise only: Σ(out − ref)² ≈ Σλ (Poisson variance = mean), so
    # SNR = 10·log10(Σλ² / Σλ) with λ the mean photons per pixel.
    spec = yaml.safe_load(sweep_file.read_text())
    spec["axes"] = {"sensor.toy_scene.photons": [20, 2000]}
    spec["snr"] = {"reference": REFERENCE, "stage": "toy_det"}
    res = run_sweep(
        spec, registry=registry, base_dir=sweep_file.parent, set=["sensor.toy_det.read_noise_e=0"]
    )
    x = np.load(tmp_path / "toy.npz")["x"].astype(np.float64) / 255.0
    for row in res.table:
        lam = x * row["sensor.toy_scene.photons"]
        expected = 10 * math.log10((lam**2).sum() / lam.sum())
        assert row["snr_db"] == pytest.approx(expected, abs=0.15)


def test_accuracy_columns_come_from_the_run_with_wilson_intervals(
    sweep_file, registry, tmp_path, monkeypatch
):
    _fake_model_module(monkeypatch)
    base = yaml.safe_load((tmp_path / "configs" / "base.yaml").read_text())
    base["model"] = {"path": "model.yaml"}
    _dump(tmp_path / "configs" / "base.yaml", base)
    _dump(tmp_path / "configs" / "model.yaml", {"bias": 0})
    res = run_sweep(sweep_file, registry=registry, set=["run.record.stages=[toy_raw, cnn]"])
    labels = _labels(tmp_path / "configs" / "base.yaml", registry)
    assert len(res.table) == 6
    for row in res.table:
        recorded = _arrays(res.path / "cells" / row["cell"])
        correct = int((np.argmax(recorded["cnn"], axis=1) == labels).sum())
        assert row["n"] == 40 and row["correct"] == correct
        assert row["accuracy"] == correct / 40
        lo, hi = _wilson(correct, 40)
        assert row["accuracy_lo"] == pytest.approx(lo, abs=1e-12)
        assert row["accuracy_hi"] == pytest.approx(hi, abs=1e-12)
    assert len({row["accuracy"] for row in res.table}) > 1  # the sensor changes the answer
    assert (res.path / "accuracy.png").is_file()
    rows = _read_csv(res.path / "results.csv")
    assert [float(r["accuracy"]) for r in rows] == [r["accuracy"] for r in res.table]
    # a model changed in place: the finished cells no longer describe it
    _dump(tmp_path / "configs" / "model.yaml", {"bias": 1})
    with pytest.raises(UserError, match=r"was computed with a different model file: model \("):
        run_sweep(sweep_file, registry=registry, set=["run.record.stages=[toy_raw, cnn]"])


class _FakeModel:
    """A stand-in classifier: class = (⌊4·mean brightness⌋ + bias) mod 4."""

    class_names = ("c0", "c1", "c2", "c3")
    input_shape = (3, 8, 8)

    def __init__(self, bias: int) -> None:
        self.bias = bias

    def forward(self, x, train=False):
        k = (np.floor(4 * x.reshape(len(x), -1).mean(axis=1)).astype(int) + self.bias) % 4
        return np.eye(4, dtype=np.float32)[k]


def _fake_model_module(monkeypatch) -> None:
    module = types.ModuleType("pipeline.cnn.model")

    def load_model(path, weights=None):
        return _FakeModel(int(yaml.safe_load(Path(path).read_text())["bias"]))

    module.load_model = load_model
    monkeypatch.setitem(sys.modules, "pipeline.cnn.model", module)


def test_explicit_cells_list(sweep_file, registry):
    spec = yaml.safe_load(sweep_file.read_text())
    del spec["axes"]
    spec["cells"] = [
        {"sensor.toy_adc.bits": 3, "seed": 1},
        {"sensor.toy_adc.bits": 5, "seed": 2},
    ]
    res = run_sweep(spec, registry=registry, base_dir=sweep_file.parent)
    assert res.cells == ["c000-bits3-seed1", "c001-bits5-seed2"]
    assert [(r["sensor.toy_adc.bits"], r["seed"]) for r in res.table] == [(3, 1), (5, 2)]
    manifest = json.loads((res.path / "cells" / res.cells[1] / "manifest.json").read_text())
    assert manifest["seed"] == 2
    spec["cells"][1] = {"sensor.toy_adc.bits": 5}
    with pytest.raises(UserError, match=r"cells\[1\]: every cell must set the same keys .*seed"):
        run_sweep(spec, registry=registry, base_dir=sweep_file.parent)


def test_listed_cells_cross_the_axes(sweep_file, registry):
    """cells: with axes: runs every listed cell at every grid point, listed cells slowest."""
    spec = yaml.safe_load(sweep_file.read_text())
    spec["cells"] = [{"sensor.toy_adc.bits": 3, "seed": 1}, {"sensor.toy_adc.bits": 5, "seed": 2}]
    spec["axes"] = {"sensor.toy_scene.photons": [50, 500]}
    res = run_sweep(spec, registry=registry, base_dir=sweep_file.parent)
    assert res.cells == [
        "c000-bits3-seed1-photons50",
        "c001-bits3-seed1-photons500",
        "c002-bits5-seed2-photons50",
        "c003-bits5-seed2-photons500",
    ]
    rows = [(r["sensor.toy_adc.bits"], r["seed"], r["sensor.toy_scene.photons"]) for r in res.table]
    assert rows == [(3, 1, 50), (3, 1, 500), (5, 2, 50), (5, 2, 500)]
    # each crossed cell is the run of its overrides: same arrays as the same grid cell alone
    alone = run_sweep(
        {
            **spec,
            "cells": [{"sensor.toy_adc.bits": 5, "seed": 2}],
            "name": "alone",
            "axes": {"sensor.toy_scene.photons": [500]},
        },
        registry=registry,
        base_dir=sweep_file.parent,
    )
    a = _arrays(res.path / "cells" / res.cells[3])
    b = _arrays(alone.path / "cells" / alone.cells[0])
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("patch", "fragment"),
    [
        (  # an error of a crossed cell points at the listed cell it came from
            {"cells": [{"sensor.toy_adc.bits": 4}, {"sensor.toy_adc.bits": 0}]},
            "sweep.yaml: cells[1].sensor.toy_adc.bits: value 0 (cell c002-bits0-photons50): ",
        ),
        (
            {"cells": [{"sensor.toy_scene.photons": 5}]},
            "sweep.yaml: axes.sensor.toy_scene.photons: is set by every listed cell too",
        ),
        (
            {"cells": [{"sensor.toy_adc.bits": 4}], "mode": "grid"},
            "sweep.yaml: mode: mode grid needs axes: and no cells:",
        ),
        (  # the limit counts the crossed cells, before expanding them
            {"cells": [{"sensor.toy_adc.bits": b} for b in (2, 4, 8)]},
            "sweep.yaml: cells: the list asks for 6 cells",
        ),
    ],
)
def test_bad_listed_cells_with_axes(sweep_file, registry, patch, fragment, monkeypatch):
    monkeypatch.setenv("SENSORLAB_MAX_SWEEP_CELLS", "5")  # 3 listed × 2 crossed is too many
    spec = yaml.safe_load(sweep_file.read_text())
    spec["axes"] = {"sensor.toy_scene.photons": [50, 500]}
    _dump(sweep_file, {**spec, **patch})
    with pytest.raises(UserError) as info:
        run_sweep(sweep_file, registry=registry)
    assert fragment in str(info.value), str(info.value)
    assert not Path(spec["out"]).exists()


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("axes", "fragments"),
    [
        (
            {"sensor.toy_adc.bitz": [2]},
            [
                "sweep.yaml: axes.sensor.toy_adc.bitz: value 2 (cell c000-bitz2): ",
                "sensor[2].toy_adc.bitz: unknown key (did you mean 'bits'?)",
            ],
        ),
        (
            {"sensor.toy_adcc.bits": [2]},
            ["axes.sensor.toy_adcc.bits: ", "no stage named 'toy_adcc' in the chain (did you mean"],
        ),
        ({"sede": [1, 2]}, ["axes.sede: value 1 (cell c000-sede1): sede: unknown key (did you"]),
        (
            {"sensor.toy_scene.photons": [10, 20], "sensor.toy_adc.bits": [4, 0, 8]},
            [
                "sweep.yaml: axes.sensor.toy_adc.bits: value 0 (cell c001-photons10-bits0): ",
                "sensor[2].toy_adc.bits: must be between 1 and 16, got 0",
            ],
        ),
        ({"sensor.toy_adc.bits": []}, ["axes.sensor.toy_adc.bits: empty axis"]),
        ({"sensor.toy_adc.bits": 4}, ["axes.sensor.toy_adc.bits: must be a list of values"]),
        ({"run.out": ["x"]}, ["axes.run.out: 'run.out' is set by the sweep itself"]),
    ],
)
def test_bad_axes_are_rejected_before_anything_runs(sweep_file, registry, axes, fragments):
    spec = yaml.safe_load(sweep_file.read_text())
    spec["axes"] = axes
    _dump(sweep_file, spec)
    with pytest.raises(UserError) as info:
        run_sweep(sweep_file, registry=registry)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    assert not Path(spec["out"]).exists()  # nothing was written


def test_other_sweep_file_errors(sweep_file, registry, tmp_path, monkeypatch):
    spec = yaml.safe_load(sweep_file.read_text())

    def error(patch: dict, **kwargs) -> str:
        with pytest.raises(UserError) as info:
            run_sweep({**spec, **patch}, registry=registry, base_dir=sweep_file.parent, **kwargs)
        return str(info.value)

    assert error({"axis": {}}) == "<dict>: axis: unknown key (did you mean 'axes'?)"
    assert error({"base": "nope.yaml"}).startswith("<dict>: base: base config not found")
    assert "train: input should be 'none', 'per_cell' or 'fine_tune', got 'x'" in error(
        {"train": "x"}
    )
    assert error({"snr": {"reference": {"sensor.toy_det.read_noise": 0}}}).startswith(
        "<dict>: snr.reference.sensor.toy_det.read_noise: cell c000-bits2-photons50: "
        "sensor[1].toy_det.read_noise: unknown key (did you mean 'read_noise_e'?)"
    )
    assert "snr.stage: no sensor stage 'toy_ad'" in error(
        {"snr": {**spec["snr"], "stage": "toy_ad"}}
    )
    assert "plot.x: no axis 'bits'" in error({"plot": {"x": "bits"}})
    assert "--set: sensor.toy_adc.bits is a sweep axis; change its values instead" == error(
        {}, set=["sensor.toy_adc.bits=3"]
    )
    # a problem of the base config itself is reported in the base config's terms
    assert error({}, set=["sensor.toy_det.read_noise_e=-1"]) == (
        f"{tmp_path / 'configs' / 'base.yaml'}: sensor[1].toy_det.read_noise_e: "
        "must be greater than or equal to 0, got -1"
    )
    # training needs pipeline.train.train_cell; missing, it fails before anything runs
    monkeypatch.setitem(sys.modules, "pipeline.train", None)
    assert "<dict>: train: training per cell needs pipeline.train.train_cell" in error(
        {"train": "per_cell"}
    )
    import distributed

    def refuse(address, **kwargs):
        raise OSError(f"Timed out trying to connect to {address}")

    monkeypatch.setattr(distributed, "Client", refuse)
    assert error({}, scheduler="tcp://127.0.0.1:9") == (
        "--scheduler: cannot connect to the Dask scheduler at tcp://127.0.0.1:9: "
        "Timed out trying to connect to tcp://127.0.0.1:9"
    )
    monkeypatch.setitem(sys.modules, "distributed", None)
    assert "need Dask distributed; install the optional extra" in error({}, workers=2)
    assert not Path(spec["out"]).exists()


# --------------------------------------------------------------------------- resume
def test_rerun_recomputes_only_missing_or_partial_cells(sweep_file, registry, tmp_path):
    first = run_sweep(sweep_file, registry=registry)
    cells = first.path / "cells"
    before = {c: _arrays(cells / c) for c in first.cells}
    stamps = {c: (cells / c / "manifest.json").stat().st_mtime_ns for c in first.cells}
    deleted, partial, emptied = first.cells[1], first.cells[4], first.cells[5]
    shutil.rmtree(cells / deleted)
    (cells / partial / "cell.json").unlink()  # killed between the run and its sweep record
    (cells / emptied / "manifest.json").unlink()
    leftover = cells / f".{deleted}.partial-abc123"  # what a killed run leaves
    leftover.mkdir()
    (first.path / "results.csv").unlink()

    second = run_sweep(sweep_file, registry=registry)
    assert second.computed == [deleted, partial, emptied]
    assert second.skipped == [c for c in first.cells if c not in second.computed]
    for c in second.skipped:
        assert (cells / c / "manifest.json").stat().st_mtime_ns == stamps[c]
    for c in first.cells:
        after = _arrays(cells / c)
        for name, arr in before[c].items():
            np.testing.assert_array_equal(after[name], arr)
    assert not leftover.exists()
    assert [r["cell"] for r in _read_csv(second.path / "results.csv")] == first.cells
    strip = [{k: v for k, v in r.items() if k != "wall_seconds"} for r in first.table]
    assert [{k: v for k, v in r.items() if k != "wall_seconds"} for r in second.table] == strip


def test_rerun_with_another_config_refuses_to_mix_records(sweep_file, registry):
    first = run_sweep(sweep_file, registry=registry)
    with pytest.raises(UserError, match=r"was computed with a different seed \(7, now 8\)"):
        run_sweep(sweep_file, registry=registry, set=["seed=8"])
    assert all((first.path / "cells" / c / "cell.json").is_file() for c in first.cells)
    # changing how a finished cell was measured is refused too
    spec = yaml.safe_load(sweep_file.read_text())
    spec["snr"]["images"] = 5
    _dump(sweep_file, spec)
    with pytest.raises(UserError, match=r"different sweep option snr\.images \('all', now 5\)"):
        run_sweep(sweep_file, registry=registry)


# --------------------------------------------------------------------------- engines
def test_in_process_and_two_dask_workers_give_identical_records(tmp_path):
    """configs/default.yaml's sensor and the rgb32 CNN (random weights) on both engines.

    Worker processes run BLAS on one thread, the parent on several: the logits, the
    accuracy and the SNR sums must still agree bit for bit.
    """
    from pipeline.cnn.graph import load_graph
    from pipeline.cnn.model import Model

    shutil.copy(ROOT / "configs" / "models" / "rgb32.yaml", tmp_path / "rgb32.yaml")
    Model(load_graph(tmp_path / "rgb32.yaml"), init_seed=3).save(tmp_path / "rgb32.npz")
    base = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    base["dataset"]["n"] = 16
    base["model"] = {"path": "rgb32.yaml"}
    base["run"] = {"batch_size": 8, "record": {"stages": "all", "images": 4}, "samples": 0}
    _dump(tmp_path / "base.yaml", base)
    sweep = _dump(tmp_path / "s.yaml", {"base": "base.yaml", "axes": {"sensor.adc.bits": [4, 10]}})
    t0 = time.perf_counter()
    local = run_sweep(sweep, out=tmp_path / "a", plots=False)
    t1 = time.perf_counter()
    dask = run_sweep(sweep, out=tmp_path / "b", workers=2, plots=False)
    t2 = time.perf_counter()
    print(f"in-process {t1 - t0:.2f} s, 2 Dask workers {t2 - t1:.2f} s")
    assert dask.computed == local.computed == local.cells
    for cell in local.cells:
        a, b = _arrays(local.path / "cells" / cell), _arrays(dask.path / "cells" / cell)
        assert sorted(a) == ["adc", "cnn", "dataset", "optics", "photodetector", "raw", "scene"]
        assert sorted(a) == sorted(b)
        for name in a:
            assert a[name].dtype == b[name].dtype
            np.testing.assert_array_equal(a[name], b[name])
    rows_a = _read_csv(local.path / "results.csv")
    rows_b = _read_csv(dask.path / "results.csv")
    assert all(r["accuracy"] and r["snr_db"] for r in rows_a)
    for ra, rb in zip(rows_a, rows_b, strict=True):
        ra.pop("wall_seconds"), rb.pop("wall_seconds")
        assert ra == rb


def test_existing_dask_cluster_by_address_gives_the_same_records(sweep_file, registry, tmp_path):
    import logging

    from distributed import LocalCluster

    spec = yaml.safe_load(sweep_file.read_text())
    spec["axes"] = {"sensor.toy_adc.bits": [3, 6]}
    spec["out"] = str(tmp_path / "local")
    local = run_sweep(spec, registry=registry, base_dir=sweep_file.parent, plots=False)
    with LocalCluster(
        n_workers=1, threads_per_worker=1, dashboard_address=":0", silence_logs=logging.ERROR
    ) as cluster:
        remote = run_sweep(
            {**spec, "out": str(tmp_path / "remote")},
            registry=registry,
            base_dir=sweep_file.parent,
            scheduler=cluster.scheduler_address,
            plots=False,
        )
        assert len(cluster.workers) == 1  # the sweep used the cluster and left it running
    for cell in local.cells:
        a, b = _arrays(local.path / "cells" / cell), _arrays(remote.path / "cells" / cell)
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])
    assert [r["snr_db"] for r in remote.table] == [r["snr_db"] for r in local.table]


# --------------------------------------------------------------------------- the CLI
PLUGIN = '''
import time
import numpy as np
from pipeline.stage import Stage, StageParams, Unit, param


class Noisy(Stage):
    """Image values to photons with Poisson noise, sleeping per batch."""
    name = "sp_noisy"
    takes = (Unit.IMAGE,)
    gives = Unit.PHOTONS

    class Params(StageParams):
        photons: float = param(100.0, unit="photons", doc="Photons at full scale.", gt=0)
        sleep_s: float = param(0.0, unit="s", doc="Sleep per batch.", ge=0)

    def setup(self, info):
        return info.evolve(unit=self.gives, dtype=np.float64)

    def process(self, x, batch):
        time.sleep(self.params.sleep_s)
        lam = x.astype(np.float64) / 255.0 * self.params.photons
        rngs = self.image_rngs(batch.image_index)
        return np.stack([r.poisson(l).astype(np.float64) for r, l in zip(rngs, lam)])


class Quant(Stage):
    """Photons to N-bit codes."""
    name = "sp_adc"
    takes = (Unit.PHOTONS,)
    gives = Unit.DN

    class Params(StageParams):
        bits: int = param(8, doc="Resolution.", ge=1, le=16)

    def setup(self, info):
        return info.evolve(unit=self.gives, dtype=np.uint16)

    def process(self, x, batch):
        return np.clip(np.floor(x), 0, 2**self.params.bits - 1).astype(np.uint16)
'''


@pytest.fixture
def cli_sweep(tmp_path):
    """A plugin with a noisy, slow stage, a base config and a 6-cell sweep file."""
    site = write_plugin(
        tmp_path / "site", "sweepplug", PLUGIN, {"sp_noisy": "Noisy", "sp_adc": "Quant"}
    )
    rng = np.random.default_rng(5)
    np.savez(tmp_path / "d.npz", x=rng.integers(0, 256, (8, 4, 4, 3), np.uint8), y=np.arange(8))
    base = {
        "seed": 3,
        "dataset": {"kind": "npz", "path": "d.npz", "split": "all"},
        "sensor": [{"stage": "sp_noisy", "sleep_s": 0.0}, {"stage": "sp_adc"}],
        "run": {"batch_size": 2, "record": {"images": "all"}, "samples": 0},
    }
    _dump(tmp_path / "base.yaml", base)
    sweep = {"base": "base.yaml", "axes": {"sensor.sp_adc.bits": [1, 2, 3, 4, 5, 6]}}
    return site, _dump(tmp_path / "sweep.yaml", sweep)


def _env(site: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT)])
    return env


def _cli(*args, cwd: Path, site: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *map(str, args)],
        cwd=cwd,
        env=_env(site),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_cli_rejects_a_bad_cell_in_one_line(cli_sweep, tmp_path):
    site, path = cli_sweep
    spec = yaml.safe_load(path.read_text())
    spec["axes"]["sensor.sp_adc.bits"] = [4, 17]
    _dump(path, spec)
    proc = _cli("sweep", path.name, cwd=tmp_path, site=site)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "sensorlab: error: sweep.yaml: axes.sensor.sp_adc.bits: value 17 (cell c001-bits17): "
        "sensor[1].sp_adc.bits: must be between 1 and 16, got 17"
    ]
    assert not (tmp_path / "sweeps").exists()
    spec["axes"] = {"sensor.sp_adc.bitz": [4]}
    _dump(path, spec)
    proc = _cli("sweep", path.name, cwd=tmp_path, site=site)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "unknown key (did you mean 'bits'?)" in proc.stderr
    spec["axes"] = {"sensor.sp_adc.bits": []}
    _dump(path, spec)
    proc = _cli("sweep", path.name, cwd=tmp_path, site=site)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "sensorlab: error: sweep.yaml: axes.sensor.sp_adc.bits: empty axis: list at least one value"
    )
    proc = _cli("sweep", path.name, "--workers", "0", cwd=tmp_path, site=site)
    assert proc.returncode == 2 and "--workers: must be at least 1, got 0" in proc.stderr


def test_cli_sweep_killed_midway_resumes_without_losing_cells(cli_sweep, tmp_path, monkeypatch):
    site, path = cli_sweep
    # each cell sleeps 4 batches × 0.06 s; kill once two cells are finished
    args = ["sweep", path, "--set", "sensor.sp_noisy.sleep_s=0.06", "-q"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", *map(str, args)],
        cwd=tmp_path,
        env=_env(site),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    cells = tmp_path / "sweeps" / "sweep" / "cells"
    deadline = time.monotonic() + 90
    while len(list(cells.glob("*/cell.json"))) < 2 and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.02)
    time.sleep(0.1)  # inside the third cell
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    finished = sorted(p.parent.name for p in cells.glob("*/cell.json"))
    assert 2 <= len(finished) < 6, finished
    stamps = {c: (cells / c / "manifest.json").stat().st_mtime_ns for c in finished}

    rerun = _cli(*args, cwd=tmp_path, site=site)
    assert rerun.returncode == 0, rerun.stderr
    assert f"6 cells, {6 - len(finished)} computed, {len(finished)} already done" in rerun.stdout
    for c in finished:
        assert (cells / c / "manifest.json").stat().st_mtime_ns == stamps[c]
    assert [p.name for p in cells.iterdir() if p.name.startswith(".")] == []
    rows = _read_csv(tmp_path / "sweeps" / "sweep" / "results.csv")
    assert [r["sensor.sp_adc.bits"] for r in rows] == ["1", "2", "3", "4", "5", "6"]

    # the same as a sweep that was never interrupted, bit for bit
    monkeypatch.syspath_prepend(str(site))
    clean = run_sweep(path, registry=Registry(), out=tmp_path / "clean", plots=False)
    for c in clean.cells:
        a, b = _arrays(cells / c), _arrays(clean.path / "cells" / c)
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])
    assert [r["cell"] for r in rows] == clean.cells


# --------------------------------------------------------------------------- the real sensor
def test_real_sensor_sweep_with_the_default_noise_free_reference(tmp_path):
    """scene → optics → photodetector → adc → raw from the installed stages; SNR on by default."""
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "d.npz", x=rng.integers(0, 256, (24, 16, 16, 3), np.uint8), y=np.zeros(24, int)
    )
    base = {
        "seed": 1,
        "dataset": {"kind": "npz", "path": "d.npz", "split": "all"},
        "sensor": [
            {"stage": "scene", "mean_photons": 1000},
            {"stage": "optics", "psf": "gaussian", "sigma_px": 0.7},
            {"stage": "photodetector", "cfa": "RGGB", "read_noise_e": 2.0},
            {"stage": "adc", "bits": 10},
            {"stage": "raw", "demosaic": "bilinear"},
        ],
        "run": {"batch_size": 8, "record": {"images": 4}, "samples": 0},
    }
    base_path = _dump(tmp_path / "base.yaml", base)
    photons, bits = [100, 5000], [4, 8, 12]
    sweep = {
        "base": "base.yaml",
        "axes": {"sensor.scene.mean_photons": photons, "sensor.adc.bits": bits},
        "out": str(tmp_path / "sweeps"),
    }
    res = run_sweep(_dump(tmp_path / "s.yaml", sweep))
    snr = {(r["sensor.scene.mean_photons"], r["sensor.adc.bits"]): r["snr_db"] for r in res.table}

    # the column is the definition applied to an independent noise-free run of each cell
    noise_off = {
        "sensor.photodetector.shot_noise": False,
        "sensor.photodetector.read_noise_e": 0.0,
        "sensor.photodetector.prnu_pct": 0.0,
        "sensor.photodetector.dsnu_e": 0.0,
        "sensor.adc.bits": 24,  # and a 24-bit linear ADC: quantisation counts as noise
        "sensor.adc.curve": "linear",
        "run.record": {"stages": ["raw"], "images": "all"},
    }
    for p, b in [(5000, 8), (100, 12)]:
        cell = {"sensor.scene.mean_photons": p, "sensor.adc.bits": b}
        keep = {"run.record": {"stages": ["raw"], "images": "all"}}
        out = run(base_path, set={**cell, **keep}, store=False).arrays["raw"].astype(float)
        ref = run(base_path, set={**cell, **noise_off}, store=False).arrays["raw"].astype(float)
        expected = 10 * math.log10((ref**2).sum() / ((out - ref) ** 2).sum())
        assert snr[(p, b)] == pytest.approx(expected, rel=1e-12)

    # the 24-bit reference is never black for a lit scene: every cell has a finite SNR
    assert all(math.isfinite(v) for v in snr.values())
    # PSNR and SSIM columns (the cells' run metrics): more bits, closer to the ideal sensor
    quality = {(r["sensor.scene.mean_photons"], r["sensor.adc.bits"]): r for r in res.table}
    for metric in ("psnr_db", "ssim"):
        assert quality[(5000, 4)][metric] < quality[(5000, 8)][metric]
    # physics: at 12 bits (quantisation negligible) the noise is mostly shot noise, so 50×
    # the light gives about 10·log10(50) = 17 dB more; at high light more bits help
    assert 16.0 < snr[(5000, 12)] - snr[(100, 12)] < 19.0
    assert snr[(5000, 4)] < snr[(5000, 8)] < snr[(5000, 12)]
    # cells are seeded from the config alone: every bit depth sees the same electrons
    cells = {(r["sensor.scene.mean_photons"], r["sensor.adc.bits"]): r["cell"] for r in res.table}
    for p in photons:
        electrons = [_arrays(res.path / "cells" / cells[(p, b)])["photodetector"] for b in bits]
        for e in electrons[1:]:
            np.testing.assert_array_equal(e, electrons[0])
    assert sorted(p.name for p in res.plots) == ["samples_grid.png", "snr.png"]


def test_snr_is_off_without_known_noise_switches_unless_asked(sweep_file, registry):
    spec = yaml.safe_load(sweep_file.read_text())
    del spec["snr"]
    spec["axes"] = {"sensor.toy_adc.bits": [3]}
    res = run_sweep(spec, registry=registry, base_dir=sweep_file.parent, plots=False)
    assert res.table[0]["snr_db"] is None
    with pytest.raises(UserError, match=r"snr\.reference: no stage whose noise is known to switch"):
        run_sweep({**spec, "snr": True}, registry=registry, base_dir=sweep_file.parent)


# --------------------------------------------------------------------------- training hook
def test_train_modes_call_the_hook_and_evaluate_its_model(
    sweep_file, registry, tmp_path, monkeypatch
):
    """pipeline.train is not on main yet: a stand-in train_cell checks the sweep's side."""
    _fake_model_module(monkeypatch)
    base = yaml.safe_load((tmp_path / "configs" / "base.yaml").read_text())
    base["model"] = {"path": "model.yaml"}
    base["run"]["record"] = {"stages": ["toy_raw", "cnn"], "images": "all"}
    _dump(tmp_path / "configs" / "base.yaml", base)
    _dump(tmp_path / "configs" / "model.yaml", {"bias": 0})
    calls = []

    def train_cell(loaded, out_dir, *, init):
        out_dir = Path(out_dir)
        assert out_dir.is_dir() and list(out_dir.iterdir()) == []
        assert loaded.resolve(loaded.config.model.path) == tmp_path / "configs" / "model.yaml"
        bits = loaded.config.sensor[2].bits
        calls.append((bits, init))
        return _dump(out_dir / "trained.yaml", {"bias": bits})  # a model that depends on the cell

    fake = types.ModuleType("pipeline.train")
    fake.train_cell = train_cell
    monkeypatch.setitem(sys.modules, "pipeline.train", fake)
    spec = yaml.safe_load(sweep_file.read_text())
    spec.update(axes={"sensor.toy_adc.bits": [2, 3]}, snr=False, train="per_cell")
    res = run_sweep(spec, registry=registry, base_dir=sweep_file.parent, plots=False)
    assert calls == [(2, "scratch"), (3, "scratch")]
    labels = _labels(tmp_path / "configs" / "base.yaml", registry)
    for row, bits in zip(res.table, [2, 3], strict=True):
        model = res.path / "models" / row["cell"] / "trained.yaml"
        assert row["trained_model"] == str(model)
        manifest = json.loads((res.path / "cells" / row["cell"] / "manifest.json").read_text())
        assert manifest["config"]["model"]["path"] == str(model)
        # the logits are the trained model's (bias = bits) applied to the cell's raw images
        arrays = _arrays(res.path / "cells" / row["cell"])
        mean = arrays["toy_raw"].reshape(40, -1).mean(axis=1)
        predicted = (np.floor(4 * mean).astype(int) + bits) % 4
        np.testing.assert_array_equal(np.argmax(arrays["cnn"], axis=1), predicted)
        assert row["correct"] == int((predicted == labels).sum())
    assert "trained_model" in _read_csv(res.path / "results.csv")[0]

    calls.clear()
    again = run_sweep(spec, registry=registry, base_dir=sweep_file.parent, plots=False)
    assert calls == [] and again.computed == []
    shutil.rmtree(res.path / "cells" / res.cells[0])  # evaluation lost, trained model kept
    again = run_sweep(spec, registry=registry, base_dir=sweep_file.parent, plots=False)
    assert calls == [] and again.computed == [res.cells[0]]

    spec.update(train="fine_tune", out=str(tmp_path / "ft"))
    run_sweep(spec, registry=registry, base_dir=sweep_file.parent, plots=False)
    assert calls == [(2, "base"), (3, "base")]


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _largest_chunk(cell: Path) -> Path:
    return max((cell / "arrays.zarr").rglob("c/*/*/*/*"), key=lambda p: p.stat().st_size)


DAMAGES = [  # (why it is reported, what a crash, a full disk or a careless hand did)
    ("cell.json is unreadable", lambda cell: _truncate(cell / "cell.json")),
    ("manifest.json is unreadable", lambda cell: _truncate(cell / "manifest.json")),
    ("checksum mismatch", lambda cell: (cell / "arrays.zarr" / "zarr.json").write_text("{]")),
    ("checksum mismatch", lambda cell: _truncate(_largest_chunk(cell))),
]


def test_damaged_finished_cells_are_recomputed_and_reported(sweep_file, registry):
    first = run_sweep(sweep_file, registry=registry)
    cells = first.path / "cells"
    victims = dict(zip(first.cells[1:], DAMAGES, strict=False))
    before = {c: _arrays(cells / c) for c in victims}
    for cell, (_why, damage) in victims.items():
        assert read_record(cells / cell)["checksum"] == folder_checksum(cells / cell)
        damage(cells / cell)

    second = run_sweep(sweep_file, registry=registry)
    assert second.computed == list(victims)
    text = summary(second)
    for cell, (why, _damage) in victims.items():
        assert why in second.damaged[cell]
        assert f"recomputed {cell}: its records were damaged ({second.damaged[cell]})" in text
        for name, arr in before[cell].items():
            np.testing.assert_array_equal(_arrays(cells / cell)[name], arr)
    strip = [{k: v for k, v in r.items() if k != "wall_seconds"} for r in first.table]
    assert [{k: v for k, v in r.items() if k != "wall_seconds"} for r in second.table] == strip
    third = run_sweep(sweep_file, registry=registry)
    assert third.computed == [] and third.damaged == {}
