"""The compiled evaluator: fast float32 inference of a layer graph, compiled from its nodes.

:class:`CompiledNet` takes the graph's nodes (:class:`pipeline.cnn.graph.Node`, in file
order, each reading earlier nodes or the input) and each node's parameters. It asks every
layer for its evaluation-mode computation as a kernel form (``Layer.fused``: a
:class:`~pipeline.cnn.layers.base.ConvKernel`, ``ChannelAffine``, ``Activation``,
``MaxPoolWindow``, ``DenseKernel`` or ``Flattens``) and fuses what it can:

- conv [-> channel affine] [-> activation] [-> max-pool, size == stride, no padding], for a
  stride-1, dilation-1, groups-1 convolution whose output has its input's size;
- dense [-> activation], with the dense weights' columns permuted to (H, W, C) order when
  it reads a flatten of an NHWC map, so no transpose is needed.

Every other node runs its own ``Layer.forward`` (evaluation mode) on NCHW views of the same
data, so every graph keeps the layers' semantics, whatever its input shape ((C, H, W) or
(D,)). There is no second vocabulary: a new layer type runs here through its ``forward``,
and is fused once its ``fused`` returns a form.

How it is fast (the measured recipe of docs/performance.md):

- the batch runs in blocks of a fixed number of images (``block_images``), each block
  through the whole network while its feature maps are still in cache;
- feature maps that a fused convolution reads live in a flat padded NHWC matrix
  (:class:`pipeline.cnn.flat_conv.FlatLayout`); the convolution is computed in chunks of
  whole images by :func:`pipeline.cnn.flat_conv.corr_chunk` (the kernel training uses too),
  and each chunk adds bias, applies the activation and writes straight into the next
  layer's padded buffer; the padding it overwrote is re-zeroed. A few-channel map that no
  fused convolution writes (the RGB input) is kept planar, one flat row per channel, and
  read by :func:`pipeline.cnn.flat_conv.corr_chunk_planar` (contiguous tap copies);
- a following max-pool is applied to the chunk before bias and activation (max commutes
  with a per-channel shift and a monotone activation), a following batch norm is folded
  into the weights (float64, then float32);
- the blocks are shared out to one Python thread per core, each with single-threaded BLAS
  (:func:`pipeline.threads.run_parallel`).

Determinism: every GEMM's shape and every image's place in it depend only on the network
and ``block_images`` (a short last block is padded with zero images), never on the batch
size or the thread count, and BLAS always runs single-threaded; so the outputs are the
same bits for any batch size and any ``threads``.

It agrees with the layers' forward to float32 rounding (sums run in another order); the
tests hold it to 1e-5 of the output's largest magnitude. ``Model.forward`` in evaluation
mode uses it for float32 models (:func:`fast_forward`, cached per model).
"""

from __future__ import annotations

import threading
import time
import weakref
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.cnn.flat_conv import (
    FlatLayout,
    corr_chunk,
    corr_chunk_planar,
    small_gemm_rows,
    use_im2col,
    weight_rows,
)
from pipeline.cnn.graph import INPUT, Node
from pipeline.cnn.layers.base import (
    Activation,
    ChannelAffine,
    ConvKernel,
    DenseKernel,
    Flattens,
    MaxPoolWindow,
)
from pipeline.threads import run_parallel, worker_threads

__all__ = [
    "CompiledNet",
    "block_chunks",
    "compile_model",
    "default_block_images",
    "fast_forward",
    "flat_conv_pads",
    "follow_chain",
    "pool_fuses",
]


class _Val:
    """A value inside one worker: standard (ONNX) layout and/or NHWC forms."""

    __slots__ = ("buf", "chw", "flat_hwc", "nhwc", "std")

    def __init__(self, std=None, nhwc=None, buf=None, flat_hwc=None, chw=None):
        self.std, self.nhwc, self.buf, self.flat_hwc, self.chw = std, nhwc, buf, flat_hwc, chw

    def get_std(self) -> np.ndarray:
        if self.std is None:
            if self.nhwc is not None:
                self.std = self.nhwc.transpose(0, 3, 1, 2)
            else:
                c, h, w = self.chw
                n = self.flat_hwc.shape[0]
                self.std = self.flat_hwc.reshape(n, h, w, c).transpose(0, 3, 1, 2).reshape(n, -1)
        return self.std

    def get_nhwc(self) -> np.ndarray:
        if self.nhwc is None:
            self.nhwc = self.get_std().transpose(0, 2, 3, 1)
        return self.nhwc


class _Worker:
    """Buffers of one thread, for one block of ``n`` images."""

    def __init__(self, net: CompiledNet, n: int):
        self.n = n
        self.x = np.zeros((n, *net.input_shape), dtype=np.float32)  # a short block, padded
        self.bufs = {
            key: g.alloc_planar(n) if key in net.planar else g.alloc(n)
            for key, g in net.layouts.items()
        }
        self.scratch = np.empty(net.scratch_elems, dtype=np.float32)
        self.scratch2 = np.empty(net.scratch2_elems, dtype=np.float32)
        self.scratch3 = np.empty(net.scratch2_elems, dtype=np.float32)
        self.dense_out: dict[tuple[int, int], np.ndarray] = {}

    def dense(self, node: int, n: int, width: int) -> np.ndarray:
        """The (n, width) output buffer of dense node ``node``."""
        y = self.dense_out.get((node, n))
        if y is None:
            y = self.dense_out[(node, n)] = np.empty((n, width), np.float32)
        return y


def _activate(y: np.ndarray, act: Activation | None, zero: np.ndarray | None = None) -> None:
    """In place: max(y, 0) for ReLU, max(y, alpha*y) for 0 < alpha <= 1, or nothing.
    ``zero``: optional zeros broadcastable to ``y`` along its last axis (NumPy's maximum
    against a contiguous zero row is 2.5x faster than against the scalar 0, same values)."""
    if act is None:
        return
    if act.alpha == 0.0:
        np.maximum(y, 0 if zero is None else zero, out=y)
    else:
        np.maximum(y, y * np.float32(act.alpha), out=y)


def _pixel_rows(a: np.ndarray) -> np.ndarray:
    """A view of an (..., W, F) array with its last two axes merged, (..., W*F): the
    pixels of an image row are adjacent (a bias or zero row tiled W times broadcasts over
    it with a long inner loop). Raises if that needs a copy."""
    return np.reshape(a, (*a.shape[:-2], a.shape[-2] * a.shape[-1]), copy=False)


# ------------------------------------------------------------------------------ steps


@dataclass
class _ToPadded:
    """Copy a value into its flat padded buffer (it is read by a fused convolution)."""

    node: int

    def run(self, net: CompiledNet, vals: dict[int, _Val], wk: _Worker, n: int) -> None:
        buf, layout = wk.bufs[self.node], net.layouts[self.node]
        if self.node in net.planar:  # only fused convolutions read the planar form
            layout.interior_planar(buf, n)[...] = vals[self.node].get_std().transpose(1, 0, 2, 3)
            return
        inner = layout.interior(buf, n)
        inner[...] = vals[self.node].get_nhwc()
        vals[self.node] = _Val(nhwc=inner, buf=buf)


@dataclass
class _Forward:
    """A node through its own layer's evaluation-mode forward."""

    node: int

    def run(self, net: CompiledNet, vals: dict[int, _Val], wk: _Worker, n: int) -> None:
        node = net.nodes[self.node]
        xs = [vals[j].get_std() for j in node.inputs]
        vals[self.node] = _Val(std=node.layer.forward(xs, net.params[self.node], train=False)[0])


@dataclass
class _FlattenHWC:
    """A flatten read only by dense layers with (H, W, C)-permuted weights: no transpose."""

    node: int

    def run(self, net: CompiledNet, vals: dict[int, _Val], wk: _Worker, n: int) -> None:
        src = net.nodes[self.node].inputs[0]
        flat = np.ascontiguousarray(vals[src].get_nhwc()).reshape(n, -1)
        vals[self.node] = _Val(flat_hwc=flat, chw=net.shapes[src])


@dataclass
class _Dense:
    """dense [-> activation] written into ``dst``'s value."""

    node: int
    dst: int
    w: np.ndarray  # (in, out), permuted to HWC order if hwc
    bias: np.ndarray | None
    act: Activation | None
    hwc: bool

    def run(self, net: CompiledNet, vals: dict[int, _Val], wk: _Worker, n: int) -> None:
        src = vals[net.nodes[self.node].inputs[0]]
        x = src.flat_hwc if self.hwc else src.get_std()
        y = wk.dense(self.node, n, self.w.shape[1])
        np.matmul(x, self.w, out=y)
        if self.bias is not None:
            y += self.bias
        _activate(y, self.act)
        vals[self.dst] = _Val(std=y)


@dataclass
class _Conv:
    """A same-size stride-1 conv + folded batch norm + activation + max-pool."""

    nodes: tuple[int, ...]  # the conv and the nodes fused into it
    src: int  # node read (the key of its flat padded layout)
    dst: int  # node whose value it writes (the key of the destination layout)
    pads: tuple[tuple[int, int], tuple[int, int]]
    w_rows: np.ndarray  # (kh, kw*C, F)
    bias: np.ndarray  # (F,)
    act: Activation | None
    pool: int  # 0: none, else size == stride
    chunks: tuple[tuple[int, int], ...]  # (first image, images) of each chunk of a block
    planar: bool  # the source is planar (C, rows): corr_chunk_planar
    gemm_rows: int  # rows per GEMM call (flat_conv.small_gemm_rows)
    _tiles: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)

    def scratch(self, gi: FlatLayout) -> tuple[int, int]:
        """Values of the tap buffer and of the accumulator this step needs."""
        kh, k_row, n_f = self.w_rows.shape
        rows = max(m for _, m in self.chunks) * gi.img_rows
        if use_im2col(kh, k_row):
            return rows * kh * k_row, rows * n_f
        return (rows + (kh - 1) * gi.wq) * k_row, kh * rows * n_f

    def row_tiles(self, width: int) -> tuple[np.ndarray, np.ndarray]:
        """The bias and a zero row tiled ``width`` pixels wide, (width * F,) each: they add
        and clamp one image row of ``width`` pixels per broadcast (see :func:`_pixel_rows`)."""
        tiles = self._tiles.get(width)
        if tiles is None:
            bias = np.tile(self.bias, width)
            tiles = self._tiles[width] = (bias, np.zeros_like(bias))
        return tiles

    def run(self, net: CompiledNet, vals: dict[int, _Val], wk: _Worker, n: int) -> None:
        gi, go = net.layouts[self.src], net.layouts[self.dst]
        src, dst = wk.bufs[self.src], wk.bufs[self.dst]
        (t, _), (lft, _) = self.pads
        n_f = self.w_rows.shape[2]
        direct = not self.pool and gi == FlatLayout(go.h, go.w, gi.c, go.pr, go.pc)
        dst_inner = go.interior(dst, n)
        for k0, m in self.chunks:
            rows = m * gi.img_rows
            q0 = gi.lead + k0 * gi.img_rows
            first = q0 - t * gi.wq - lft  # buffer row of the chunk's first (top-left) tap
            acc = dst[q0 : q0 + rows] if direct else wk.scratch2[: rows * n_f].reshape(rows, n_f)
            if self.planar:
                corr_chunk_planar(
                    src, first, rows, gi.wq, 1, self.w_rows, acc, wk.scratch, self.gemm_rows
                )
            else:
                corr_chunk(
                    src,
                    first,
                    rows,
                    gi.wq,
                    1,
                    self.w_rows,
                    acc,
                    wk.scratch,
                    wk.scratch3,
                    self.gemm_rows,
                )
            block = acc.reshape(m, gi.h + gi.pr, gi.wq, n_f)
            if direct:
                self._bias_act(block)
                if gi.pr or gi.pc:
                    block[:, gi.h :] = 0
                    block[:, : gi.h, gi.w :] = 0
                continue
            self._finish(block, gi, dst_inner[k0 : k0 + m], wk.scratch3)
        vals[self.dst] = _Val(nhwc=dst_inner, buf=dst)

    def _bias_act(self, y: np.ndarray) -> None:
        """In place on (..., W, F): add the bias, apply the activation, image row by
        image row."""
        bias, zero = self.row_tiles(y.shape[-2])
        rows = _pixel_rows(y)
        rows += bias
        _activate(rows, self.act, zero)

    def _finish(self, block: np.ndarray, gi: FlatLayout, out: np.ndarray, tmp: np.ndarray) -> None:
        """A chunk's (m, H + pr, Wq, F) padded output into ``out`` (m, Ho, Wo, F): pool
        (before bias and activation: they commute with max; rows first, over whole
        padded image rows, then columns), bias, activation. ``tmp``: scratch of at least
        m * Ho * Wq * F values."""
        m, n_f = block.shape[0], block.shape[3]
        if self.pool:
            p = self.pool
            ho, wo = gi.h // p, gi.w // p
            img_rows = _pixel_rows(block)[:, : ho * p].reshape(m, ho, p, gi.wq * n_f)
            vert = tmp[: m * ho * gi.wq * n_f].reshape(m, ho, gi.wq * n_f)
            np.copyto(vert, img_rows[:, :, 0])
            for a in range(1, p):
                np.maximum(vert, img_rows[:, :, a], out=vert)
            pairs = vert.reshape(m, ho, gi.wq, n_f)[:, :, : wo * p].reshape(m, ho, wo, p * n_f)
            np.copyto(out, pairs[..., :n_f])
            for b in range(1, p):
                np.maximum(out, pairs[..., b * n_f : (b + 1) * n_f], out=out)
        else:
            np.copyto(out, block[:, : gi.h, : gi.w])
        self._bias_act(out)


_Step = _ToPadded | _Forward | _FlattenHWC | _Dense | _Conv


# ---------------------------------------------------------------------------- compile


BLOCK_ROWS = 8192
"""Target flat-layout rows (padded pixels) of the largest map in one block (8192: blocks
of 8 32x32 images, 5 % less wall time than 16 with 2 threads, docs/performance.md)."""
MAX_BLOCK_IMAGES = 64
TAIL_IMAGES = 64
"""Images per tile of the dense tail: a (4096 -> 256) GEMM costs 2.4x more per image at
16 rows than at 256 (BLAS packs the weights on every call), 1.4x at 64."""


def default_block_images(img_rows: int) -> int:
    """Images per block: the power of two nearest to ``BLOCK_ROWS / img_rows`` (1 to
    ``MAX_BLOCK_IMAGES``), ``img_rows`` being the flat rows of the largest map a fused
    convolution reads (8 for a 32x32 map)."""
    return int(min(MAX_BLOCK_IMAGES, 2 ** max(0, round(np.log2(BLOCK_ROWS / img_rows)))))


def block_chunks(n_imgs: int, img_rows: int, chunk_rows: int) -> tuple[tuple[int, int], ...]:
    """(first image, images) of the GEMM chunks of a block of ``n_imgs`` images of
    ``img_rows`` rows: ``round(n_imgs * img_rows / chunk_rows)`` (at least 1) chunks of
    near-equal size."""
    parts = max(1, min(n_imgs, round(n_imgs * img_rows / chunk_rows)))
    bounds = [n_imgs * k // parts for k in range(parts + 1)]
    return tuple((bounds[k], bounds[k + 1] - bounds[k]) for k in range(parts))


class CompiledNet:
    """A layer graph compiled for fast float32 inference; call it on an (N, *input_shape)
    batch. Calls are serialised by a lock (buffers are reused between calls).

    Parameters
    ----------
    nodes : the graph's nodes up to the output, in file order (``GraphSpec.nodes``).
    params : each node's parameters and buffers by short name, keyed by node index.
    input_shape : one sample's shape, (C, H, W) or (D,).
    threads : Python worker threads over the blocks (default:
        :func:`pipeline.threads.worker_threads`, ``SENSORLAB_THREADS`` or the usable cores); the
        outputs do not depend on it.
    chunk_rows : target output pixels per GEMM chunk (4k with blocks of 8 32x32 images:
        4 images per chunk of the 32x32 maps, the whole block of the 16x16 ones; the tap
        matrix is then about 1.7 MiB for both).
    block_images : images per block, the unit of work (default
        :func:`default_block_images` of the net; no GEMM's shape depends on the batch).
    """

    def __init__(
        self,
        nodes: Sequence[Node],
        params: Mapping[int, Mapping[str, np.ndarray]],
        input_shape: Sequence[int],
        threads: int | None = None,
        chunk_rows: int = 4096,
        block_images: int | None = None,
    ):
        self.nodes = list(nodes)
        if [n.index for n in self.nodes] != list(range(len(self.nodes))):
            raise ValueError("nodes must be a graph's first nodes, in file order")
        self.params = {node.index: dict(params.get(node.index, {})) for node in self.nodes}
        self.input_shape = tuple(int(a) for a in input_shape)
        self.out = self.nodes[-1].index
        self.threads = max(1, int(threads if threads is not None else worker_threads()))
        self.chunk_rows = int(chunk_rows)
        self._block_arg = None if block_images is None else max(1, int(block_images))
        self.shapes: dict[int, tuple[int, ...]] = {INPUT: self.input_shape}
        self.shapes |= {node.index: node.output_shape for node in self.nodes}
        self.forms = {node.index: node.layer.fused(self.params[node.index]) for node in self.nodes}
        self._consumers: dict[int, list[int]] = {i: [] for i in self.shapes}
        for node in self.nodes:
            for j in node.inputs:
                self._consumers[j].append(node.index)
        self._lock = threading.Lock()
        self._workers: dict[int, _Worker] = {}
        self._plan()

    @property
    def fused_kernels(self) -> dict[str, int]:
        """How many fused convolutions and dense layers the plan runs (the rest run their
        layer's forward)."""
        return {
            "conv": sum(isinstance(s, _Conv) for s in self.steps),
            "dense": sum(isinstance(s, _Dense) for s in self.steps),
        }

    # -------------------------------------------------------------------- planning

    def _fast_conv_pads(self, i: int):
        """Resolved pads if node i is a convolution the flat kernel computes, else None."""
        form = self.forms[i]
        if not isinstance(form, ConvKernel):
            return None
        return flat_conv_pads(form, self.shapes[self.nodes[i].inputs[0]])

    def _conv_chain(self, i: int) -> dict[str, Any]:
        """conv [-> channel affine] [-> activation] [-> max-pool (size == stride)]."""
        steps = (
            ("affine", ChannelAffine, lambda f: True),
            ("act", Activation, lambda f: 0.0 <= f.alpha <= 1.0),
            ("pool", MaxPoolWindow, pool_fuses),
        )
        return follow_chain(i, self.forms, self._consumers, self.out, steps)

    def _follow(self, cur: int, kind: type, accept: Callable[[Any], bool]) -> int | None:
        """The sole reader of ``cur`` when its form is a ``kind`` that ``accept`` takes."""
        return _follow(cur, self.forms, self._consumers, self.out, kind, accept)

    def _plan(self) -> None:
        fast_pads = {
            n.index: p for n in self.nodes if (p := self._fast_conv_pads(n.index)) is not None
        }
        self._fused_into: set[int] = set()
        chains = {i: self._conv_chain(i) for i in sorted(fast_pads)}
        for chain in chains.values():
            self._fused_into.update(chain["nodes"][1:])
        self.layouts = self._layouts(fast_pads, chains)
        widest = max([1, *(self.layouts[self.nodes[i].inputs[0]].img_rows for i in chains)])
        self.block_images = self._block_arg or default_block_images(widest)
        self.planar = self._planar_sources(fast_pads, chains)
        dense = self._dense_steps()
        steps: list[_Step] = [_ToPadded(INPUT)] if INPUT in self.layouts else []
        for node in self.nodes:
            i = node.index
            if i in chains:
                steps.append(self._make_conv(i, chains[i], fast_pads[i]))
            elif i in dense:
                steps.append(dense[i])
            elif i in self._flatten_hwc:
                steps.append(_FlattenHWC(i))
            elif i not in self._fused_into:
                steps.append(_Forward(i))
                if i in self.layouts:
                    steps.append(_ToPadded(i))
        self.steps = steps
        self.labels = [self._label(st) for st in steps]
        self.tail_start, self.tail_value = self._tail_split()
        sizes = [s.scratch(self.layouts[s.src]) for s in steps if isinstance(s, _Conv)]
        self.scratch_elems = max([1, *(a for a, _ in sizes)])
        self.scratch2_elems = max([1, *(b for _, b in sizes)])

    def _planar_sources(self, fast_pads: dict, chains: dict) -> set[int]:
        """Values kept planar: read only through the single-GEMM (im2col) branch and not
        written by a fused convolution (which writes NHWC rows)."""
        written = {chain["nodes"][-1] for chain in chains.values()}
        readers: dict[int, list[int]] = {}
        for i in fast_pads:
            readers.setdefault(self.nodes[i].inputs[0], []).append(i)
        return {
            j
            for j, convs in readers.items()
            if j not in written and all(use_im2col(*self._kh_krow(i)) for i in convs)
        }

    def _io(self, step: _Step) -> tuple[set[int], set[int]]:
        """Values a step reads and values it writes."""
        if isinstance(step, _Conv):
            return {step.src}, {step.dst}
        if isinstance(step, _ToPadded):
            return {step.node}, {step.node}
        if isinstance(step, _Dense):
            return {self.nodes[step.node].inputs[0]}, {step.dst}
        return set(self.nodes[step.node].inputs), {step.node}

    def _tail_split(self) -> tuple[int, int | None]:
        """Where the dense tail starts (it runs over tiles of ``TAIL_IMAGES`` images, not
        blocks) and the one (D,) value it reads from the blocks; no tail: (len, None).

        The tail is the steps from the first dense one on, when all of them are dense or
        a layer forward with a (D,) output, and they read one value of the blocks."""
        first = next((k for k, st in enumerate(self.steps) if isinstance(st, _Dense)), None)
        none = (len(self.steps), None)
        if first is None:
            return none
        before = {INPUT}
        for st in self.steps[:first]:
            before |= self._io(st)[1]
        crossing: set[int] = set()
        for st in self.steps[first:]:
            if not isinstance(st, _Dense | _Forward):
                return none
            reads, writes = self._io(st)
            if any(len(self.shapes[j]) != 1 for j in writes):
                return none
            crossing |= reads & before
        if len(crossing) != 1 or self.out in before:
            return none
        (value,) = crossing
        return (first, value) if len(self.shapes[value]) == 1 else none

    def _kh_krow(self, i: int) -> tuple[int, int]:
        """Kernel height and values per kernel row (kw * C) of convolution node ``i``."""
        _, c, kh, kw = self.forms[i].weight.shape
        return kh, kw * c

    def _label(self, step: _Step) -> str:
        """The names of the nodes a step computes, joined by ``+``."""

        def name(i: int) -> str:
            return "input" if i == INPUT else self.nodes[i].name

        if isinstance(step, _Conv):
            return "+".join(name(i) for i in step.nodes)
        if isinstance(step, _Dense):
            return "+".join(name(i) for i in sorted({step.node, step.dst}))
        if isinstance(step, _ToPadded):
            return f"pad {name(step.node)}"
        return name(step.node)

    def _layouts(self, fast_pads: dict, chains: dict) -> dict[int, FlatLayout]:
        """Flat padded layouts: padded for the values fused convolutions read, plain NHWC
        for the values they write."""
        need: dict[int, tuple[int, int]] = {}
        for i, pads in fast_pads.items():
            j = self.nodes[i].inputs[0]
            old = need.get(j, (0, 0))
            need[j] = (max(old[0], *pads[0]), max(old[1], *pads[1]))
        for chain in chains.values():
            need.setdefault(chain["nodes"][-1], (0, 0))
        layouts = {}
        for j, (pr, pc) in need.items():
            c, h, w = self.shapes[j]
            layouts[j] = FlatLayout(h, w, c, pr, pc)
        return layouts

    def _dense_steps(self) -> dict[int, _Dense]:
        """Fused dense [-> activation] steps, HWC-permuted after a flatten of NHWC."""
        self._flatten_hwc = {
            n.index
            for n in self.nodes
            if isinstance(self.forms[n.index], Flattens)
            and n.inputs[0] in self.layouts
            and self._consumers[n.index]
            and all(isinstance(self.forms[k], DenseKernel) for k in self._consumers[n.index])
        }
        out: dict[int, _Dense] = {}
        for node in self.nodes:
            form, i = self.forms[node.index], node.index
            if not isinstance(form, DenseKernel) or len(self.shapes[node.inputs[0]]) != 1:
                continue
            w = np.asarray(form.weight, dtype=np.float32)
            hwc = node.inputs[0] in self._flatten_hwc
            if hwc:
                c, h, wd = self.shapes[self.nodes[node.inputs[0]].inputs[0]]
                w = w.reshape(-1, c, h, wd).transpose(0, 2, 3, 1).reshape(w.shape[0], -1)
            bias = None if form.bias is None else np.asarray(form.bias, dtype=np.float32)
            act_node = self._follow(i, Activation, lambda f: 0.0 <= f.alpha <= 1.0)
            act = None if act_node is None else self.forms[act_node]
            if act_node is not None:
                self._fused_into.add(act_node)
            dst = i if act_node is None else act_node
            out[i] = _Dense(i, dst, np.ascontiguousarray(w.T), bias, act, hwc)
        return out

    def _make_conv(self, i: int, chain: dict[str, Any], pads) -> _Conv:
        form: ConvKernel = self.forms[i]
        w = np.asarray(form.weight, dtype=np.float64)
        n_f = w.shape[0]
        b = np.zeros(n_f) if form.bias is None else np.asarray(form.bias, dtype=np.float64)
        affine: ChannelAffine | None = chain["affine"]
        if affine is not None:
            w = w * affine.scale[:, None, None, None]
            b = (b - affine.center) * affine.scale + affine.offset
        src = self.nodes[i].inputs[0]
        kh, k_row = self._kh_krow(i)
        k_gemm = kh * k_row if use_im2col(kh, k_row) else k_row  # values per GEMM row
        return _Conv(
            nodes=tuple(chain["nodes"]),
            src=src,
            dst=chain["nodes"][-1],
            pads=pads,
            w_rows=weight_rows(w.astype(np.float32)),
            bias=b.astype(np.float32),
            act=chain["act"],
            pool=chain["pool"],
            chunks=block_chunks(self.block_images, self.layouts[src].img_rows, self.chunk_rows),
            planar=src in self.planar,
            gemm_rows=small_gemm_rows(k_gemm, n_f),
        )

    # -------------------------------------------------------------------- run time

    def __call__(self, x: Any) -> np.ndarray:
        return self._run(x, None)

    def profile(
        self, x: Any, clock: Callable[[], float] = time.perf_counter
    ) -> tuple[np.ndarray, list[tuple[str, float]]]:
        """Run like a call, also returning each step's label (its nodes' names) and its
        time (s) by ``clock`` (wall time; ``time.thread_time`` for CPU time): summed over
        the blocks each thread ran, averaged over the threads. The input and output copies
        of the blocks count as the step ``"blocks in/out"``."""
        clocks: dict[int, _Clock] = {}
        y = self._run(x, lambda k: clocks.setdefault(k, _Clock(clock, len(self.steps))))
        accs = [c.acc for c in clocks.values()] or [np.zeros(len(self.steps) + 1)]  # n == 0
        mean = np.mean(accs, axis=0)
        labels = [*self.labels, "blocks in/out"]
        return y, [(lab, float(t)) for lab, t in zip(labels, mean, strict=True)]

    def _run(self, x: Any, clock_of: Callable[[int], _Clock] | None) -> np.ndarray:
        x = np.asarray(x)
        if x.shape[1:] != self.input_shape:
            raise ValueError(
                f"expected a (N, {', '.join(map(str, self.input_shape))}) batch, got {x.shape}"
            )
        if x.dtype != np.float32:
            x = x.astype(np.float32)
        n = x.shape[0]
        out = np.empty((n, *self.shapes[self.out]), dtype=np.float32)
        if n == 0:
            return out
        bi = self.block_images
        if self.tail_value is None:
            mid = out
        else:
            tiles = -(-n // TAIL_IMAGES)
            mid = np.zeros((tiles * TAIL_IMAGES, *self.shapes[self.tail_value]), np.float32)

        def block(b: int, wk: _Worker, clock: _Clock | None) -> None:
            self._run_block(x, mid, b * bi, wk, clock)

        def tile(t: int, wk: _Worker, clock: _Clock | None) -> None:
            self._run_tail(mid, out, t * TAIL_IMAGES, wk, clock)

        with self._lock:
            self._share(-(-n // bi), clock_of, block)
            if mid is not out:
                self._share(len(mid) // TAIL_IMAGES, clock_of, tile)
        return out

    def _share(
        self,
        count: int,
        clock_of: Callable[[int], _Clock] | None,
        job: Callable[[int, _Worker, _Clock | None], None],
    ) -> None:
        """``job(j, worker, clock)`` for j in range(count), shared out to the threads: each
        takes the next j (no result depends on which thread ran a j)."""
        taken = iter(range(count))
        take_lock = threading.Lock()

        def thread(k: int) -> Callable[[], None]:
            def run() -> None:
                wk = self._worker(k)
                clock = None if clock_of is None else clock_of(k)
                while True:
                    with take_lock:
                        j = next(taken, None)
                    if j is None:
                        return
                    job(j, wk, clock)

            return run

        parts = min(self.threads, count)
        run_parallel([thread(k) for k in range(parts)], threads=parts)

    def _worker(self, k: int) -> _Worker:
        wk = self._workers.get(k)
        if wk is None:
            wk = self._workers[k] = _Worker(self, self.block_images)
        return wk

    def _steps(
        self, lo: int, hi: int, vals: dict[int, _Val], wk: _Worker, n: int, clock: _Clock | None
    ) -> None:
        """Steps ``lo`` to ``hi`` on ``n`` images."""
        for s in range(lo, hi):
            self.steps[s].run(self, vals, wk, n)
            if clock is not None:
                clock.lap(s)

    def _run_block(
        self, x: np.ndarray, dst: np.ndarray, a: int, wk: _Worker, clock: _Clock | None
    ) -> None:
        """Images ``a`` to ``a + block_images`` of ``x`` through the steps before the tail,
        into ``dst`` (the output, or the tail's input); a short last block is padded with
        zero images, so every GEMM has the same shape."""
        if clock is not None:
            clock.start()
        bi = self.block_images
        m = min(bi, x.shape[0] - a)
        xb = x[a : a + bi]
        if m < bi:
            wk.x[:m] = xb
            wk.x[m:] = 0
            xb = wk.x
        vals: dict[int, _Val] = {INPUT: _Val(std=xb)}
        if clock is not None:
            clock.lap(-1)
        self._steps(0, self.tail_start, vals, wk, bi, clock)
        v = vals[self.out if self.tail_value is None else self.tail_value]
        dst[a : a + m] = (v.flat_hwc if v.flat_hwc is not None else v.get_std())[:m]
        if clock is not None:
            clock.lap(-1)

    def _run_tail(
        self, mid: np.ndarray, out: np.ndarray, a: int, wk: _Worker, clock: _Clock | None
    ) -> None:
        """The tail's steps on ``TAIL_IMAGES`` rows of the blocks' value, from row ``a``."""
        if clock is not None:
            clock.start()
        rows = mid[a : a + TAIL_IMAGES]
        if self.tail_value in self._flatten_hwc:
            src = self.nodes[self.tail_value].inputs[0]
            v = _Val(flat_hwc=rows, chw=self.shapes[src])
        else:
            v = _Val(std=rows)
        vals = {self.tail_value: v}
        self._steps(self.tail_start, len(self.steps), vals, wk, TAIL_IMAGES, clock)
        m = min(TAIL_IMAGES, out.shape[0] - a)
        out[a : a + m] = vals[self.out].get_std()[:m]
        if clock is not None:
            clock.lap(-1)


class _Clock:
    """One thread's step times in a profiled call: ``acc[s]`` for step s, ``acc[-1]`` for
    the blocks' input and output copies."""

    def __init__(self, fn: Callable[[], float], n_steps: int):
        self.fn, self.acc, self.t = fn, np.zeros(n_steps + 1), fn()

    def start(self) -> None:
        self.t = self.fn()

    def lap(self, slot: int) -> None:
        """Add the time since the last lap (or start) to ``acc[slot]``."""
        t = self.fn()
        self.acc[slot] += t - self.t
        self.t = t


def pool_fuses(form: MaxPoolWindow) -> bool:
    """A max-pool a fused convolution applies: square, stride == size, no padding."""
    k, st = form.size, form.stride
    return k[0] == k[1] == st[0] == st[1] and form.padding == (0, 0)


def flat_conv_pads(form: ConvKernel, src_shape: tuple[int, ...]):
    """The resolved pads of a convolution the fused flat kernels compute (stride 1,
    dilation 1, one group, output of its (C, H, W) input's size), else None."""
    if len(src_shape) != 3 or form.groups != 1:
        return None
    if form.stride != (1, 1) or form.dilation != (1, 1):
        return None
    kh, kw = form.weight.shape[2:]
    if sum(form.pads[0]) != kh - 1 or sum(form.pads[1]) != kw - 1:
        return None  # output size differs from input size
    return form.pads


def _follow(
    cur: int,
    forms: Mapping[int, Any],
    consumers: Mapping[int, list[int]],
    out: int,
    kind: type,
    accept: Callable[[Any], bool],
) -> int | None:
    """The one node reading node ``cur`` (never past the network's output ``out``), when
    its form is a ``kind`` that ``accept`` takes."""
    cs = consumers[cur]
    nxt = cs[0] if len(cs) == 1 and cur != out else None
    if nxt is not None and isinstance(forms[nxt], kind) and accept(forms[nxt]):
        return nxt
    return None


def follow_chain(
    start: int,
    forms: Mapping[int, Any],
    consumers: Mapping[int, list[int]],
    out: int,
    steps: Sequence[tuple[str, type, Callable[[Any], bool]]],
) -> dict[str, Any]:
    """The chain of nodes a fused kernel computes from node ``start``: each of ``steps``
    (key, form type, test) in turn, when the chain's last node has one reader and it is
    of that form (a step that does not match is skipped). Returns ``{"nodes": [start,
    ...], key: form (the pool's size for "pool") or None (0 for "pool")}``."""
    chain: dict[str, Any] = {key: (0 if key == "pool" else None) for key, _, _ in steps}
    chain["nodes"] = [start]
    cur = start
    for key, kind, accept in steps:
        nxt = _follow(cur, forms, consumers, out, kind, accept)
        if nxt is not None:
            form = forms[nxt]
            chain[key] = form.size[0] if key == "pool" else form
            chain["nodes"].append(nxt)
            cur = nxt
    return chain


# ---------------------------------------------------------------- pipeline.cnn.model glue


def compile_model(model: Any, *, threads: int | None = None) -> CompiledNet:
    """A :class:`CompiledNet` of a :class:`pipeline.cnn.model.Model`'s evaluation graph up
    to its logits, with its current parameters."""
    nodes = model.spec.nodes[: model.spec.output_index + 1]
    params = {node.index: model.layer_params(node) for node in nodes}
    return CompiledNet(nodes, params, model.input_shape, threads=threads)


_compiled: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_compiled_lock = threading.Lock()


def _fingerprint(model: Any) -> tuple:
    """Changes whenever a parameter or buffer array is replaced or any value changes,
    moved values included (a CRC-32 of each array's bytes: order-sensitive, ~GB/s)."""
    parts = []
    for k, a in (*model.params.items(), *model.buffers.items()):
        crc = zlib.crc32(memoryview(np.ascontiguousarray(a)).cast("B"))
        parts.append((k, id(a), a.shape, crc))
    return (id(model.spec), tuple(parts))


def fast_forward(model: Any, x: np.ndarray) -> np.ndarray | None:
    """Evaluation-mode logits of a float32 :class:`pipeline.cnn.model.Model` through its
    compiled network, or None for a float64 model (it keeps its layers' precision).

    The compiled network is cached per model and rebuilt when any parameter or buffer
    has changed since (training updates them in place)."""
    if np.dtype(model.dtype) != np.float32:
        return None
    key = _fingerprint(model)
    with _compiled_lock:
        hit = _compiled.get(model)
    if hit is None or hit[0] != key:
        hit = (key, compile_model(model))
        with _compiled_lock:
            _compiled[model] = hit
    return hit[1](x)
