"""Training's fused conv -> ReLU [-> max-pool] kernel: the same bits as the layers in
turn, gradients against finite differences (float64), and which chains fuse."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.cnn import functional as F
from pipeline.cnn.graph import parse_graph
from pipeline.cnn.model import Model
from pipeline.cnn.optim import AdamW
from tests.cnn.test_gradients_functional import check

GRAPH = {
    "name": "chains",
    "input": [3, 9, 8],
    "classes": ["a", "b", "c"],
    "layers": [
        {"type": "conv2d", "filters": 4, "kernel": 3, "padding": 1, "name": "c0"},
        {"type": "relu", "name": "r0"},  # fused: c0+r0 (planar input, first layer)
        {"type": "conv2d", "filters": 5, "kernel": 3, "padding": 1, "name": "c1"},
        {"type": "relu", "name": "r1"},
        {"type": "maxpool2d", "size": 2, "name": "p1"},  # fused: c1+r1+p1 (odd height)
        {"type": "conv2d", "filters": 5, "kernel": 3, "padding": 1, "name": "c2"},
        {"type": "relu", "name": "r2"},  # not fused: c2 is read twice
        {"type": "add", "from": ["r2", "c2"], "name": "skip"},
        {"type": "conv2d", "filters": 4, "kernel": 3, "padding": 1, "bias": False, "name": "c3"},
        {"type": "leaky_relu", "alpha": 0.1, "name": "lr3"},  # not fused: leaky
        {"type": "conv2d", "filters": 4, "kernel": 3, "stride": 2, "name": "c4"},
        {"type": "relu", "name": "r4"},  # not fused: stride 2
        {"type": "flatten"},
        {"type": "dense", "units": 3, "name": "fc"},
    ],
}


def model(dtype=np.float32, fuse=True) -> Model:
    m = Model(parse_graph(GRAPH, source="chains.yaml"), dtype=dtype, init_seed=3)
    m.fuse_train = fuse
    return m


def test_chains_found():
    chains = model().train_chains()
    assert {k: [n.name for n in ch.nodes] for k, ch in chains.items()} == {
        0: ["c0", "r0"],
        2: ["c1", "r1", "p1"],
    }
    assert chains[2].pool == 2 and chains[0].pool == 0
    assert model(fuse=False).train_chains() == {}


def test_fused_training_is_bit_identical_to_the_layers():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 3, 9, 8)).astype(np.float32)
    labels = rng.integers(0, 3, 6)
    runs = []
    for fuse in (True, False):
        m = model(fuse=fuse)
        opt = AdamW(m.params, lr=1e-2)
        for _ in range(3):
            loss, d = F.cross_entropy(m.forward(x, train=True), labels)
            grads, dx = m.backward(d, input_grad=True)
            opt.step(grads)
        runs.append((loss, grads, dx, m.params))
    (l1, g1, dx1, p1), (l2, g2, dx2, p2) = runs
    assert l1 == l2
    assert np.array_equal(dx1, dx2)
    for k in p1:
        assert np.array_equal(g1[k], g2[k]), k
        assert np.array_equal(p1[k], p2[k]), k


@pytest.mark.parametrize(("c", "pool", "hw"), [(3, 0, (5, 6)), (6, 2, (5, 6)), (6, 2, (4, 4))])
def test_conv2d_relu_gradients_match_finite_differences(c, pool, hw):
    rng = np.random.default_rng(c + pool)
    x = rng.standard_normal((2, c, *hw))
    w = rng.standard_normal((4, c, 3, 3))
    b = rng.standard_normal(4)

    def fwd():
        y = F.relu(F.conv2d(x, w, b, padding=1))
        return F.max_pool2d(y, pool) if pool else y

    y, cache = F.conv2d_relu_train(x, w, b, ((1, 1), (1, 1)), pool=pool)
    assert np.array_equal(y, fwd())
    r = rng.standard_normal(y.shape)
    dx, dw, db = F.conv2d_relu_backward(r, cache, w, ((1, 1), (1, 1)))
    check(fwd, {"x": x, "w": w, "b": b}, {"x": dx, "w": dw, "b": db}, r)
    none, dw2, db2 = F.conv2d_relu_backward(r, cache, w, 1, need_dx=False)
    assert none is None and np.array_equal(dw, dw2) and np.array_equal(db, db2)


def test_conv2d_relu_rejects_a_size_changing_convolution():
    x = np.zeros((1, 2, 5, 5), np.float32)
    with pytest.raises(ValueError, match="keeps the input's size"):
        F.conv2d_relu_train(x, np.zeros((3, 2, 3, 3), np.float32), None, 0)


@pytest.mark.parametrize("planar", [False, True])
def test_zero_padding_leaves_only_pixels(planar):
    """Buffers are allocated uninitialised and only their padding zeroed: on a NaN-filled
    matrix every value but the images' pixels must become 0."""
    from pipeline.cnn.flat_conv import FlatLayout

    lay, n = FlatLayout(h=4, w=5, c=3, pr=1, pc=2), 2
    buf = np.full((3, lay.total_rows(n)) if planar else (lay.total_rows(n), 3), np.nan)
    lay.zero_padding(buf, n, planar=planar)
    inner = lay.interior_planar(buf, n) if planar else lay.interior(buf, n)
    assert np.isnan(inner).all()
    assert np.isnan(buf).sum() == inner.size and np.nansum(np.abs(buf)) == 0


@pytest.mark.parametrize(
    ("h", "w", "pr", "pc", "n"), [(4, 5, 1, 2, 3), (3, 3, 2, 1, 2), (1, 1, 1, 1, 3)]
)
def test_zero_rows_zeroes_the_padding_of_any_row_range(h, w, pr, pc, n):
    """Chunks and image blocks zero the padding of the rows they wrote: for every row
    range [lo, hi), exactly its guard and padding rows become 0; image blocks, in any
    order, zero all of it."""
    from pipeline.cnn.flat_conv import FlatLayout

    lay = FlatLayout(h=h, w=w, c=2, pr=pr, pc=pc)
    total = lay.total_rows(n)
    pixel = np.zeros((total, 2), bool)
    lay.interior(pixel, n)[...] = True
    for lo in range(total + 1):
        for hi in range(lo, total + 1):
            buf = np.full((total, 2), np.nan)
            lay.zero_rows(buf, n, lo, hi)
            want = np.full((total, 2), np.nan)
            want[lo:hi][~pixel[lo:hi]] = 0
            np.testing.assert_array_equal(buf, want)
    for size in range(1, n + 1):
        buf = np.full((total, 2), np.nan)
        for first in reversed(range(0, n, size)):
            lay.zero_padding(buf, n, images=slice(first, first + size))
        np.testing.assert_array_equal(np.isnan(buf), pixel)


def test_buffers_left_uninitialised_are_written_before_they_are_read(monkeypatch):
    """The fused chains allocate their outputs and gradient matrices uninitialised and
    zero the padding in the threads that write the pixels (by conv chunk or image
    block): with every np.empty filled with NaN, a forward and backward over several
    chunks and blocks give the same bits as with zeroed memory, and a sealed output's
    padding is zero."""
    from pipeline.cnn.flat_conv import FlatLayout

    rng = np.random.default_rng(6)
    x = rng.standard_normal((12, 8, 30, 22)).astype(np.float32)
    w1 = (0.2 * rng.standard_normal((16, 8, 3, 3))).astype(np.float32)
    w2 = (0.2 * rng.standard_normal((16, 16, 3, 3))).astype(np.float32)

    def run():
        y1, c1 = F.conv2d_relu_train(x, w1, None, 1)  # unpooled: zeroed by conv chunk
        y2, c2 = F.conv2d_relu_train(y1, w2, None, 1, pool=2)  # pooled: by image block
        dy = rng_dy.standard_normal(y2.shape).astype(np.float32)
        dx2, dw2, db2 = F.conv2d_relu_backward(dy, c2, w2, 1)
        dx1, dw1, db1 = F.conv2d_relu_backward(dx2, c1, w1, 1)
        for y, lay in ((y1, FlatLayout(30, 22, 16, 1, 1)), (y2, FlatLayout(15, 11, 16, 1, 1))):
            buf = lay.sealed(y)
            assert buf is not None
            pixel = np.zeros(buf.shape, bool)
            lay.interior(pixel, 12)[...] = True
            assert not buf[~pixel].any()
        return y2, dx2, dw2, db2, dx1, dw1, db1

    empty = np.empty

    def zeros(*args, **kwargs):
        return np.zeros(*args, **kwargs)

    def nans(*args, **kwargs):
        a = empty(*args, **kwargs)
        a.fill(np.nan if a.dtype.kind == "f" else 0)
        return a

    results = []
    for fill in (zeros, nans):
        rng_dy = np.random.default_rng(7)
        monkeypatch.setattr(np, "empty", fill)
        results.append(run())
        monkeypatch.setattr(np, "empty", empty)
    assert len(F._row_chunks(12 * 31 * 23, 48)) > 1  # the chains ran in several chunks
    for a, b in zip(*results, strict=True):
        assert not np.isnan(a).any()
        np.testing.assert_array_equal(a, b)


def test_wide_convolution_gradients_are_the_same_bits_for_any_thread_count(monkeypatch):
    """A 64 -> 64 channel conv + ReLU + pool over 32 * 17 * 17 flat rows is cut into the
    narrower chunks of a wide tap copy (at most 2,048 rows): its weight and bias gradients,
    summed over them in chunk order, are the same bits for 1, 2 and 3 threads and agree
    with the float64 sums dw[f, c, i, j] = sum dz[n, f, p, q] * x_pad[n, c, p + i, q + j]."""
    from pipeline.threads import THREADS_ENV

    rng = np.random.default_rng(5)
    x = rng.standard_normal((32, 64, 16, 16)).astype(np.float32)
    w = (0.05 * rng.standard_normal((64, 64, 3, 3))).astype(np.float32)
    b = (0.1 * rng.standard_normal(64)).astype(np.float32)
    dy = rng.standard_normal((32, 64, 8, 8)).astype(np.float32)
    grads = []
    for n_threads in (1, 2, 3):
        monkeypatch.setenv(THREADS_ENV, str(n_threads))
        _, cache = F.conv2d_relu_train(x, w, b, 1, pool=2)
        grads.append(F.conv2d_relu_backward(dy, cache, w, 1))
    for other in grads[1:]:
        for g, g1 in zip(grads[0], other, strict=True):
            np.testing.assert_array_equal(g, g1)
    # dz: the gradient before ReLU and pool, from the layers' own backward functions
    z = F.conv2d(x, w, b, padding=1)
    dz = F.relu_backward(F.max_pool2d_backward(dy, F.relu(z), 2), z).astype(np.float64)
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    dw = np.empty(w.shape)
    for i in range(3):
        for j in range(3):
            dw[:, :, i, j] = np.einsum("nfpq,ncpq->fc", dz, xp[:, :, i : i + 16, j : j + 16])
    np.testing.assert_allclose(grads[0][1], dw, rtol=0, atol=1e-4 * np.abs(dw).max())
    np.testing.assert_allclose(grads[0][2], dz.sum(axis=(0, 2, 3)), rtol=1e-4, atol=1e-3)


def test_a_chains_output_is_the_next_convolutions_input_matrix():
    """A fused chain writes its output as the pixels of a flat matrix of the layout a
    same-padded convolution reads (FlatLayout.seal): padding zero, the output a view of
    it, and that convolution's kept input is the matrix itself (no copy). A copy, a
    slice, another layout or a plain array is not taken."""
    from pipeline.cnn.flat_conv import FlatLayout

    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 40, 8, 6)).astype(np.float32)
    w = rng.standard_normal((32, 40, 3, 3)).astype(np.float32)
    for pool in (0, 2):
        y, _ = F.conv2d_relu_train(x, w, None, 1, 1, pool)
        lay = FlatLayout(*y.shape[2:], 32, 1, 1)
        buf = lay.sealed(y)
        assert buf is not None and y.base is buf
        pixels = np.zeros(buf.shape, bool)
        lay.interior(pixels, 3)[...] = True
        assert not buf[~pixels].any()  # guard rows and padding
        _, kept = F.conv2d_train(y, w[:, :32], None, padding=1)
        assert kept.data is buf
        _, kept_copy = F.conv2d_train(y.copy(), w[:, :32], None, padding=1)
        assert np.array_equal(kept_copy.data, buf)
        assert lay.sealed(y.copy()) is None and lay.sealed(y[:2]) is None
        assert FlatLayout(*y.shape[2:], 32, 2, 2).sealed(y) is None
        assert lay.sealed(np.zeros(y.shape, np.float32)) is None


def test_relu_gradient_from_a_flat_matrix_ignores_its_padding():
    """An upstream gradient that is the pixels of a flat matrix of the chain's layout (as
    the next convolution's input gradient is) is masked row by row, padding included; the
    padding's values, even NaN, do not reach the result, which equals the same gradient
    given as a plain array."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 6, 7, 5)).astype(np.float32)
    w = rng.standard_normal((8, 6, 3, 3)).astype(np.float32)
    _, cache = F.conv2d_relu_train(x, w, None, 1)
    geo = F._fused_geometry(x.shape, w, 1, 1)
    rows = np.full((geo.rows, 8), np.nan, dtype=np.float32)
    dy = geo.crop(rows, geo.out_crop)  # a view: NaN everywhere but the pixels
    dy[...] = rng.standard_normal(dy.shape)
    assert F._as_rows(dy, geo) is rows and F._as_rows(dy.copy(), geo) is None
    flat = F.conv2d_relu_backward(dy, cache, w, 1)
    plain = F.conv2d_relu_backward(np.ascontiguousarray(dy), cache, w, 1)
    for g, g_plain in zip(flat, plain, strict=True):
        assert not np.isnan(g).any()
        np.testing.assert_array_equal(g, g_plain)
