"""`sensorlab export --front raw` of a model trained on a companded ADC (table, log, sqrt):
the exported front end linearises the codes with a lookup, and onnxruntime and OpenCV DNN
agree with the NumPy chain of `sensorlab run` on held-out images."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.cnn.onnx_export import read_metadata
from pipeline.cnn.onnx_import import load_onnx
from pipeline.errors import UserError
from pipeline.export import evaluate, load_source
from tests.cnn.test_onnx_export import (
    SENSOR,
    TINY,
    make_config,
    max_diff,
    pattern_images,
    write_yaml,
)

BITS = 6
BLACK = (1 << BITS) // 16
# a companding table: thresholds spaced as squares (finer near black, like sqrt)
THRESHOLDS = (((np.arange((1 << BITS) - 1 - BLACK) + 0.5) / 60.0) ** 2).tolist()
CURVES = {
    "table": {"curve": "table", "thresholds": THRESHOLDS, "noise_lsb": 0.3},
    "log": {"curve": "log"},
    "sqrt": {"curve": "sqrt"},
}


def _sensor(adc: dict) -> list[dict]:
    return [
        {"stage": "scene", "mean_photons": 1000},
        SENSOR[1],
        {"stage": "adc", "bits": BITS, **adc},
        SENSOR[3],
    ]


@pytest.fixture(
    scope="module",
    params=[
        "table",
        pytest.param("log", marks=pytest.mark.slow),
        pytest.param("sqrt", marks=pytest.mark.slow),
    ],
)
def companded(request, tmp_path_factory):
    """A tiny net trained (`sensorlab train`) through a 6-bit companded RGGB sensor, its
    raw-front export (through the CLI) and an evaluation config of 1000 other images."""
    from threadpoolctl import threadpool_limits

    from pipeline.train import train_from_config

    folder = tmp_path_factory.mktemp(f"companded-{request.param}")
    for split, n, seed in (("pool", 240, 1), ("test", 1000, 2)):
        x, y = pattern_images(n, 16, seed)
        np.savez(folder / f"{split}.npz", x=x, y=y, class_names=np.array(TINY["classes"]))
    write_yaml(folder / "tiny16.yaml", TINY)
    sensor = _sensor(CURVES[request.param])
    train_cfg = make_config(
        folder,
        "pool.npz",
        sensor=sensor,
        name="train",
        split={"val_fraction": 0.15, "test_fraction": 0.25},
        train={"epochs": 12, "batch_size": 16, "lr": 0.01, "optimizer": "adam"},
    )
    with threadpool_limits(1, user_api="blas"):
        run = train_from_config(train_cfg, ["run.name=tiny"])
    out = folder / "raw.onnx"
    assert main(["export", str(run.path), "--out", str(out), "--front", "raw"]) == 0
    eval_cfg = make_config(folder, "test.npz", sensor=sensor, name="eval")
    return {"curve": request.param, "run": run.path, "onnx": out, "eval": eval_cfg, "dir": folder}


def test_the_export_linearises_with_a_lookup(companded):
    proto = load_onnx(companded["onnx"])
    ops = [n.op_type for n in proto.graph.node]
    assert ops[:2] == ["Cast", "Gather"]
    sensor = read_metadata(proto)["sensor"]
    assert sensor["curve"] == companded["curve"] and sensor["linearized"] is True


def test_runtimes_agree_with_the_numpy_chain_on_held_out_images(companded):
    source = load_source(companded["run"])
    numpy_result = evaluate(source, backend="numpy", config=companded["eval"])
    assert numpy_result.metrics["accuracy"] > 0.5  # a real classifier (3 classes)
    for backend, engine in (("onnxruntime", "auto"), ("opencv", "new"), ("opencv", "classic")):
        r = evaluate(
            source,
            backend=backend,
            onnx_file=companded["onnx"],
            config=companded["eval"],
            engine=engine,
        )
        assert max_diff(r.logits, numpy_result.logits) <= 1e-4, (backend, engine)
        agreement = np.mean(r.predictions == numpy_result.predictions)
        assert agreement >= 0.999, (backend, engine, agreement)


@pytest.mark.parametrize("companded", ["table"], indirect=True)
def test_a_sensor_with_another_table_is_refused(companded):
    other = [t * 1.01 for t in THRESHOLDS]
    cfg = make_config(
        companded["dir"],
        "test.npz",
        sensor=_sensor({**CURVES["table"], "thresholds": other}),
        name="other",
    )
    source = load_source(companded["run"])
    with pytest.raises(UserError, match=r"thresholds differ \(59 values; model: 59 values\)"):
        evaluate(source, backend="onnxruntime", onnx_file=companded["onnx"], config=cfg)
