"""The CNN's plain array functions: forward and backward, on (N, C, H, W) batches.

Everything here is a pure function of NumPy arrays, with the conventions of ONNX so that
a model trained here exports one to one:

- layout is channels first, (N, C, H, W); a convolution is a cross-correlation (the
  kernel is not flipped), weights are (F, C/groups, kh, kw);
- a dense layer's weight is (out, in) (ONNX ``Gemm`` with ``transB=1``);
- output sizes are ``floor((size + pad_total - dilation*(kernel-1) - 1) / stride) + 1``
  (ONNX's default ``ceil_mode=0``);
- "same" padding is ONNX ``SAME_UPPER``: the odd pixel of padding goes to the bottom/right.

Precision: float64 input gives float64 results; any other input (float32, float16,
integers, bools) gives float32. Parameters (weights, biases, gamma, ...) are cast to the
input's dtype, so float32 data is never silently upcast to float64.

Every ``*_backward`` takes the upstream gradient ``dy`` (same shape as the forward output)
and returns the gradients with respect to the forward's inputs, in the same dtype.
Backward functions are checked against central finite differences in
``tests/cnn/test_gradients_functional.py``.

Threads: convolutions, dense layers and the large element-wise steps (ReLU, max-pooling,
layout copies) are cut into fixed pieces (row chunks, column blocks, batch blocks) that
depend on the array sizes alone; one Python thread per usable core takes pieces in turn,
each with single-threaded BLAS (:func:`pipeline.threads.run_chunks`, the pool the compiled
evaluator and the sensor stages use). Weight gradients are summed over the pieces in
piece order, so gradients and trained weights are bit-identical for any number of
threads. A stride-1 convolution runs the flat padded kernel of
:mod:`pipeline.cnn.flat_conv` (the layout of the compiled evaluator when the output has
the input's size).

Layout: convolutions, ReLU and max-pooling return (N, C, H, W) *views* of NHWC data (the
flat padded layout's own order), and keep the memory order of what they are given; a
chain of them never transposes. Call ``np.ascontiguousarray`` where C order matters.

References: ONNX operator specification (Conv, MaxPool, AveragePool, Gemm,
BatchNormalization, Softmax, Flatten), https://onnx.ai/onnx/operators/ ;
Goodfellow, Bengio & Courville, *Deep Learning*, ch. 6 and 9.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from pipeline.cnn.flat_conv import (
    CHUNK_ROWS,
    FlatLayout,
    corr_chunk,
    corr_chunk_planar,
    flat_padded,
    same_view,
    small_gemm_rows,
    use_im2col,
    weight_rows,
    wgrad_chunk,
    wgrad_chunk_planar,
)
from pipeline.threads import run_chunks, run_parallel

__all__ = [
    "avg_pool2d",
    "avg_pool2d_backward",
    "batch_norm",
    "batch_norm_backward",
    "batch_norm_train",
    "conv2d",
    "conv2d_backward",
    "conv2d_relu_backward",
    "conv2d_relu_train",
    "conv2d_train",
    "conv_output_size",
    "cross_entropy",
    "dense",
    "dense_backward",
    "dropout",
    "dropout_backward",
    "flatten",
    "flatten_backward",
    "global_avg_pool",
    "global_avg_pool_backward",
    "leaky_relu",
    "leaky_relu_backward",
    "log_softmax",
    "max_pool2d",
    "max_pool2d_backward",
    "relu",
    "relu_backward",
    "resolve_padding",
    "sigmoid",
    "sigmoid_backward",
    "softmax",
    "tanh",
    "tanh_backward",
]

IntPair: TypeAlias = int | tuple[int, int] | Sequence[int]
Padding: TypeAlias = int | str | Sequence[Any]
Pads: TypeAlias = tuple[tuple[int, int], tuple[int, int]]

# A dense layer's GEMMs are split into blocks of this many output columns (threads share
# the blocks; each value is one whole dot product, and the split depends on the sizes
# alone, so the values are the same for any thread count; BLAS may round a block's
# products differently from the whole one's).
_DENSE_COLS = 128
# Its backward: the input gradient in blocks of this many input columns, the weight
# gradient in blocks of this many output rows (contiguous in dw); separate tasks, fewer
# and larger than _DENSE_COLS (3.0 against 3.5 ms at 4096 -> 256, batch 64, two threads).
_DENSE_DX_COLS = 1024
_DENSE_DW_ROWS = 128


# --------------------------------------------------------------------------- helpers


def _float(x: Any) -> np.ndarray:
    """``x`` as a float array: float64 stays float64, everything else becomes float32."""
    x = np.asarray(x)
    if x.dtype == np.float64 or x.dtype == np.float32:
        return x
    return x.astype(np.float32)


def _like(p: Any, x: np.ndarray) -> np.ndarray:
    """Parameter ``p`` in the dtype of data ``x`` (no copy when it already is)."""
    return np.asarray(p, dtype=x.dtype)


def _pair(v: IntPair, name: str) -> tuple[int, int]:
    """An int or a pair of ints as a pair of ints."""
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    t = tuple(int(a) for a in v)
    if len(t) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    return t  # type: ignore[return-value]


def _blocks(size: int, block: int) -> list[slice]:
    """[0, size) in slices of ``block`` (the last one shorter)."""
    return [slice(a, min(a + block, size)) for a in range(0, size, block)]


_PARALLEL_MIN = 1 << 16
"""Values below which an element-wise operation runs in the caller's thread."""


def _over_batch(x: np.ndarray, fn: Callable[[Any], Any]) -> list[Any]:
    """``fn(index)`` over blocks of the batch (first axis) of ``x``, spread over threads
    when ``x`` is large; ``index`` is a slice of the batch, or ``...`` for all of it.
    For element-wise work, whose values do not depend on the split."""
    n = x.shape[0] if x.ndim else 1
    if x.size < _PARALLEL_MIN or n < 2:
        return [fn(...)]
    blocks = _blocks(n, -(-n // 8))
    return run_chunks(len(blocks), lambda k: fn(blocks[k]))


def _image_slice(i: Any) -> slice | None:
    """An :func:`_over_batch` index as a slice of the batch (None: all of it)."""
    return i if isinstance(i, slice) else None


def _parallel_copy(dst: np.ndarray, src: np.ndarray) -> None:
    """dst[...] = src, over batch blocks in threads."""
    _over_batch(dst, lambda i: np.copyto(dst[i], src[i]))


def _positive_pair(v: IntPair, name: str) -> tuple[int, int]:
    p = _pair(v, name)
    if min(p) < 1:
        raise ValueError(f"{name} must be >= 1, got {v!r}")
    return p


def _as_nchw(x: np.ndarray) -> tuple[np.ndarray, int]:
    """A single (H, W) image or (C, H, W) stack as a batch of one; returns (batch, ndim)."""
    if x.ndim == 2:
        return x[None, None], 2
    if x.ndim == 3:
        return x[None], 3
    return x, x.ndim


def _restore_rank(y: np.ndarray, ndim: int) -> np.ndarray:
    return y[0, 0] if ndim == 2 else y[0] if ndim == 3 else y


def _check_4d(x: np.ndarray, name: str = "x") -> None:
    if x.ndim != 4:
        raise ValueError(f"{name} must be (N, C, H, W), got shape {x.shape}")


def conv_output_size(
    size: int,
    kernel: int,
    stride: int = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int = 1,
) -> int:
    """Output length along one axis of a convolution or pooling window.

    ``floor((size + pad_total - dilation*(kernel-1) - 1) / stride) + 1``, ONNX's formula
    with ``ceil_mode=0``; for ``padding=P`` on each side and no dilation this is the
    textbook ``floor((W - F + 2P) / S) + 1``.

    Parameters
    ----------
    size : input length (pixels).
    kernel : kernel length (taps).
    stride : step between windows (pixels).
    padding : padding on each side (int, as in :func:`conv2d`) or ``(before, after)``
        (pixels).
    dilation : spacing between taps (pixels).

    Returns
    -------
    The output length; raises ValueError when the (dilated) kernel does not fit.
    """
    total = 2 * int(padding) if isinstance(padding, (int, np.integer)) else sum(padding)
    span = dilation * (kernel - 1) + 1
    if stride < 1 or dilation < 1 or kernel < 1:
        raise ValueError(
            f"kernel, stride and dilation must be >= 1, got {kernel}, {stride}, {dilation}"
        )
    if size + total < span:
        raise ValueError(
            f"kernel spanning {span} px does not fit in input of {size} px with padding {total}"
        )
    return (size + total - span) // stride + 1


def resolve_padding(
    padding: Padding,
    kernel: IntPair,
    stride: IntPair = 1,
    dilation: IntPair = 1,
    input_size: IntPair | None = None,
) -> Pads:
    """Padding in every accepted form as ``((top, bottom), (left, right))`` pixels.

    Parameters
    ----------
    padding : ``int`` (all sides), ``(ph, pw)`` (both sides of each axis),
        ``((top, bottom), (left, right))``, ``"valid"`` (none) or ``"same"`` (ONNX
        ``SAME_UPPER``: output = ceil(input / stride); the odd pixel goes bottom/right).
        For stride 1, "same" pads ``dilation*(kernel-1)`` in total whatever the input
        size; for stride > 1 it depends on the input, so ``input_size`` is then required.
    kernel, stride, dilation : int or ``(h, w)``.
    input_size : ``(H, W)`` of the input; only needed for "same" with stride > 1.
    """
    kh, kw = _positive_pair(kernel, "kernel")
    sh, sw = _positive_pair(stride, "stride")
    dh, dw = _positive_pair(dilation, "dilation")
    if isinstance(padding, str):
        mode = padding.lower()
        if mode == "valid":
            return (0, 0), (0, 0)
        if mode != "same":
            raise ValueError(f"padding must be an int, pairs, 'same' or 'valid', got {padding!r}")
        totals = []
        for k, s, d, axis in ((kh, sh, dh, 0), (kw, sw, dw, 1)):
            span = d * (k - 1) + 1
            if s == 1:
                totals.append(span - 1)
                continue
            if input_size is None:
                raise ValueError("padding='same' with stride > 1 needs the input size")
            n = _pair(input_size, "input_size")[axis]
            out = -(-n // s)
            totals.append(max(0, (out - 1) * s + span - n))
        (th, tw) = totals
        return (th // 2, th - th // 2), (tw // 2, tw - tw // 2)
    if isinstance(padding, (int, np.integer)):
        p = int(padding)
        pads: Pads = ((p, p), (p, p))
    else:
        items = list(padding)
        if len(items) != 2:
            raise ValueError(f"padding must have 2 entries (H, W), got {padding!r}")
        if all(isinstance(a, (int, np.integer)) for a in items):
            ph, pw = (int(a) for a in items)
            pads = ((ph, ph), (pw, pw))
        else:
            pads = (_pair(items[0], "padding[0]"), _pair(items[1], "padding[1]"))
    if min(pads[0] + pads[1]) < 0:
        raise ValueError(f"padding must be >= 0, got {padding!r}")
    return pads


def _pad(x: np.ndarray, pads: Pads, value: float = 0.0) -> np.ndarray:
    """Pad the last two axes of a 4-D array."""
    (t, b), (lft, r) = pads
    if t == b == lft == r == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (t, b), (lft, r)), constant_values=value)


def _windows(
    xp: np.ndarray,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    out_hw: tuple[int, int],
) -> np.ndarray:
    """Strided view (N, C, Ho, Wo, kh, kw) of a padded 4-D array: no copy."""
    (kh, kw), (sh, sw), (dh, dw), (ho, wo) = kernel, stride, dilation, out_hw
    span = (dh * (kh - 1) + 1, dw * (kw - 1) + 1)
    v = sliding_window_view(xp, span, axis=(2, 3))
    return v[:, :, : (ho - 1) * sh + 1 : sh, : (wo - 1) * sw + 1 : sw, ::dh, ::dw]


def _tap_slices(
    i: int,
    j: int,
    stride: tuple[int, int],
    dilation: tuple[int, int],
    out_hw: tuple[int, int],
) -> tuple[slice, slice]:
    """Rows and columns of the padded input that tap (i, j) reads for every output pixel."""
    (sh, sw), (dh, dw), (ho, wo) = stride, dilation, out_hw
    r0, c0 = i * dh, j * dw
    return slice(r0, r0 + (ho - 1) * sh + 1, sh), slice(c0, c0 + (wo - 1) * sw + 1, sw)


def _geometry(
    x_shape: tuple[int, ...],
    kernel: tuple[int, int],
    stride: IntPair,
    padding: Padding,
    dilation: IntPair,
) -> tuple[Pads, tuple[int, int], tuple[int, int], tuple[int, int]]:
    """(pads, stride, dilation, (Ho, Wo)) for a window op on a (N, C, H, W) input."""
    s = _positive_pair(stride, "stride")
    d = _positive_pair(dilation, "dilation")
    pads = resolve_padding(padding, kernel, s, d, input_size=x_shape[2:])
    ho = conv_output_size(x_shape[2], kernel[0], s[0], pads[0], d[0])
    wo = conv_output_size(x_shape[3], kernel[1], s[1], pads[1], d[1])
    return pads, s, d, (ho, wo)


# ----------------------------------------------------------------------- convolution


def conv2d(
    x: Any,
    w: Any,
    b: Any | None = None,
    stride: IntPair = 1,
    padding: Padding = 0,
    dilation: IntPair = 1,
    groups: int = 1,
) -> np.ndarray:
    """2-D convolution (cross-correlation, as in ONNX ``Conv`` and every framework).

    ``y[n, f, i, j] = b[f] + sum_{c, u, v} w[f, c, u, v] *
    xpad[n, g*C/groups + c, i*stride + u*dilation, j*stride + v*dilation]``
    with ``g = f // (F/groups)``.

    Parameters
    ----------
    x : (N, C, H, W) batch; also (C, H, W) with a 4-D ``w``, or one (H, W) image with a
        (kh, kw) kernel — the result then has the same rank as ``x``.
    w : (F, C/groups, kh, kw) weights (or (kh, kw) for a single-channel image).
    b : (F,) bias or None.
    stride, dilation : int or (h, w), pixels.
    padding : see :func:`resolve_padding`.
    groups : number of channel groups (C and F must both be divisible by it).

    Returns
    -------
    (N, F, Ho, Wo), with Ho, Wo from :func:`conv_output_size`.
    """
    x = _float(x)
    w = _like(w, x)
    squeeze: tuple[int, ...] = ()
    if x.ndim == 2 and w.ndim == 2:
        x, w, squeeze = x[None, None], w[None, None], (0, 1)
    elif x.ndim == 3 and w.ndim == 4:
        x, squeeze = x[None], (0,)
    elif x.ndim != 4 or w.ndim != 4:
        raise ValueError(
            f"conv2d takes x (N,C,H,W) with w (F,C,kh,kw), x (C,H,W) with w (F,C,kh,kw) or "
            f"x (H,W) with w (kh,kw); got x {x.shape} and w {w.shape}"
        )
    b = None if b is None else _like(b, x)
    y, _ = _conv2d_nchw(x, w, b, stride, padding, dilation, groups)
    return y[(0,) * len(squeeze)] if squeeze else y


@dataclass(frozen=True)
class ConvInput:
    """A convolution's input as :func:`conv2d_train` kept it for :func:`conv2d_backward`:
    its (N, C, H, W) shape and ``data``, the flat padded buffer the forward read (stride
    1) or the input itself (other strides), so the backward does not lay it out again."""

    shape: tuple[int, ...]
    data: np.ndarray


def conv2d_train(
    x: Any,
    w: Any,
    b: Any | None = None,
    stride: IntPair = 1,
    padding: Padding = 0,
    dilation: IntPair = 1,
    groups: int = 1,
) -> tuple[np.ndarray, ConvInput]:
    """:func:`conv2d` of an (N, C, H, W) batch for training: (y, the input as
    :func:`conv2d_backward` reads it)."""
    x = _float(x)
    w = _like(w, x)
    _check_4d(x)
    _check_4d(w, "w")
    b = None if b is None else _like(b, x)
    y, data = _conv2d_nchw(x, w, b, stride, padding, dilation, groups)
    return y, ConvInput(x.shape, data)


def _check_conv(c: int, w: np.ndarray, groups: int) -> None:
    """Raise ValueError unless ``c`` input channels, weights ``w`` and ``groups`` fit."""
    n_f, c_g = w.shape[:2]
    if groups < 1 or c % groups or n_f % groups:
        raise ValueError(f"groups={groups} must divide input channels {c} and filters {n_f}")
    if c_g * groups != c:
        raise ValueError(
            f"weights {w.shape} expect {c_g * groups} input channels "
            f"(C/groups={c_g}, groups={groups}), input has {c}"
        )


def _batch_chunk(rows_per_image: int) -> int:
    return max(1, CHUNK_ROWS // max(1, rows_per_image))


# Stride 1 (any padding, dilation, groups) runs on a *flat padded* NHWC layout: the
# padded batch is one (N*Hp*Wp, C) matrix, an output pixel is anchored at its window's
# top-left input pixel, and kernel tap (i, j) is the row offset i*d*Wp + j*d. Outputs
# are computed for every anchor (those whose window runs off the right or bottom edge
# read the next row or image and are cropped away), in fixed chunks of at most
# CHUNK_ROWS rows, fewer for wide convolutions (:func:`_row_chunks`), spread over threads by
# :func:`pipeline.threads.run_chunks`: the kw taps of a kernel row are copied side
# by side into a chunk matrix, then kh GEMMs at row offsets accumulate (or one GEMM over
# all taps when kw*C is small). The gradient with respect to x is the same correlation
# of the gradient (zero at the cropped anchors) with the flipped, transposed kernel; the
# weight gradient is a sum of per-chunk GEMMs, added in chunk order. Chunks depend on the
# array sizes only, so every result is bit-identical for any number of threads.
# Outputs are returned as (N, C, H, W) views of the NHWC data (no transposing copy); the
# next layer's flat_padded copy then reads them contiguously. Larger strides use im2col.

_MIN_CHUNKS_ROWS = 1024
"""Rows per chunk below which a convolution is not cut into more chunks than its size
needs (up to 4 chunks, for threads to share)."""

_scratch_local = threading.local()


def _scratch(slot: str, size: int, dtype: np.dtype) -> np.ndarray:
    """A per-thread reusable 1-D buffer of at least ``size`` values (no page faults from
    fresh allocations in every chunk)."""
    try:
        bufs = _scratch_local.bufs
    except AttributeError:
        bufs = _scratch_local.bufs = {}
    key = (slot, np.dtype(dtype))
    buf = bufs.get(key)
    if buf is None or buf.size < size:
        buf = bufs[key] = np.empty(max(1, size), dtype)
    return buf


_TAP_VALUES = CHUNK_ROWS * 96
"""Values of a chunk's widest tap matrix (rows x kw*channels): 1.5 MiB of float32, what
CHUNK_ROWS rows of a 32-channel 3x3 convolution copy. Wider convolutions take fewer rows
per chunk: their GEMMs run 5-10 % faster at 2,048 rows than at 4,096 on one core here."""


def _row_chunks(rows: int, tap_width: int) -> list[tuple[int, int]]:
    """(first row, rows) of equal chunks of at most CHUNK_ROWS rows, and at most
    ``_TAP_VALUES // tap_width`` (``tap_width``: values per row of the widest tap copy,
    kw x the larger channel count) but not below 1024 (at least min(4, rows // 1024)
    chunks; an even number above one, so two threads finish together): a function of
    the sizes alone."""
    most = min(CHUNK_ROWS, max(_MIN_CHUNKS_ROWS, _TAP_VALUES // max(1, tap_width)))
    n = max(-(-rows // most), min(4, rows // _MIN_CHUNKS_ROWS), 1)
    n += n % 2 * (n > 1)
    bounds = [rows * k // n for k in range(n + 1)]
    return [(bounds[k], bounds[k + 1] - bounds[k]) for k in range(n)]


def _group(a: np.ndarray, g: int, size: int, groups: int) -> np.ndarray:
    """Channel group g of a (rows, channels) matrix, contiguous."""
    return a if groups == 1 else np.ascontiguousarray(a[:, g * size : (g + 1) * size])


def _corr_into(
    src: np.ndarray, a: int, m: int, row_step: int, col_step: int, wr: np.ndarray, out: np.ndarray
) -> None:
    """out = rows [a, a+m) of the flat correlation of ``src`` with ``wr``
    (:func:`pipeline.cnn.flat_conv.corr_chunk`), with this thread's scratch buffers."""
    kh, k_row, n_f = wr.shape
    im2col = use_im2col(kh, k_row)
    ext = 0 if im2col else (kh - 1) * row_step
    buf = _scratch("taps", (m + ext) * kh * k_row, src.dtype)
    tmp = _scratch("acc", kh * m * n_f, src.dtype)
    gemm_rows = small_gemm_rows(kh * k_row if im2col else k_row, n_f)
    corr_chunk(src, a, m, row_step, col_step, wr, out, buf, tmp, gemm_rows)


def _wgrad_into(
    src: np.ndarray,
    a: int,
    m: int,
    row_step: int,
    col_step: int,
    dy: np.ndarray,
    out: np.ndarray,
    planar: bool,
) -> None:
    """out (kh, kw*C, F) = the weight gradient of rows [a, a+m) of the flat correlation
    (:func:`pipeline.cnn.flat_conv.wgrad_chunk`, or its planar form), with this thread's
    scratch buffer."""
    kh, k_row, n_f = out.shape
    if planar:
        buf = _scratch("taps", m * kh * k_row, src.dtype)
        gemm_rows = small_gemm_rows(kh * k_row, n_f)
        wgrad_chunk_planar(src, a, m, row_step, col_step, dy, out, buf, gemm_rows)
        return
    im2col = use_im2col(kh, k_row)
    size = m * kh * k_row if im2col else (m + (kh - 1) * row_step) * k_row
    gemm_rows = small_gemm_rows(kh * k_row if im2col else k_row, n_f)
    buf = _scratch("taps", size, src.dtype)
    wgrad_chunk(src, a, m, row_step, col_step, dy, out, buf, gemm_rows)


@dataclass(frozen=True)
class _FlatGeometry:
    """Where a stride-1 convolution's data sit in the flat padded matrices.

    Output anchor ``a`` (0 <= a < ``rows``) reads its top-left tap at input-buffer row
    ``x0 + a``; its gradient sits at row ``dy0 + a`` of a zero matrix of ``dy_rows`` rows;
    input position ``a`` (the same ``rows``) gathers its gradient by the flipped
    correlation read from row ``dx0 + a`` of that matrix. ``grid`` is the (N, rows per
    image / width, width) shape of the ``rows`` anchors, ``out_crop`` and ``in_crop`` the
    pixels of the output and of the input in it.

    A convolution whose output has its input's size uses the inference layout
    (:class:`pipeline.cnn.flat_conv.FlatLayout`: padding shared between neighbouring rows
    and images, anchors at the output pixel); any other uses a plain padded NHWC matrix
    with anchors at the window's top-left input pixel. ``planar``: the input buffer is
    the layout's planar form, (C, rows), read by the single-GEMM kernels (few channels:
    contiguous tap copies, as the compiled evaluator's input layer).
    """

    layout: FlatLayout | None
    planar: bool
    pads: Pads
    rows: int
    x0: int
    dy0: int
    dy_rows: int
    dx0: int
    grid: tuple[int, int, int]
    out_crop: tuple[slice, slice]
    in_crop: tuple[slice, slice]
    row_step: int
    col_step: int

    def to_input(self, x: np.ndarray) -> np.ndarray:
        """(N, C, H, W) input as the input buffer."""
        if self.layout is None:
            return flat_padded(x, self.pads, 0, self.dy0)
        n, c = x.shape[:2]
        lay = self.layout
        if self.planar:
            buf = np.empty((c, lay.total_rows(n)), dtype=x.dtype)
            lay.zero_padding(buf, n, planar=True)
            _parallel_copy(lay.interior_planar(buf, n), x.transpose(1, 0, 2, 3))
            return buf
        buf = lay.sealed(x)  # a fused chain's output already laid out (conv2d_relu_train)
        if buf is not None:
            return buf
        buf = np.empty((lay.total_rows(n), c), dtype=x.dtype)
        lay.zero_padding(buf, n)
        _parallel_copy(lay.interior(buf, n), x.transpose(0, 2, 3, 1))
        return buf

    def grad_matrix(
        self, n_f: int, dtype: np.dtype, zero: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """A gradient matrix for ``n_f`` output channels and the (N, Ho, Wo, F) view of
        its output pixels, which the caller must fill: the rest is zero, or with
        ``zero=False`` (a layout's matrix only) left for the caller to zero
        (:meth:`zero_padding`) with the pixels it writes."""
        if self.layout is None:
            dyb = np.zeros((self.dy_rows, n_f), dtype=dtype)
        else:  # only the padding zeroed: the pixels are written next
            dyb = np.empty((self.dy_rows, n_f), dtype=dtype)
            if zero:
                self.layout.zero_padding(dyb, self.grid[0])
        grid = dyb[self.dy0 : self.dy0 + self.rows].reshape(*self.grid, n_f)
        return dyb, grid[(slice(None), *self.out_crop)]

    def to_grad(self, dy: np.ndarray) -> np.ndarray:
        """(N, F, Ho, Wo) output gradient as the zero-padded gradient matrix."""
        dyb, pixels = self.grad_matrix(dy.shape[1], dy.dtype)
        _parallel_copy(pixels, dy.transpose(0, 2, 3, 1))
        return dyb

    def zero_padding(self, dyb: np.ndarray, images: Any) -> None:
        """Zero the padding of the images ``images`` (a slice of the batch, or ``...``:
        all) in a layout's gradient matrix (:meth:`grad_matrix` with ``zero=False``)."""
        assert self.layout is not None
        self.layout.zero_padding(dyb, self.grid[0], images=_image_slice(images))

    def crop(self, flat: np.ndarray, which: tuple[slice, slice]) -> np.ndarray:
        """(N, C, h, w) view of the ``rows`` x C matrix ``flat`` at the pixels ``which``."""
        return flat.reshape(*self.grid, -1)[(slice(None), *which)].transpose(0, 3, 1, 2)


def _flat_geometry(
    x_shape: tuple[int, ...],
    kernel: tuple[int, int],
    pads: Pads,
    d: tuple[int, int],
    groups: int = 1,
) -> _FlatGeometry:
    """The :class:`_FlatGeometry` of a stride-1 convolution of an (N, C, H, W) input."""
    n, _, h, w = x_shape
    (kh, kw), ((t, b), (lft, r)) = kernel, pads
    span_h, span_w = d[0] * (kh - 1), d[1] * (kw - 1)
    if t + b == span_h and lft + r == span_w:  # output size == input size
        lay = FlatLayout(h, w, x_shape[1], max(t, b), max(lft, r))
        rows, wq = n * lay.img_rows, lay.wq
        return _FlatGeometry(
            layout=lay,
            planar=groups == 1 and use_im2col(kh, kw * x_shape[1]),
            pads=pads,
            rows=rows,
            x0=lay.lead - t * wq - lft,
            dy0=lay.lead,
            dy_rows=lay.total_rows(n),
            dx0=lay.lead - b * wq - r,
            grid=(n, h + lay.pr, wq),
            out_crop=(slice(0, h), slice(0, w)),
            in_crop=(slice(0, h), slice(0, w)),
            row_step=d[0] * wq,
            col_step=d[1],
        )
    hp, wp = h + t + b, w + lft + r
    ho, wo = hp - span_h, wp - span_w
    reach = span_h * wp + span_w
    return _FlatGeometry(
        layout=None,
        planar=False,
        pads=pads,
        rows=n * hp * wp,
        x0=0,
        dy0=reach,
        dy_rows=reach + n * hp * wp,
        dx0=0,
        grid=(n, hp, wp),
        out_crop=(slice(0, ho), slice(0, wo)),
        in_crop=(slice(t, t + h), slice(lft, lft + w)),
        row_step=d[0] * wp,
        col_step=d[1],
    )


def _conv2d_s1(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    pads: Pads,
    d: tuple[int, int],
    groups: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Stride-1 convolution on the flat padded layout (bias added per chunk); returns the
    output and the input buffer (what the backward reads)."""
    geo = _flat_geometry(x.shape, w.shape[2:], pads, d, groups)
    y, xb = _conv_flat(x, w, b, geo, groups)
    return geo.crop(y, geo.out_crop), xb


def _conv_flat(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    geo: _FlatGeometry,
    groups: int,
    then: Callable[[int, int], None] | None = None,
    y: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The (rows, F) flat output of a stride-1 convolution with bias (written into ``y``
    when given), and its input buffer; ``then(first, count)`` runs on each chunk's output
    rows once they are done, while they are in cache."""
    n_f, c_g, kh, kw = w.shape
    f_g = n_f // groups
    xb = geo.to_input(x)
    srcs = [_group(xb, g, c_g, groups) for g in range(groups)]
    wrs = [weight_rows(w[g * f_g : (g + 1) * f_g]) for g in range(groups)]
    y = np.empty((geo.rows, n_f), dtype=x.dtype) if y is None else y
    chunks = _row_chunks(geo.rows, kw * max(c_g, f_g))
    steps = (geo.row_step, geo.col_step)

    def chunk(k: int) -> None:
        a, m = chunks[k]
        if geo.planar:
            buf = _scratch("taps", m * kh * kw * c_g, x.dtype)
            gemm_rows = small_gemm_rows(kh * kw * c_g, n_f)
            corr_chunk_planar(xb, geo.x0 + a, m, *steps, wrs[0], y[a : a + m], buf, gemm_rows)
        else:
            for g in range(groups):
                out = y[a : a + m] if groups == 1 else _scratch("out", m * f_g, x.dtype)
                out = out[: m * f_g].reshape(m, -1)
                _corr_into(srcs[g], geo.x0 + a, m, *steps, wrs[g], out)
                if groups > 1:
                    y[a : a + m, g * f_g : (g + 1) * f_g] = out
        if b is not None:
            y[a : a + m] += b
        if then is not None:
            then(a, m)

    run_chunks(len(chunks), chunk)
    return y, xb


def _conv2d_backward_s1(
    dyb: np.ndarray,
    geo: _FlatGeometry,
    x_shape: tuple[int, ...],
    xb: np.ndarray,
    w: np.ndarray,
    groups: int,
    need_dx: bool,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """(dx, dw, db) of :func:`_conv_flat` from the gradient matrix ``dyb``
    (:meth:`_FlatGeometry.grad_matrix`) and the input buffer ``xb``; dw and db summed over
    chunks in chunk order; dx is None when not ``need_dx``."""
    c = x_shape[1]
    n_f, c_g, kh, kw = w.shape
    f_g = n_f // groups
    xs = [xb] if geo.planar else [_group(xb, g, c_g, groups) for g in range(groups)]
    dys = [_group(dyb, g, f_g, groups) for g in range(groups)]
    # dx[p] = sum_ij dy[p + pad - ij] @ w_ij^T: the flipped kernel, F -> C
    wr_back = [
        weight_rows(w[g * f_g : (g + 1) * f_g].transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])
        for g in range(groups)
    ]
    dxb = np.empty((geo.rows, c), dtype=dyb.dtype) if need_dx else None
    chunks = _row_chunks(geo.rows, kw * max(c_g, f_g))
    steps = (geo.row_step, geo.col_step)

    def chunk(k: int) -> tuple[np.ndarray, np.ndarray]:
        a, m = chunks[k]
        dwr = np.empty((groups, kh, kw * c_g, f_g), dtype=dyb.dtype)
        for g in range(groups):
            if dxb is not None:
                out = dxb[a : a + m] if groups == 1 else _scratch("out", m * c_g, dyb.dtype)
                out = out[: m * c_g].reshape(m, -1)
                _corr_into(dys[g], geo.dx0 + a, m, *steps, wr_back[g], out)
                if groups > 1:
                    dxb[a : a + m, g * c_g : (g + 1) * c_g] = out
            dyc = dys[g][geo.dy0 + a : geo.dy0 + a + m]
            _wgrad_into(xs[g], geo.x0 + a, m, *steps, dyc, dwr[g], geo.planar)
        # the bias gradient as a GEMV: numpy's column sum loops over F values per row
        return dwr, np.ones(m, dyb.dtype) @ dyb[geo.dy0 + a : geo.dy0 + a + m]

    parts = run_chunks(len(chunks), chunk)
    dwr, db = parts[0]
    for dwr_k, db_k in parts[1:]:  # in chunk order: the same sums for any thread count
        dwr += dwr_k
        db += db_k
    dw = dwr.reshape(groups, kh, kw, c_g, f_g).transpose(0, 4, 3, 1, 2).reshape(w.shape)
    dx = None if dxb is None else geo.crop(dxb, geo.in_crop)
    return dx, np.ascontiguousarray(dw), db


def _conv2d_nchw(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    stride: IntPair,
    padding: Padding,
    dilation: IntPair,
    groups: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Stride 1: flat-layout row-offset GEMMs; otherwise im2col + GEMM, chunked. Returns
    the output and what the backward reads of the input (the flat buffer at stride 1,
    else ``x``)."""
    _check_conv(x.shape[1], w, groups)
    n_f, c_g, kh, kw = w.shape
    pads, s, d, (ho, wo) = _geometry(x.shape, (kh, kw), stride, padding, dilation)
    if s == (1, 1):
        return _conv2d_s1(x, w, b, pads, d, groups)
    n = x.shape[0]
    f_g = n_f // groups
    # NHWC inside: the im2col rows are then (kh, kw, C) contiguous pieces.
    xp = np.ascontiguousarray(_pad(x, pads).transpose(0, 2, 3, 1))
    y = np.empty((n, ho, wo, n_f), dtype=x.dtype)
    step = _batch_chunk(ho * wo)
    for g in range(groups):
        wmat = w[g * f_g : (g + 1) * f_g].transpose(0, 2, 3, 1).reshape(f_g, kh * kw * c_g).T
        xg = xp[..., g * c_g : (g + 1) * c_g]
        for n0 in range(0, n, step):
            n1 = min(n, n0 + step)
            cols = _im2col_nhwc(xg[n0:n1], (kh, kw), s, d, (ho, wo))
            y[n0:n1, :, :, g * f_g : (g + 1) * f_g] = (cols @ wmat).reshape(n1 - n0, ho, wo, f_g)
    if b is not None:
        y += b
    return y.transpose(0, 3, 1, 2), x


def _im2col_nhwc(
    xp: np.ndarray,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    out_hw: tuple[int, int],
) -> np.ndarray:
    """(N*Ho*Wo, kh*kw*C) patch matrix of a padded NHWC array (a copy)."""
    (kh, kw), (ho, wo) = kernel, out_hw
    n, _, _, c = xp.shape
    cols = np.empty((n, ho, wo, kh, kw, c), dtype=xp.dtype)
    for i in range(kh):
        for j in range(kw):
            rs, cs = _tap_slices(i, j, stride, dilation, out_hw)
            cols[:, :, :, i, j, :] = xp[:, rs, cs, :]
    return cols.reshape(n * ho * wo, kh * kw * c)


def conv2d_backward(
    dy: Any,
    x: Any,
    w: Any,
    stride: IntPair = 1,
    padding: Padding = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    *,
    need_dx: bool = True,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Gradients of :func:`conv2d` (4-D form) with respect to x, w and b.

    Parameters
    ----------
    dy : (N, F, Ho, Wo) upstream gradient.
    x : the forward's input, or the :class:`ConvInput` :func:`conv2d_train` returned.
    w, stride, padding, dilation, groups : as given to the forward.
    need_dx : False skips the input gradient (a network's first layer): dx is then None.

    Returns
    -------
    (dx (N, C, H, W) or None, dw (F, C/groups, kh, kw), db (F,)).
    """
    kept = x if isinstance(x, ConvInput) else None
    x = kept.data if kept is not None else _float(x)
    x_shape = kept.shape if kept is not None else x.shape
    w = _like(w, x)
    dy = _like(dy, x)
    if len(x_shape) != 4:
        raise ValueError(f"x must be (N, C, H, W), got shape {x_shape}")
    _check_4d(w, "w")
    _check_conv(x_shape[1], w, groups)
    n_f, c_g, kh, kw = w.shape
    pads, s, d, (ho, wo) = _geometry(x_shape, (kh, kw), stride, padding, dilation)
    n, _, h, wd = x_shape
    if dy.shape != (n, n_f, ho, wo):
        raise ValueError(f"dy must be {(n, n_f, ho, wo)}, got {dy.shape}")
    if s == (1, 1):
        geo = _flat_geometry(x_shape, (kh, kw), pads, d, groups)
        xb = x if kept is not None else geo.to_input(x)
        return _conv2d_backward_s1(geo.to_grad(dy), geo, x_shape, xb, w, groups, need_dx)
    db = dy.sum(axis=(0, 2, 3))
    f_g = n_f // groups
    xp = np.ascontiguousarray(_pad(x, pads).transpose(0, 2, 3, 1))
    dxp = np.zeros_like(xp)
    dy_nhwc = np.ascontiguousarray(dy.transpose(0, 2, 3, 1))
    dw = np.zeros((n_f, kh, kw, c_g), dtype=x.dtype)
    step = _batch_chunk(ho * wo)
    for g in range(groups):
        fs, cs_ = slice(g * f_g, (g + 1) * f_g), slice(g * c_g, (g + 1) * c_g)
        wmat = w[fs].transpose(0, 2, 3, 1).reshape(f_g, kh * kw * c_g)
        xg = xp[..., cs_]
        for n0 in range(0, n, step):
            n1 = min(n, n0 + step)
            dyc = dy_nhwc[n0:n1, :, :, fs].reshape(-1, f_g)
            cols = _im2col_nhwc(xg[n0:n1], (kh, kw), s, d, (ho, wo))
            dw[fs] += (dyc.T @ cols).reshape(f_g, kh, kw, c_g)
            dcols = (dyc @ wmat).reshape(n1 - n0, ho, wo, kh, kw, c_g)
            dxg = dxp[n0:n1, :, :, cs_]
            for i in range(kh):
                for j in range(kw):
                    rs, css = _tap_slices(i, j, s, d, (ho, wo))
                    dxg[:, rs, css, :] += dcols[:, :, :, i, j, :]
    (t, _), (lft, _) = pads
    dx = np.ascontiguousarray(dxp[:, t : t + h, lft : lft + wd, :].transpose(0, 3, 1, 2))
    return dx if need_dx else None, np.ascontiguousarray(dw.transpose(0, 3, 1, 2)), db


# ------------------------------------------------- convolution + ReLU [+ max-pool]
#
# Training's fused kernel for the common chain conv -> ReLU [-> max-pool, size == stride]
# (the layers' composition, the same bits): the ReLU runs on each GEMM chunk while it is
# in cache, a max-pool pools the pre-activation map first and applies the ReLU to a
# quarter of the data (max commutes with ReLU); the backward writes the ReLU-masked (and
# pool-routed) gradient straight into the convolution's gradient matrix. The map before
# the ReLU is kept for the backward (its sign is the mask, its window maxima the route).


@dataclass(frozen=True)
class ConvReluCache:
    """What :func:`conv2d_relu_backward` needs: the convolution's input as its forward
    read it, its (rows, F) flat output (before the ReLU when pooled; without a pool the
    ReLU's output, which is positive exactly where its input is), and the pooled output
    (or None). Pooled, also each window's route (``route``, (N, F, Ho, Wo): the index of
    the tap holding its first maximum (:func:`_first_max`), or that plus the tap count
    where the maximum is not positive) and whether a window maximum is NaN (``nan``)."""

    x: ConvInput
    z: np.ndarray
    pool: int
    pooled: np.ndarray | None
    route: np.ndarray | None = None
    nan: bool = False


def conv2d_relu_train(
    x: Any, w: Any, b: Any | None, padding: Padding, dilation: IntPair = 1, pool: int = 0
) -> tuple[np.ndarray, ConvReluCache]:
    """``max_pool2d(relu(conv2d(x, w, b, 1, padding, dilation)), pool)`` (no pooling for
    ``pool=0``) of an (N, C, H, W) batch, for a stride-1 convolution whose output has its
    input's size; the same values as the three functions in turn.

    Returns
    -------
    (y (N, F, H', W'), the cache :func:`conv2d_relu_backward` reads).
    """
    x = _float(x)
    w = _like(w, x)
    _check_4d(x)
    _check_4d(w, "w")
    _check_conv(x.shape[1], w, 1)
    geo = _fused_geometry(x.shape, w, padding, dilation)
    n, lay = x.shape[0], geo.layout
    if pool:
        z, xb = _conv_flat(x, w, None if b is None else _like(b, x), geo, 1)
        z_nchw = geo.crop(z, geo.out_crop)
        k, _, _, out = _pool_geometry(z_nchw, pool, None, 0)
        # the output as the pixels of a flat matrix of its size and this padding: a
        # convolution like this one reads it as its input buffer without a copy
        out_lay = FlatLayout(*out, w.shape[0], lay.pr, lay.pc)
        ybuf = np.empty((out_lay.total_rows(n), w.shape[0]), dtype=z.dtype)
        y = out_lay.seal(ybuf, n, zeroed=True)  # each image block zeroes its own padding
        taps = _pool_taps(z_nchw, k, k, out)
        route = np.empty_like(taps[0], dtype=_index_dtype(2 * len(taps)))

        def pool_relu(i: slice) -> bool:
            m = _scratch_like(taps[0][i], "pool_max")
            _first_max([tap[i] for tap in taps], k, m, route[i])
            np.maximum(m, 0, out=y[i])
            out_lay.zero_padding(ybuf, n, images=_image_slice(i))
            nonpositive = np.less_equal(m, 0).view(np.uint8)  # the ReLU's zero gradient:
            route[i] += nonpositive * route.dtype.type(len(taps))  # routed to no tap
            return bool(np.isnan(m).any())

        nan = any(_over_batch(y, pool_relu))
        return y, ConvReluCache(ConvInput(x.shape, xb), z, pool, y, route, nan)

    def relu_chunk(a: int, m: int) -> None:
        np.maximum(z[a : a + m], 0, out=z[a : a + m])  # in place: relu(z) > 0 where z > 0
        lo = 0 if a == 0 else out_lay.lead + a  # the guard rows with the first and last
        hi = len(zbuf) if a + m == geo.rows else out_lay.lead + a + m
        out_lay.zero_rows(zbuf, n, lo, hi)

    b = None if b is None else _like(b, x)
    out_lay = dataclasses.replace(lay, c=w.shape[0])  # as above, at the input's size
    zbuf = np.empty((out_lay.total_rows(n), w.shape[0]), dtype=x.dtype)
    z = zbuf[out_lay.lead : out_lay.lead + geo.rows]
    _, xb = _conv_flat(x, w, b, geo, 1, relu_chunk, z)
    y = out_lay.seal(zbuf, n, zeroed=True)  # each chunk zeroed its rows' padding
    return y, ConvReluCache(ConvInput(x.shape, xb), z, 0, None)


def conv2d_relu_backward(
    dy: Any,
    cache: ConvReluCache,
    w: Any,
    padding: Padding,
    dilation: IntPair = 1,
    *,
    need_dx: bool = True,
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Gradients of :func:`conv2d_relu_train`: (dx or None, dw, db), the same values as
    the backward functions of the three in turn.

    Parameters
    ----------
    dy : upstream gradient, shaped like the forward's output.
    cache : the forward's cache.
    w, padding, dilation : as given to the forward.
    need_dx : False skips the input gradient (dx is then None).
    """
    z = cache.z
    w = _like(w, z)
    dy = _like(dy, z)
    x_shape = cache.x.shape
    geo = _fused_geometry(x_shape, w, padding, dilation)
    if cache.pooled is not None:
        dyb, pixels = geo.grad_matrix(w.shape[0], z.dtype, zero=False)  # (N, H, W, F) view
        z_px = geo.crop(z, geo.out_crop).transpose(0, 2, 3, 1)
        _pool_relu_route(dy, cache, z_px, pixels, lambda i: geo.zero_padding(dyb, i))
    elif dy.shape != (*x_shape[:1], w.shape[0], *x_shape[2:]):
        raise ValueError(f"dy must be shaped like the output, got {dy.shape}")
    else:
        dyb = _relu_grad_matrix(dy, z, geo)
    return _conv2d_backward_s1(dyb, geo, x_shape, cache.x.data, w, 1, need_dx)


def _relu_grad_matrix(dy: np.ndarray, z: np.ndarray, geo: _FlatGeometry) -> np.ndarray:
    """The gradient matrix (:meth:`_FlatGeometry.grad_matrix`) of ``dy`` (N, F, H, W)
    where the ReLU's output ``z`` ((rows, F), zero in the padding) is positive, else 0.
    When ``dy`` is the pixels of a matrix of this layout (a convolution's input gradient
    is), whole images of rows, padding included, are one contiguous pass each, their
    padding zeroed after it."""
    n, n_f = dy.shape[:2]
    dy_rows = _as_rows(dy, geo)
    dyb, pixels = geo.grad_matrix(n_f, z.dtype, zero=False)  # (N, H, W, F) view
    if dy_rows is None:  # pixel by pixel
        d, zi, dst = (
            dy.transpose(0, 2, 3, 1),
            geo.crop(z, geo.out_crop).transpose(0, 2, 3, 1),
            pixels,
        )
    else:  # image by image of rows
        d, zi = dy_rows.reshape(n, -1), z.reshape(n, -1)
        dst = dyb[geo.dy0 : geo.dy0 + geo.rows].reshape(n, -1)

    def mask(i: Any) -> None:
        np.multiply(d[i], (zi[i] > 0).view(np.uint8), out=dst[i])
        geo.zero_padding(dyb, i)

    _over_batch(pixels, mask)
    return dyb


def _as_rows(a: np.ndarray, geo: _FlatGeometry) -> np.ndarray | None:
    """The (rows, C) matrix of ``geo``'s anchors whose output pixels (:meth:`_FlatGeometry.crop`)
    the (N, C, H, W) array ``a`` is a view of (as an input gradient of a convolution of
    this layout is), or None."""
    base = a.base
    if not isinstance(base, np.ndarray) or base.ndim != 2 or not base.flags.c_contiguous:
        return None
    if base.shape != (geo.rows, a.shape[1]) or base.dtype != a.dtype:
        return None
    return base if same_view(geo.crop(base, geo.out_crop), a) else None


def _pool_relu_route(
    dy: np.ndarray,
    cache: ConvReluCache,
    z_px: np.ndarray,
    pixels: np.ndarray,
    zero_padding: Callable[[Any], None],
) -> None:
    """pixels (N, H, W, F) = the gradient before ReLU and max-pool: each window's ``dy``,
    where its maximum is positive, to its first maximum (as max_pool2d_backward of the
    ReLU's output, then relu_backward), along the routes the forward found;
    ``zero_padding(i)`` is called for each block ``i`` of images written."""
    p, y = cache.pool, cache.pooled
    if dy.shape != y.shape:
        raise ValueError(f"dy must be {y.shape}, got {dy.shape}")
    out = y.shape[2:]
    z_nchw, px_nchw = z_px.transpose(0, 3, 1, 2), pixels.transpose(0, 3, 1, 2)
    if cache.nan:  # a NaN maximum: the layers' own backward functions
        relu_z = relu(z_nchw)
        dz = relu_backward(max_pool2d_backward(dy, relu_z, p), z_nchw)
        np.copyto(px_nchw, dz)
        zero_padding(...)
        return
    dz_taps = _pool_taps(px_nchw, (p, p), (p, p), out)
    route = cache.route

    def route_block(i: Any) -> None:
        block = pixels[i]
        block[:, out[0] * p :] = 0  # rows and columns no window covers
        block[:, :, out[1] * p :] = 0
        _route_by_index(route[i], dy[i], [t[i] for t in dz_taps])
        zero_padding(i)

    _over_batch(y, route_block)


def _fused_geometry(
    x_shape: tuple[int, ...], w: np.ndarray, padding: Padding, dilation: IntPair
) -> _FlatGeometry:
    """The flat geometry of a fused convolution; ValueError unless its output has its
    input's size."""
    kernel = w.shape[2:]
    pads, _, d, _ = _geometry(x_shape, kernel, 1, padding, dilation)
    geo = _flat_geometry(x_shape, kernel, pads, d, 1)
    if geo.layout is None:
        raise ValueError(f"a fused convolution keeps the input's size; padding {pads} does not")
    return geo


# --------------------------------------------------------------------------- pooling


def _pool_geometry(
    x: np.ndarray, size: IntPair, stride: IntPair | None, padding: Padding
) -> tuple[tuple[int, int], Pads, tuple[int, int], tuple[int, int]]:
    _check_4d(x)
    k = _positive_pair(size, "size")
    s = k if stride is None else _positive_pair(stride, "stride")
    pads = resolve_padding(padding, k, s, 1, input_size=x.shape[2:])
    if max(pads[0]) >= k[0] or max(pads[1]) >= k[1]:
        raise ValueError(f"pooling padding {pads} must be smaller than the window {k}")
    ho = conv_output_size(x.shape[2], k[0], s[0], pads[0])
    wo = conv_output_size(x.shape[3], k[1], s[1], pads[1])
    return k, pads, s, (ho, wo)


def max_pool2d(
    x: Any, size: IntPair, stride: IntPair | None = None, padding: Padding = 0
) -> np.ndarray:
    """Max pooling (ONNX ``MaxPool``, ``ceil_mode=0``); padded pixels count as -inf.

    Parameters
    ----------
    x : (N, C, H, W).
    size : window (int or (h, w)), pixels.
    stride : step (defaults to ``size``), pixels.
    padding : see :func:`resolve_padding`; each pad must be smaller than the window.

    Returns
    -------
    (N, C, Ho, Wo); a single (H, W) or (C, H, W) input gives (Ho, Wo) or (C, Ho, Wo).
    """
    x, ndim = _as_nchw(_float(x))
    k, pads, s, out = _pool_geometry(x, size, stride, padding)
    taps = _pool_taps(_pad(x, pads, -np.inf), k, s, out)
    y = np.empty_like(taps[0])
    _over_batch(y, lambda i: _window_max([tap[i] for tap in taps], y[i]))
    return _restore_rank(y, ndim)


def _pool_taps(
    xp: np.ndarray, k: tuple[int, int], s: tuple[int, int], out: tuple[int, int]
) -> list[np.ndarray]:
    """Views of the padded input read by each window tap (i, j), row-major order."""
    return [
        xp[(slice(None), slice(None), *_tap_slices(i, j, s, (1, 1), out))]
        for i in range(k[0])
        for j in range(k[1])
    ]


def _window_max(taps: list[np.ndarray], y: np.ndarray) -> None:
    """y = the element-wise maximum of the taps."""
    if len(taps) == 1:
        np.copyto(y, taps[0])
        return
    np.maximum(taps[0], taps[1], out=y)
    for tap in taps[2:]:
        np.maximum(y, tap, out=y)


def max_pool2d_backward(
    dy: Any,
    x: Any,
    size: IntPair,
    stride: IntPair | None = None,
    padding: Padding = 0,
) -> np.ndarray:
    """Gradient of :func:`max_pool2d` with respect to x.

    Each window's gradient goes to its maximum; when several pixels tie for the
    maximum, all of it goes to the first in row-major order within the window (as
    ``np.argmax``; PyTorch and onnxruntime also pick one pixel, not a share).
    Overlapping windows add up. Non-overlapping windows find their first maxima as the
    fused training kernel does (:func:`_first_max`), others by argmax.
    """
    x = _float(x)
    dy = _like(dy, x)
    k, pads, s, out = _pool_geometry(x, size, stride, padding)
    if dy.shape != x.shape[:2] + out:
        raise ValueError(f"dy must be {x.shape[:2] + out}, got {dy.shape}")
    if s == k and pads == ((0, 0), (0, 0)):
        tiled = x.shape[2] == out[0] * k[0] and x.shape[3] == out[1] * k[1]
        dx = np.empty_like(x) if tiled else np.zeros_like(x)  # the taps cover a tiled x
        taps, dx_taps = _pool_taps(x, k, s, out), _pool_taps(dx, k, s, out)

        def route(i: slice) -> bool:
            m = _scratch_like(taps[0][i], "pool_max")
            index = np.empty_like(taps[0][i], dtype=_index_dtype(len(taps)))
            _first_max([t[i] for t in taps], k, m, index)
            if np.isnan(m).any():
                return False
            _route_by_index(index, dy[i], [t[i] for t in dx_taps])
            return True

        if all(_over_batch(dy, route)):
            return dx
    xp = _pad(x, pads, -np.inf)
    win = _windows(xp, k, s, (1, 1), out).reshape(*x.shape[:2], *out, k[0] * k[1])
    arg = win.argmax(axis=-1)
    dxp = np.zeros(xp.shape, dtype=x.dtype)
    for i in range(k[0]):
        for j in range(k[1]):
            sl = (slice(None), slice(None), *_tap_slices(i, j, s, (1, 1), out))
            dxp[sl] += np.where(arg == i * k[1] + j, dy, 0)
    (t, _), (lft, _) = pads
    return dxp[:, :, t : t + x.shape[2], lft : lft + x.shape[3]]


# Max-pool routing with non-overlapping windows. The forward finds each window's first
# maximum (row-major, as ``np.argmax``) while it takes the maxima, as a small integer per
# window and channel; the backward reads only that. Passes over the pool taps (strided
# views whose contiguous runs are C values in a channels-last map) are several times
# slower than over contiguous arrays: a window's rows are scanned tap by tap (one maximum
# and one comparison a tap after the first), the rows' results, contiguous, after that.


def _scratch_like(a: np.ndarray, slot: str, dtype: Any = None) -> np.ndarray:
    """An uninitialised array shaped like ``a``, laid out in ``a``'s memory order, in this
    thread's scratch buffer ``slot`` (valid until that slot's next use)."""
    dtype = np.dtype(a.dtype if dtype is None else dtype)
    order = sorted(range(a.ndim), key=lambda ax: -a.strides[ax])  # axes, outermost first
    mem = _scratch(slot, a.size, dtype)[: a.size].reshape([a.shape[ax] for ax in order])
    return mem.transpose(sorted(range(a.ndim), key=order.__getitem__))


def _index_dtype(values: int) -> np.dtype:
    """The smallest unsigned integer type holding 0..values."""
    return np.dtype(np.uint8 if values < 256 else np.uint16 if values < 65536 else np.uint32)


def _first_max_in_row(row: list[np.ndarray], m: np.ndarray, index: np.ndarray) -> None:
    """m = the element-wise maximum of the taps ``row``, index = the first tap holding it
    (a later tap takes over only when strictly greater: when the maximum changes)."""
    if len(row) == 1:
        np.copyto(m, row[0])
        index.fill(0)
        return
    np.maximum(row[0], row[1], out=m)
    flag = index.view(np.bool_) if index.itemsize == 1 else index  # a bool output is fast
    np.not_equal(m, row[0], out=flag)  # 1 where tap 1 is strictly greater than tap 0
    better = _scratch_like(m, "pool_better", np.bool_)
    for j, tap in enumerate(row[2:], start=2):
        np.greater(tap, m, out=better)
        np.maximum(m, tap, out=m)
        _take_over(index, better, j)


def _take_over(index: np.ndarray, better: np.ndarray, new: Any) -> None:
    """index = ``new`` where ``better``, else unchanged (integer arithmetic modulo the
    type's range: index + better * (new - index))."""
    step = np.subtract(new, index, dtype=index.dtype)
    step *= better.view(np.uint8)
    index += step


def _first_max(
    taps: list[np.ndarray], k: tuple[int, int], m: np.ndarray, index: np.ndarray
) -> None:
    """Window maxima ``m`` and the index (row-major, 0..kh*kw-1) of each window's first
    maximum, from its taps in row-major order (:func:`_pool_taps`): each row's maximum
    and first maximum, then the first row whose maximum is strictly greater than those
    above it. A NaN maximum leaves the index meaningless."""
    kh, kw = k
    _first_max_in_row(taps[:kw], m, index)
    if kh == 1:
        return
    row_m = _scratch_like(m, "pool_row_max")
    row_index = _scratch_like(index, "pool_row_index")
    better = _scratch_like(m, "pool_row_better", np.bool_)
    for r in range(1, kh):
        _first_max_in_row(taps[r * kw : (r + 1) * kw], row_m, row_index)
        np.greater(row_m, m, out=better)
        np.maximum(m, row_m, out=m)
        row_index += index.dtype.type(r * kw)
        _take_over(index, better, row_index)


def _route_by_index(index: np.ndarray, dy: np.ndarray, dx_taps: list[np.ndarray]) -> None:
    """dx_taps[k] = dy where ``index`` is k, else 0."""
    g = _scratch_like(index, "pool_grad", dy.dtype)  # contiguous, laid out as the index
    np.copyto(g, dy)
    for k, dx_tap in enumerate(dx_taps):
        np.multiply(g, np.equal(index, k).view(np.uint8), out=dx_tap)


def _avg_counts(
    x_shape: tuple[int, ...], k: tuple[int, int], pads: Pads, s: tuple[int, int], out: tuple
) -> np.ndarray:
    """Number of real (non-padding) pixels in each window, (Ho, Wo)."""
    counts = []
    for axis in (0, 1):
        size, (before, _), kk, ss, oo = x_shape[2 + axis], pads[axis], k[axis], s[axis], out[axis]
        start = np.arange(oo) * ss - before
        counts.append(np.minimum(start + kk, size) - np.maximum(start, 0))
    return np.outer(counts[0], counts[1])


def avg_pool2d(
    x: Any, size: IntPair, stride: IntPair | None = None, padding: Padding = 0
) -> np.ndarray:
    """Average pooling (ONNX ``AveragePool``, ``ceil_mode=0``, ``count_include_pad=0``).

    A window that overlaps the padding is averaged over its real pixels only (the
    padding is neither summed nor counted), which is ONNX's default.

    Parameters
    ----------
    x : (N, C, H, W).
    size : window, stride (defaults to ``size``), padding: as :func:`max_pool2d`.

    Returns
    -------
    (N, C, Ho, Wo).
    """
    x, ndim = _as_nchw(_float(x))
    k, pads, s, out = _pool_geometry(x, size, stride, padding)
    xp = _pad(x, pads)
    y = np.zeros(x.shape[:2] + out, dtype=x.dtype)
    for i in range(k[0]):
        for j in range(k[1]):
            y += xp[(slice(None), slice(None), *_tap_slices(i, j, s, (1, 1), out))]
    y /= _avg_counts(x.shape, k, pads, s, out).astype(x.dtype)
    return _restore_rank(y, ndim)


def avg_pool2d_backward(
    dy: Any,
    x_shape: tuple[int, ...],
    size: IntPair,
    stride: IntPair | None = None,
    padding: Padding = 0,
) -> np.ndarray:
    """Gradient of :func:`avg_pool2d` with respect to x (of shape ``x_shape``).

    Each window spreads its gradient evenly over its real pixels (count_include_pad=0).
    """
    dy = _float(dy)
    x_shape = tuple(int(a) for a in x_shape)
    k, pads, s, out = _pool_geometry(np.empty(x_shape, dtype=np.uint8), size, stride, padding)
    if dy.shape != x_shape[:2] + out:
        raise ValueError(f"dy must be {x_shape[:2] + out}, got {dy.shape}")
    share = dy / _avg_counts(x_shape, k, pads, s, out).astype(dy.dtype)
    (t, b), (lft, r) = pads
    dxp = np.zeros((*x_shape[:2], x_shape[2] + t + b, x_shape[3] + lft + r), dtype=dy.dtype)
    for i in range(k[0]):
        for j in range(k[1]):
            dxp[(slice(None), slice(None), *_tap_slices(i, j, s, (1, 1), out))] += share
    return dxp[:, :, t : t + x_shape[2], lft : lft + x_shape[3]]


def global_avg_pool(x: Any) -> np.ndarray:
    """Mean over H and W (ONNX ``GlobalAveragePool``): (N, C, H, W) -> (N, C, 1, 1)."""
    x = _float(x)
    _check_4d(x)
    return x.mean(axis=(2, 3), keepdims=True, dtype=x.dtype)


def global_avg_pool_backward(dy: Any, x_shape: tuple[int, ...]) -> np.ndarray:
    """Gradient of :func:`global_avg_pool`: dy (N, C, 1, 1) spread evenly over H*W."""
    dy = _float(dy)
    n, c, h, w = x_shape
    if dy.shape not in ((n, c, 1, 1), (n, c)):
        raise ValueError(f"dy must be {(n, c, 1, 1)}, got {dy.shape}")
    scale = dy.dtype.type(1.0 / (h * w))
    return np.broadcast_to(dy.reshape(n, c, 1, 1) * scale, (n, c, h, w)).copy()


# ------------------------------------------------------------------------ activations


def relu(x: Any) -> np.ndarray:
    """max(x, 0), in the memory order of ``x``."""
    x = _float(x)
    y = np.empty_like(x)
    _over_batch(x, lambda i: np.maximum(x[i], 0, out=y[i]))
    return y


def relu_backward(dy: Any, x: Any) -> np.ndarray:
    """Gradient of :func:`relu`: dy where x > 0, else 0 (0 at x == 0).

    Computed as dy * (x > 0) (several times faster than ``np.where``): where x <= 0 a
    negative dy gives -0.0 and an infinite or NaN dy gives NaN."""
    x = _float(x)
    dy = _like(dy, x)
    if dy.shape != x.shape:
        raise ValueError(f"dy must be {x.shape}, got {dy.shape}")
    dx = np.empty_like(x)
    _over_batch(x, lambda i: np.multiply(dy[i], (x[i] > 0).view(np.uint8), out=dx[i]))
    return dx


def leaky_relu(x: Any, alpha: float = 0.01) -> np.ndarray:
    """x for x > 0, alpha * x otherwise (ONNX ``LeakyRelu``)."""
    x = _float(x)
    return np.where(x > 0, x, x * x.dtype.type(alpha))


def leaky_relu_backward(dy: Any, x: Any, alpha: float = 0.01) -> np.ndarray:
    """Gradient of :func:`leaky_relu`: dy for x > 0, alpha * dy otherwise."""
    x = _float(x)
    dy = _like(dy, x)
    return np.where(x > 0, dy, dy * x.dtype.type(alpha))


def sigmoid(x: Any) -> np.ndarray:
    """1 / (1 + exp(-x)), computed without overflow for any finite x."""
    x = _float(x)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


def sigmoid_backward(dy: Any, y: Any) -> np.ndarray:
    """Gradient of :func:`sigmoid` from its output y: dy * y * (1 - y)."""
    y = _float(y)
    return _like(dy, y) * y * (1 - y)


def tanh(x: Any) -> np.ndarray:
    """Hyperbolic tangent."""
    return np.tanh(_float(x))


def tanh_backward(dy: Any, y: Any) -> np.ndarray:
    """Gradient of :func:`tanh` from its output y: dy * (1 - y**2)."""
    y = _float(y)
    return _like(dy, y) * (1 - y * y)


# ----------------------------------------------------------------------------- dense


def dense(x: Any, w: Any, b: Any | None = None) -> np.ndarray:
    """Fully connected layer ``y = x @ w.T + b`` (ONNX ``Gemm`` with ``transB=1``).

    Parameters
    ----------
    x : (N, in) batch or one (in,) vector.
    w : (out, in) weights.
    b : (out,) bias or None.

    Returns
    -------
    (N, out), or (out,) for a 1-D x.
    """
    x = _float(x)
    w = _like(w, x)
    if w.ndim != 2 or x.shape[-1] != w.shape[1] or x.ndim not in (1, 2):
        raise ValueError(
            f"dense takes x (N, in) or (in,) with w (out, in); got {x.shape} and {w.shape}"
        )
    if x.ndim == 1:
        y = w @ x
    else:
        y = np.empty((x.shape[0], w.shape[0]), dtype=x.dtype)
        cols = _blocks(w.shape[0], _DENSE_COLS)
        run_chunks(len(cols), lambda k: np.matmul(x, w[cols[k]].T, out=y[:, cols[k]]))
    if b is not None:
        y += _like(b, x)
    return y


def dense_backward(
    dy: Any, x: Any, w: Any, *, need_dx: bool = True
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Gradients of :func:`dense`: (dx like x, dw (out, in), db (out,)); dx is None when
    not ``need_dx``."""
    x = _float(x)
    w = _like(w, x)
    dy = _like(dy, x)
    if x.ndim == 1:
        return (w.T @ dy if need_dx else None), np.outer(dy, x), dy.copy()
    dx = np.empty(x.shape, dtype=x.dtype) if need_dx else None
    dw = np.empty(w.shape, dtype=x.dtype)
    tasks = [
        lambda r=r: np.matmul(dy[:, r].T, x, out=dw[r]) for r in _blocks(w.shape[0], _DENSE_DW_ROWS)
    ]
    if dx is not None:
        tasks += [
            lambda c=c: np.matmul(dy, w[:, c], out=dx[:, c])
            for c in _blocks(w.shape[1], _DENSE_DX_COLS)
        ]
    run_parallel(tasks)
    return dx, dw, dy.sum(axis=0)


# -------------------------------------------------------------------- softmax & loss


def softmax(x: Any, axis: int = -1) -> np.ndarray:
    """exp(x) / sum(exp(x)) along ``axis``, shifted by the max so it never overflows."""
    x = _float(x)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax(x: Any, axis: int = -1) -> np.ndarray:
    """log(softmax(x)) by log-sum-exp: finite for logits of any finite size."""
    x = _float(x)
    z = x - x.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def cross_entropy(
    logits: Any, labels: Any, label_smoothing: float = 0.0
) -> tuple[float, np.ndarray]:
    """Mean softmax cross-entropy and its gradient with respect to the logits.

    Parameters
    ----------
    logits : (N, K) class scores.
    labels : (N,) integer classes in [0, K), or (N, K) target probabilities.
    label_smoothing : ε in [0, 1): the target becomes (1-ε)·onehot + ε/K.

    Returns
    -------
    (loss, dlogits): the mean over the batch of ``-sum_k q_k log p_k`` and its gradient
    ``(softmax(logits) - q) / N``, shaped like ``logits``.
    """
    logits = _float(logits)
    if logits.ndim != 2:
        raise ValueError(f"logits must be (N, K), got {logits.shape}")
    n, k = logits.shape
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    labels = np.asarray(labels)
    if labels.ndim == 1:
        if labels.shape[0] != n or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be {n} integers, got {labels.shape} {labels.dtype}")
        if n and (labels.min() < 0 or labels.max() >= k):
            raise ValueError(f"labels must be in [0, {k}), got [{labels.min()}, {labels.max()}]")
        q = np.zeros_like(logits)
        q[np.arange(n), labels] = 1
    elif labels.shape == logits.shape:
        q = labels.astype(logits.dtype)
    else:
        raise ValueError(f"labels must be (N,) classes or (N, K) targets, got {labels.shape}")
    if label_smoothing:
        q = q * logits.dtype.type(1 - label_smoothing) + logits.dtype.type(label_smoothing / k)
    logp = log_softmax(logits)
    loss = float(-(q * logp).sum() / n)
    dlogits = (np.exp(logp) - q) / logits.dtype.type(n)
    return loss, dlogits


# ------------------------------------------------------------------- normalisation


def _channel_shape(x: np.ndarray) -> tuple[int, ...]:
    if x.ndim < 2:
        raise ValueError(f"batch norm takes (N, C, ...) input, got {x.shape}")
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)


def _reduce_axes(x: np.ndarray) -> tuple[int, ...]:
    return (0, *range(2, x.ndim))


def batch_norm(x: Any, gamma: Any, beta: Any, mean: Any, var: Any, eps: float = 1e-5) -> np.ndarray:
    """Batch normalisation with fixed statistics (inference; ONNX ``BatchNormalization``).

    ``y = gamma * (x - mean) / sqrt(var + eps) + beta`` per channel (axis 1) of an
    (N, C) or (N, C, H, W) input.
    """
    x = _float(x)
    shp = _channel_shape(x)
    scale = _like(gamma, x).reshape(shp) / np.sqrt(_like(var, x).reshape(shp) + x.dtype.type(eps))
    return (x - _like(mean, x).reshape(shp)) * scale + _like(beta, x).reshape(shp)


def batch_norm_train(
    x: Any, gamma: Any, beta: Any, eps: float = 1e-5
) -> tuple[np.ndarray, tuple, np.ndarray, np.ndarray]:
    """Batch normalisation with the batch's own statistics (training).

    Returns
    -------
    (y, cache, batch_mean (C,), batch_var (C,)). ``batch_var`` is the biased variance
    (divided by the number of values per channel), the one used to normalise; a caller
    that keeps running statistics updates them with it (as ONNX's training-mode
    reference does; PyTorch uses the unbiased one for the running variance — multiply
    by m/(m-1) for that). ``cache`` goes to :func:`batch_norm_backward`.
    """
    # C order first: on a channels-last view (a convolution's output) the per-channel
    # broadcasts below would run in inner loops of C values, several times slower
    x = _float(x)
    xc = np.ascontiguousarray(x)
    shp, axes = _channel_shape(xc), _reduce_axes(xc)
    mean = xc.mean(axis=axes, dtype=xc.dtype)
    # the same operations as x - mean, (xc*xc).mean, xc*inv_std, xhat*g + beta, with two
    # buffers (xc becomes xhat in place, the squares become y) instead of five
    if xc is x:  # the caller's array: not overwritten
        xc = xc - mean.reshape(shp)
    else:
        np.subtract(xc, mean.reshape(shp), out=xc)
    y = np.multiply(xc, xc)
    var = y.mean(axis=axes, dtype=xc.dtype)
    inv_std = 1 / np.sqrt(var + xc.dtype.type(eps))
    xhat = np.multiply(xc, inv_std.reshape(shp), out=xc)
    g = _like(gamma, xhat)
    np.multiply(xhat, g.reshape(shp), out=y)
    y += _like(beta, xhat).reshape(shp)
    return y, (xhat, inv_std, g), mean, var


def batch_norm_backward(dy: Any, cache: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of :func:`batch_norm_train`: (dx, dgamma (C,), dbeta (C,)).

    ``dx = gamma/sigma/m * (m*dy - sum(dy) - xhat*sum(dy*xhat))`` per channel, with m the
    number of values per channel.
    """
    xhat, inv_std, g = cache
    dy = _like(dy, xhat)
    shp, axes = _channel_shape(xhat), _reduce_axes(xhat)
    m = xhat.size // xhat.shape[1]
    dbeta = dy.sum(axis=axes)
    t = np.multiply(dy, xhat)
    dgamma = t.sum(axis=axes)
    # (g*inv_std/m) * (m*dy - dbeta - xhat*dgamma), the same operations in two buffers
    dx = np.multiply(dy, xhat.dtype.type(m))
    dx -= dbeta.reshape(shp)
    dx -= np.multiply(xhat, dgamma.reshape(shp), out=t)
    dx *= (g * inv_std / m).reshape(shp)
    return dx, dgamma, dbeta


# --------------------------------------------------------------------- dropout, shape


def dropout(x: Any, rate: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Inverted dropout for training: zero each value with probability ``rate`` and
    scale the survivors by 1/(1-rate), so inference needs no change.

    Returns
    -------
    (y, mask) with ``y = x * mask``; the mask holds 0 or 1/(1-rate) in x's dtype.
    """
    x = _float(x)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"dropout rate must be in [0, 1], got {rate}")
    if rate == 0.0:
        mask = np.ones_like(x)
    elif rate == 1.0:
        mask = np.zeros_like(x)
    else:
        keep = rng.random(x.shape, dtype=x.dtype) >= rate
        mask = keep * x.dtype.type(1.0 / (1.0 - rate))
    return x * mask, mask


def dropout_backward(dy: Any, mask: np.ndarray) -> np.ndarray:
    """Gradient of :func:`dropout`: dy * mask."""
    return _like(dy, mask) * mask


def flatten(x: Any) -> np.ndarray:
    """(N, ...) -> (N, prod(...)) in C order (ONNX ``Flatten`` with axis=1)."""
    x = _float(x)
    return x.reshape(x.shape[0], -1)


def flatten_backward(dy: Any, x_shape: tuple[int, ...]) -> np.ndarray:
    """Gradient of :func:`flatten`: dy reshaped back to ``x_shape``."""
    return _float(dy).reshape(x_shape)
