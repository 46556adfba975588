"""`sensorlab train`: training through the sensor chain, the run folder, resume, and the
one-line errors (also through the real CLI, exit status 2)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from threadpoolctl import threadpool_limits

from pipeline.cnn.graph import parse_graph
from pipeline.cnn.model import Model, load_model
from pipeline.cnn.training import Callback, TrainConfig, fit, split_train_val
from pipeline.errors import UserError
from pipeline.train import chain_arrays, load_train_config, train_arrays, train_from_config
from tests.conftest import sensorlab, toy_config

TINY = {
    "name": "tiny",
    "input": [3, 8, 8],
    "classes": ["c0", "c1", "c2", "c3"],
    "layers": [
        {"type": "conv2d", "filters": 4, "kernel": 3, "padding": "same"},
        {"type": "relu"},
        {"type": "maxpool2d", "size": 2},
        {"type": "flatten"},
        {"type": "dense", "units": 4},
    ],
}


@pytest.fixture(autouse=True)
def one_blas_thread():
    with threadpool_limits(1, user_api="blas"):
        yield


def write(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def setup(tmp_path, npz_dataset):
    """A toy-chain config (8-bit toy ADC) training the tiny model for 2 epochs."""
    write(tmp_path / "tiny.yaml", TINY)
    cfg = toy_config(npz_dataset, tmp_path / "runs")
    cfg["model"] = {"path": "tiny.yaml"}
    cfg["train"] = {"epochs": 2, "batch_size": 8, "val_fraction": 0.25, "lr": 0.001}
    return write(tmp_path / "cfg.yaml", cfg)


def test_training_data_is_the_dataset_seen_through_the_sensor_chain(setup, toy_registry):
    arrays = {}
    for bits in (4, 12):
        loaded, _ = load_train_config(setup, [f"sensor.toy_adc.bits={bits}"], registry=toy_registry)
        data = chain_arrays(loaded, registry=toy_registry)
        x, y = data.x, data.y
        assert data.chain.names == ["toy_scene", "toy_shot", "toy_adc"]
        # the train split: 40 images less 10 % (val) and 20 % (test) of each class
        assert x.shape == (28, 3, 8, 8) and x.dtype == np.float32
        assert np.bincount(y).tolist() == [7, 7, 7, 7]
        arrays[bits] = x
    assert arrays[4].max() == 15 and np.all(arrays[4] == np.round(arrays[4]))
    assert arrays[12].max() > 15
    # below the 4-bit clip the two agree: same per-image noise, only the ADC differs
    low = arrays[12] < 15
    np.testing.assert_array_equal(arrays[4][low], arrays[12][low])


def test_run_folder(setup, toy_registry, tmp_path):
    run = train_from_config(setup, ["run.name=t1"], registry=toy_registry)
    folder = tmp_path / "runs" / "t1"
    assert run.path == folder
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.yaml",
        "curves.png",
        "history.csv",
        "manifest.json",
        "metrics.json",
        "model.npz",
        "model.yaml",
    ]
    assert not [p for p in (tmp_path / "runs").iterdir() if p.name.startswith(".")]
    rows = list(csv.DictReader((folder / "history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert float(rows[0]["val_loss"]) > 0
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["n"] == 4  # the dataset's val split: 10 % of each class's 10 images
    assert np.array(metrics["confusion_matrix"]).sum() == 4
    assert metrics["training"]["train_images"] == 28
    assert metrics["training"]["epochs_run"] == 2
    resolved = yaml.safe_load((folder / "config.yaml").read_text())
    assert resolved["train"]["epochs"] == 2 and resolved["sensor"][2]["bits"] == 8
    assert (folder / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the folder's model loads with its weights, and predicts what training left
    model = load_model(folder / "model.yaml")
    loaded, _ = load_train_config(setup, registry=toy_registry)
    val = chain_arrays(loaded, split="val", registry=toy_registry)
    xv, yv = val.x, val.y
    np.testing.assert_array_equal(model.forward(xv), run.model.forward(xv))
    assert metrics["correct"] == int(np.sum(model.predict(xv) == yv))
    with pytest.raises(UserError, match="already exists"):
        train_from_config(setup, ["run.name=t1"], registry=toy_registry)


def test_without_a_val_split_training_holds_out_val_fraction(setup, toy_registry):
    run = train_from_config(setup, ["dataset.val_fraction=0", "run.name=t2"], registry=toy_registry)
    # train split: 40 less 20 % test = 8 per class; train.val_fraction 0.25 of them held out
    assert run.metrics["n"] == 4 * round(0.25 * 8)
    assert run.metrics["training"]["train_images"] == 4 * (8 - round(0.25 * 8))


class Interrupt(Callback):
    def on_epoch_end(self, epoch, record):
        if epoch == 1:
            raise KeyboardInterrupt


def test_resume_continues_an_interrupted_run_exactly(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((48, 3, 8, 8)).astype(np.float32)
    y = np.arange(48) % 4
    cfg = TrainConfig(epochs=4, batch_size=8, val_fraction=0.25, lr=0.003)
    full = train_arrays(Model(parse_graph(TINY)), x, y, cfg, out=tmp_path, name="full")

    # an interrupted run leaves its checkpoint beside the (absent) folder
    (xt, yt), val = split_train_val(x, y, 0.25, 0)
    ckpt = tmp_path / ".again.checkpoint.npz"
    with pytest.raises(KeyboardInterrupt):
        fit(Model(parse_graph(TINY)), (xt, yt), val, cfg, [Interrupt()], checkpoint=ckpt)
    assert ckpt.exists() and not (tmp_path / "again").exists()
    again = train_arrays(
        Model(parse_graph(TINY), init_seed=5), x, y, cfg, out=tmp_path, name="again", resume=True
    )
    assert not ckpt.exists()
    for k, v in full.model.state_arrays().items():
        np.testing.assert_array_equal(again.model.state_arrays()[k], v)
    with pytest.raises(UserError, match="nothing to resume"):
        train_arrays(Model(parse_graph(TINY)), x, y, cfg, out=tmp_path, name="new", resume=True)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"train": {"epoch": 3}}, "cfg.yaml: train.epoch: unknown key (did you mean 'epochs'?)"),
        ({"train": {"lr": -1}}, "cfg.yaml: train.lr: "),
        ({"model": None}, "cfg.yaml: model: train needs a model"),
        ({"model": {"path": "missing.yaml"}}, "missing.yaml: model file not found"),
    ],
)
def test_config_errors(setup, toy_registry, change, expected):
    data = yaml.safe_load(setup.read_text())
    data.update(change)
    if data["model"] is None:
        del data["model"]
    write(setup, data)
    with pytest.raises(UserError) as info:
        train_from_config(setup, registry=toy_registry)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_model_that_does_not_fit_the_chain(setup, toy_registry, tmp_path):
    write(tmp_path / "tiny.yaml", dict(TINY, input=[1, 8, 8]))
    with pytest.raises(UserError, match=r"model\.path: the model .* takes \(C,H,W\) = \(1, 8, 8\)"):
        train_from_config(setup, registry=toy_registry)
    three = dict(TINY, classes=["c0", "c1", "c2"])
    three["layers"] = [*TINY["layers"][:-1], {"type": "dense", "units": 3}]
    write(tmp_path / "tiny.yaml", three)
    with pytest.raises(UserError, match=r"has classes \(c0, c1, c2\), the dataset has \(c0, c1"):
        train_from_config(setup, registry=toy_registry)


# ------------------------------------------------------------------ the real CLI


def cli_setup(tmp_path, npz_dataset, **model):
    write(tmp_path / "tiny.yaml", dict(TINY, **model))
    cfg = {
        "dataset": {"kind": "npz", "path": str(npz_dataset)},
        "model": {"path": "tiny.yaml"},
        "train": {"epochs": 1, "batch_size": 8},
        "run": {"out": str(tmp_path / "runs")},
    }
    return write(tmp_path / "cfg.yaml", cfg)


def test_cli_trains_and_writes_the_run_folder(tmp_path, npz_dataset):
    cfg = cli_setup(tmp_path, npz_dataset)
    res = sensorlab(
        "train",
        cfg,
        "--name",
        "cli",
        "-q",
        "--set",
        "train.epochs=2",
        "--blas-threads",
        "1",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    assert "sensorlab train tiny: 28 training images, 4 validation, 2 epochs" in res.stdout
    assert (tmp_path / "runs" / "cli" / "model.npz").exists()
    assert (tmp_path / "runs" / "cli" / "report.html").is_file()
    assert res.stdout.splitlines()[-1].endswith(str(Path("runs") / "cli" / "report.html"))


def test_cli_bad_model_file_is_one_line_and_exit_2(tmp_path, npz_dataset):
    cfg = cli_setup(tmp_path, npz_dataset, layers=[{"type": "conv2", "filters": 2, "kernel": 3}])
    res = sensorlab("train", cfg, cwd=tmp_path)
    assert res.returncode == 2
    assert res.stderr.strip().endswith(
        "tiny.yaml: layers[0] (conv2_0): unknown layer type 'conv2' (did you mean 'conv2d'?)"
    )
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_cli_bad_train_value_exit_2(tmp_path, npz_dataset):
    cfg = cli_setup(tmp_path, npz_dataset)
    res = sensorlab("train", cfg, "--set", "train.batch_size=0", cwd=tmp_path)
    assert res.returncode == 2
    assert "cfg.yaml: train.batch_size: " in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_train_cell_scratch_and_fine_tune(setup, toy_registry, tmp_path):
    """The sweep's hook: a fresh model per cell, or one that starts from the base weights."""
    from pipeline.train import train_cell

    loaded, _ = load_train_config(setup, ["train.epochs=1"], registry=toy_registry)
    scratch = train_cell(loaded, tmp_path / "a", init="scratch", registry=toy_registry)
    assert scratch == tmp_path / "a" / "train" / "model.yaml"
    assert (scratch.parent / "model.npz").is_file() and (scratch.parent / "history.csv").is_file()
    # the same config trained again gives the same weights (seeded init and shuffling)
    again = train_cell(loaded, tmp_path / "b", init="scratch", registry=toy_registry)
    first, second = load_model(scratch), load_model(again)
    for name, value in first.params.items():
        np.testing.assert_array_equal(value, second.params[name])
    # fine-tuning starts from the base weights: zero epochs of change would give them back
    base = tmp_path / "tiny.npz"
    marker = Model(parse_graph(TINY, "tiny.yaml"), init_seed=123)
    marker.save(base)
    tuned = train_cell(loaded, tmp_path / "c", init="base", registry=toy_registry)
    tuned_model = load_model(tuned)
    fresh = load_model(scratch)
    start = {k: v for k, v in marker.params.items()}
    # closer to its starting point than a model trained from a different start
    dist = sum(float(np.abs(tuned_model.params[k] - start[k]).sum()) for k in start)
    dist_fresh = sum(float(np.abs(fresh.params[k] - start[k]).sum()) for k in start)
    assert dist < dist_fresh
    with pytest.raises(ValueError, match="init must be"):
        train_cell(loaded, tmp_path / "d", init="warm")


def test_run_folder_config_runs_from_anywhere(setup, toy_registry, tmp_path):
    """The run folder's config.yaml names its own model copy and absolute data paths."""
    from pipeline.runner import run as run_config

    train = train_from_config(setup, ["run.name=portable"], registry=toy_registry)
    saved = yaml.safe_load((train.path / "config.yaml").read_text())
    assert saved["model"] == {"path": "model.yaml", "weights": "model.npz"}
    assert Path(saved["dataset"]["path"]).is_absolute()
    moved = tmp_path / "elsewhere"
    train.path.rename(moved)
    result = run_config(moved / "config.yaml", registry=toy_registry, store=False)
    assert result.metrics["n"] == len(result.labels) > 0


def test_an_existing_run_folder_is_refused_before_any_work(setup, toy_registry, monkeypatch):
    (setup.parent / "runs" / "taken").mkdir(parents=True)

    def no_work(*args, **kwargs):
        raise AssertionError("the data was streamed before the run folder was checked")

    monkeypatch.setattr("pipeline.train.chain_arrays", no_work)
    with pytest.raises(UserError) as info:
        train_from_config(setup, ["run.name=taken"], registry=toy_registry)
    assert str(info.value) == (
        f"{setup}: run.name: run folder {setup.parent / 'runs' / 'taken'} already exists; "
        "pick another name (--name, run.name) or folder (--out, run.out), or remove it"
    )


class _CtrlCAfterFirstEpoch(Callback):
    """Stands in for the progress callback: Ctrl-C once the first checkpoint is written."""

    def __init__(self, enabled):
        pass

    def on_epoch_end(self, epoch, record):
        raise KeyboardInterrupt


def test_ctrl_c_says_the_checkpoint_is_kept_and_resume_cleans_up(
    tmp_path, npz_dataset, monkeypatch, capsys
):
    from pipeline.cli import main

    cfg = str(cli_setup(tmp_path, npz_dataset))
    args = ["train", cfg, "--name", "cc", "-q", "--set", "train.epochs=2"]
    runs = tmp_path / "runs"
    with monkeypatch.context() as m:
        m.setattr("pipeline.train._Progress", _CtrlCAfterFirstEpoch)
        assert main(args) == 130
    checkpoint = runs / ".cc.checkpoint.npz"
    assert capsys.readouterr().err.strip() == (
        f"sensorlab: interrupted; the checkpoint {checkpoint} is kept: continue with the "
        "same command plus --resume --name cc"
    )
    assert checkpoint.is_file() and not (runs / "cc").exists()
    killed = runs / ".cc.partial-killed"  # what a SIGTERM leaves: no cleanup ran,
    killed.mkdir()  # written by a process that has ended, before this one started
    os.utime(killed, (1e9, 1e9))
    assert main([*args, "--resume"]) == 0
    assert (runs / "cc" / "model.npz").is_file()
    assert sorted(p.name for p in runs.iterdir()) == ["cc"]


def test_cli_training_progress_in_a_log(tmp_path, npz_dataset):
    """stderr is a pipe here: progress comes as lines, with the epochs' lines among them."""
    cfg = cli_setup(tmp_path, npz_dataset)
    res = sensorlab("train", cfg, "--name", "log", "--set", "train.epochs=2", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    lines = res.stderr.splitlines()
    assert any(line.startswith("sensor (train): 100 % (") for line in lines), lines
    steps = [line for line in lines if " % (" in line and " step), " in line]
    assert steps and steps[-1].startswith("epoch 2/2: 100 % (")
    assert [line.split(":")[0] for line in lines if " | " in line] == ["epoch 1/2", "epoch 2/2"]
