"""Forward checks of pipeline.cnn.functional against independent references.

References: scipy.signal.correlate (convolution), onnxruntime (Conv / pooling with
auto_pad and pads), straightforward Python loops (pooling, dense), hand-computed numbers
(the 4x4 teaching example) and the defining equations (softmax, batch norm, dropout).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.signal import correlate

from pipeline.cnn import functional as F
from pipeline.threads import THREADS_ENV, serial_region

HYP = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------ conv: references


def conv_reference(x, w, b, stride, pads, dilation, groups):
    """Convolution from scipy.signal.correlate, one (image, filter, channel) at a time."""
    (t, bo), (lf, r) = pads
    xp = np.pad(x, ((0, 0), (0, 0), (t, bo), (lf, r)))
    n_f, c_g, kh, kw = w.shape
    dh, dw = dilation
    # a dilated kernel is the kernel with dilation-1 zeros between taps
    wd = np.zeros((n_f, c_g, dh * (kh - 1) + 1, dw * (kw - 1) + 1))
    wd[:, :, ::dh, ::dw] = w
    f_g = n_f // groups
    out = []
    for n in range(x.shape[0]):
        maps = []
        for f in range(n_f):
            g = f // f_g
            acc = sum(correlate(xp[n, g * c_g + c], wd[f, c], mode="valid") for c in range(c_g))
            maps.append(acc[:: stride[0], :: stride[1]] + (0 if b is None else b[f]))
        out.append(maps)
    return np.array(out)


@st.composite
def conv_cases(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    c = groups * draw(st.integers(1, 3))
    n_f = groups * draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    pads = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(2))
    h = draw(st.integers(max(1, dilation[0] * (kh - 1) + 1 - sum(pads[0])), 9))
    w = draw(st.integers(max(1, dilation[1] * (kw - 1) + 1 - sum(pads[1])), 9))
    n = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**31))
    return n, c, h, w, n_f, groups, (kh, kw), stride, dilation, pads, seed


@HYP
@given(conv_cases())
def test_conv2d_matches_scipy_correlate(case):
    n, c, h, w, n_f, groups, (kh, kw), stride, dilation, pads, seed = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w))
    wt = rng.standard_normal((n_f, c // groups, kh, kw))
    b = rng.standard_normal(n_f)
    y = F.conv2d(x, wt, b, stride=stride, padding=pads, dilation=dilation, groups=groups)
    ref = conv_reference(x, wt, b, stride, pads, dilation, groups)
    assert y.dtype == np.float64
    assert y.shape == ref.shape
    expected_h = F.conv_output_size(h, kh, stride[0], pads[0], dilation[0])
    expected_w = F.conv_output_size(w, kw, stride[1], pads[1], dilation[1])
    assert y.shape == (n, n_f, expected_h, expected_w)
    np.testing.assert_allclose(y, ref, rtol=1e-10, atol=1e-10)


def test_conv2d_float32_stays_float32_and_agrees():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 8, 8))
    w = rng.standard_normal((4, 3, 3, 3))
    y32 = F.conv2d(x.astype(np.float32), w, padding=1)  # float64 weights: no upcast
    assert y32.dtype == np.float32
    y64 = F.conv2d(x, w, padding=1)
    np.testing.assert_allclose(y32, y64, rtol=1e-5, atol=1e-5)


# The classic teaching example (e.g. Saito, "Deep Learning from Scratch", fig. 7-4).
IMAGE_4X4 = np.array([[1, 2, 3, 0], [0, 1, 2, 3], [3, 0, 1, 2], [2, 3, 0, 1]])
FILTER_3X3 = np.array([[2, 0, 1], [0, 1, 2], [1, 0, 2]])


def test_teaching_example_4x4_image_3x3_filter():
    # top-left: 1*2 + 2*0 + 3*1 + 0*0 + 1*1 + 2*2 + 3*1 + 0*0 + 1*2 = 15
    # top-right: 2*2 + 3*0 + 0*1 + 1*0 + 2*1 + 3*2 + 0*1 + 1*0 + 2*2 = 16
    # bottom-left: 0*2 + 1*0 + 2*1 + 3*0 + 0*1 + 1*2 + 2*1 + 3*0 + 0*2 = 6
    # bottom-right: the same window as top-left = 15
    y = F.conv2d(IMAGE_4X4, FILTER_3X3)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, [[15, 16], [6, 15]])
    np.testing.assert_array_equal(F.conv2d(IMAGE_4X4, FILTER_3X3, b=[3]), [[18, 19], [9, 18]])


def test_teaching_example_with_padding_and_stride():
    # padding 1 keeps 4x4. Corner (0,0) sees [[0,0,0],[0,1,2],[0,0,1]]: 1*1 + 2*2 + 1*2 = 7;
    # corner (3,3) sees [[1,2,0],[0,1,0],[0,0,0]]: 1*2 + 1*1 = 3;
    # (0,1) sees [[0,0,0],[1,2,3],[0,1,2]]: 2*1 + 3*2 + 0*1 + 2*2 = 12.
    y = F.conv2d(IMAGE_4X4, FILTER_3X3, padding=1)
    assert y.shape == (4, 4)
    assert (y[0, 0], y[3, 3], y[0, 1]) == (7, 3, 12)
    np.testing.assert_array_equal(y[1:3, 1:3], [[15, 16], [6, 15]])
    # stride 2 samples every other output of the padded result
    np.testing.assert_array_equal(F.conv2d(IMAGE_4X4, FILTER_3X3, padding=1, stride=2), y[::2, ::2])


def test_conv2d_chw_input_keeps_rank():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 5, 5))
    w = rng.standard_normal((2, 3, 3, 3))
    y = F.conv2d(x, w, padding="same")
    assert y.shape == (2, 5, 5)
    np.testing.assert_allclose(y, F.conv2d(x[None], w, padding=1)[0])


def test_conv2d_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="input channels"):
        F.conv2d(np.zeros((1, 3, 5, 5)), np.zeros((2, 2, 3, 3)))
    with pytest.raises(ValueError, match="groups"):
        F.conv2d(np.zeros((1, 3, 5, 5)), np.zeros((2, 3, 3, 3)), groups=2)
    with pytest.raises(ValueError, match="does not fit"):
        F.conv2d(np.zeros((1, 1, 2, 2)), np.zeros((1, 1, 3, 3)))


# ------------------------------------------------------------- sizes and padding


def test_conv_output_size_formula():
    assert F.conv_output_size(32, 3, 1, 1) == 32  # padding 1 on each side
    assert F.conv_output_size(6, 3, 1, 1) == F.conv_output_size(6, 3, 1, (1, 1)) == 6
    assert F.conv_output_size(32, 3, 2, (1, 1)) == 16
    assert F.conv_output_size(7, 3, 2, 0) == 3  # floor((7-3)/2)+1
    assert F.conv_output_size(8, 3, 2, 0) == 3  # floor((8-3)/2)+1 = 3 (ceil_mode=0)
    assert F.conv_output_size(7, 3, 1, 0, dilation=2) == 3  # span 5
    assert F.conv_output_size(5, 2, 2) == 2
    with pytest.raises(ValueError):
        F.conv_output_size(2, 3)


def test_resolve_padding_forms():
    assert F.resolve_padding(2, 3) == ((2, 2), (2, 2))
    assert F.resolve_padding((1, 0), 3) == ((1, 1), (0, 0))
    assert F.resolve_padding(((0, 1), (2, 3)), 3) == ((0, 1), (2, 3))
    assert F.resolve_padding("valid", 3) == ((0, 0), (0, 0))
    assert F.resolve_padding("same", 3) == ((1, 1), (1, 1))
    assert F.resolve_padding("same", 2) == ((0, 1), (0, 1))  # odd pixel bottom/right
    assert F.resolve_padding("same", (4, 3), dilation=2) == ((3, 3), (2, 2))
    assert F.resolve_padding("same", 3, stride=2, input_size=(7, 8)) == ((1, 1), (0, 1))
    with pytest.raises(ValueError, match="input size"):
        F.resolve_padding("same", 3, stride=2)
    with pytest.raises(ValueError):
        F.resolve_padding("full", 3)


# ------------------------------------------------------ onnxruntime as the reference


def _run_onnx(node_kwargs, op, x, w=None):
    import onnxruntime as ort  # a declared dependency: never skipped
    from onnx import TensorProto, helper

    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))]
    names = ["x"]
    if w is not None:
        inputs.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, list(w.shape)))
        names.append("w")
    node = helper.make_node(op, names, ["y"], **node_kwargs)
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph([node], "g", inputs, [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feed = {"x": x} if w is None else {"x": x, "w": w}
    return sess.run(None, feed)[0]


@pytest.mark.parametrize(
    ("hw", "k", "stride", "dilation", "groups"),
    # onnxruntime refuses dilation with auto_pad SAME_*; dilated "same" is covered by
    # test_resolve_padding_forms and the scipy comparison.
    [
        ((7, 8), (3, 3), (2, 2), (1, 1), 1),
        ((6, 6), (2, 2), (1, 1), (1, 1), 2),
        ((9, 7), (3, 2), (2, 3), (1, 1), 1),
        ((5, 5), (4, 4), (1, 1), (1, 1), 3),
    ],
)
def test_conv2d_same_upper_matches_onnxruntime(hw, k, stride, dilation, groups):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3 * groups, *hw)).astype(np.float32)
    w = rng.standard_normal((2 * groups, 3, *k)).astype(np.float32)
    kw = dict(auto_pad="SAME_UPPER", strides=list(stride), dilations=list(dilation), group=groups)
    ref = _run_onnx(kw, "Conv", x, w)
    y = F.conv2d(x, w, stride=stride, padding="same", dilation=dilation, groups=groups)
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("op", "fn"), [("MaxPool", F.max_pool2d), ("AveragePool", F.avg_pool2d)])
def test_pooling_with_pads_matches_onnxruntime(op, fn):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 9, 8)).astype(np.float32)
    pads = ((1, 2), (0, 1))
    kw = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 0, 2, 1])
    ref = _run_onnx(kw, op, x)
    y = fn(x, 3, 2, pads)
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------- pooling: Python loops


def pool_loops(x, k, s, pads, kind):
    (t, b), (lf, r) = pads
    n, c, h, w = x.shape
    ho = (h + t + b - k[0]) // s[0] + 1
    wo = (w + lf + r - k[1]) // s[1] + 1
    y = np.zeros((n, c, ho, wo))
    for i in range(ho):
        for j in range(wo):
            vals = []
            for u in range(k[0]):
                for v in range(k[1]):
                    rr, cc = i * s[0] + u - t, j * s[1] + v - lf
                    if 0 <= rr < h and 0 <= cc < w:  # padding is skipped
                        vals.append(x[:, :, rr, cc])
            vals = np.stack(vals)
            y[:, :, i, j] = vals.max(0) if kind == "max" else vals.mean(0)
    return y


@HYP
@given(
    st.integers(1, 3),
    st.integers(1, 3),
    st.integers(1, 3),
    st.integers(1, 3),
    st.integers(0, 2),
    st.integers(0, 2),
    st.integers(0, 2**31),
)
def test_pooling_matches_loops(kh, kw, sh, sw, p0, p1, seed):
    rng = np.random.default_rng(seed)
    pads = ((min(p0, kh - 1), min(p1, kh - 1)), (min(p1, kw - 1), min(p0, kw - 1)))
    x = rng.standard_normal((2, 2, 7, 6))
    for kind, fn in (("max", F.max_pool2d), ("avg", F.avg_pool2d)):
        y = fn(x, (kh, kw), (sh, sw), pads)
        np.testing.assert_allclose(y, pool_loops(x, (kh, kw), (sh, sw), pads, kind), atol=1e-12)


def test_max_pool_default_stride_and_float32():
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    y = F.max_pool2d(x, 2)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y[0, 0], [[5, 7], [13, 15]])
    np.testing.assert_array_equal(F.avg_pool2d(x, 2)[0, 0], [[2.5, 4.5], [10.5, 12.5]])


def test_max_pool_backward_routes_ties_to_first_max():
    x = np.ones((1, 1, 2, 4))
    x[0, 0, 1, 3] = 0.5
    dx = F.max_pool2d_backward(np.array([[[[2.0, 3.0]]]]), x, 2)
    np.testing.assert_array_equal(dx[0, 0], [[2, 0, 3, 0], [0, 0, 0, 0]])


@pytest.mark.parametrize("shape", [(2, 3, 6, 4), (2, 3, 7, 5)])
def test_max_pool_backward_covers_tiled_and_untiled_inputs(shape):
    """Tiled (dx allocated without zeroing) and untiled (the uncovered row and column
    stay zero) inputs: each window's gradient lands once, on its maximum."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(np.float32)
    y = F.max_pool2d(x, 2)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = F.max_pool2d_backward(dy, x, 2)
    assert not dx[:, :, 6:].any() and not dx[:, :, :, 4:].any()
    windows = dx[:, :, :6, :4].reshape(*y.shape[:2], 3, 2, 2, 2)
    np.testing.assert_array_equal(windows.sum(axis=(3, 5)), dy)  # each once, whole
    on_max = x[:, :, :6, :4] == np.repeat(np.repeat(y, 2, axis=2), 2, axis=3)
    assert not dx[:, :, :6, :4][~on_max].any()  # and on its window's maximum


def test_avg_pool_counts_only_real_pixels():
    x = np.ones((1, 1, 3, 3))
    # padding never lowers the mean of a constant image (count_include_pad=0)
    np.testing.assert_array_equal(F.avg_pool2d(x, 2, 1, 1), np.ones((1, 1, 4, 4)))


def test_pool_rejects_padding_as_large_as_window():
    with pytest.raises(ValueError, match="smaller than the window"):
        F.max_pool2d(np.zeros((1, 1, 4, 4)), 2, padding=2)


def test_global_avg_pool():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 4, 5, 6)).astype(np.float32)
    y = F.global_avg_pool(x)
    assert y.shape == (3, 4, 1, 1) and y.dtype == np.float32
    np.testing.assert_allclose(y[..., 0, 0], x.reshape(3, 4, -1).mean(-1), rtol=1e-6)


# ----------------------------------------------------------------------- dense


def test_dense_matches_loops_and_accepts_vector():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4, 5))
    w = rng.standard_normal((3, 5))
    b = rng.standard_normal(3)
    ref = np.array(
        [[sum(x[n, i] * w[o, i] for i in range(5)) + b[o] for o in range(3)] for n in range(4)]
    )
    np.testing.assert_allclose(F.dense(x, w, b), ref, rtol=1e-12)
    np.testing.assert_allclose(F.dense(x[1], w, b), ref[1], rtol=1e-12)
    assert F.dense(x.astype(np.float32), w, b).dtype == np.float32
    with pytest.raises(ValueError):
        F.dense(x, w.T)


# ------------------------------------------------------------------ activations


def test_activations_values_and_dtype():
    x = np.array([-2.0, -0.5, 0.0, 0.5, 3.0], dtype=np.float32)
    for fn in (F.relu, F.leaky_relu, F.sigmoid, F.tanh):
        assert fn(x).dtype == np.float32
    np.testing.assert_array_equal(F.relu(x), [0, 0, 0, 0.5, 3])
    np.testing.assert_allclose(F.leaky_relu(x, 0.1), [-0.2, -0.05, 0, 0.5, 3], rtol=1e-6)
    np.testing.assert_allclose(F.sigmoid(x), 1 / (1 + np.exp(-x.astype(float))), rtol=1e-6)
    np.testing.assert_allclose(F.tanh(x), np.tanh(x), rtol=1e-6)


def test_sigmoid_is_finite_and_exact_for_huge_inputs():
    x = np.array([-1e4, -800.0, 0.0, 800.0, 1e4])
    y = F.sigmoid(x)  # RuntimeWarnings are errors for pipeline/: no overflow allowed
    np.testing.assert_array_equal(y, [0.0, 0.0, 0.5, 1.0, 1.0])


# ---------------------------------------------------------------- softmax, loss


def test_softmax_sums_to_one_and_matches_definition():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((5, 7))
    p = F.softmax(x)
    np.testing.assert_allclose(p.sum(-1), 1, rtol=1e-12)
    np.testing.assert_allclose(p, np.exp(x) / np.exp(x).sum(-1, keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(F.softmax(x, axis=0).sum(0), 1, rtol=1e-12)
    np.testing.assert_allclose(F.log_softmax(x), np.log(p), rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_stable_for_huge_logits(dtype):
    x = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [1e4, 1e4, -1e4]], dtype=dtype)
    p = F.softmax(x)
    assert p.dtype == dtype
    np.testing.assert_allclose(p, [[1, 0, 0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0]], atol=1e-6)
    lp = F.log_softmax(x)
    assert np.isfinite(lp).all()
    np.testing.assert_allclose(lp[0], [0, -2e4, -1e4], rtol=1e-6)
    loss, d = F.cross_entropy(x, np.array([1, 0, 2]))
    assert np.isfinite(loss) and np.isfinite(d).all()
    np.testing.assert_allclose(loss, (2e4 + np.log(3) + 2e4 + np.log(2)) / 3, rtol=1e-6)


def test_cross_entropy_value_and_label_smoothing():
    logits = np.array([[2.0, 1.0, 0.1], [0.5, 2.5, -1.0]])
    labels = np.array([0, 1])
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    loss, d = F.cross_entropy(logits, labels)
    np.testing.assert_allclose(loss, -(logp[0, 0] + logp[1, 1]) / 2, rtol=1e-12)
    onehot = np.eye(3)[labels]
    np.testing.assert_allclose(d, (np.exp(logp) - onehot) / 2, rtol=1e-12)
    eps = 0.1
    q = onehot * (1 - eps) + eps / 3
    loss_s, d_s = F.cross_entropy(logits, labels, label_smoothing=eps)
    np.testing.assert_allclose(loss_s, -(q * logp).sum() / 2, rtol=1e-12)
    np.testing.assert_allclose(d_s, (np.exp(logp) - q) / 2, rtol=1e-12)
    # soft targets given directly give the same
    loss_q, _ = F.cross_entropy(logits, q)
    np.testing.assert_allclose(loss_q, loss_s, rtol=1e-12)
    with pytest.raises(ValueError):
        F.cross_entropy(logits, np.array([0, 3]))


# ------------------------------------------------------------------ batch norm


def test_batch_norm_eval_matches_formula():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 3, 4, 4))
    g, b, m, v = (
        rng.standard_normal(3),
        rng.standard_normal(3),
        rng.standard_normal(3),
        rng.random(3) + 0.5,
    )
    y = F.batch_norm(x, g, b, m, v, eps=1e-3)
    for c in range(3):
        np.testing.assert_allclose(
            y[:, c], g[c] * (x[:, c] - m[c]) / np.sqrt(v[c] + 1e-3) + b[c], rtol=1e-12
        )
    assert F.batch_norm(x.astype(np.float32), g, b, m, v).dtype == np.float32


def test_batch_norm_train_normalises_per_channel():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((8, 3, 5, 5)) * [[[[2.0]], [[0.5]], [[3.0]]]] + 4
    before = x.copy()
    y, _, mean, var = F.batch_norm_train(x, np.ones(3), np.zeros(3), eps=0.0)
    np.testing.assert_array_equal(x, before)  # works in its own buffers, never in x
    np.testing.assert_allclose(mean, x.mean((0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(var, x.var((0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(y.mean((0, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(y.var((0, 2, 3)), 1, rtol=1e-10)
    # (N, C) input works the same way
    y2, _, m2, _ = F.batch_norm_train(x[:, :, 0, 0], np.ones(3), np.zeros(3))
    np.testing.assert_allclose(m2, x[:, :, 0, 0].mean(0), rtol=1e-12)
    assert y2.shape == (8, 3)


# ------------------------------------------------------------- dropout, flatten


def test_dropout_inverted_scaling_and_reproducible():
    x = np.ones((200, 500), dtype=np.float32)
    y, mask = F.dropout(x, 0.25, np.random.default_rng(0))
    assert y.dtype == np.float32 and mask.dtype == np.float32
    assert set(np.unique(mask)) == {0.0, np.float32(1 / 0.75)}
    assert abs((mask == 0).mean() - 0.25) < 0.01
    assert abs(y.mean() - 1.0) < 0.02  # expectation preserved
    y2, _ = F.dropout(x, 0.25, np.random.default_rng(0))
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_array_equal(F.dropout(x, 0.0, np.random.default_rng(0))[0], x)
    np.testing.assert_array_equal(F.dropout(x, 1.0, np.random.default_rng(0))[0], 0 * x)


def test_flatten_is_c_order_like_onnx():
    x = np.arange(2 * 3 * 2 * 2).reshape(2, 3, 2, 2)
    y = F.flatten(x)
    assert y.shape == (2, 12) and y.dtype == np.float32
    np.testing.assert_array_equal(y[1], np.arange(12, 24))
    np.testing.assert_array_equal(F.flatten_backward(y, x.shape), x)
    ref = _run_onnx({"axis": 1}, "Flatten", x.astype(np.float32))
    np.testing.assert_array_equal(y, ref)


def test_float32_in_float32_out_everywhere():
    """No function silently upcasts float32 data, even with float64 parameters."""
    rng = np.random.default_rng(10)
    x = rng.standard_normal((2, 4, 6, 6)).astype(np.float32)
    w64 = rng.standard_normal((4, 2, 3, 3))
    outs = [F.conv2d(x, w64, np.zeros(4), padding=1, groups=2)]
    outs += F.conv2d_backward(outs[0], x, w64, padding=1, groups=2)
    outs += [F.max_pool2d(x, 2), F.max_pool2d_backward(F.max_pool2d(x, 2), x, 2)]
    outs += [F.avg_pool2d(x, 2), F.avg_pool2d_backward(F.avg_pool2d(x, 2), x.shape, 2)]
    outs += [F.global_avg_pool(x), F.global_avg_pool_backward(F.global_avg_pool(x), x.shape)]
    outs += [F.relu_backward(x, x), F.leaky_relu_backward(x, x), F.sigmoid_backward(x, x)]
    outs += [F.tanh_backward(x, x), F.flatten(x), F.softmax(x), F.log_softmax(x)]
    xf = F.flatten(x)
    wd = rng.standard_normal((3, xf.shape[1]))
    outs += [F.dense(xf, wd, np.zeros(3)), *F.dense_backward(np.ones((2, 3)), xf, wd)]
    outs += [F.cross_entropy(F.dense(xf, wd), np.array([0, 2]), 0.1)[1]]
    g, b = np.ones(4), np.zeros(4)
    y, cache, m, v = F.batch_norm_train(x, g, b)
    outs += [y, m, v, *F.batch_norm_backward(y, cache), F.batch_norm(x, g, b, m, v)]
    y, mask = F.dropout(x, 0.5, rng)
    outs += [y, mask, F.dropout_backward(y, mask)]
    bad = [i for i, o in enumerate(outs) if o.dtype != np.float32]
    assert not bad, f"outputs {bad} are not float32"


@pytest.mark.parametrize("workers", [2, 3])
def test_conv_split_over_threads_matches_serial_and_scipy(monkeypatch, workers):
    """Large enough to split rows over worker threads: same result as one thread."""
    monkeypatch.setenv(THREADS_ENV, str(workers))
    rng = np.random.default_rng(11)
    x = rng.standard_normal((3, 4, 30, 28))
    w = rng.standard_normal((6, 2, 3, 3))
    kw = dict(padding=((1, 2), (0, 1)), dilation=(1, 2), groups=2)
    y = F.conv2d(x, w, **kw)
    dy = rng.standard_normal(y.shape)
    grads = F.conv2d_backward(dy, x, w, **kw)
    with serial_region():
        y1 = F.conv2d(x, w, **kw)
        grads1 = F.conv2d_backward(dy, x, w, **kw)
    np.testing.assert_allclose(y, y1, rtol=1e-12, atol=1e-12)
    for g, g1 in zip(grads, grads1, strict=True):
        np.testing.assert_allclose(g, g1, rtol=1e-12, atol=1e-12)
    ref = conv_reference(x, w, None, (1, 1), kw["padding"], kw["dilation"], kw["groups"])
    np.testing.assert_allclose(y, ref, rtol=1e-10, atol=1e-10)


def _conv_in_child(x, w, queue):
    queue.put(F.conv2d(x, w, padding=1))


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_threaded_conv_works_in_a_forked_child(monkeypatch):
    """The worker pool of the parent does not exist in a forked child: no deadlock."""
    import multiprocessing

    monkeypatch.setenv(THREADS_ENV, "2")
    rng = np.random.default_rng(12)
    x = rng.standard_normal((4, 3, 24, 24)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    expected = F.conv2d(x, w, padding=1)  # starts the parent's pool
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_conv_in_child, args=(x, w, queue))
    child.start()
    got = queue.get(timeout=60)
    child.join(timeout=60)
    assert child.exitcode == 0
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_pooling_takes_a_single_image_or_channel_stack():
    x = np.arange(16, dtype=np.float32).reshape(4, 4)
    np.testing.assert_array_equal(F.max_pool2d(x, 2), [[5, 7], [13, 15]])
    np.testing.assert_array_equal(F.avg_pool2d(x, 2), [[2.5, 4.5], [10.5, 12.5]])
    stack = np.stack([x, -x])
    assert F.max_pool2d(stack, 2).shape == (2, 2, 2)
    np.testing.assert_array_equal(F.avg_pool2d(stack, 2)[1], -F.avg_pool2d(x, 2))


def test_layers_chain_nhwc_views_with_the_values_of_c_order_arrays():
    """Conv, ReLU and max-pool return (N, C, H, W) views of channels-last data; fed to
    the next layer (forward and backward) they give the same values, bit for bit, as C
    order copies of themselves."""
    rng = np.random.default_rng(13)
    x = rng.standard_normal((3, 4, 10, 9)).astype(np.float32)
    w1 = rng.standard_normal((6, 4, 3, 3)).astype(np.float32)
    w2 = rng.standard_normal((5, 6, 3, 3)).astype(np.float32)
    y = F.relu(F.conv2d(x, w1, padding=1))
    p = F.max_pool2d(y, 2)
    assert y.strides[1] == p.strides[1] == 4  # channels innermost
    for a in (y, p):
        c = np.ascontiguousarray(a)
        out, ref = F.conv2d(a, w2, padding="same"), F.conv2d(c, w2, padding="same")
        np.testing.assert_array_equal(out, ref)
        dy = rng.standard_normal(out.shape).astype(np.float32)
        for g, g_ref in zip(
            F.conv2d_backward(out, a, w2, padding="same"),
            F.conv2d_backward(np.ascontiguousarray(out), c, w2, padding="same"),
            strict=True,
        ):
            np.testing.assert_array_equal(g, g_ref)
        np.testing.assert_array_equal(F.relu_backward(dy, out), F.relu_backward(dy, ref))
    dp = rng.standard_normal(p.shape).astype(np.float32)
    np.testing.assert_array_equal(
        F.max_pool2d_backward(dp, y, 2), F.max_pool2d_backward(dp, np.ascontiguousarray(y), 2)
    )
