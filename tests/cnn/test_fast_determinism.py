"""The compiled evaluator gives the same bits for any batch size and thread count.

Every GEMM's shape and each image's place in it are fixed by the network and
``block_images`` (a short last block is padded with zero images, the dense tail runs in
fixed tiles), so an image's logits cannot depend on how many images came with it or on
how the blocks were shared out. Its place in its block must stay the same where the BLAS
rounds a GEMM row by its offset (OpenBLAS's Haswell sgemm: offset mod 12); elsewhere any
place gives the same bits. Also: the planar input kernel against the NHWC one and
the definition, the block and chunk plans, and the per-step profile.
"""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from pipeline.cnn import fast
from pipeline.cnn.fast import TAIL_IMAGES, CompiledNet, block_chunks, default_block_images
from pipeline.cnn.flat_conv import (
    SMALL_GEMM_KERNELS,
    SMALL_GEMM_MNK,
    FlatLayout,
    blas_small_gemm,
    corr_chunk,
    corr_chunk_planar,
    matmul_rows,
    matmul_tn_rows,
    small_gemm_rows,
    weight_rows,
    wgrad_chunk,
)
from tests.cnn.test_fast import _model, assert_matches_layers, compiled, conv

# RGB input (planar kernel), conv + batch norm + relu, conv + relu + pool, an unfused
# stride-2 conv, flatten + dense tail: every kind of step the compiled plan runs.
NET = [
    conv(8, 3, padding=1),
    {"type": "batchnorm2d"},
    {"type": "relu"},
    conv(8, 3, padding=1),
    {"type": "relu"},
    {"type": "maxpool2d", "size": 2},
    conv(6, 3, padding=1, stride=2),
    {"type": "flatten"},
    {"type": "dense", "units": 16},
    {"type": "relu"},
    {"type": "dense", "units": 5},
]


@pytest.fixture(scope="module")
def model_and_batch():
    model = _model(NET, (3, 12, 12), seed=7, classes=5)
    x = np.random.default_rng(7).standard_normal((70, 3, 12, 12)).astype(np.float32)
    return model, x


def test_plan_uses_blocks_planar_input_and_a_dense_tail(model_and_batch):
    model, x = model_and_batch
    net = assert_matches_layers(model, x[:9], threads=2, block_images=4)
    kinds = [type(s).__name__ for s in net.steps]
    # the unfused conv's output is flattened by its layer (NCHW order) for the tail
    assert kinds == ["_ToPadded", "_Conv", "_Conv", "_Forward", "_Forward", "_Dense", "_Dense"]
    assert net.planar == {fast.INPUT}
    assert [s.planar for s in net.steps if isinstance(s, fast._Conv)] == [True, False]
    assert [type(s).__name__ for s in net.steps[net.tail_start :]] == ["_Dense", "_Dense"]


@pytest.mark.parametrize("threads", [1, 2])
def test_logits_are_the_same_bits_for_any_batch_size_and_thread_count(model_and_batch, threads):
    model, x = model_and_batch
    # blocks of 4 images: batch 1 and 7 end in a short (padded) block, 64 and 70 span
    # many blocks; 70 spans two tail tiles
    ref = compiled(model, threads=1, block_images=4)(x)
    net = compiled(model, threads=threads, block_images=4)
    for n in (1, 7, 64, 70):
        np.testing.assert_array_equal(net(x[:n]), ref[:n], err_msg=f"batch {n}")
    # a batch that is not a prefix: the same images in other places of their blocks. An
    # image's place in a block is its row offset in every GEMM; OpenBLAS's Haswell sgemm
    # rounds a row by its offset mod 12, so there only the same places give the same bits
    # (what the classifier stage does: each image in row key mod GROUP of a fixed call).
    perm = np.random.default_rng(0).permutation(len(x))[:7]
    if _rows_independent_of_their_gemm_position():
        np.testing.assert_array_equal(net(x[perm]), ref[perm])
    else:
        placed = np.zeros((len(x), *x.shape[1:]), np.float32)
        placed[perm] = x[perm]
        np.testing.assert_array_equal(net(placed)[perm], ref[perm])


def _rows_independent_of_their_gemm_position() -> bool:
    """Whether this process's BLAS gives a GEMM row the same bits at any row offset (a
    probe: rows shifted by 1..12 against the unshifted product)."""
    rng = np.random.default_rng(9)
    a = rng.standard_normal((120, 96)).astype(np.float32)
    b = rng.standard_normal((96, 32)).astype(np.float32)
    whole = a @ b
    return all(np.array_equal(a[s:] @ b, whole[s:]) for s in range(1, 13))


def test_default_block_size_is_bit_stable_too():
    model = _model(
        [
            conv(4, 3, padding=1),
            {"type": "relu"},
            {"type": "flatten"},
            {"type": "dense", "units": 3},
        ],
        (3, 8, 8),
    )
    x = np.random.default_rng(1).random((TAIL_IMAGES + 5, 3, 8, 8)).astype(np.float32)
    one, two = compiled(model, threads=1), compiled(model, threads=2)
    ref = one(x)
    assert one.block_images == default_block_images(9 * 9)
    for n in (1, 7, TAIL_IMAGES, len(x)):
        np.testing.assert_array_equal(two(x[:n]), ref[:n], err_msg=f"batch {n}")


def test_no_dense_tail_when_the_output_is_a_feature_map():
    layers = [conv(4, 3, padding=1), {"type": "relu"}, {"type": "flatten"}]
    model = _model(layers, (3, 6, 6), classes=144)
    nodes = model.spec.nodes[:2]  # up to the relu: a (4, 6, 6) output
    params = {n.index: model.layer_params(n) for n in nodes}
    net = CompiledNet(nodes, params, (3, 6, 6), threads=2, block_images=2)
    assert net.tail_value is None and net.tail_start == len(net.steps)
    x = np.random.default_rng(2).random((5, 3, 6, 6)).astype(np.float32)
    y = net(x)
    np.testing.assert_array_equal(y.reshape(5, -1), compiled(model)(x))  # flatten is a view
    np.testing.assert_array_equal(net(x[:1]), y[:1])


def test_planar_kernel_matches_the_nhwc_im2col_kernel_and_the_definition():
    rng = np.random.default_rng(3)
    g = FlatLayout(7, 9, 3, 2, 2)  # 5x5 kernel, padding 2
    n = 3
    src = np.zeros((g.total_rows(n), g.c), np.float32)
    g.interior(src, n)[...] = rng.standard_normal((n, 7, 9, 3))
    planes = g.alloc_planar(n)
    g.interior_planar(planes, n)[...] = g.interior(src, n).transpose(3, 0, 1, 2)
    wr = weight_rows(rng.standard_normal((4, 3, 5, 5)).astype(np.float32))
    rows, first = n * g.img_rows, g.lead - 2 * g.wq - 2
    nhwc, planar = np.empty((rows, 4), np.float32), np.empty((rows, 4), np.float32)
    buf = np.empty(rows * 75, np.float32)
    corr_chunk(src, first, rows, g.wq, 1, wr, nhwc, buf, np.empty(5 * rows * 4, np.float32))
    corr_chunk_planar(planes, first, rows, g.wq, 1, wr, planar, buf)
    # the same products, summed by another GEMM call (A transposed): float32 rounding
    np.testing.assert_allclose(planar, nhwc, rtol=0, atol=1e-6 * np.abs(nhwc).max())
    # and both are the correlation: one output pixel by the definition
    img, yy, xx = 1, 3, 4
    q = first + img * g.img_rows + yy * g.wq + xx  # top-left tap of pixel (yy, xx)
    w64 = wr.astype(np.float64)
    want = sum(
        src[q + i * g.wq + j] @ w64[i, j * 3 : (j + 1) * 3] for i in range(5) for j in range(5)
    )
    np.testing.assert_allclose(planar[q - first], want, rtol=0, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("rows", [0, 32, 64, 100, 166, 325, 332, 400])
def test_gemms_of_row_groups_are_one_gemm_bit_for_bit(rows):
    """matmul_rows splits a product into GEMMs of ``rows`` rows (a stacked call and a
    remainder, a short one joined to the last group): each result row is the same dot
    products as np.matmul's single GEMM, for a C-contiguous and a transposed
    (planar-kernel) left operand."""
    rng = np.random.default_rng(5)
    a = rng.standard_normal((333, 96)).astype(np.float32)
    b = rng.standard_normal((96, 32)).astype(np.float32)
    # The engine splits only on kernels whose rows do not depend on their position in the
    # GEMM (SMALL_GEMM_KERNELS); OpenBLAS's Haswell sgemm gives a row other bits when it
    # moves by a non-multiple of 12 rows, so there the engine never splits (and this
    # asserts that instead).
    split = rows if blas_small_gemm() else small_gemm_rows(96, 32)
    assert blas_small_gemm() or split == 0
    for left in (a, np.ascontiguousarray(a.T).T):
        out = np.full((333, 32), np.nan, np.float32)
        matmul_rows(left, b, out, split)
        np.testing.assert_array_equal(out, np.matmul(left, b))
    assert small_gemm_rows(96, 32, True) == SMALL_GEMM_MNK // (96 * 32) == 325
    assert 325 * 96 * 32 <= SMALL_GEMM_MNK < 326 * 96 * 32
    assert small_gemm_rows(4096, 256, True) == 0  # under MIN_GEMM_ROWS: one GEMM
    assert small_gemm_rows(96, 32, False) == 0  # no small-matrix kernels: one GEMM
    kernels = {
        str(i.get("architecture")).lower()
        for i in threadpool_info()
        if i.get("internal_api") == "openblas"
    }
    assert blas_small_gemm() == bool(kernels & SMALL_GEMM_KERNELS)


@pytest.mark.parametrize(("m", "rows"), [(333, 0), (333, 100), (333, 111), (4096, 325), (40, 32)])
def test_weight_gradient_gemms_over_row_groups_sum_in_row_order(m, rows):
    """matmul_tn_rows = a.T @ b as GEMMs over row groups whose products are added in row
    order (a short remainder joined to the last group): the same bits as those products
    summed one by one, and a.T @ b to float32 rounding of the sum (float64 reference)."""
    rng = np.random.default_rng(7)
    a = rng.standard_normal((m, 96)).astype(np.float32)
    b = rng.standard_normal((m, 32)).astype(np.float32)
    out = np.full((96, 32), np.nan, np.float32)
    matmul_tn_rows(a, b, out, rows)
    want = a.astype(np.float64).T @ b.astype(np.float64)
    scale = np.abs(a).T.astype(np.float64) @ np.abs(b).astype(np.float64)
    assert np.all(np.abs(out - want) <= 4 * m * np.finfo(np.float32).eps * scale)
    whole = m // rows * rows if 0 < rows < m else 0
    if 0 < m - whole < 32:
        whole = max(0, whole - rows)
    bounds = [*range(0, whole, rows), whole] if whole else [0]
    parts = [a[i:j].T @ b[i:j] for i, j in itertools.pairwise(bounds)]
    ref = np.sum(np.stack(parts), axis=0) if parts else np.zeros((96, 32), np.float32)
    if whole < m:
        ref = ref + a[whole:].T @ b[whole:] if parts else a.T @ b
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("rows", [0, 32, 100])
def test_stacked_row_group_gemms_are_the_gemms_of_each_slice(rows):
    """matmul_rows and matmul_tn_rows over a leading (kernel-row) axis, on overlapping
    windows of one tap matrix as corr_chunk and wgrad_chunk pass them: each slice gets the
    bits of its own call."""
    rng = np.random.default_rng(8)
    s = rng.standard_normal((333 + 2 * 40, 96)).astype(np.float32)
    stack = np.lib.stride_tricks.sliding_window_view(s, (333, 96))[::40, 0]  # (3, 333, 96)
    assert stack.shape == (3, 333, 96) and np.shares_memory(stack, s)
    split = rows if blas_small_gemm() else 0
    w = rng.standard_normal((3, 96, 32)).astype(np.float32)
    out = np.full((3, 333, 32), np.nan, np.float32)
    matmul_rows(stack, w, out, split)
    dy = rng.standard_normal((333, 32)).astype(np.float32)
    dw = np.full((3, 96, 32), np.nan, np.float32)
    matmul_tn_rows(stack, dy, dw, split)
    for i in range(3):
        one = np.full((333, 32), np.nan, np.float32)
        matmul_rows(np.ascontiguousarray(stack[i]), w[i], one, split)
        np.testing.assert_array_equal(out[i], one)
        one_dw = np.full((96, 32), np.nan, np.float32)
        matmul_tn_rows(np.ascontiguousarray(stack[i]), dy, one_dw, split)
        np.testing.assert_array_equal(dw[i], one_dw)


def _conv_case(rng: np.random.Generator) -> tuple:
    """Two 8x8x32 images in a flat layout (padding 1), 3x3 weights to 16 channels as
    weight rows, the anchor rows and the first tap row: (layout, src, wr, rows, first)."""
    g = FlatLayout(8, 8, 32, 1, 1)
    n = 2
    src = g.alloc(n)
    g.interior(src, n)[...] = rng.standard_normal((n, 8, 8, 32))
    wr = weight_rows(rng.standard_normal((16, 32, 3, 3)).astype(np.float32))
    return g, src, wr, n * g.img_rows, g.lead - g.wq - 1


def test_kernel_rows_are_summed_in_order():
    """corr_chunk's kh products (one stacked call) summed (P0 + P1) + P2, and wgrad_chunk's
    kh weight-gradient rows, are the bits of the products formed one kernel row at a time
    from the same tap copy."""
    rng = np.random.default_rng(9)
    g, src, wr, rows, first = _conv_case(rng)
    split = 37 if blas_small_gemm() else 0
    buf, tmp = np.empty((rows + 2 * g.wq) * 96, np.float32), np.empty(3 * rows * 16, np.float32)
    out = np.empty((rows, 16), np.float32)
    corr_chunk(src, first, rows, g.wq, 1, wr, out, buf, tmp, split)
    s = np.ascontiguousarray(
        np.concatenate([src[first + j : first + j + rows + 2 * g.wq] for j in range(3)], axis=1)
    )  # the kw taps of a kernel row side by side, as the chunk copies them
    products = []
    for i in range(3):
        p = np.empty((rows, 16), np.float32)
        matmul_rows(np.ascontiguousarray(s[i * g.wq : i * g.wq + rows]), wr[i], p, split)
        products.append(p)
    np.testing.assert_array_equal(out, (products[0] + products[1]) + products[2])
    dy = rng.standard_normal((rows, 16)).astype(np.float32)
    dw = np.empty((3, 96, 16), np.float32)
    wgrad_chunk(src, first, rows, g.wq, 1, dy, dw, buf, split)
    for i in range(3):
        one = np.empty((96, 16), np.float32)
        matmul_tn_rows(np.ascontiguousarray(s[i * g.wq : i * g.wq + rows]), dy, one, split)
        np.testing.assert_array_equal(dw[i], one)


def test_split_gemms_leave_the_convolution_kernels_bits_unchanged():
    g, src, wr, rows, first = _conv_case(np.random.default_rng(6))
    buf, tmp = np.empty((rows + 2 * g.wq) * 96, np.float32), np.empty(3 * rows * 16, np.float32)
    whole, split = np.empty((rows, 16), np.float32), np.empty((rows, 16), np.float32)
    corr_chunk(src, first, rows, g.wq, 1, wr, whole, buf, tmp)
    # 37-row GEMMs where the kernel allows a split (see the test above), else the
    # engine's own choice (one GEMM)
    gemm_rows = 37 if blas_small_gemm() else small_gemm_rows(96, 16)
    corr_chunk(src, first, rows, g.wq, 1, wr, split, buf, tmp, gemm_rows=gemm_rows)
    np.testing.assert_array_equal(split, whole)


def test_block_chunks_cover_the_block_and_default_block_sizes():
    for n_imgs, img_rows, chunk in [(16, 1089, 4096), (16, 289, 4096), (5, 100, 64), (1, 9, 4096)]:
        chunks = block_chunks(n_imgs, img_rows, chunk)
        assert chunks[0][0] == 0
        assert all(a + m == b for (a, m), (b, _) in itertools.pairwise(chunks))
        assert sum(m for _, m in chunks) == n_imgs and min(m for _, m in chunks) >= 1
    assert block_chunks(16, 1089, 4096) == ((0, 4), (4, 4), (8, 4), (12, 4))
    assert block_chunks(16, 289, 4096) == ((0, 16),)
    assert default_block_images(33 * 33) == 8  # the 32x32 bench net
    assert default_block_images(10**6) == 1
    assert default_block_images(4) == fast.MAX_BLOCK_IMAGES


def test_profile_names_every_step_and_returns_the_call_output(model_and_batch):
    model, x = model_and_batch
    net = compiled(model, threads=2, block_images=4)
    y, steps = net.profile(x[:9])
    np.testing.assert_array_equal(y, net(x[:9]))
    labels = [lab for lab, _ in steps]
    names = [n.name for n in model.spec.nodes]
    assert labels[0] == "pad input" and labels[-1] == "blocks in/out"
    # the first fused conv names itself and the batch norm and relu folded into it
    assert labels[1] == "+".join(names[:3])
    assert all(t >= 0 for _, t in steps) and len(steps) == len(net.steps) + 1
    _, cpu = net.profile(x[:9], clock=time.thread_time)
    assert [lab for lab, _ in cpu] == labels
    empty, none = net.profile(x[:0])
    assert empty.shape == (0, 5) and [t for _, t in none] == [0.0] * len(labels)
