"""Every backward in pipeline.cnn.functional against central finite differences (float64).

For a forward f and a fixed random projection r, the scalar L = sum(f(...) * r) has
dL/dinput = backward(r, ...). Its numerical estimate (L(a+h) - L(a-h)) / 2h, element by
element, must agree with the analytic gradient to a relative error below 1e-6
(||analytic - numeric|| / max(||analytic||, ||numeric||)).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.cnn import functional as F
from pipeline.threads import THREADS_ENV

H = 1e-6
TOL = 1e-6
HYP = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def numeric_grad(loss, a: np.ndarray) -> np.ndarray:
    """Central differences of the scalar ``loss()`` with respect to array ``a`` (in place)."""
    g = np.zeros_like(a)
    flat, gflat = a.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + H
        up = loss()
        flat[i] = old - H
        down = loss()
        flat[i] = old
        gflat[i] = (up - down) / (2 * H)
    return g


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    scale = max(np.linalg.norm(a), np.linalg.norm(b), 1e-12)
    return float(np.linalg.norm(a - b) / scale)


def check(forward, inputs: dict[str, np.ndarray], analytic: dict[str, np.ndarray], r):
    for name, arr in inputs.items():
        assert analytic[name].shape == arr.shape, name
        num = numeric_grad(lambda: float((forward() * r).sum()), arr)
        err = rel_err(analytic[name], num)
        assert err < TOL, f"d{name}: relative error {err:.2e}"


# ------------------------------------------------------------------------ conv


@st.composite
def conv_cases(draw):
    groups = draw(st.sampled_from([1, 2]))
    c = groups * draw(st.integers(1, 2))
    n_f = groups * draw(st.integers(1, 2))
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    pads = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(2))
    h = draw(st.integers(max(1, dilation[0] * (k[0] - 1) + 1 - sum(pads[0])), 6))
    w = draw(st.integers(max(1, dilation[1] * (k[1] - 1) + 1 - sum(pads[1])), 6))
    return c, n_f, groups, k, stride, dilation, pads, h, w, draw(st.integers(0, 2**31))


@HYP
@given(conv_cases())
def test_conv2d_backward(case):
    c, n_f, groups, k, stride, dilation, pads, h, w, seed = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, c, h, w))
    wt = rng.standard_normal((n_f, c // groups, *k))
    b = rng.standard_normal(n_f)
    kw = dict(stride=stride, padding=pads, dilation=dilation, groups=groups)

    def fwd():
        return F.conv2d(x, wt, b, **kw)

    r = rng.standard_normal(fwd().shape)
    dx, dw, db = F.conv2d_backward(r, x, wt, **kw)
    assert dx.dtype == dw.dtype == db.dtype == np.float64
    check(fwd, {"x": x, "w": wt, "b": b}, {"x": dx, "w": dw, "b": db}, r)


def test_conv2d_backward_same_padding_stride2_float32_dtype():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 7, 6))
    wt = rng.standard_normal((4, 3, 3, 3))
    kw = dict(stride=2, padding="same")

    def fwd():
        return F.conv2d(x, wt, None, **kw)

    r = rng.standard_normal(fwd().shape)
    dx, dw, _ = F.conv2d_backward(r, x, wt, **kw)
    check(fwd, {"x": x, "w": wt}, {"x": dx, "w": dw}, r)
    grads32 = F.conv2d_backward(r.astype(np.float32), x.astype(np.float32), wt, **kw)
    assert all(g.dtype == np.float32 for g in grads32)


@pytest.mark.parametrize(("c", "n_f"), [(3, 4), (8, 5)])
def test_conv2d_train_backward_from_kept_input(c, n_f):
    """The training pair: conv2d_train keeps the input as the backward reads it (planar
    for few channels, (C, rows); NHWC rows otherwise); the gradients from it pass the
    finite-difference check, and need_dx=False gives the same dw, db and no dx."""
    rng = np.random.default_rng(c)
    x = rng.standard_normal((2, c, 5, 6))
    wt = rng.standard_normal((n_f, c, 3, 3))
    b = rng.standard_normal(n_f)
    y, kept = F.conv2d_train(x, wt, b, padding=1)
    assert np.array_equal(y, F.conv2d(x, wt, b, padding=1))
    planar = c * 3 < 64
    assert kept.data.shape[0] == c if planar else kept.data.shape[1] == c

    def fwd():
        return F.conv2d(x, wt, b, padding=1)

    r = rng.standard_normal(y.shape)
    dx, dw, db = F.conv2d_backward(r, kept, wt, padding=1)
    check(fwd, {"x": x, "w": wt, "b": b}, {"x": dx, "w": dw, "b": db}, r)
    none, dw2, db2 = F.conv2d_backward(r, kept, wt, padding=1, need_dx=False)
    assert none is None and np.array_equal(dw, dw2) and np.array_equal(db, db2)
    again = F.conv2d_backward(r, x, wt, padding=1)
    assert all(np.array_equal(a, b) for a, b in zip(again, (dx, dw, db), strict=True))


# --------------------------------------------------------------------- pooling


@HYP
@given(
    st.integers(1, 3),
    st.integers(1, 3),
    st.integers(1, 2),
    st.integers(1, 2),
    st.integers(0, 2),
    st.integers(0, 2),
    st.integers(0, 2**31),
)
def test_pool_backward(kh, kw, sh, sw, p0, p1, seed):
    rng = np.random.default_rng(seed)
    pads = ((min(p0, kh - 1), min(p1, kh - 1)), (min(p1, kw - 1), min(p0, kw - 1)))
    # distinct values, far apart compared with H: the max is unique and stays put
    x = rng.permutation(2 * 2 * 6 * 5).reshape(2, 2, 6, 5) * 0.01
    args = ((kh, kw), (sh, sw), pads)
    r = rng.standard_normal(F.max_pool2d(x, *args).shape)
    check(lambda: F.max_pool2d(x, *args), {"x": x}, {"x": F.max_pool2d_backward(r, x, *args)}, r)
    check(
        lambda: F.avg_pool2d(x, *args), {"x": x}, {"x": F.avg_pool2d_backward(r, x.shape, *args)}, r
    )


def test_global_avg_pool_backward():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 4, 5))
    r = rng.standard_normal((2, 3, 1, 1))
    check(lambda: F.global_avg_pool(x), {"x": x}, {"x": F.global_avg_pool_backward(r, x.shape)}, r)


# ----------------------------------------------------------------- activations


def away_from_zero(rng, shape):
    x = rng.standard_normal(shape)
    return np.where(np.abs(x) < 1e-2, 0.5, x)  # kinks at 0 are not differentiable


@pytest.mark.parametrize("name", ["relu", "leaky_relu", "sigmoid", "tanh"])
def test_activation_backward(name):
    rng = np.random.default_rng(2)
    x = away_from_zero(rng, (3, 4, 2))
    r = rng.standard_normal(x.shape)
    fwd = {
        "relu": lambda: F.relu(x),
        "leaky_relu": lambda: F.leaky_relu(x, 0.2),
        "sigmoid": lambda: F.sigmoid(x),
        "tanh": lambda: F.tanh(x),
    }[name]
    analytic = {
        "relu": lambda: F.relu_backward(r, x),
        "leaky_relu": lambda: F.leaky_relu_backward(r, x, 0.2),
        "sigmoid": lambda: F.sigmoid_backward(r, F.sigmoid(x)),
        "tanh": lambda: F.tanh_backward(r, F.tanh(x)),
    }[name]()
    check(fwd, {"x": x}, {"x": analytic}, r)


# ---------------------------------------------------------------------- dense


@pytest.mark.parametrize("batched", [True, False])
def test_dense_backward(batched):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 6) if batched else (6,))
    w = rng.standard_normal((3, 6))
    b = rng.standard_normal(3)
    r = rng.standard_normal((4, 3) if batched else (3,))
    dx, dw, db = F.dense_backward(r, x, w)
    check(lambda: F.dense(x, w, b), {"x": x, "w": w, "b": b}, {"x": dx, "w": dw, "b": db}, r)
    none, dw2, db2 = F.dense_backward(r, x, w, need_dx=False)
    assert none is None and np.array_equal(dw, dw2) and np.array_equal(db, db2)


# --------------------------------------------------------------- loss & softmax


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy_gradient(smoothing):
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((5, 4)) * 3
    labels = rng.integers(0, 4, 5)
    _, d = F.cross_entropy(logits, labels, label_smoothing=smoothing)
    num = numeric_grad(lambda: F.cross_entropy(logits, labels, smoothing)[0], logits)
    assert rel_err(d, num) < TOL


# ----------------------------------------------------------------- batch norm


@pytest.mark.parametrize("shape", [(4, 3, 3, 2), (6, 3)])
def test_batch_norm_backward(shape):
    rng = np.random.default_rng(5)
    x = rng.standard_normal(shape) * 2 + 1
    g = rng.standard_normal(3)
    b = rng.standard_normal(3)
    r = rng.standard_normal(shape)
    _, cache, _, _ = F.batch_norm_train(x, g, b, eps=1e-3)
    dx, dg, db = F.batch_norm_backward(r, cache)
    check(
        lambda: F.batch_norm_train(x, g, b, eps=1e-3)[0],
        {"x": x, "g": g, "b": b},
        {"x": dx, "g": dg, "b": db},
        r,
    )


# --------------------------------------------------------- dropout, flatten


def test_dropout_backward():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 5))
    _, mask = F.dropout(x, 0.4, np.random.default_rng(0))
    r = rng.standard_normal(x.shape)
    # with the mask held fixed, dropout is linear in x
    check(
        lambda: F.dropout(x, 0.4, np.random.default_rng(0))[0],
        {"x": x},
        {"x": F.dropout_backward(r, mask)},
        r,
    )


def test_flatten_backward():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 2, 2))
    r = rng.standard_normal((2, 12))
    check(lambda: F.flatten(x), {"x": x}, {"x": F.flatten_backward(r, x.shape)}, r)


@pytest.mark.parametrize(("size", "shape"), [((2, 3), (2, 3, 7, 7)), (2, (1, 2, 6, 5))])
def test_max_pool_backward_non_overlapping_windows_with_crop(size, shape):
    rng = np.random.default_rng(8)
    x = rng.permutation(int(np.prod(shape))).reshape(shape) * 0.01
    r = rng.standard_normal(F.max_pool2d(x, size).shape)
    check(lambda: F.max_pool2d(x, size), {"x": x}, {"x": F.max_pool2d_backward(r, x, size)}, r)


def test_dense_split_over_threads(monkeypatch):
    """A batch large enough to split the rows over worker threads."""
    monkeypatch.setenv(THREADS_ENV, "3")
    rng = np.random.default_rng(9)
    x = rng.standard_normal((50, 7))
    w = rng.standard_normal((4, 7))
    b = rng.standard_normal(4)
    np.testing.assert_allclose(F.dense(x, w, b), x @ w.T + b, rtol=1e-12)
    r = rng.standard_normal((50, 4))
    dx, dw, db = F.dense_backward(r, x, w)
    np.testing.assert_allclose(dx, r @ w, rtol=1e-12)
    np.testing.assert_allclose(dw, r.T @ x, rtol=1e-12)
    np.testing.assert_allclose(db, r.sum(0), rtol=1e-12)
    check(lambda: F.dense(x, w, b), {"w": w}, {"w": dw}, r)


def _dw_float64(x, dy, w_shape, pads, dilation, groups):
    """dw[f, c, i, j] = sum over n, y, x of dy[n, f, y, x] * x_padded[n, c, y + i*d, x + j*d]
    (stride 1), in float64: the definition, independent of the flat-layout kernels."""
    n_f, c_g, kh, kw = w_shape
    (t, b), (lft, r) = pads
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (t, b), (lft, r)))
    ho, wo = dy.shape[2:]
    f_g, dw = n_f // groups, np.zeros(w_shape)
    for f in range(n_f):
        g = f // f_g
        for i in range(kh):
            for j in range(kw):
                win = xp[:, g * c_g : (g + 1) * c_g, i * dilation :, j * dilation :]
                dw[f, :, i, j] = np.einsum("nyx,ncyx->c", dy[:, f], win[:, :, :ho, :wo])
    return dw


@pytest.mark.parametrize(
    ("c", "h", "w", "n_f", "kernel", "padding", "dilation", "groups"),
    [
        (32, 12, 10, 32, (3, 3), 1, 1, 1),  # the flat layout (output of the input's size)
        (40, 9, 11, 24, (3, 3), 0, 1, 1),  # a plain padded matrix (valid convolution)
        (36, 10, 10, 40, (5, 5), 2, 1, 1),
        (32, 12, 12, 32, (3, 3), 2, 2, 1),  # dilated
        (64, 8, 8, 64, (3, 3), 1, 1, 2),  # grouped
        (32, 8, 9, 16, (1, 1), 0, 1, 1),
        (32, 7, 7, 16, (3, 5), ((1, 1), (2, 2)), 1, 1),
    ],
)
def test_wide_conv_weight_gradient_matches_its_definition(
    c, h, w, n_f, kernel, padding, dilation, groups
):
    """Convolutions too wide for the finite-difference check above (kw*C >= 64: kh GEMMs
    a chunk over the tap matrix, weight gradients over row groups summed in order): dw
    matches the float64 definition to float32 rounding, with and without dx (the same
    bits), and the bias gradient is dy's sum."""
    rng = np.random.default_rng(c + n_f)
    x = rng.standard_normal((2, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((n_f, c // groups, *kernel)).astype(np.float32)
    kw = dict(padding=padding, dilation=dilation, groups=groups)
    y, kept = F.conv2d_train(x, wt, None, **kw)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    _, dw, db = F.conv2d_backward(dy, kept, wt, **kw)
    pads = F.resolve_padding(padding, kernel, 1, dilation, input_size=(h, w))
    want = _dw_float64(x, dy.astype(np.float64), wt.shape, pads, dilation, groups)
    assert np.abs(dw - want).max() <= 1e-5 * np.abs(want).max()
    np.testing.assert_allclose(db, dy.astype(np.float64).sum(axis=(0, 2, 3)), atol=1e-4)
    none, dw2, db2 = F.conv2d_backward(dy, kept, wt, need_dx=False, **kw)
    assert none is None and np.array_equal(dw, dw2) and np.array_equal(db, db2)
