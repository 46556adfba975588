"""Layer classes: finite-difference gradients (float64), shape inference against the real
forward shapes, initialisation statistics, batch-norm and dropout modes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.cnn.layers import LAYERS, ShapeError

RTOL = 1e-6  # relative error bound of the gradient checks


def build(layer_type, input_shapes, **args):
    cls = LAYERS[layer_type]
    return cls(cls.Args(**args), input_shapes)


# (id, layer type, input shapes (one sample), args)
CASES = [
    ("conv_same", "conv2d", [(3, 7, 6)], {"filters": 4, "kernel": 3, "padding": "same"}),
    ("conv_stride2", "conv2d", [(2, 9, 8)], {"filters": 3, "kernel": [3, 2], "stride": 2}),
    (
        "conv_dilated_asym",
        "conv2d",
        [(2, 8, 9)],
        {"filters": 3, "kernel": 3, "dilation": 2, "padding": [[1, 0], [2, 1]]},
    ),
    ("conv_groups", "conv2d", [(4, 6, 6)], {"filters": 6, "kernel": 3, "groups": 2, "padding": 1}),
    ("conv_nobias", "conv2d", [(2, 5, 5)], {"filters": 2, "kernel": 2, "bias": False}),
    (
        "conv_same_s2",
        "conv2d",
        [(2, 7, 7)],
        {"filters": 2, "kernel": 3, "stride": 2, "padding": "same"},
    ),
    ("dense", "dense", [(7,)], {"units": 5}),
    ("dense_nobias", "dense", [(6,)], {"units": 3, "bias": False}),
    ("relu", "relu", [(3, 4, 4)], {}),
    ("leaky_relu", "leaky_relu", [(3, 4, 4)], {"alpha": 0.2}),
    ("sigmoid", "sigmoid", [(2, 3, 3)], {}),
    ("hard_sigmoid", "hard_sigmoid", [(2, 3, 3)], {"alpha": 0.3, "beta": 0.4}),
    ("tanh", "tanh", [(5,)], {}),
    ("softmax", "softmax", [(6,)], {}),
    ("maxpool", "maxpool2d", [(2, 6, 6)], {"size": 2}),
    ("maxpool_overlap_pad", "maxpool2d", [(2, 7, 7)], {"size": 3, "stride": 2, "padding": 1}),
    ("avgpool", "avgpool2d", [(2, 6, 6)], {"size": 2}),
    ("avgpool_s1", "avgpool2d", [(2, 5, 5)], {"size": [2, 3], "stride": 1}),
    ("global_avgpool", "global_avgpool", [(3, 5, 4)], {}),
    ("batchnorm", "batchnorm2d", [(3, 4, 5)], {}),
    ("dropout", "dropout", [(3, 4, 4)], {"rate": 0.4}),
    ("flatten", "flatten", [(3, 2, 4)], {}),
    ("add", "add", [(2, 3, 3), (2, 3, 3), (2, 3, 3)], {}),
    ("concat", "concat", [(2, 3, 3), (3, 3, 3)], {}),
    ("concat_1d", "concat", [(4,), (2,)], {}),
]


def test_every_layer_type_is_covered():
    assert {c[1] for c in CASES} == set(LAYERS)


def _inputs(layer_type, shapes, n, rng):
    xs = []
    for s in shapes:
        x = rng.standard_normal((n, *s))
        if layer_type in ("relu", "leaky_relu"):
            x = np.where(np.abs(x) < 0.05, x + 0.1 * np.sign(x + 1e-12), x)  # away from the kink
        if layer_type == "hard_sigmoid":  # away from the kinks at alpha*x + beta = 0 and 1
            x = rng.choice([-5.0, -1.2, -0.5, 0.0, 0.5, 1.2, 5.0], x.shape) + 0.01 * x
        if layer_type == "maxpool2d":
            # distinct values, gaps far larger than the finite-difference step
            x = rng.permutation(np.arange(x.size)).reshape(x.shape) * 0.01
        xs.append(x)
    return xs


def _params(layer, rng):
    p = layer.init(rng, np.float64, None)
    for k in layer.param_shapes():  # non-trivial values everywhere (BN gamma/beta, biases)
        p[k] = p[k] + 0.3 * rng.standard_normal(p[k].shape)
    return p


def _rel_err(a, b):
    return np.linalg.norm(a - b) / max(np.linalg.norm(a) + np.linalg.norm(b), 1e-300)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_gradients_match_finite_differences(case):
    _, layer_type, shapes, args = case
    rng = np.random.default_rng(1)
    layer = build(layer_type, shapes, **args)
    xs = _inputs(layer_type, shapes, 3, rng)
    p = _params(layer, rng)

    def run(xs_, p_):
        return layer.forward(xs_, p_, train=True, rng=np.random.default_rng(7))

    y, cache = run(xs, p)
    r = rng.standard_normal(y.shape)  # loss = sum(r * y)
    dxs, dps = layer.backward(r, cache, p)
    assert len(dxs) == len(xs)
    assert set(dps) == set(layer.param_shapes())

    h = 1e-6

    def numeric(arr, loss_of):
        g = np.zeros_like(arr)
        for i in np.ndindex(arr.shape):
            old = arr[i]
            arr[i] = old + h
            up = loss_of()
            arr[i] = old - h
            down = loss_of()
            arr[i] = old
            g[i] = (up - down) / (2 * h)
        return g

    def loss():
        return float(np.sum(r * run(xs, p)[0]))

    for x, dx in zip(xs, dxs, strict=True):
        assert dx.shape == x.shape
        assert _rel_err(dx, numeric(x, loss)) < RTOL
    for k in layer.param_shapes():
        assert dps[k].shape == p[k].shape
        assert _rel_err(dps[k], numeric(p[k], loss)) < RTOL, k


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("train", [False, True])
def test_inferred_shape_matches_forward(case, train):
    _, layer_type, shapes, args = case
    rng = np.random.default_rng(0)
    layer = build(layer_type, shapes, **args)
    xs = [rng.standard_normal((2, *s)).astype(np.float32) for s in shapes]
    p = layer.init(rng, np.float32, None)
    for k, s in {**layer.param_shapes(), **layer.buffer_shapes()}.items():
        assert p[k].shape == s
    y, _ = layer.forward(xs, p, train=train, rng=np.random.default_rng(0))
    assert y.shape == (2, *layer.output_shape)


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "padding", "dilation"),
    [(32, 3, 1, 1, 1), (32, 3, 2, 1, 1), (7, 3, 2, 0, 1), (9, 3, 1, 0, 2), (10, 4, 3, 2, 1)],
)
def test_conv_output_size_is_the_onnx_formula(size, kernel, stride, padding, dilation):
    layer = build(
        "conv2d",
        [(1, size, size)],
        filters=1,
        kernel=kernel,
        stride=stride,
        padding=padding,
        dilation=dilation,
    )
    f = dilation * (kernel - 1) + 1
    expected = math.floor((size - f + 2 * padding) / stride) + 1
    assert layer.output_shape == (1, expected, expected)


@pytest.mark.parametrize("size", [5, 6, 7, 32])
@pytest.mark.parametrize("stride", [1, 2, 3])
def test_same_padding_gives_ceil_of_size_over_stride(size, stride):
    layer = build("conv2d", [(1, size, size)], filters=1, kernel=3, stride=stride, padding="same")
    assert layer.output_shape[1:] == (math.ceil(size / stride),) * 2


def test_pool_output_size_is_the_onnx_formula():
    layer = build("maxpool2d", [(4, 7, 7)], size=3, stride=2, padding=1)
    assert layer.output_shape == (4, (7 - 3 + 2) // 2 + 1, (7 - 3 + 2) // 2 + 1)
    assert build("avgpool2d", [(4, 7, 5)], size=2).output_shape == (4, 3, 2)  # floor, no ceil


def test_shape_errors():
    with pytest.raises(ShapeError, match=r"dense expects 1-D input, got \(64, 8, 8\); add flatten"):
        build("dense", [(64, 8, 8)], units=4)
    with pytest.raises(ShapeError, match="larger than the input"):
        build("conv2d", [(3, 4, 4)], filters=2, kernel=5)
    with pytest.raises(ShapeError, match="groups=2 must divide"):
        build("conv2d", [(3, 8, 8)], filters=4, kernel=3, groups=2)
    with pytest.raises(ShapeError, match="more than half the window"):
        build("maxpool2d", [(3, 8, 8)], size=2, padding=2)
    with pytest.raises(ShapeError, match="one shape"):
        build("add", [(2, 4, 4), (3, 4, 4)])
    with pytest.raises(ShapeError, match="differ only in channels"):
        build("concat", [(2, 4, 4), (2, 5, 4)])
    with pytest.raises(ShapeError, match=r"expects \(C, H, W\) input"):
        build("batchnorm2d", [(12,)])


def test_he_and_glorot_initialisation_statistics():
    rng = np.random.default_rng(0)
    conv = build("conv2d", [(64, 8, 8)], filters=128, kernel=3)
    w = conv.init(rng, np.float64, "relu")["weight"]
    fan_in = 64 * 9
    assert w.std() == pytest.approx(math.sqrt(2 / fan_in), rel=0.02)  # He normal
    assert abs(w.mean()) < 0.05 * w.std()
    w = conv.init(rng, np.float64, ("leaky_relu", 0.2))["weight"]
    assert w.std() == pytest.approx(math.sqrt(2 / (1 + 0.04) / fan_in), rel=0.02)
    dense = build("dense", [(300,)], units=200)
    w = dense.init(rng, np.float64, None)["weight"]
    limit = math.sqrt(6 / (300 + 200))  # Glorot uniform
    assert w.max() <= limit and w.min() >= -limit
    assert w.std() == pytest.approx(limit / math.sqrt(3), rel=0.02)
    assert np.all(dense.init(rng, np.float64, None)["bias"] == 0)
    forced = build("dense", [(300,)], units=200, init="glorot").init(rng, np.float64, "relu")
    assert np.abs(forced["weight"]).max() <= limit


def test_batchnorm_running_statistics_follow_momentum_with_unbiased_variance():
    rng = np.random.default_rng(3)
    layer = build("batchnorm2d", [(2, 3, 4)], momentum=0.25)
    p = layer.init(rng, np.float64, None)
    x = rng.standard_normal((5, 2, 3, 4)) * 3 + 1
    layer.forward([x], p, train=True)
    mean = x.mean(axis=(0, 2, 3))
    var_unbiased = x.var(axis=(0, 2, 3), ddof=1)
    np.testing.assert_allclose(p["running_mean"], 0.25 * mean, rtol=1e-12)
    np.testing.assert_allclose(p["running_var"], 0.75 * 1 + 0.25 * var_unbiased, rtol=1e-12)
    # evaluation uses the running statistics: (x - rm) / sqrt(rv + eps) * gamma + beta
    y, _ = layer.forward([x], p, train=False)
    rm, rv = p["running_mean"].reshape(1, 2, 1, 1), p["running_var"].reshape(1, 2, 1, 1)
    np.testing.assert_allclose(y, (x - rm) / np.sqrt(rv + 1e-5), rtol=1e-12)
    # training normalises with the batch's own (biased) statistics
    y, _ = layer.forward([x], p, train=True)
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), 1, rtol=1e-4)


def test_dropout_is_identity_in_eval_and_inverted_in_training():
    layer = build("dropout", [(1000,)], rate=0.3)
    x = np.ones((20, 1000))
    y, _ = layer.forward([x], {}, train=False)
    assert y is x
    y, _ = layer.forward([x], {}, train=True, rng=np.random.default_rng(0))
    zero = y == 0
    assert zero.mean() == pytest.approx(0.3, abs=0.01)
    np.testing.assert_allclose(y[~zero], 1 / 0.7)
    y2, _ = layer.forward([x], {}, train=True, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(y, y2)  # the mask comes from the generator only


def test_every_layer_type_has_its_row_in_the_docs():
    """docs/layers.md: one row per registered type, naming the ONNX operators it imports
    from and its module."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "layers.md").read_text()
    rows = {line.split("|")[1].strip(" `"): line for line in text.splitlines() if "| `" in line}
    assert set(rows) == set(LAYERS)
    for name, cls in LAYERS.items():
        cells = [c.strip() for c in rows[name].split("|")]
        assert all(op in cells[4] for op in cls.onnx_ops), name
        assert cells[5] == ("yes" if cls.int8_ops else "no"), name
        assert cells[6] == cls.__module__.rsplit(".", 1)[-1], name
