"""ONNX export: every layer type and each shipped model against the NumPy engine on
onnxruntime, onnx.reference and both OpenCV DNN engines (OpenVINO when installed); opsets
13 to 21 with the matching IR version; the graph's names, initializers and metadata; the
raw sensor front end (ADC codes in) against the NumPy raw stage; int8 QDQ quantisation;
and the runtime compatibility table written to docs/onnx-compatibility.md."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml
from onnx import helper
from onnx.reference import ReferenceEvaluator

from pipeline.cnn.graph import load_graph, parse_graph
from pipeline.cnn.model import Model, load_model
from pipeline.cnn.onnx_export import (
    FRONT_PREFIX,
    INPUT_NAME,
    LOGITS_NAME,
    PROBS_NAME,
    RAW_INPUT_NAME,
    SensorFront,
    check_onnx,
    export_onnx,
    ir_version_for,
    read_metadata,
    save_onnx,
)
from pipeline.config import load_config
from pipeline.errors import UserError
from pipeline.export import quantize_int8
from pipeline.runner import build_chain, open_config_dataset
from pipeline.stage import Batch

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "configs" / "models").glob("*.yaml"))
TOL = 1e-4  # max abs difference to the NumPy engine, float32

# ---------------------------------------------------------------------- shared helpers

F = [{"type": "flatten"}, {"type": "dense", "units": 3}]
LAYER_CASES = {
    "conv2d": [{"type": "conv2d", "filters": 4, "kernel": 3, "padding": "same", "name": "c"}, *F],
    "conv2d_stride_pads_dilation": [
        {
            "type": "conv2d",
            "filters": 4,
            "kernel": 3,
            "stride": 2,
            "padding": [[0, 1], [1, 2]],
            "dilation": [1, 2],
        },
        *F,
    ],
    "conv2d_groups": [{"type": "conv2d", "filters": 6, "kernel": 3, "groups": 3, "padding": 1}, *F],
    "conv2d_depthwise_dilated": [
        {"type": "conv2d", "filters": 3, "kernel": 3, "groups": 3, "padding": 1, "dilation": 2},
        *F,
    ],
    "conv2d_same_stride2": [
        {"type": "conv2d", "filters": 4, "kernel": 3, "stride": 2, "padding": "same"},
        *F,
    ],
    "no_bias": [
        {"type": "conv2d", "filters": 4, "kernel": [1, 3], "bias": False},
        {"type": "flatten"},
        {"type": "dense", "units": 3, "bias": False},
    ],
    "dense": [{"type": "flatten"}, {"type": "dense", "units": 5}, {"type": "dense", "units": 3}],
    "relu": [{"type": "conv2d", "filters": 2, "kernel": 3}, {"type": "relu"}, *F],
    "leaky_relu": [
        {"type": "conv2d", "filters": 2, "kernel": 3},
        {"type": "leaky_relu", "alpha": 0.1},
        *F,
    ],
    "sigmoid": [{"type": "conv2d", "filters": 2, "kernel": 3}, {"type": "sigmoid"}, *F],
    "tanh": [{"type": "conv2d", "filters": 2, "kernel": 3}, {"type": "tanh"}, *F],
    "hard_sigmoid": [
        {"type": "conv2d", "filters": 2, "kernel": 3},
        {"type": "hard_sigmoid", "alpha": 0.25, "beta": 0.4},
        *F,
    ],
    "softmax_hidden": [
        {"type": "flatten"},
        {"type": "dense", "units": 5},
        {"type": "softmax"},
        {"type": "dense", "units": 3},
    ],
    "softmax_output": [*F, {"type": "softmax"}],
    "maxpool2d": [{"type": "maxpool2d", "size": 3, "stride": 2, "padding": 1}, *F],
    "avgpool2d": [{"type": "avgpool2d", "size": 3, "stride": 2, "padding": 1}, *F],
    "avgpool2d_rect": [{"type": "avgpool2d", "size": [2, 3], "stride": [2, 1]}, *F],
    "global_avgpool": [
        {"type": "conv2d", "filters": 4, "kernel": 1},
        {"type": "global_avgpool"},
        {"type": "dense", "units": 3},
    ],
    "batchnorm2d": [
        {"type": "conv2d", "filters": 4, "kernel": 3},
        {"type": "batchnorm2d", "eps": 0.001},
        *F,
    ],
    "dropout": [
        {"type": "flatten"},
        {"type": "dropout", "rate": 0.3},
        {"type": "dense", "units": 3},
    ],
    "flatten": [{"type": "flatten"}, {"type": "flatten"}, {"type": "dense", "units": 3}],
    "add": [
        {"type": "conv2d", "filters": 3, "kernel": 3, "padding": 1, "name": "a"},
        {"type": "relu"},
        {"type": "add", "from": [-1, "a", "input"]},
        *F,
    ],
    "concat": [
        {"type": "conv2d", "filters": 3, "kernel": 3, "padding": 1},
        {"type": "concat", "from": [-1, "input"]},
        {"type": "global_avgpool", "name": "g"},
        {"type": "dense", "units": 4},
        {"type": "concat", "from": [-1, "g"]},
        {"type": "dense", "units": 3},
    ],
}


def case_model(layers: list, *, input_shape=(3, 8, 8), seed: int = 0) -> Model:
    """A model of ``layers`` with every parameter and buffer random (biases and batch-norm
    statistics too, so that each one is exercised)."""
    spec = parse_graph(
        {"name": "case", "input": list(input_shape), "classes": ["a", "b", "c"], "layers": layers}
    )
    model = Model(spec, init_seed=seed)
    rng = np.random.default_rng(seed)
    for v in model.params.values():
        v[...] = rng.normal(0.0, 0.5, v.shape)
    for k, v in model.buffers.items():
        v[...] = rng.uniform(0.5, 1.5, v.shape) if k.endswith("var") else rng.normal(0, 1, v.shape)
    return model


def run_onnxruntime(proto: onnx.ModelProto, feeds: dict, outputs=None) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    sess = ort.InferenceSession(
        proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return sess.run(outputs, feeds)


def run_reference(proto: onnx.ModelProto, feeds: dict, outputs=None) -> list[np.ndarray]:
    return ReferenceEvaluator(proto).run(outputs, feeds)


def run_opencv(
    proto: onnx.ModelProto, feeds: dict, outputs=None, *, engine: str, tmp: Path
) -> list[np.ndarray]:
    path = tmp / f"opencv-{engine}.onnx"
    path.write_bytes(proto.SerializeToString())
    net = cv2.dnn.readNetFromONNX(str(path), getattr(cv2.dnn, f"ENGINE_{engine.upper()}"))
    ((name, x),) = feeds.items()
    net.setInput(x, name)
    # the new engine wants every graph output requested at once
    names = [o.name for o in proto.graph.output]
    outs = dict(zip(names, net.forward(names), strict=True))
    return [np.asarray(outs[o]) for o in (outputs or names)]


def runtimes(tmp: Path) -> dict:
    """The runtimes that are declared dependencies (never skipped)."""
    return {
        "onnxruntime": run_onnxruntime,
        "onnx.reference": run_reference,
        "opencv-new": lambda p, f, o=None: run_opencv(p, f, o, engine="new", tmp=tmp),
        "opencv-classic": lambda p, f, o=None: run_opencv(p, f, o, engine="classic", tmp=tmp),
    }


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a), np.asarray(b)
    assert a.size == b.size, (a.shape, b.shape)
    return float(np.max(np.abs(a.reshape(b.shape).astype(np.float64) - b)))


def pattern_images(n: int, size: int, seed: int, contrast: float = 0.18):
    """Three classes of faint patterns under random colour and level: horizontal stripes,
    vertical stripes, checkerboard (uint8 sRGB images, labels)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    i, j = np.mgrid[0:size, 0:size]
    period = rng.integers(3, 6, n)[:, None, None]
    phase = rng.integers(0, 6, n)[:, None, None]
    h = ((i[None] + phase) // period) % 2
    v = ((j[None] + phase) // period) % 2
    pattern = np.where(y[:, None, None] == 0, h, np.where(y[:, None, None] == 1, v, h ^ v))
    level = rng.uniform(0.3, 0.6, (n, 1, 1))
    colour = rng.uniform(0.7, 1.0, (n, 1, 1, 3))
    x = (level + contrast * (pattern - 0.5))[..., None] * colour
    return np.clip(np.rint(x * 255), 0, 255).astype(np.uint8), y


TINY = {
    "name": "tiny16",
    "description": "test net: conv-pool-conv-bn-gap-dense",
    "input": [3, 16, 16],
    "classes": ["horizontal", "vertical", "checker"],
    "layers": [
        {"type": "conv2d", "filters": 6, "kernel": 3, "padding": "same", "name": "c1"},
        {"type": "relu"},
        {"type": "maxpool2d", "size": 2},
        {"type": "conv2d", "filters": 8, "kernel": 3, "padding": 1, "name": "c2"},
        {"type": "batchnorm2d"},
        {"type": "relu"},
        {"type": "global_avgpool"},
        {"type": "dense", "units": 3, "name": "fc"},
    ],
}
SENSOR = [
    {"stage": "scene", "mean_photons": 50},
    {"stage": "photodetector", "cfa": "RGGB"},
    {"stage": "adc", "bits": 10},
    {"stage": "raw", "demosaic": "bilinear"},
]


def write_yaml(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def make_config(
    folder: Path,
    dataset: str,
    *,
    sensor=None,
    name: str = "eval",
    train: dict | None = None,
    split: dict | None = None,
) -> Path:
    """A run config in ``folder``: the npz ``dataset`` (all its images, unless ``split``
    gives the split fields) through ``sensor`` (default SENSOR)."""
    cfg = {
        "seed": 3,
        "dataset": {"kind": "npz", "path": dataset, **(split or {"split": "all"})},
        "sensor": sensor or SENSOR,
        "model": {"path": "tiny16.yaml"},
        "run": {
            "batch_size": 64,
            "out": str(folder / "runs"),
            "progress": False,
            "record": {"stages": "none"},
            "samples": 0,
        },
    }
    if train is not None:
        cfg["train"] = train
    return write_yaml(folder / f"{name}.yaml", cfg)


def chain_for(folder: Path, sensor: list, *, size=(12, 10), n: int = 6, seed: int = 0):
    """A real sensor chain (scene -> photodetector -> adc -> raw) over random images, and one
    batch: (front settings, ADC codes, raw-stage output as NCHW)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, *size, 3), dtype=np.uint8)
    np.savez(folder / "random.npz", x=x, y=np.arange(n) % 3)
    loaded = load_config(
        {
            "seed": 1,
            "dataset": {"kind": "npz", "path": "random.npz", "split": "all"},
            "sensor": sensor,
        },
        base_dir=folder,
    )
    dataset = open_config_dataset(loaded)
    chain = build_chain(loaded, dataset.info())
    front = SensorFront.from_chain(chain)
    outs = chain.apply(x, Batch(np.arange(n)))
    dn, raw = outs[-2], outs[-1]
    nchw = raw[:, None] if raw.ndim == 3 else raw.transpose(0, 3, 1, 2)
    return front, dn, np.ascontiguousarray(nchw)


# ---------------------------------------------------------------------- every layer type


@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_every_layer_type_matches_numpy_on_every_runtime(case, tmp_path):
    model = case_model(LAYER_CASES[case])
    proto = export_onnx(model)
    check_onnx(proto)  # full checker and strict shape inference (export_onnx ran them too)
    rng = np.random.default_rng(1)
    for n in (1, 3):
        x = rng.random((n, 3, 8, 8), dtype=np.float32)
        expected = model.forward(x)
        for name, run in runtimes(tmp_path).items():
            got = run(proto, {INPUT_NAME: x}, [LOGITS_NAME])[0]
            assert max_diff(got, expected) <= TOL, (case, name, n)


def test_output_softmax_is_a_second_output(tmp_path):
    model = case_model(LAYER_CASES["softmax_output"])
    proto = export_onnx(model)
    assert [o.name for o in proto.graph.output] == [LOGITS_NAME, PROBS_NAME]
    x = np.random.default_rng(2).random((4, 3, 8, 8), dtype=np.float32)
    for name, run in runtimes(tmp_path).items():
        logits, probs = run(proto, {INPUT_NAME: x}, [LOGITS_NAME, PROBS_NAME])
        assert max_diff(logits, model.forward(x)) <= TOL, name
        assert max_diff(probs, model.predict_proba(x)) <= TOL, name


TRAINED = sorted((ROOT / "data" / "models").glob("*/model.yaml"))
PARITY_GRAPHS = [*SHIPPED, *TRAINED]


@pytest.mark.parametrize("opset", [13, 17, 21])
@pytest.mark.parametrize(
    "path", PARITY_GRAPHS, ids=[f"{p.parent.name}/{p.stem}" for p in PARITY_GRAPHS]
)
def test_shipped_models_match_numpy_on_every_runtime(path, opset, tmp_path):
    """configs/models/*.yaml with random initial weights and data/models/*/model.yaml with
    their trained weights, at the lowest, default and highest opsets. A trained model's
    logits reach tens (spectral-rgbw-nowb: 45), and float32 rounding grows with them, so
    the tolerance is TOL or 1e-5 of the largest logit, whichever is larger (measured:
    1.4e-4 at 45, OpenCV)."""
    model = load_model(path) if path in TRAINED else Model(load_graph(path), init_seed=7)
    proto = export_onnx(model, opset=opset)
    rng = np.random.default_rng(3)
    for n in (1, 4):
        x = rng.random((n, *model.input_shape), dtype=np.float32)
        expected = model.forward(x)
        tol = max(TOL, 1e-5 * float(np.abs(expected).max()))
        for name, run in runtimes(tmp_path).items():
            assert max_diff(run(proto, {INPUT_NAME: x}, [LOGITS_NAME])[0], expected) <= tol, name


def test_openvino_matches_numpy(tmp_path):
    ov = pytest.importorskip(
        "openvino", reason="OpenVINO is not installed (optional: pip install openvino)"
    )
    model = case_model(TINY["layers"], input_shape=(3, 16, 16))
    proto = export_onnx(model)
    path = save_onnx(proto, tmp_path / "m.onnx")
    core = ov.Core()
    # OpenVINO computes in bf16 on CPUs that have it unless asked for f32
    compiled = core.compile_model(
        core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
    )
    x = np.random.default_rng(4).random((3, 3, 16, 16), dtype=np.float32)
    got = compiled([x])[compiled.output(LOGITS_NAME)]
    assert max_diff(got, model.forward(x)) <= TOL


# ---------------------------------------------------------------------- the graph


# IR version per default-domain opset, from the ONNX versioning table
# (https://onnx.ai/onnx/repo-docs/Versioning.html#released-versions).
IR_FOR_OPSET = {13: 7, 14: 7, 15: 8, 16: 8, 17: 8, 18: 8, 19: 9, 20: 9, 21: 10}


@pytest.mark.parametrize("opset", sorted(IR_FOR_OPSET))
def test_every_opset_13_to_21_runs_everywhere(opset, tmp_path):
    model = case_model(TINY["layers"], input_shape=(3, 16, 16))
    proto = export_onnx(model, opset=opset)
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", opset)]
    assert proto.ir_version == IR_FOR_OPSET[opset] == ir_version_for(opset)
    x = np.random.default_rng(opset).random((2, 3, 16, 16), dtype=np.float32)
    expected = model.forward(x)
    for name, run in runtimes(tmp_path).items():
        assert max_diff(run(proto, {INPUT_NAME: x}, [LOGITS_NAME])[0], expected) <= TOL, name


@pytest.mark.parametrize("opset", [13, 14])
def test_batchnorm_runs_in_inference_mode_on_onnx_reference(opset):
    """onnx.reference takes BatchNormalization-9 (opsets 9-13) as training mode (its
    momentum has a schema default; it then blends the batch's statistics into the running
    ones, up to 0.36 relative off): below opset 14 batch norm is written as Mul + Add. The
    logits are checked against batch norm written out, and the export reads back."""
    from pipeline.cnn.onnx_import import import_onnx

    model = case_model(LAYER_CASES["batchnorm2d"])
    proto = export_onnx(model, opset=opset)
    ops = [n.op_type for n in proto.graph.node]
    assert ("BatchNormalization" in ops) == (opset >= 14) and ("Mul" in ops) == (opset < 14)
    x = np.random.default_rng(5).random((3, 3, 8, 8), dtype=np.float32)
    conv, bn_node, _, dense = model.spec.nodes
    state = model.state_arrays()
    h = conv.layer.forward([x], model.layer_params(conv))[0]
    p = model.layer_params(bn_node)
    c = (1, -1, 1, 1)
    y = (h - p["running_mean"].reshape(c)) / np.sqrt(p["running_var"].reshape(c) + 0.001)
    y = y * p["weight"].reshape(c) + p["bias"].reshape(c)
    logits = y.reshape(len(x), -1) @ state[f"{dense.name}.weight"].T + state[f"{dense.name}.bias"]
    assert max_diff(model.forward(x), logits) <= TOL
    assert max_diff(run_reference(proto, {INPUT_NAME: x})[0], logits) <= TOL
    assert max_diff(run_onnxruntime(proto, {INPUT_NAME: x})[0], logits) <= TOL
    back = import_onnx(proto).model
    assert [n.type for n in back.spec.nodes] == [n.type for n in model.spec.nodes]
    assert max_diff(back.forward(x), logits) <= TOL


def test_default_opset_is_17_and_the_graph_is_deployable():
    model = case_model(LAYER_CASES["batchnorm2d"])
    proto = export_onnx(model)
    assert proto.opset_import[0].version == 17 and proto.ir_version == 8
    assert proto.producer_name == "sensorlab" and proto.producer_version
    g = proto.graph
    # one named input with a dynamic batch dimension; weights are initializers, not inputs
    assert [i.name for i in g.input] == [INPUT_NAME]
    dims = g.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and [d.dim_value for d in dims[1:]] == [3, 8, 8]
    assert [o.name for o in g.output] == [LOGITS_NAME]
    inits = {t.name for t in g.initializer}
    assert {
        "conv2d_0.weight",
        "conv2d_0.bias",
        "batchnorm2d_1.running_mean",
        "dense_3.weight",
    } <= inits
    assert not inits & {i.name for i in g.input}
    # nodes are named after the layers
    assert [n.name for n in g.node] == ["conv2d_0", "batchnorm2d_1", "flatten_2", "dense_3"]
    # strict shape inference gives the logits' shape
    inferred = check_onnx(proto)
    out = inferred.graph.output[0].type.tensor_type.shape.dim
    assert out[0].dim_param == "N" and out[1].dim_value == 3


def test_metadata_for_a_deployment(tmp_path):
    sensor = [
        {"stage": "scene"},
        {"stage": "photodetector", "cfa": "GRBG"},
        {"stage": "adc", "bits": 12, "black_level_dn": 200},
        {"stage": "raw"},
    ]
    front, _, nchw = chain_for(tmp_path, sensor)
    model = case_model(LAYER_CASES["relu"], input_shape=nchw.shape[1:])
    for with_front in (False, True):
        meta = read_metadata(export_onnx(model, front=front, with_front=with_front))
        assert meta["class_names"] == ["a", "b", "c"]
        assert meta["model_yaml_hash"] == model.yaml_hash
        assert meta["front"] == ("raw" if with_front else "none")
        s = meta["sensor"]
        assert (s["bits"], s["black_level_dn"], s["white_level_dn"]) == (12, 200.0, 4095.0)
        assert s["cfa"] == "GRBG" and s["cfa_tile"] == ["GR", "BG"]
        r = meta["input_range"]
        if with_front:
            assert (r["tensor"], r["unit"], r["dtype"], r["min"], r["max"]) == (
                RAW_INPUT_NAME,
                "DN",
                "uint16",
                0,
                4095,
            )
        else:
            assert r["tensor"] == INPUT_NAME and r["nominal"] == [0.0, 1.0]
            assert r["min"] == pytest.approx(-200 / 3895) and r["max"] == pytest.approx(1.0)
    assert "sensor" in read_metadata(export_onnx(model))  # unknown sensor: null
    assert read_metadata(export_onnx(model))["sensor"] is None


@pytest.mark.parametrize("opset", [12, 22, 0])
def test_opset_out_of_range_is_refused(opset):
    with pytest.raises(UserError, match="opset must be between 13 and 21"):
        export_onnx(case_model(LAYER_CASES["relu"]), opset=opset)


def test_save_is_atomic(tmp_path, monkeypatch):
    proto = export_onnx(case_model(LAYER_CASES["relu"]))
    path = save_onnx(proto, tmp_path / "m.onnx")
    assert onnx.load(str(path)).graph.name == "case" and os.listdir(tmp_path) == ["m.onnx"]

    def boom(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        save_onnx(proto, tmp_path / "n.onnx")
    assert os.listdir(tmp_path) == ["m.onnx"]  # no temporary file, no half model


# ---------------------------------------------------------------------- raw front end

FRONT_CASES = {
    "RGGB-10bit": ("RGGB", 10, {}),
    "BGGR": ("BGGR", 10, {}),
    "GRBG-wb-clip": ("GRBG", 10, {"wb_gains": [2.0, 1.0, 1.6], "clip": True}),
    "GBRG-12bit": ("GBRG", 12, {}),
    "RGBW": ("RGBW", 10, {}),
    "RGGB-8bit": ("RGGB", 8, {}),
    "RGGB-16bit": ("RGGB", 16, {}),
    "RGGB-20bit": ("RGGB", 20, {}),
    "RGGB-mosaic-output": ("RGGB", 10, {"output": "mosaic"}),
    "mono": ("mono", 10, {}),
    "mono-single": ("mono", 10, {"mono_output": "single"}),
    "stacked-wb": ("stacked", 10, {"wb_gains": [1.5, 1.0, 2.0]}),
    "RGGB-auto-gain": ("RGGB", 10, {"auto_gain": True}),
    "RGGB-auto-gain-capped": ("RGGB", 6, {"auto_gain": True, "max_gain": 1.5, "clip": True}),
    "stacked-auto-gain": ("stacked", 12, {"auto_gain": True, "gain_target": 0.3}),
    "mono-auto-gain": ("mono", 10, {"auto_gain": True, "mono_output": "single"}),
}


def _with_cnn_input_output(proto: onnx.ModelProto, shape) -> onnx.ModelProto:
    """The same model with the front end's output (the CNN input) as a second output."""
    p = onnx.ModelProto()
    p.CopyFrom(proto)
    p.graph.output.append(
        helper.make_tensor_value_info(INPUT_NAME, onnx.TensorProto.FLOAT, ["N", *shape])
    )
    return p


@pytest.mark.parametrize("case", sorted(FRONT_CASES))
def test_raw_front_equals_the_numpy_raw_stage_and_cnn(case, tmp_path):
    cfa, bits, raw = FRONT_CASES[case]
    sensor = [
        {"stage": "scene", "mean_photons": 3000},
        {"stage": "photodetector", "cfa": cfa},
        {"stage": "adc", "bits": bits},
        {"stage": "raw", **raw},
    ]
    front, dn, nchw = chain_for(tmp_path, sensor, n=4)
    assert dn.dtype == (np.uint8 if bits <= 8 else np.uint16 if bits <= 16 else np.uint32)
    model = case_model(LAYER_CASES["conv2d"], input_shape=nchw.shape[1:])
    proto = export_onnx(model, front=front, with_front=True)
    assert proto.graph.input[0].name == RAW_INPUT_NAME
    probe = _with_cnn_input_output(proto, nchw.shape[1:])
    for n in (1, 4):
        expected = model.forward(nchw[:n])
        for name, run in runtimes(tmp_path).items():
            logits, cnn_input = run(probe, {RAW_INPUT_NAME: dn[:n]}, [LOGITS_NAME, INPUT_NAME])
            assert max_diff(cnn_input, nchw[:n]) <= 1e-5, (name, n)  # values ~1: float32 eps
            assert max_diff(logits, expected) <= TOL, (name, n)


def test_raw_front_accepts_an_int32_input(tmp_path):
    front, dn, nchw = chain_for(tmp_path, SENSOR)
    model = case_model(LAYER_CASES["relu"], input_shape=nchw.shape[1:])
    proto = export_onnx(model, front=front, with_front=True, input_dtype="int32")
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT32
    assert read_metadata(proto)["input_range"]["dtype"] == "int32"
    got = run_onnxruntime(proto, {RAW_INPUT_NAME: dn.astype(np.int32)})[0]
    assert max_diff(got, model.forward(nchw)) <= TOL


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"demosaic": "malvar"}, "bilinear and rgbw_fusion demosaics only"),
        ({"encode": "srgb"}, "encode: srgb"),
    ],
)
def test_raw_front_refuses_what_it_does_not_compute(tmp_path, raw, message):
    sensor = [*SENSOR[:3], {"stage": "raw", **raw}]
    front, _, nchw = chain_for(tmp_path, sensor)
    model = case_model(LAYER_CASES["relu"], input_shape=nchw.shape[1:])
    with pytest.raises(UserError, match=message):
        export_onnx(model, front=front, with_front=True)
    export_onnx(model, front=front)  # without the front end the settings are metadata only


def test_raw_front_needs_sensor_settings_that_fit():
    model = case_model(LAYER_CASES["relu"])
    with pytest.raises(UserError, match="sensor settings"):
        export_onnx(model, with_front=True)
    front = SensorFront(
        bits=10,
        black_level_dn=64,
        white_level_dn=1023,
        cfa="RGGB",
        cfa_tile=(("R", "G"), ("G", "B")),
        adc_dtype="uint16",
        adc_shape=(16, 16),
    )
    with pytest.raises(UserError, match=r"raw stage gives \(C,H,W\) = \(3, 16, 16\)"):
        export_onnx(model, front=front, with_front=True)


# ---------------------------------------------------------------------- int8


def _int8_setup(tmp_path, *, opset: int, with_front: bool):
    front, dn, nchw = chain_for(tmp_path, SENSOR, size=(16, 16), n=48, seed=5)
    model = case_model(TINY["layers"], input_shape=(3, 16, 16), seed=2)
    proto = export_onnx(model, opset=opset, front=front, with_front=with_front)
    x = dn if with_front else nchw
    q = quantize_int8(proto, [x[i : i + 16] for i in range(0, 32, 16)])
    return model, proto, q, x[32:], nchw[32:]


@pytest.mark.parametrize("with_front", [False, True], ids=["float-input", "raw-front"])
def test_int8_is_static_qdq_per_channel_symmetric_with_float_bias(tmp_path, with_front):
    model, proto, q, _, _ = _int8_setup(tmp_path, opset=17, with_front=with_front)
    g = q.graph
    ops = {n.op_type for n in g.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert q.opset_import[0].version == 17 and q.ir_version == 8
    assert {o.domain for o in q.opset_import} == {""}
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in g.initializer}
    producers = {o: n for n in g.node for o in n.output}
    conv_gemm = [
        n for n in g.node if n.op_type in ("Conv", "Gemm") and not n.name.startswith(FRONT_PREFIX)
    ]
    assert len(conv_gemm) == 3
    for n in conv_gemm:
        w = producers[n.input[1]]  # weight: int8 initializer -> DequantizeLinear
        assert w.op_type == "DequantizeLinear"
        w_q, scale, zero = (inits[i] for i in w.input)
        assert w_q.dtype == np.int8 and np.all(zero == 0)  # symmetric
        axis = next((a.i for a in w.attribute if a.name == "axis"), 1)
        assert scale.shape == (w_q.shape[axis],) and scale.size > 1  # per channel
        if len(n.input) > 2:  # bias stays float (OpenCV's new engine needs that)
            assert n.input[2] in inits and inits[n.input[2]].dtype == np.float32
    # the front end stays exact float: its nodes read no dequantised tensor and its
    # constants stay float; only its output (the CNN input) is quantised, for the first conv
    float_front = {n.op_type for n in proto.graph.node if n.name.startswith(FRONT_PREFIX)}
    front = [
        n
        for n in g.node
        if n.name.startswith(FRONT_PREFIX)
        and n.op_type not in ("QuantizeLinear", "DequantizeLinear")
    ]
    assert {n.op_type for n in front} == float_front - {"Identity"}
    for n in front:
        assert all(
            producers.get(i) is None or producers[i].op_type != "DequantizeLinear" for i in n.input
        ), n.name
        assert all(inits[i].dtype != np.int8 for i in n.input if i in inits), n.name
    meta = read_metadata(q)
    assert meta["model_yaml_hash"] == model.yaml_hash
    assert meta["quantization"]["format"] == "QDQ" and meta["quantization"]["bias"] == "float"


@pytest.mark.parametrize("with_front", [False, True], ids=["float-input", "raw-front"])
def test_int8_runs_alike_on_every_runtime(tmp_path, with_front):
    """onnx.reference has DequantizeLinear only from opset 19: the int8 model uses 19."""
    model, _, q, x, nchw = _int8_setup(tmp_path, opset=19, with_front=with_front)
    name = RAW_INPUT_NAME if with_front else INPUT_NAME
    ref = run_onnxruntime(q, {name: x})[0]
    expected = model.forward(nchw)
    # int8 is close to float: within a few percent of the logits' range
    assert max_diff(ref, expected) <= 0.05 * np.ptp(expected)
    for rt, run in runtimes(tmp_path).items():
        got = run(q, {name: x}, [LOGITS_NAME])[0]
        assert max_diff(got, ref) <= 1e-3 * np.ptp(expected), rt
        assert np.array_equal(got.argmax(1), ref.argmax(1)), rt


def test_int8_float_layers_stay_float(tmp_path):
    _, _, nchw = chain_for(tmp_path, SENSOR, size=(16, 16), n=48, seed=5)
    model = case_model(TINY["layers"], input_shape=(3, 16, 16), seed=2)
    proto = export_onnx(model, opset=19)
    q = quantize_int8(proto, [nchw[:16], nchw[16:32]], float_layers=["fc"])
    producers = {o: n for n in q.graph.node for o in n.output}
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in q.graph.initializer}
    by_name = {n.name: n for n in q.graph.node}
    assert by_name["fc"].input[1] in inits and inits[by_name["fc"].input[1]].dtype == np.float32
    assert producers[by_name["c1"].input[1]].op_type == "DequantizeLinear"  # the rest is int8
    assert read_metadata(q)["quantization"]["float_layers"] == ["fc"]
    got = run_reference(q, {INPUT_NAME: nchw[32:]})[0]
    assert max_diff(got, run_onnxruntime(q, {INPUT_NAME: nchw[32:]})[0]) <= 1e-4
    assert max_diff(got, model.forward(nchw[32:])) <= 0.05 * np.ptp(got)


def test_onnx_reference_has_no_int8_before_opset_19(tmp_path):
    _, _, q, x, _ = _int8_setup(tmp_path, opset=17, with_front=False)
    with pytest.raises(Exception, match="DequantizeLinear"):
        run_reference(q, {INPUT_NAME: x})


# ---------------------------------------------------------------------- compatibility table

TABLE_OPSETS = (13, 17, 19, 21)
TABLE_RUNTIMES = ("onnxruntime", "onnx.reference", "opencv-new", "opencv-classic", "openvino")
FRONT_ROWS = ("none", "raw", "raw-table")
# SENSOR with a 10-bit companding table ADC: the raw front end linearises by a lookup
TABLE_SENSOR = [
    *SENSOR[:2],
    {
        "stage": "adc",
        "bits": 10,
        "curve": "table",
        "thresholds": (((np.arange(959) + 0.5) / 959.5) ** 2).tolist(),
    },
    SENSOR[3],
]


def _openvino_runner(tmp: Path):
    try:
        import openvino as ov
    except ImportError:
        return None

    def run(proto, feeds, outputs=None):
        path = save_onnx(proto, tmp / "openvino.onnx")
        core = ov.Core()
        compiled = core.compile_model(
            core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
        )
        res = compiled(list(feeds.values()))
        return [res[compiled.output(o)] for o in (outputs or [LOGITS_NAME])]

    return run


def _cell(run, proto, feeds, expected, tol) -> tuple[bool, str]:
    try:
        got = run(proto, feeds, [LOGITS_NAME])[0]
    except Exception as exc:  # a runtime refusing the model is a table entry, not a crash
        text = " ".join(str(exc).split())
        for key in ("DequantizeLinear", "uint16", "unsupported", "Unsupported", "not implemented"):
            if key in text:
                return False, f"✗ ({key})"
        return False, "✗ (error)"
    d = max_diff(got, expected)
    if d > tol:
        return False, f"✗ (max Δ {d:.0e})"
    bound = next(b for b in (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, math.inf) if d < b)
    return True, "✓" + ("" if bound == math.inf else f" <{bound:.0e}")


COMPAT_DOC = ROOT / "docs" / "onnx-compatibility.md"
REGENERATE = "python docs/onnx_compat_doc.py"
REGENERATE_ENV = "SENSORLAB_WRITE_COMPAT_DOC"


def _verdicts(text: str) -> list[str]:
    """The doc without what varies between machines: the measured bounds of passing
    cells (``✓ <1e-06`` -> ``✓``) and the versions line."""
    text = re.sub(r"✓ <\d+e-\d+", "✓", text)
    return [line for line in text.splitlines() if not line.startswith("Measured with ")]


def test_compatibility_table_in_the_docs(tmp_path):
    """Runtime × opset × float/int8 × front end, against docs/onnx-compatibility.md: the
    test fails when the doc is stale (a verdict or a note changed); ``python
    docs/onnx_compat_doc.py`` (which runs this test with SENSORLAB_WRITE_COMPAT_DOC=1)
    rewrites it.

    Float cells compare with the NumPy engine (tolerance 1e-4); int8 cells with
    onnxruntime's int8 output (tolerance 1e-3 of the logits' range, same predictions)."""
    chains = {
        "raw": chain_for(tmp_path, SENSOR, size=(16, 16), n=40, seed=9),
        "raw-table": chain_for(tmp_path, TABLE_SENSOR, size=(16, 16), n=40, seed=9),
    }
    chains["none"] = chains["raw"]
    model = case_model(TINY["layers"], input_shape=(3, 16, 16), seed=3)
    run_fns = runtimes(tmp_path)
    ov_run = _openvino_runner(tmp_path)
    rows: dict[tuple[str, str, str], list[str]] = {}
    ok: dict[tuple[str, str, str, int], bool] = {}
    for precision in ("float", "int8"):
        for front_name in FRONT_ROWS:
            front, dn, nchw = chains[front_name]
            expected = model.forward(nchw[32:])
            with_front = front_name != "none"
            x = dn if with_front else nchw
            name = RAW_INPUT_NAME if with_front else INPUT_NAME
            for opset in TABLE_OPSETS:
                proto = export_onnx(model, opset=opset, front=front, with_front=with_front)
                want, tol = expected, TOL
                if precision == "int8":
                    proto = quantize_int8(proto, [x[0:16], x[16:32]])
                    want = run_onnxruntime(proto, {name: x[32:]})[0]
                    tol = 1e-3 * float(np.ptp(expected))
                for rt in TABLE_RUNTIMES:
                    run = run_fns.get(rt) or ov_run
                    if run is None:
                        good, text = False, "not installed"
                    else:
                        good, text = _cell(run, proto, {name: x[32:]}, want, tol)
                    rows.setdefault((rt, precision, front_name), []).append(text)
                    ok[(rt, precision, front_name, opset)] = good
    # what the table must say on this machine (declared dependencies, never skipped)
    for rt in ("onnxruntime", "onnx.reference", "opencv-new", "opencv-classic"):
        for front_name in FRONT_ROWS:
            for opset in TABLE_OPSETS:
                assert ok[(rt, "float", front_name, opset)], (rt, front_name, opset)
                if rt != "onnx.reference" or opset >= 19:
                    assert ok[(rt, "int8", front_name, opset)], (rt, front_name, opset)
                else:
                    assert not ok[(rt, "int8", front_name, opset)]
    text = _table_text(rows, ov_run is not None, _opencv_int8_depthwise_probe(tmp_path))
    if os.environ.get(REGENERATE_ENV) == "1":
        COMPAT_DOC.write_text(text, encoding="utf-8")
        return
    current = COMPAT_DOC.read_text(encoding="utf-8") if COMPAT_DOC.exists() else ""
    assert _verdicts(current) == _verdicts(text), (
        f"{COMPAT_DOC.relative_to(ROOT)} is stale; regenerate it with `{REGENERATE}`"
    )


def _opencv_int8_depthwise_probe(tmp: Path) -> str:
    """OpenCV on a depthwise 5×5 convolution with padding 1 after another convolution (a
    case found while testing the new engine on int8): each engine's output against
    onnxruntime's (which onnx.reference confirms). Returns the finding for the docs."""
    layers = [
        {"type": "conv2d", "filters": 4, "kernel": 3, "padding": 1},
        {"type": "conv2d", "filters": 4, "kernel": 5, "groups": 4, "padding": 1},
        *F,
    ]
    model = case_model(layers, seed=4)
    x = np.random.default_rng(6).random((32, 3, 8, 8), dtype=np.float32)
    float_proto = export_onnx(model, opset=19)
    found = []
    for precision, proto in (
        ("float", float_proto),
        ("int8", quantize_int8(float_proto, [x[:16], x[16:]])),
    ):
        want = run_onnxruntime(proto, {INPUT_NAME: x[:4]})[0]
        assert max_diff(run_reference(proto, {INPUT_NAME: x[:4]})[0], want) <= 1e-6 * np.ptp(want)
        for engine in ("new", "classic"):
            d = max_diff(run_opencv(proto, {INPUT_NAME: x[:4]}, engine=engine, tmp=tmp)[0], want)
            verdict = "right" if d <= 1e-3 * float(np.ptp(want)) else f"wrong (max |Δ| {d:.0e})"
            found.append(f"{engine} engine {precision}: {verdict}")
    return "; ".join(found)


def _table_text(rows, have_openvino: bool, depthwise_probe: str) -> str:
    versions = (
        f"onnx {onnx.__version__}, onnxruntime {ort.__version__}, "
        f"OpenCV {cv2.__version__}"
        + (", OpenVINO installed" if have_openvino else ", OpenVINO not installed")
    )
    head = (
        "| runtime | precision | front end | "
        + " | ".join(f"opset {o} (IR {ir_version_for(o)})" for o in TABLE_OPSETS)
        + " |"
    )
    lines = [
        "# ONNX compatibility",
        "",
        "<!-- Generated by `python docs/onnx_compat_doc.py` (which runs"
        " tests/cnn/test_onnx_export.py::test_compatibility_table_in_the_docs);"
        " do not edit by hand. -->",
        "",
        "Which runtimes run a model written by `sensorlab export`, and how close their",
        "outputs come. The model is a small CNN (conv, ReLU, max-pool, conv, batch norm,",
        "global average pool, dense) on 16×16 images; the raw front end takes the 10-bit",
        "codes of an RGGB sensor (cast, black level, white level, bilinear demosaic in the",
        "graph); raw-table, those of a 10-bit companding (table) ADC, linearised by a",
        "lookup (Cast to int64, Gather) before the same steps. Float cells compare the",
        "logits with sensorlab's NumPy engine (pass: max |Δ| ≤ 1e-4); int8 cells (static",
        "QDQ, per-channel int8 weights, uint8 activations, float bias) compare with",
        "onnxruntime's int8 output (pass: max |Δ| ≤ 1e-3 of the logits' range and the",
        "same predictions). `✓ <1e-6` gives the bound on the measured max |Δ|.",
        "",
        f"Measured with {versions}.",
        "",
        "```sh",
        "sensorlab export runs/my-run --out model.onnx                       # float, opset 17",
        "sensorlab export runs/my-run --out raw.onnx --front raw             # takes ADC codes",
        "sensorlab export runs/my-run --out int8.onnx --front raw --int8 --opset 19 \\",
        "    --calibration configs/eval.yaml      # + int8.report.json: float vs int8 accuracy",
        "sensorlab eval runs/my-run --backend opencv --onnx raw.onnx --config configs/eval.yaml",
        "sensorlab import model.onnx --out imported/        # model YAML + weights",
        "```",
        "",
        head,
        "|" + "---|" * (3 + len(TABLE_OPSETS)),
    ]
    for (rt, precision, front_name), cells in rows.items():
        lines.append(f"| {rt} | {precision} | {front_name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Notes",
        "",
        "- The IR version follows the opset (`onnx.helper.VERSION_TABLE`): the ONNX checker",
        "  does not catch an IR newer than a runtime accepts.",
        "- `onnx.reference` implements DequantizeLinear from opset 19 on: export int8 models",
        "  with `--opset 19` (or later) to run them there. It runs BatchNormalization-9",
        "  (opsets 9-13) in training mode (batch statistics; its momentum has a schema",
        "  default), so below opset 14 the exporter writes batch norm as Mul + Add with the",
        "  folded scale and shift (`sensorlab import` reads that pair back as batch norm).",
        "- OpenCV 5 has two ONNX engines (`cv2.dnn.readNetFromONNX(path, engine)`); both are",
        "  tested. The new engine cannot run a quantised bias, so int8 exports keep biases",
        "  in float. The classic engine computes some padded, dilated depthwise convolutions",
        "  wrongly; the exporter writes those as the equivalent undilated kernel.",
        "- int8 runtimes use different integer kernels and rounding: on this small net they",
        "  agree to float precision; on deeper nets their logits differ and so do a few",
        "  predictions, so compare int8 runtimes by their predictions. `sensorlab export --int8`",
        "  writes the float and int8 accuracy and their agreement on held-out images;",
        "  `--float-layers NAME` keeps sensitive layers (often the last dense one) in float.",
        "- A depthwise 5×5 convolution with padding 1 that follows another convolution,",
        f"  on OpenCV: {depthwise_probe}.",
        "- OpenVINO (optional) computes in bf16 on CPUs that have it: compare with the",
        "  `INFERENCE_PRECISION_HINT: f32` setting. Its CPU plugin refuses a uint16 input on",
        "  an int8 model: export with `--input-dtype int32`.",
        "",
    ]
    return "\n".join(lines)
