"""Max-pool gradient routes with many tied maxima (constant and quantised maps, as real
images give): each window's gradient goes to its first maximum in row-major order, in the
fused conv -> ReLU -> max-pool backward and in max_pool2d_backward, checked against an
independent float64 argmax reference and against the layers' own functions."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.cnn import functional as F
from pipeline.threads import THREADS_ENV


def argmax_route(dy: np.ndarray, x: np.ndarray, k: tuple[int, int]) -> np.ndarray:
    """float64 reference: dy of each non-overlapping (kh, kw) window to its first maximum
    (np.argmax over the window's pixels in row-major order); uncovered pixels get 0."""
    n, c, h, w = x.shape
    kh, kw = k
    ho, wo = h // kh, w // kw
    win = x[:, :, : ho * kh, : wo * kw].astype(np.float64)
    win = win.reshape(n, c, ho, kh, wo, kw).transpose(0, 1, 2, 4, 3, 5).reshape(n, c, ho, wo, -1)
    first = win.argmax(axis=-1)
    dx = np.zeros((n, c, h, w))
    for i in range(kh):
        for j in range(kw):
            hit = first == i * kw + j
            dx[:, :, i : ho * kh : kh, j : wo * kw : kw] = np.where(hit, dy, 0.0)
    return dx


def tied_maps(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Values from {-1, -0.5, 0, 0.5, 1}, a constant band and a constant image: most
    windows hold tied maxima, some all equal, some all zero or negative."""
    x = rng.integers(-2, 3, shape).astype(np.float32) / 2
    x[:, :, 2:7] = 0.5  # a constant band of rows
    x[0] = 1.0  # a constant image
    x[1] = -0.5  # a negative constant image: the ReLU stops every window
    return x


CASES = [(5, (9, 8), 1, 2), (5, (11, 9), 1, 3), (20, (32, 32), 1, 2), (20, (32, 32), 3, 2)]
"""(batch, (H, W), threads, pool size)"""


@pytest.mark.parametrize(("n", "hw", "threads", "pool"), CASES)
def test_fused_pool_routes_ties_to_the_first_maximum(monkeypatch, n, hw, threads, pool):
    """A 1x1 identity convolution makes the pre-activation map the input itself, so the
    fused chain's input gradient is the gradient before ReLU and pool."""
    monkeypatch.setenv(THREADS_ENV, str(threads))
    rng = np.random.default_rng(n)
    c = 16
    x = tied_maps(rng, (n, c, *hw))
    eye = np.eye(c, dtype=np.float32)[:, :, None, None]
    y, cache = F.conv2d_relu_train(x, eye, np.zeros(c, np.float32), 0, pool=pool)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, _, _ = F.conv2d_relu_backward(dy, cache, eye, 0)
    relu_x = F.relu(x)
    np.testing.assert_array_equal(y, F.max_pool2d(relu_x, pool))
    np.testing.assert_array_equal(dx, F.relu_backward(F.max_pool2d_backward(dy, relu_x, pool), x))
    positive = F.max_pool2d(x, pool) > 0  # the ReLU passes the window's gradient
    np.testing.assert_array_equal(dx, argmax_route(np.where(positive, dy, 0), x, (pool, pool)))
    assert np.all(dx[1] == 0)  # all windows negative
    # the constant image: every window's gradient at its top-left pixel
    corners = dx[0, :, 0 : hw[0] // pool * pool : pool, 0 : hw[1] // pool * pool : pool]
    np.testing.assert_array_equal(corners, dy[0])


def test_fused_pool_with_a_nan_maximum_matches_the_layers():
    """A NaN input pixel makes every channel of its convolution output NaN (0 * NaN)."""
    rng = np.random.default_rng(3)
    x = tied_maps(rng, (4, 8, 6, 6))
    x[2, 3, 1, 4] = np.nan
    w = np.eye(8, dtype=np.float32)[:, :, None, None]
    y, cache = F.conv2d_relu_train(x, w, None, 0, pool=2)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    fused = F.conv2d_relu_backward(dy, cache, w, 0)
    z = F.conv2d(x, w, padding=0)
    dz = F.relu_backward(F.max_pool2d_backward(dy, F.relu(z), 2), z)
    assert np.isnan(y[2, :, 0, 2]).all() and not np.isnan(dz).any()
    for g, g_layers in zip(fused, F.conv2d_backward(dz, x, w, padding=0), strict=True):
        np.testing.assert_array_equal(g, g_layers)


@pytest.mark.parametrize("size", [2, 3, (1, 3), (2, 1)])
@pytest.mark.parametrize("hw", [(12, 12), (13, 11)])
def test_max_pool2d_backward_routes_ties_to_the_first_maximum(size, hw):
    rng = np.random.default_rng(7)
    x = tied_maps(rng, (6, 5, *hw))
    k = (size, size) if isinstance(size, int) else size
    y = F.max_pool2d(x, size)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    expected = argmax_route(dy, x, k)
    np.testing.assert_array_equal(F.max_pool2d_backward(dy, x, size), expected)
    # channels-last memory, as the engine's maps are
    x_cl = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(F.max_pool2d_backward(dy, x_cl, size), expected)
