"""The flat padded convolution: one kernel for training and evaluation.

A batch lives as padded NHWC in one 2-D (rows, C) matrix: each image row is followed by
its right padding, each image by its bottom padding, so an output pixel anchored at its
window's top-left input pixel ``q`` reads kernel tap ``(i, j)`` at row
``q + i*row_step + j*col_step`` (``row_step`` = dilation * padded width, ``col_step`` =
dilation). A convolution is then a sum of GEMMs of shifted views of that matrix, with no
im2col copy of the whole batch ("a tap is a row offset": docs/performance.md).

:func:`corr_chunk` computes one chunk of output rows: the ``kw`` taps of a kernel row are
copied side by side into a chunk matrix, ``kh`` GEMMs at row offsets of it (one stacked
``np.matmul`` call) are summed in kernel-row order (or one GEMM over all ``kh*kw`` taps
when ``kw*C < IM2COL_MAX_K``). :mod:`pipeline.cnn.functional` calls it for training's
forward and input gradient, :mod:`pipeline.cnn.fast` for the fused evaluation kernel;
both therefore sum in the same order.

:func:`corr_chunk_planar` is the im2col branch for a *planar* copy of the same layout (one
flat padded row per channel, ``(C, rows)``): every tap is then a contiguous run, so the
im2col copy is ``kh*kw*C`` plain copies instead of a gather of ``C``-value pieces (1.6x
faster on the 3-channel input layer). It forms the same products in the same (i, j, c)
order, but through another GEMM call (its A operand transposed), which BLAS may round
differently.

:func:`wgrad_chunk` and :func:`wgrad_chunk_planar` are the weight gradients of the two:
the same tap copies, transposed against the chunk's output gradient (training's
backward sums them over chunks in chunk order).
"""

from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "CHUNK_ROWS",
    "IM2COL_MAX_K",
    "SMALL_GEMM_MNK",
    "FlatLayout",
    "blas_small_gemm",
    "corr_chunk",
    "corr_chunk_planar",
    "flat_padded",
    "matmul_rows",
    "matmul_tn_rows",
    "planar_taps",
    "same_view",
    "small_gemm_rows",
    "taps",
    "use_im2col",
    "weight_rows",
    "wgrad_chunk",
    "wgrad_chunk_planar",
]

Pads = tuple[tuple[int, int], tuple[int, int]]

CHUNK_ROWS = 4096
"""Output pixels per GEMM chunk: temporaries stay in cache (4-8k measured best)."""
IM2COL_MAX_K = 64
"""Below this many values per tap row (kw*C), one GEMM over all kh*kw taps beats kh GEMMs."""
SMALL_GEMM_MNK = 100**3
"""OpenBLAS (0.3.17+) runs an sgemm of M*K*N <= 100**3 on its SkylakeX-family kernels
through small-matrix kernels that skip packing the operands: 8-23 % faster per flop at
the bench net's shapes (docs/performance.md), the same values. Other kernels (Haswell)
have no such path: there one GEMM per product is faster."""
SMALL_GEMM_KERNELS = frozenset({"skylakex", "cooperlake", "sapphirerapids"})
"""OpenBLAS kernels (threadpoolctl's ``architecture``, lower case) with that path."""
MIN_GEMM_ROWS = 32
"""Fewest rows worth one GEMM of their own."""


@functools.cache
def blas_small_gemm() -> bool:
    """Whether an OpenBLAS with small-matrix sgemm kernels (:data:`SMALL_GEMM_KERNELS`) is
    loaded (threadpoolctl; False without it). Fixed for the process: OpenBLAS picks its
    kernel when it loads."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return False
    return any(
        info.get("internal_api") == "openblas"
        and str(info.get("architecture", "")).lower() in SMALL_GEMM_KERNELS
        for info in threadpool_info()
    )


def small_gemm_rows(k: int, n: int, small_kernels: bool | None = None) -> int:
    """Rows per GEMM for a (rows, k) @ (k, n) product to stay at or under
    :data:`SMALL_GEMM_MNK`; 0 (one GEMM of all rows) when that is under
    :data:`MIN_GEMM_ROWS` or the BLAS has no small-matrix kernels (``small_kernels``,
    default :func:`blas_small_gemm`)."""
    if not (blas_small_gemm() if small_kernels is None else small_kernels):
        return 0
    rows = SMALL_GEMM_MNK // (k * n)
    return rows if rows >= MIN_GEMM_ROWS else 0


def _grouped_rows(m: int, rows: int) -> int:
    """How many of ``m`` rows go into whole groups of ``rows`` (0: none, one GEMM); the
    rest, when fewer than :data:`MIN_GEMM_ROWS`, joins the last group's GEMM instead."""
    whole = m // rows * rows if 0 < rows < m else 0
    if 0 < m - whole < MIN_GEMM_ROWS:
        whole = max(0, whole - rows)
    return whole


def matmul_rows(a: np.ndarray, b: np.ndarray, out: np.ndarray, rows: int = 0) -> None:
    """``out = a @ b`` for ``a`` (..., m, k), ``b`` (..., k, n) as GEMMs of ``rows`` rows of
    ``a`` (0: one GEMM each): one stacked ``np.matmul`` over the whole groups of every
    leading index (one call, so one release of the GIL: a Python loop of calls made two
    threads wait on each other), then one over the remaining rows (joined with the last
    group when fewer than :data:`MIN_GEMM_ROWS`: a one-row product would be a GEMV). Each
    row of the result is the same dot products whatever the split."""
    m = a.shape[-2]
    whole = _grouped_rows(m, rows)
    if whole:
        lead, k, n, groups = a.shape[:-2], a.shape[-1], b.shape[-1], whole // rows
        stack = a[..., :whole, :].reshape((*lead, groups, rows, k), copy=False)
        dst = out[..., :whole, :].reshape((*lead, groups, rows, n), copy=False)
        np.matmul(stack, b[..., None, :, :], out=dst)
    if whole < m:
        np.matmul(a[..., whole:, :], b, out=out[..., whole:, :])


def matmul_tn_rows(a: np.ndarray, b: np.ndarray, out: np.ndarray, rows: int = 0) -> None:
    """``out = a^T @ b`` for ``a`` (..., m, K) (``^T`` swapping its last two axes) and ``b``
    (m, N) as GEMMs over ``rows`` rows each (0: one GEMM each): one stacked ``np.matmul``
    of the whole groups, their (K, N) products summed in row order, then the remaining
    rows' product added (joined with the last group when fewer than
    :data:`MIN_GEMM_ROWS`). The split is what lets a weight gradient (K and N a few dozen,
    m thousands) use the small-matrix kernels; the sum order is a function of m and
    ``rows`` alone."""
    m = a.shape[-2]
    whole = _grouped_rows(m, rows)
    if not whole:
        np.matmul(a.swapaxes(-1, -2), b, out=out)
        return
    lead, k, n, groups = a.shape[:-2], a.shape[-1], b.shape[-1], whole // rows
    stack_a = a[..., :whole, :].reshape((*lead, groups, rows, k), copy=False).swapaxes(-1, -2)
    stack_b = b[:whole].reshape((groups, rows, n), copy=False)
    np.add.reduce(np.matmul(stack_a, stack_b), axis=-3, out=out)
    if whole < m:
        out += a[..., whole:, :].swapaxes(-1, -2) @ b[whole:]


def _row_stack(s: np.ndarray, kh: int, rows: int, row_step: int) -> np.ndarray:
    """(kh, rows, K) view of a C-contiguous (rows + (kh-1)*row_step, K) tap matrix: kernel
    row i's taps start at row i*row_step."""
    st0, st1 = s.strides
    return np.ndarray((kh, rows, s.shape[1]), s.dtype, s, 0, (row_step * st0, st0, st1))


def weight_rows(w: np.ndarray) -> np.ndarray:
    """(F, C, kh, kw) weights as (kh, kw*C, F): row i holds kernel row i's taps."""
    n_f, c, kh, kw = w.shape
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(kh, kw * c, n_f))


def use_im2col(kh: int, k_row: int) -> bool:
    """One GEMM over all taps (True) or ``kh`` GEMMs at row offsets (False)."""
    return kh > 1 and k_row < IM2COL_MAX_K


def flat_padded(x: np.ndarray, pads: Pads, lead: int, guard: int) -> np.ndarray:
    """(lead + N*Hp*Wp + guard, C) zero matrix holding x (N, C, H, W) as padded NHWC."""
    n, c, h, w = x.shape
    (t, b), (lft, r) = pads
    hp, wp = h + t + b, w + lft + r
    flat = np.zeros((lead + n * hp * wp + guard, c), dtype=x.dtype)
    body = flat[lead : lead + n * hp * wp].reshape(n, hp, wp, c)
    body[:, t : t + h, lft : lft + w] = x.transpose(0, 2, 3, 1)
    return flat


def taps(
    src: np.ndarray, start: int, rows: int, shape: tuple, steps: tuple, buf: np.ndarray
) -> np.ndarray:
    """Copy of the strided window view of the C-contiguous ``src`` from row ``start``:
    shape (rows, *shape, C) with row strides ``steps`` (in rows), as (rows, prod)."""
    c, item = src.shape[1], src.itemsize
    reach = sum((k - 1) * st for k, st in zip(shape, steps, strict=True))
    assert start >= 0 and start + rows - 1 + reach < src.shape[0], "flat layout guard too small"
    row = c * item
    vshape = (rows, *shape, c)
    view = np.ndarray(vshape, src.dtype, src, start * row, (row, *(st * row for st in steps), item))
    out = buf[: view.size].reshape(vshape)
    np.copyto(out, view)
    return out.reshape(rows, -1)


def corr_chunk(
    src: np.ndarray,
    start: int,
    rows: int,
    row_step: int,
    col_step: int,
    wr: np.ndarray,
    out: np.ndarray,
    buf: np.ndarray,
    tmp: np.ndarray,
    gemm_rows: int = 0,
) -> None:
    """out[q] = sum_{i,j} src[start + q + i*row_step + j*col_step] @ wr[i, j*C:(j+1)*C].

    Parameters
    ----------
    src : (rows_total, C) flat padded matrix.
    start, rows : first anchor row and number of output rows.
    row_step, col_step : row offsets of one kernel row and one kernel column.
    wr : (kh, kw*C, F) weights (:func:`weight_rows`).
    out : (rows, F) result, overwritten.
    buf : scratch of at least (rows + (kh-1)*row_step) * kh*kw*C values.
    tmp : scratch of at least kh * rows * F values.
    gemm_rows : rows per GEMM call (:func:`matmul_rows`; 0: one call per product).
    """
    kh, k_row, n_f = wr.shape
    kw = k_row // src.shape[1]
    if use_im2col(kh, k_row):
        s = taps(src, start, rows, (kh, kw), (row_step, col_step), buf)
        matmul_rows(s, wr.reshape(kh * k_row, n_f), out, gemm_rows)
        return
    s = taps(src, start, rows + (kh - 1) * row_step, (kw,), (col_step,), buf)
    if kh == 1:
        matmul_rows(s, wr[0], out, gemm_rows)
        return
    acc = tmp.reshape(-1)[: kh * rows * n_f].reshape(kh, rows, n_f)
    matmul_rows(_row_stack(s, kh, rows, row_step), wr, acc, gemm_rows)
    np.add.reduce(acc, axis=0, out=out)  # (P0 + P1) + P2: kernel rows in order


def planar_taps(
    src: np.ndarray,
    start: int,
    rows: int,
    kernel: tuple[int, int],
    steps: tuple[int, int],
    buf: np.ndarray,
) -> np.ndarray:
    """Copy of the taps of a *planar* ``(C, rows_total)`` flat matrix from anchor row
    ``start``: ``(kh*kw*C, rows)`` with row ``(i*kw + j)*C + c`` holding
    ``src[c, start + q + i*steps[0] + j*steps[1]]`` for q in [0, rows) (contiguous runs)."""
    (kh, kw), (row_step, col_step) = kernel, steps
    c = src.shape[0]
    need = start + rows - 1 + (kh - 1) * row_step + (kw - 1) * col_step
    assert start >= 0 and need < src.shape[1], "flat layout guard too small"
    item, plane = src.itemsize, src.strides[0]
    shape, strides = (kh, kw, c, rows), (row_step * item, col_step * item, plane, item)
    view = np.ndarray(shape, src.dtype, src, start * item, strides)
    cols = buf[: view.size].reshape(view.shape)
    np.copyto(cols, view)
    return cols.reshape(kh * kw * c, rows)


def corr_chunk_planar(
    src: np.ndarray,
    start: int,
    rows: int,
    row_step: int,
    col_step: int,
    wr: np.ndarray,
    out: np.ndarray,
    buf: np.ndarray,
    gemm_rows: int = 0,
) -> None:
    """out[q] = sum_{i,j,c} src[c, start + q + i*row_step + j*col_step] * wr[i, j*C + c]:
    :func:`corr_chunk`'s single-GEMM (im2col) branch on a planar ``(C, rows_total)`` matrix
    (the same products and order of the taps; the GEMM may round differently).

    Parameters
    ----------
    src : (C, rows_total) planar flat padded matrix (C-contiguous rows).
    start, rows : first anchor row and number of output rows.
    row_step, col_step : row offsets of one kernel row and one kernel column.
    wr : (kh, kw*C, F) weights (:func:`weight_rows`).
    out : (rows, F) result, overwritten.
    buf : scratch of at least rows * kh*kw*C values.
    gemm_rows : rows per GEMM call (:func:`matmul_rows`; 0: one call).
    """
    kh, k_row, n_f = wr.shape
    kw = k_row // src.shape[0]
    cols = planar_taps(src, start, rows, (kh, kw), (row_step, col_step), buf)
    matmul_rows(cols.T, wr.reshape(kh * k_row, n_f), out, gemm_rows)


def wgrad_chunk(
    src: np.ndarray,
    start: int,
    rows: int,
    row_step: int,
    col_step: int,
    dy: np.ndarray,
    out: np.ndarray,
    buf: np.ndarray,
    gemm_rows: int = 0,
) -> None:
    """The weight gradient of :func:`corr_chunk` over one chunk:
    ``out[i, j*C + c, f] = sum_q src[start + q + i*row_step + j*col_step, c] * dy[q, f]``.

    Parameters
    ----------
    src : (rows_total, C) flat padded matrix (the forward's input).
    start, rows : first anchor row and number of rows q.
    row_step, col_step : row offsets of one kernel row and one kernel column.
    dy : (rows, F) output gradient of the chunk.
    out : (kh, kw*C, F) result, overwritten (its shape gives kh and kw).
    buf : scratch of at least (rows + (kh-1)*row_step) * kw*C values.
    gemm_rows : rows q per GEMM call, products summed in order (:func:`matmul_tn_rows`;
        0: one call).
    """
    kh, k_row, n_f = out.shape
    kw = k_row // src.shape[1]
    if use_im2col(kh, k_row):
        s = taps(src, start, rows, (kh, kw), (row_step, col_step), buf)
        matmul_tn_rows(s, dy, out.reshape(kh * k_row, n_f), gemm_rows)
        return
    s = taps(src, start, rows + (kh - 1) * row_step, (kw,), (col_step,), buf)
    matmul_tn_rows(_row_stack(s, kh, rows, row_step), dy, out, gemm_rows)


def wgrad_chunk_planar(
    src: np.ndarray,
    start: int,
    rows: int,
    row_step: int,
    col_step: int,
    dy: np.ndarray,
    out: np.ndarray,
    buf: np.ndarray,
    gemm_rows: int = 0,
) -> None:
    """:func:`wgrad_chunk` on a planar ``(C, rows_total)`` matrix (the input of
    :func:`corr_chunk_planar`): the ``(kh*kw*C, rows)`` taps times ``dy``.
    ``buf``: scratch of at least rows * kh*kw*C values; ``gemm_rows`` as there."""
    kh, k_row, n_f = out.shape
    kw = k_row // src.shape[0]
    cols = planar_taps(src, start, rows, (kh, kw), (row_step, col_step), buf)
    matmul_tn_rows(cols.T, dy, out.reshape(kh * k_row, n_f), gemm_rows)


def same_view(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether ``a`` and ``b`` are the same view of memory: shape, strides and first
    element."""
    return a.shape == b.shape and a.strides == b.strides and a.ctypes.data == b.ctypes.data


_SEALED: weakref.WeakValueDictionary[int, np.ndarray] = weakref.WeakValueDictionary()
"""Matrices :meth:`FlatLayout.seal` zeroed the padding of, by id: a training layer that
writes its output into one hands the next convolution its input buffer ready-made."""


@dataclass(frozen=True)
class FlatLayout:
    """A flat padded NHWC layout of ``h`` x ``w`` x ``c`` images: each row is followed by
    ``pc`` zero pixels, each image by ``pr`` zero rows (shared between neighbours, so they
    pad both sides); ``lead`` zero rows guard both ends."""

    h: int
    w: int
    c: int
    pr: int
    pc: int

    wq: int = field(init=False, repr=False, compare=False)
    """Padded row length, pixels."""
    img_rows: int = field(init=False, repr=False, compare=False)
    """Matrix rows per image."""
    lead: int = field(init=False, repr=False, compare=False)
    """Zero guard rows before the first image (and after the last)."""

    def __post_init__(self) -> None:
        wq = self.w + self.pc
        object.__setattr__(self, "wq", wq)
        object.__setattr__(self, "img_rows", (self.h + self.pr) * wq)
        object.__setattr__(self, "lead", self.pr * wq + self.pc)

    def total_rows(self, n: int) -> int:
        return 2 * self.lead + n * self.img_rows

    def alloc(self, n: int) -> np.ndarray:
        """A zero (rows, C) float32 matrix for ``n`` images."""
        return np.zeros((self.total_rows(n), self.c), dtype=np.float32)

    def interior(self, buf: np.ndarray, n: int) -> np.ndarray:
        """(n, h, w, c) view of the pixels."""
        body = buf[self.lead : self.lead + n * self.img_rows]
        return body.reshape(n, self.h + self.pr, self.wq, self.c)[:, : self.h, : self.w]

    def zero_padding(
        self, buf: np.ndarray, n: int, planar: bool = False, images: slice | None = None
    ) -> None:
        """Zero everything but the pixels of ``n`` images in a C-contiguous (rows, C)
        matrix of this layout (any channel count), or a planar (C, rows) one: the guard
        rows and the padding (for a buffer allocated uninitialised whose pixels are
        written next). ``images`` (a slice of 0..n, not planar): only those images' own
        padding rows and columns (the guard rows with the first and the last image), so
        threads can each zero the images they write."""
        end = self.lead + n * self.img_rows
        if planar:
            buf.T[: self.lead] = 0
            buf.T[end:] = 0
            grid = buf[:, self.lead : end].reshape(-1, n, self.h + self.pr, self.wq)
            grid[:, :, self.h :] = 0
            grid[:, :, : self.h, self.w :] = 0
            return
        first, stop, _ = (images or slice(None)).indices(n)
        lo = 0 if first == 0 else self.lead + first * self.img_rows
        hi = buf.shape[0] if stop == n else self.lead + stop * self.img_rows
        self.zero_rows(buf, n, lo, hi)

    def zero_rows(self, buf: np.ndarray, n: int, lo: int, hi: int) -> None:
        """Zero the guard and padding rows and columns among rows [lo, hi) of a (rows, C)
        matrix of this layout holding ``n`` images (its pixels there untouched): for a
        chunk of anchor rows that a thread has just written."""
        lead, wq, gh = self.lead, self.wq, self.h + self.pr
        end = lead + n * self.img_rows
        buf[lo : min(hi, lead)] = 0
        buf[max(lo, end) : hi] = 0
        a, b = max(lo, lead) - lead, min(hi, end) - lead  # body rows, from the first pixel
        if a >= b:
            return
        body = buf[lead:end]
        ga, gb = -(-a // wq), b // wq  # the whole grid rows (wq pixels) [ga, gb)
        if ga > gb:  # [a, b) inside one grid row
            self._zero_in_grid_row(body, gb, a, b)
            return
        if a < ga * wq:
            self._zero_in_grid_row(body, ga - 1, a, ga * wq)
        if gb * wq < b:
            self._zero_in_grid_row(body, gb, gb * wq, b)
        if ga == gb:
            return
        rows = body[ga * wq : gb * wq].reshape(gb - ga, wq, -1)
        rows[:, self.w :] = 0  # the padding columns of every grid row
        ia, ib = -(-ga // gh), gb // gh  # the whole images among them [ia, ib)
        if ia < ib:
            rows[ia * gh - ga : ib * gh - ga].reshape(ib - ia, gh, wq, -1)[:, self.h :] = 0
        for g0, g1 in ((ga, min(gb, ia * gh)), (max(ga, ib * gh), gb)):  # partial images
            if g0 < g1:  # its padding rows: the grid rows from row h of the image
                start = max(g0, g0 - g0 % gh + self.h)
                rows[start - ga : max(start, g1) - ga] = 0

    def _zero_in_grid_row(self, body: np.ndarray, g: int, a: int, b: int) -> None:
        """Zero the padding among body rows [a, b) of grid row ``g``."""
        if g % (self.h + self.pr) < self.h:
            a = max(a, g * self.wq + self.w)  # a pixel row: only its padding columns
        body[a:b] = 0

    def seal(self, buf: np.ndarray, n: int, zeroed: bool = False) -> np.ndarray:
        """Zero the padding of a C-contiguous (rows, C) matrix of this layout whose pixels
        hold ``n`` images (``zeroed``: the caller does, before it hands the pixels on), and
        record it for :meth:`sealed`; returns the (n, c, h, w) view of its pixels. Nothing
        may write the padding afterwards."""
        if not zeroed:
            self.zero_padding(buf, n)
        _SEALED[id(buf)] = buf
        return self.interior(buf, n).transpose(0, 3, 1, 2)

    def sealed(self, x: np.ndarray) -> np.ndarray | None:
        """The matrix of this layout that :meth:`seal` returned ``x`` (n, c, h, w) as the
        pixels of, or None (any other array)."""
        buf = x.base
        if buf is None or _SEALED.get(id(buf)) is not buf or x.ndim != 4:
            return None
        if buf.shape != (self.total_rows(x.shape[0]), self.c) or buf.dtype != x.dtype:
            return None
        pixels = self.interior(buf, x.shape[0]).transpose(0, 3, 1, 2)
        return buf if same_view(pixels, x) else None

    def alloc_planar(self, n: int) -> np.ndarray:
        """A zero (C, rows) float32 matrix for ``n`` images: the planar form, one flat
        padded row per channel (:func:`corr_chunk_planar`)."""
        return np.zeros((self.c, self.total_rows(n)), dtype=np.float32)

    def interior_planar(self, buf: np.ndarray, n: int) -> np.ndarray:
        """(c, n, h, w) view of the pixels of a planar matrix."""
        body = buf[:, self.lead : self.lead + n * self.img_rows]
        return body.reshape(self.c, n, self.h + self.pr, self.wq)[:, :, : self.h, : self.w]
