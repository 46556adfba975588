"""The compiled evaluator (pipeline.cnn.fast) against the layers' own forward (float64
truth) and onnxruntime.

It must give the layers' semantics on any graph: random sequential nets mixing what it
fuses (same-size stride-1 convs, folded batch norm, activation and max-pool, flatten +
dense) with what runs each layer's forward (stride 2, dilation, groups, valid padding,
other pools, sigmoid/tanh), DAGs with add/concat skips, (D,) inputs, odd batch sizes and
several thread counts. Each test also checks that the compiled plan fused what it should,
so none passes when everything falls back to the layers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.cnn import fast
from pipeline.cnn.fast import CompiledNet, compile_model
from pipeline.cnn.graph import parse_graph
from pipeline.cnn.model import Model

HYP = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TOL = 1e-5
ROOT = Path(__file__).resolve().parents[2]


def _model(layers, input_shape=(3, 12, 12), dtype=np.float32, seed=0, classes=3):
    """A model with He/Glorot weights, small random biases and non-trivial batch-norm
    statistics."""
    names = [f"c{i}" for i in range(classes)]
    spec = parse_graph({"input": list(input_shape), "classes": names, "layers": layers})
    model = Model(spec, dtype=dtype, init_seed=seed)
    rng = np.random.default_rng(seed)
    for k, v in model.buffers.items():
        v[...] = rng.random(v.shape) + (0.5 if k.endswith("var") else -0.5)
    for k, v in model.params.items():
        if k.endswith("bias"):
            v[...] = rng.standard_normal(v.shape) * 0.1
        elif k.endswith("weight") and v.ndim == 1:  # batch-norm scale
            v[...] = rng.standard_normal(v.shape)
    return model


def compiled(model: Model, **kw) -> CompiledNet:
    nodes = model.spec.nodes[: model.spec.output_index + 1]
    params = {n.index: model.layer_params(n) for n in nodes}
    return CompiledNet(nodes, params, model.input_shape, **kw)


def reference(model: Model, x: np.ndarray) -> np.ndarray:
    """The layers' forward in float64 (a float64 model never takes the compiled path)."""
    m64 = Model(model.spec, dtype=np.float64)
    m64.set_state_arrays(model.state_arrays())
    return m64.forward(x.astype(np.float64))


def assert_matches_layers(model, x, **kw) -> CompiledNet:
    net = compiled(model, **kw)
    y = net(x)
    ref = reference(model, x)
    assert y.dtype == np.float32
    assert y.shape == ref.shape
    scale = max(float(np.abs(ref).max()), 1e-30)
    err = float(np.abs(y - ref).max()) / scale
    assert err < TOL, f"max error {err:.2e} relative to max |output|"
    return net


def conv(f, k, **args):
    return {"type": "conv2d", "filters": f, "kernel": k, **args}


# ------------------------------------------------------------- random sequential nets

CONV_KINDS = ["same3", "same3", "same1", "same5", "asym2", "valid3", "stride2", "dil2", "groups"]
POOL_KINDS = ["none", "none", "max2", "max3s1", "avg2", "max2pad"]
ACTS = ["relu", "relu", "leaky_relu", "none", "sigmoid", "tanh"]


def _conv_layer(draw, kind, c, h, w):
    """One drawn convolution: (layers, channels, h, w) after it."""
    f = draw(st.integers(1, 6))
    if kind.startswith("same"):
        k = int(kind[-1])
        return [conv(f, k, padding=draw(st.sampled_from(["same", k // 2])))], f, h, w
    if kind == "asym2":
        return [conv(f, 2, padding=[[0, 1], [1, 0]])], f, h, w
    if kind == "valid3" and min(h, w) >= 5:
        return [conv(f, 3)], f, h - 2, w - 2
    if kind == "stride2":
        return [conv(f, 3, stride=2, padding=1)], f, (h - 1) // 2 + 1, (w - 1) // 2 + 1
    if kind == "dil2" and min(h, w) >= 5:
        return [conv(f, 3, dilation=2, padding=1)], f, h - 2, w - 2
    if kind == "groups":
        pre = [conv(2, 1)] if c % 2 else []
        return [*pre, conv(2 * f, 3, groups=2, padding=1)], 2 * f, h, w
    return [conv(f, [1, 3], padding=[0, 1])], f, h, w


def _pool_layer(pool, h, w):
    if pool == "max2" and min(h, w) >= 2:
        return [{"type": "maxpool2d", "size": 2}], h // 2, w // 2
    if pool == "max3s1" and min(h, w) >= 3:
        return [{"type": "maxpool2d", "size": 3, "stride": 1}], h - 2, w - 2
    if pool == "avg2" and min(h, w) >= 2:
        return [{"type": "avgpool2d", "size": 2}], h // 2, w // 2
    if pool == "max2pad":
        return [{"type": "maxpool2d", "size": 2, "padding": 1}], h // 2 + 1, w // 2 + 1
    return [], h, w


@st.composite
def sequential_nets(draw):
    seed = draw(st.integers(0, 2**31))
    c, h, w = draw(st.integers(1, 4)), draw(st.integers(6, 12)), draw(st.integers(6, 12))
    shape0 = (c, h, w)
    layers: list[dict] = []
    for _ in range(draw(st.integers(1, 4))):
        more, c, h, w = _conv_layer(draw, draw(st.sampled_from(CONV_KINDS)), c, h, w)
        layers += more
        if draw(st.booleans()):
            layers.append({"type": "batchnorm2d", "eps": 1e-3})
        act = draw(st.sampled_from(ACTS))
        if act == "leaky_relu":
            layers.append({"type": "leaky_relu", "alpha": 0.1})
        elif act != "none":
            layers.append({"type": act})
        more, h, w = _pool_layer(draw(st.sampled_from(POOL_KINDS)), h, w)
        layers += more
        if min(h, w) < 3:
            break
    layers.append({"type": "global_avgpool"} if draw(st.booleans()) else {"type": "flatten"})
    layers.append({"type": "dense", "units": 7})
    classes = 7
    if draw(st.booleans()):
        layers += [{"type": "relu"}, {"type": "dense", "units": 5}]
        classes = 5
    if draw(st.booleans()):
        layers.append({"type": "softmax"})
    n = draw(st.sampled_from([1, 2, 5]))
    x = np.random.default_rng(seed).random((n, *shape0)).astype(np.float32)
    model = _model(layers, shape0, seed=seed % 1000, classes=classes)
    return model, x, draw(st.sampled_from([1, 2, 3]))


@HYP
@given(sequential_nets())
def test_random_sequential_nets_match_layers(case):
    model, x, threads = case
    net = assert_matches_layers(model, x, threads=threads, chunk_rows=64)
    assert net.fused_kernels["dense"] >= 1


# ----------------------------------------------------------------- DAGs, fusion limits


def test_residual_and_concat_dag():
    layers = [
        conv(8, 3, padding=1),
        {"type": "relu", "name": "r1"},
        conv(8, 3, padding=1),
        {"type": "relu"},
        conv(8, 3, padding=1),
        {"type": "add", "from": [-1, "r1"]},  # skip from the first relu
        {"type": "relu", "name": "r2"},
        conv(4, 1, **{"from": "input"}, name="side"),  # a branch from the input
        {"type": "concat", "from": ["r2", "side"]},
        conv(6, 3, padding="same"),
        {"type": "maxpool2d", "size": 2},
        {"type": "flatten"},
        {"type": "dense", "units": 4},
    ]
    model = _model(layers, (3, 10, 10), classes=4)
    x = np.random.default_rng(0).random((3, 3, 10, 10)).astype(np.float32)
    for threads in (1, 2):
        net = assert_matches_layers(model, x, threads=threads)
        assert net.fused_kernels == {"conv": 5, "dense": 1}


def test_conv_output_read_twice_is_not_fused_away():
    layers = [
        conv(4, 3, padding=1, name="c0"),
        {"type": "relu"},
        {"type": "maxpool2d", "size": 2, "name": "p"},  # read by the conv and by the add
        conv(4, 3, padding=1),
        {"type": "add", "from": [-1, "p"]},
        {"type": "flatten"},
        {"type": "dense", "units": 3, "name": "d"},
        {"type": "add", "from": ["d", "d"]},
    ]
    model = _model(layers, (2, 8, 8))
    x = np.random.default_rng(1).random((4, 2, 8, 8)).astype(np.float32)
    net = assert_matches_layers(model, x, threads=2, chunk_rows=100)
    assert [s.pool for s in net.steps if isinstance(s, fast._Conv)] == [2, 0]
    # the raw conv output feeds a second consumer too: the relu must not be fused
    layers2 = [
        conv(4, 3, padding=1, name="c0"),
        {"type": "relu"},
        {"type": "add", "from": ["c0", -1]},
        {"type": "flatten"},
        {"type": "dense", "units": 3},
    ]
    net = assert_matches_layers(_model(layers2, (2, 8, 8)), x)
    assert [s.act for s in net.steps if isinstance(s, fast._Conv)] == [None]


def test_output_can_be_a_feature_map_and_dense_relu_last():
    x = np.random.default_rng(2).random((2, 3, 6, 6)).astype(np.float32)
    layers = [conv(5, 3, padding=1), {"type": "relu"}, {"type": "flatten"}]
    model = _model(layers, (3, 6, 6), classes=180)
    spec = model.spec
    nodes = spec.nodes[:2]  # up to the relu: a (5, 6, 6) output
    net = CompiledNet(nodes, {n.index: model.layer_params(n) for n in nodes}, (3, 6, 6))
    y = net(x)
    m64 = Model(spec, dtype=np.float64)
    m64.set_state_arrays(model.state_arrays())
    ref = np.maximum(
        nodes[0].layer.forward([x.astype(np.float64)], m64.layer_params(nodes[0]))[0], 0
    )
    np.testing.assert_allclose(y, ref, rtol=0, atol=TOL * np.abs(ref).max())
    assert net.fused_kernels["conv"] == 1
    dense_relu = [{"type": "flatten"}, {"type": "dense", "units": 4}, {"type": "relu"}]
    net = assert_matches_layers(_model(dense_relu, (3, 6, 6), classes=4), x)
    assert [type(s).__name__ for s in net.steps] == ["_Forward", "_Dense"]


def test_one_dimensional_input_runs_compiled():
    """An MLP on (D,) features (what an imported Gemm/MatMul model is)."""
    layers = [
        {"type": "dense", "units": 8},
        {"type": "relu"},
        {"type": "dense", "units": 3},
        {"type": "softmax"},
    ]
    model = _model(layers, (6,))
    x = np.random.default_rng(7).random((5, 6)).astype(np.float32)
    net = assert_matches_layers(model, x, threads=2)
    assert net.fused_kernels == {"conv": 0, "dense": 2}
    np.testing.assert_allclose(model.forward(x), reference(model, x), rtol=1e-5, atol=1e-6)
    assert fast._compiled[model][1].fused_kernels["dense"] == 2


# ------------------------------------------------------------ the benchmark network


BENCH_LAYERS = [
    *(
        row
        for k, f in enumerate((32, 32, 64, 64))
        for row in (
            conv(f, 3, padding=1),
            {"type": "relu"},
            *([{"type": "maxpool2d", "size": 2}] if k in (1, 3) else []),
        )
    ),
    {"type": "flatten"},
    {"type": "dense", "units": 256},
    {"type": "relu"},
    {"type": "dense", "units": 10},
]


def test_bench_net_matches_layers_and_onnxruntime():
    import onnxruntime as ort  # a declared dependency: never skipped

    from pipeline.cnn.onnx_export import export_onnx

    model = _model(BENCH_LAYERS, (3, 32, 32), seed=3, classes=10)
    x = np.random.default_rng(3).random((9, 3, 32, 32)).astype(np.float32)
    net = assert_matches_layers(model, x, threads=2)
    # the whole network is fused: 4 convs (2 with pooling), 2 dense
    kinds = [type(s).__name__ for s in net.steps]
    assert kinds == ["_ToPadded", *["_Conv"] * 4, "_FlattenHWC", "_Dense", "_Dense"]
    assert [s.pool for s in net.steps if isinstance(s, fast._Conv)] == [0, 2, 0, 2]
    y = net(x)
    proto = export_onnx(model)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {"input": x})[0]
    np.testing.assert_allclose(y, ref, rtol=0, atol=TOL * np.abs(ref).max())
    # reusing buffers across calls and batch sizes gives the same answers
    np.testing.assert_array_equal(net(x[:4]), compiled(model)(x[:4]))
    np.testing.assert_array_equal(net(x), y)
    assert net(x[:0]).shape == (0, 10)


def test_batch_shape_is_checked_and_float64_input_accepted():
    model = _model(
        [conv(2, 3, padding=1), {"type": "flatten"}, {"type": "dense", "units": 3}], (3, 8, 8)
    )
    net = compile_model(model)
    with pytest.raises(ValueError, match=r"expected a \(N, 3, 8, 8\) batch"):
        net(np.zeros((1, 3, 9, 8)))
    y = net(np.ones((2, 3, 8, 8)))  # float64 input is accepted, output is float32
    assert y.dtype == np.float32 and y.shape == (2, 3)


# --------------------------------------------------------------- Model integration


def _eval_both(model, x):
    """(compiled, layers) evaluation of a float32 model; the compiled one must have run."""
    fast._compiled.pop(model, None)
    compiled_y = model.forward(x)
    assert model in fast._compiled, "Model.forward did not take the compiled path"
    model.fast_eval = False
    try:
        layers_y = model.forward(x)
    finally:
        model.fast_eval = True
    return compiled_y, layers_y


def _close(a, b):
    assert a.shape == b.shape and a.dtype == b.dtype == np.float32
    err = float(np.abs(a - b).max() / np.abs(b).max())
    assert err < TOL, err


def test_model_eval_uses_fast_path_for_the_shipped_graph():
    from pipeline.cnn.graph import load_graph

    yaml_path = ROOT / "configs" / "models" / "rgb32.yaml"
    model = Model(load_graph(yaml_path), init_seed=3)
    x = np.random.default_rng(4).random((6, 3, 32, 32), dtype=np.float32)
    a, b = _eval_both(model, x)
    _close(a, b)
    assert fast._compiled[model][1].fused_kernels["conv"] == 4
    np.testing.assert_array_equal(model.predict(x, batch_size=4), np.argmax(b, axis=1))


def test_model_with_every_layer_type_matches_layers():
    layers = [
        {"type": "conv2d", "filters": 8, "kernel": 3, "padding": "same", "name": "c1"},
        {"type": "batchnorm2d"},
        {"type": "relu", "name": "r1"},
        {"type": "conv2d", "filters": 8, "kernel": 3, "padding": 2, "dilation": 2},
        {"type": "leaky_relu", "alpha": 0.2},
        {"type": "add", "from": [-1, "r1"]},
        {"type": "conv2d", "filters": 4, "kernel": 1, "from": ["input"], "name": "side"},
        {"type": "hard_sigmoid"},
        {"type": "sigmoid"},
        {"type": "concat", "from": [-4, -1]},
        {"type": "maxpool2d", "size": 3, "stride": 2, "padding": 1},
        {"type": "conv2d", "filters": 12, "kernel": 3, "stride": 2, "padding": 1, "groups": 4},
        {"type": "tanh"},
        {"type": "avgpool2d", "size": 2, "stride": 1, "padding": 1},
        {"type": "global_avgpool"},
        {"type": "dropout", "rate": 0.5},
        {"type": "dense", "units": 3},
        {"type": "softmax"},
    ]
    model = _model(layers)
    x = np.random.default_rng(5).random((5, 3, 12, 12), dtype=np.float32)
    a, b = _eval_both(model, x)
    _close(a, b)
    # the compiled plan fused c1 + batch norm + relu, the 1x1 side conv and the dense
    # layer; every other layer ran its own forward inside the compiled network
    net = fast._compiled[model][1]
    assert net.fused_kernels == {"conv": 2, "dense": 1}
    ran = {net.nodes[s.node].type for s in net.steps if isinstance(s, fast._Forward)}
    assert ran == {t["type"] for t in layers} - {"batchnorm2d", "relu", "dense", "softmax"}


def test_model_fast_path_follows_parameter_changes():
    model = _model(
        [
            {"type": "conv2d", "filters": 4, "kernel": 3, "padding": 1},
            {"type": "relu"},
            {"type": "flatten"},
            {"type": "dense", "units": 3},
        ],
        input_shape=(2, 6, 6),
    )
    x = np.random.default_rng(6).random((3, 2, 6, 6), dtype=np.float32)
    before = model.forward(x)
    w = next(v for k, v in model.params.items() if k.endswith("weight"))
    w[0, 0, 0, 0] += 0.5  # in place, as an optimiser step does
    a, b = _eval_both(model, x)
    _close(a, b)
    assert not np.allclose(a, before)
    # a float64 model keeps its layers (and its float64 results)
    m64 = _model([{"type": "flatten"}, {"type": "dense", "units": 3}], (2, 6, 6), np.float64)
    assert fast.fast_forward(m64, x.astype(np.float64)) is None
    assert m64.forward(x).dtype == np.float64


def test_compiled_net_follows_weights_moved_in_place():
    """Swapping two rows of a weight in place (same values, new order) must not serve the
    previously compiled network."""
    from pipeline.cnn.graph import load_graph

    model = Model(load_graph(ROOT / "configs" / "models" / "procedural32.yaml"), init_seed=1)
    x = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    before = model.forward(x)
    w = model.params["fc.weight"]
    w[[0, 1]] = w[[1, 0]]
    after = model.forward(x)
    np.testing.assert_allclose(after[:, [1, 0]], before[:, [0, 1]], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(after[:, 2:], before[:, 2:], rtol=1e-5, atol=1e-6)
    assert not np.allclose(after[:, :2], before[:, :2])
