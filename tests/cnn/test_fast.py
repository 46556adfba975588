"""pipeline.cnn.fast against the functional path (float64 truth) and onnxruntime.

The fast executor must give the functional semantics on any spec: random sequential
nets mixing what it accelerates (same-size stride-1 convs, fused batch norm, activation
and max-pool, flatten + dense) with what it hands to the functional path (stride 2,
dilation, groups, valid padding, other pools, sigmoid/tanh), DAGs with add/concat skips,
odd batch sizes and several thread counts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.cnn.fast import Op, compile_inference, run_reference

HYP = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TOL = 1e-5


def as64(ops: list[Op]) -> list[Op]:
    """The same spec with float64 weights: the reference is then float64."""
    return [
        Op(
            o.type,
            o.attrs,
            {k: np.asarray(v, np.float64) for k, v in o.weights.items()},
            o.inputs,
            o.name,
        )
        for o in ops
    ]


def assert_matches_reference(ops, x, **kw):
    y = compile_inference(ops, x.shape[1:], **kw)(x)
    ref = run_reference(as64(ops), x.astype(np.float64))
    assert y.dtype == np.float32
    assert y.shape == ref.shape
    scale = max(float(np.abs(ref).max()), 1e-30)
    err = float(np.abs(y - ref).max()) / scale
    assert err < TOL, f"max error {err:.2e} relative to max |output|"


def conv_op(rng, c_in, c_out, k, groups=1, inputs=(-1,), **attrs):
    w = rng.standard_normal((c_out, c_in // groups, *k)) * np.sqrt(2 / (c_in * k[0] * k[1]))
    b = rng.standard_normal(c_out) * 0.1
    weights = {"w": w.astype(np.float32), "b": b.astype(np.float32)}
    return Op("conv", {"groups": groups, **attrs}, weights, inputs)


def bn_op(rng, c):
    return Op(
        "batch_norm",
        {"eps": 1e-3},
        {
            "gamma": rng.standard_normal(c).astype(np.float32),
            "beta": rng.standard_normal(c).astype(np.float32),
            "mean": rng.standard_normal(c).astype(np.float32),
            "var": (rng.random(c) + 0.5).astype(np.float32),
        },
    )


def dense_op(rng, n_in, n_out):
    return Op(
        "dense",
        {},
        {
            "w": (rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)).astype(np.float32),
            "b": (rng.standard_normal(n_out) * 0.1).astype(np.float32),
        },
    )


# ------------------------------------------------------------- random sequential nets

CONV_KINDS = ["same3", "same3", "same1", "same5", "asym2", "valid3", "stride2", "dil2", "groups"]
POOL_KINDS = ["none", "none", "max2", "max3s1", "avg2", "max2pad"]
ACTS = ["relu", "relu", "leaky_relu", "none", "sigmoid", "tanh"]


@st.composite
def sequential_nets(draw):
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    c, h, w = draw(st.integers(1, 4)), draw(st.integers(6, 12)), draw(st.integers(6, 12))
    shape0 = (c, h, w)
    ops: list[Op] = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(CONV_KINDS))
        f = draw(st.integers(1, 6))
        if kind.startswith("same"):
            k = int(kind[-1])
            pad = draw(st.sampled_from(["same", k // 2]))
            ops.append(conv_op(rng, c, f, (k, k), padding=pad))
        elif kind == "asym2":
            ops.append(conv_op(rng, c, f, (2, 2), padding=((0, 1), (1, 0))))
        elif kind == "valid3" and min(h, w) >= 5:
            ops.append(conv_op(rng, c, f, (3, 3)))
            h, w = h - 2, w - 2
        elif kind == "stride2":
            ops.append(conv_op(rng, c, f, (3, 3), stride=2, padding=1))
            h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        elif kind == "dil2" and min(h, w) >= 5:
            ops.append(conv_op(rng, c, f, (3, 3), dilation=2, padding=1))
            h, w = h - 2, w - 2
        elif kind == "groups":
            f = 2 * f
            if c % 2:
                ops.append(conv_op(rng, c, 2, (1, 1)))
                c = 2
            ops.append(conv_op(rng, c, f, (3, 3), groups=2, padding=1))
        else:
            ops.append(conv_op(rng, c, f, (1, 3), padding=(0, 1)))
        c = f
        if draw(st.booleans()):
            ops.append(bn_op(rng, c))
        act = draw(st.sampled_from(ACTS))
        if act == "leaky_relu":
            ops.append(Op("leaky_relu", {"alpha": 0.1}))
        elif act != "none":
            ops.append(Op(act))
        pool = draw(st.sampled_from(POOL_KINDS))
        if pool == "max2" and min(h, w) >= 2:
            ops.append(Op("max_pool", {"size": 2}))
            h, w = h // 2, w // 2
        elif pool == "max3s1" and min(h, w) >= 3:
            ops.append(Op("max_pool", {"size": 3, "stride": 1}))
            h, w = h - 2, w - 2
        elif pool == "avg2" and min(h, w) >= 2:
            ops.append(Op("avg_pool", {"size": 2}))
            h, w = h // 2, w // 2
        elif pool == "max2pad":
            ops.append(Op("max_pool", {"size": 2, "padding": 1}))
            h, w = h // 2 + 1, w // 2 + 1
        if min(h, w) < 3:
            break
    if draw(st.booleans()):
        ops.append(Op("global_avg_pool"))
        h = w = 1
    ops.append(Op("flatten"))
    ops.append(dense_op(rng, c * h * w, 7))
    if draw(st.booleans()):
        ops.append(Op("relu"))
        ops.append(dense_op(rng, 7, 5))
    if draw(st.booleans()):
        ops.append(Op("softmax"))
    n = draw(st.sampled_from([1, 2, 5]))
    x = rng.random((n, *shape0)).astype(np.float32)
    return ops, x, draw(st.sampled_from([1, 2, 3]))


@HYP
@given(sequential_nets())
def test_random_sequential_nets_match_reference(case):
    ops, x, threads = case
    assert_matches_reference(ops, x, threads=threads, chunk_rows=64)


# ----------------------------------------------------------------- DAGs, fusion limits


def test_residual_and_concat_dag():
    rng = np.random.default_rng(0)
    ops = [
        conv_op(rng, 3, 8, (3, 3), padding=1),  # 0
        Op("relu"),  # 1
        conv_op(rng, 8, 8, (3, 3), padding=1),  # 2
        Op("relu"),  # 3
        conv_op(rng, 8, 8, (3, 3), padding=1),  # 4
        Op("add", inputs=(-1, 1)),  # 5: skip from the first relu
        Op("relu"),  # 6
        conv_op(rng, 3, 4, (1, 1), inputs=("input",)),  # 7: a branch from the input
        Op("concat", {"axis": 1}, inputs=(6, 7)),  # 8
        conv_op(rng, 12, 6, (3, 3), padding="same"),  # 9
        Op("max_pool", {"size": 2}),  # 10
        Op("flatten"),
        dense_op(rng, 6 * 5 * 5, 4),
    ]
    x = rng.random((3, 3, 10, 10)).astype(np.float32)
    for threads in (1, 2):
        assert_matches_reference(ops, x, threads=threads)


def test_conv_output_read_twice_is_not_fused_away():
    rng = np.random.default_rng(1)
    ops = [
        conv_op(rng, 2, 4, (3, 3), padding=1),  # 0: read by the relu and by the add
        Op("relu"),
        Op("max_pool", {"size": 2}),  # read by the conv and by the flatten below
        conv_op(rng, 4, 4, (3, 3), padding=1),
        Op("add", inputs=(-1, 2)),
        Op("flatten"),
        dense_op(rng, 4 * 4 * 4, 3),
        Op("add", inputs=(-1, -1)),
    ]
    x = rng.random((4, 2, 8, 8)).astype(np.float32)
    assert_matches_reference(ops, x, threads=2, chunk_rows=100)
    # the raw conv output feeds a second consumer too: the relu must not be fused
    ops2 = [ops[0], Op("relu"), Op("add", inputs=(0, 1)), Op("flatten"), dense_op(rng, 256, 3)]
    assert_matches_reference(ops2, x)


def test_output_can_be_a_feature_map_and_dense_relu_last():
    rng = np.random.default_rng(2)
    x = rng.random((2, 3, 6, 6)).astype(np.float32)
    assert_matches_reference([conv_op(rng, 3, 5, (3, 3), padding=1), Op("relu")], x)
    assert_matches_reference([Op("flatten"), dense_op(rng, 108, 4), Op("relu")], x)


# ------------------------------------------------------------ the benchmark network


def bench_net(rng):
    ops = []
    chans = (3, 32, 32, 64, 64)
    for k in range(4):
        ops += [conv_op(rng, chans[k], chans[k + 1], (3, 3), padding=1), Op("relu")]
        if k in (1, 3):
            ops.append(Op("max_pool", {"size": 2}))
    return [*ops, Op("flatten"), dense_op(rng, 4096, 256), Op("relu"), dense_op(rng, 256, 10)]


def test_bench_net_matches_reference_and_onnxruntime():
    import onnxruntime as ort  # a declared dependency: never skipped
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    ops = bench_net(rng)
    x = rng.random((9, 3, 32, 32)).astype(np.float32)
    net = compile_inference(ops, (3, 32, 32), threads=2)
    y = net(x)
    # the whole network takes the fast path: 4 fused convs (2 with pooling), 2 dense
    kinds = [kind for kind, _ in net.steps]
    assert kinds == ["to_padded", *["conv"] * 4, "flatten_hwc", "dense", "dense"]
    assert [s.pool for kind, s in net.steps if kind == "conv"] == [0, 2, 0, 2]
    assert_matches_reference(ops, x, threads=2)
    # the same network through onnxruntime
    nodes, inits, cur = [], [], "x"
    for i, op in enumerate(ops):
        out = f"v{i}"
        names = [cur]
        for k, v in op.weights.items():
            inits.append(numpy_helper.from_array(v, f"{k}{i}"))
            names.append(f"{k}{i}")
        if op.type == "conv":
            nodes.append(helper.make_node("Conv", names, [out], pads=[1, 1, 1, 1]))
        elif op.type == "dense":
            nodes.append(helper.make_node("Gemm", names, [out], transB=1))
        elif op.type == "max_pool":
            nodes.append(
                helper.make_node("MaxPool", names, [out], kernel_shape=[2, 2], strides=[2, 2])
            )
        else:
            onnx_type = {"relu": "Relu", "flatten": "Flatten"}[op.type]
            nodes.append(helper.make_node(onnx_type, names, [out]))
        cur = out
    graph = helper.make_graph(
        nodes,
        "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 32, 32])],
        [helper.make_tensor_value_info(cur, TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {"x": x})[0]
    np.testing.assert_allclose(y, ref, rtol=0, atol=TOL * np.abs(ref).max())
    # reusing buffers across calls and batch sizes gives the same answers
    np.testing.assert_array_equal(net(x[:4]), compile_inference(ops, (3, 32, 32))(x[:4]))
    np.testing.assert_array_equal(net(x), y)
    assert net(x[:0]).shape == (0, 10)


# ------------------------------------------------------------------------ the spec


def test_spec_errors_name_the_op():
    w = {"w": np.zeros((2, 3, 3, 3), np.float32)}
    with pytest.raises(
        ValueError, match=r"op 0 \(conv2d\): unknown op type \(did you mean 'conv'\?\)"
    ):
        compile_inference([Op("conv2d")], (3, 8, 8))
    with pytest.raises(ValueError, match=r"unknown op type \(one of conv, dense, "):
        compile_inference([Op("lstm")], (3, 8, 8))
    with pytest.raises(ValueError, match="not an earlier op"):
        compile_inference([Op("relu", inputs=(0,))], (3, 8, 8))
    with pytest.raises(ValueError, match=r"op 0 \(relu\): unknown attribute 'alpha'"):
        compile_inference([Op("relu", {"alpha": 0.1})], (3, 8, 8))
    with pytest.raises(ValueError, match="missing weight 'w'"):
        compile_inference([Op("conv", name="c1")], (3, 8, 8))
    with pytest.raises(ValueError, match=r"op 1 \(conv 'c2'\).*input channels"):
        compile_inference([Op("relu"), Op("conv", {}, {"w": w["w"][:, :2]}, name="c2")], (3, 8, 8))
    net = compile_inference([Op("conv", {"padding": 1}, w)], (3, 8, 8))
    with pytest.raises(ValueError, match=r"expected a \(N, 3, 8, 8\) batch"):
        net(np.zeros((1, 3, 9, 8)))
    y = net(np.ones((2, 3, 8, 8)))  # float64 input is accepted, output is float32
    assert y.dtype == np.float32 and y.shape == (2, 2, 8, 8)


# --------------------------------------------------------------- Model integration


def _model(layers, input_shape=(3, 12, 12), dtype=np.float32, seed=0):
    from pipeline.cnn.graph import parse_graph
    from pipeline.cnn.model import Model

    spec = parse_graph({"input": list(input_shape), "classes": ["a", "b", "c"], "layers": layers})
    model = Model(spec, dtype=dtype, init_seed=seed)
    rng = np.random.default_rng(seed)
    for k, v in model.buffers.items():  # non-trivial batch-norm statistics
        v[...] = rng.random(v.shape) + (0.5 if k.endswith("var") else -0.5)
    for k, v in model.params.items():
        if k.endswith("bias"):
            v[...] = rng.standard_normal(v.shape) * 0.1
    return model


def _eval_both(model, x):
    fast = model.forward(x)
    model.fast_eval = False
    try:
        slow = model.forward(x)
    finally:
        model.fast_eval = True
    return fast, slow


def _close(a, b):
    assert a.shape == b.shape and a.dtype == b.dtype == np.float32
    err = float(np.abs(a - b).max() / np.abs(b).max())
    assert err < TOL, err


def test_model_eval_uses_fast_path_for_the_shipped_graph():
    from pathlib import Path

    from pipeline.cnn import fast
    from pipeline.cnn.graph import load_graph
    from pipeline.cnn.model import Model

    yaml_path = Path(__file__).resolve().parents[2] / "configs" / "models" / "rgb32.yaml"
    model = Model(load_graph(yaml_path), init_seed=3)
    x = np.random.default_rng(4).random((6, 3, 32, 32), dtype=np.float32)
    a, b = _eval_both(model, x)
    _close(a, b)
    net = fast._compiled[model][1]
    assert [k for k, _ in net.steps].count("conv") == 4
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
        {"type": "sigmoid"},
        {"type": "concat", "from": [-3, -1]},
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


def test_model_fast_path_follows_parameter_changes():
    from pipeline.cnn import fast

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
    from pipeline.cnn.model import Model

    root = Path(__file__).resolve().parents[2]
    model = Model(load_graph(root / "configs" / "models" / "procedural32.yaml"), init_seed=1)
    x = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    before = model.forward(x)
    w = model.params["fc.weight"]
    w[[0, 1]] = w[[1, 0]]
    after = model.forward(x)
    np.testing.assert_allclose(after[:, [1, 0]], before[:, [0, 1]], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(after[:, 2:], before[:, 2:], rtol=1e-5, atol=1e-6)
    assert not np.allclose(after[:, :2], before[:, :2])
