"""Fast float32 inference for a CNN described as a list of ops.

The spec (the contract with the layer graph in ``pipeline/cnn/model.py``)
=========================================================================

A network is a list of :class:`Op`, in an order where every op comes after the ops it
reads. Each op is ``Op(type, attrs, weights, inputs, name)``:

- ``type``: one of the names below;
- ``attrs``: keyword arguments of the matching function in :mod:`pipeline.cnn.functional`;
- ``weights``: arrays by name (any float dtype; they are used as float32);
- ``inputs``: what the op reads, a tuple of: ``"input"`` (the network's input), a
  negative int (relative: -1 is the op just before, -2 the one before that; for the
  first op -1 is the network input) or a non-negative int (the absolute index of an
  earlier op in the list). Default ``(-1,)``;
- ``name``: free text used in error messages.

The network's output is the output of the last op.

=================  ===========================  ===================================
type               attrs (defaults)             weights
=================  ===========================  ===================================
conv               stride=1, padding=0,         w (F, C/groups, kh, kw), b (F,) opt.
                   dilation=1, groups=1
dense              —                            w (out, in), b (out,) optional
max_pool           size, stride=size, padding=0 —
avg_pool           size, stride=size, padding=0 —  (count_include_pad=0)
global_avg_pool    —                            —  (N, C, H, W) -> (N, C, 1, 1)
batch_norm         eps=1e-5                     gamma, beta, mean, var (C,)
relu, sigmoid,     leaky_relu: alpha=0.01       —
tanh, leaky_relu
softmax            axis=-1                      —
flatten            —                            —  (N, ...) -> (N, prod), C order
dropout, identity  —                            —  (identity at inference)
add                —                            —  sum of all inputs (numpy broadcasting)
concat             axis=1                       —  inputs joined along ``axis``
=================  ===========================  ===================================

Semantics are those of :mod:`pipeline.cnn.functional` (ONNX conventions), and
:func:`run_reference` runs a spec through those functions one op at a time.

:func:`compile_inference(ops, input_shape) <compile_inference>` returns a callable taking
an (N, C, H, W) batch (any N; ``input_shape`` is one image's (C, H, W)) and returning the
last op's output as float32. It agrees with :func:`run_reference` to float32 rounding
(sums run in another order and batch norm is folded into the convolution before it):
the tests hold it to 1e-5 of the output's largest magnitude against a float64 reference.

:func:`model_ops` turns a :class:`pipeline.cnn.model.Model` into a spec and
:func:`fast_forward` runs a float32 model's evaluation pass through a compiled network
cached per model (``Model.forward(x)`` in evaluation mode calls it).

How it is fast (the measured recipe of the project's performance notes)
-----------------------------------------------------------------------
- Feature maps live in NHWC inside, in a *flat padded* buffer: images stacked, each row
  followed by ``pc`` zero pixels and each image by ``pr`` zero rows (shared between
  neighbours), so the buffer is one (rows, C) matrix and a kernel tap is a row offset.
- A stride-1, dilation-1, groups-1 convolution whose output has its input's size is
  computed in chunks of whole images (about ``chunk_rows`` output pixels): the ``kw``
  horizontal taps are one contiguous run of ``kw*C`` values per pixel, copied into a
  chunk matrix, then ``kh`` GEMMs at row offsets (or one GEMM over all taps when
  ``kw*C`` is small). Each chunk adds bias, applies ReLU/LeakyReLU and writes straight
  into the next layer's padded buffer; the padding it overwrote is re-zeroed.
- A following max-pool with size == stride and no padding is applied to the chunk
  before bias and activation (max commutes with a per-channel shift and a monotone
  activation), so those run on a quarter of the data. A following eval-mode batch norm
  is folded into the weights.
- ``flatten`` + ``dense`` on an NHWC map uses the dense weights with their columns
  permuted to (H, W, C) order, so no transpose is needed.
- The batch is split over ``threads`` Python threads (one per core by default), each
  running the whole network on its part with single-threaded BLAS
  (threadpoolctl), which beats one multi-threaded GEMM between single-threaded copies.
- Everything else (stride 2, dilation, groups, padding that changes the size, pooling
  elsewhere, add/concat, softmax, ...) runs the plain functional path on NCHW views of
  the same data, so every spec keeps the functional semantics.

While a compiled network runs with ``threads > 1`` it limits the process's BLAS to one
thread (threadpoolctl); other threads calling BLAS at the same moment run single-threaded.
"""

from __future__ import annotations

import threading
import weakref
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

from pipeline.cnn import functional as F
from pipeline.errors import did_you_mean

__all__ = [
    "OP_TYPES",
    "CompiledNet",
    "Op",
    "compile_inference",
    "fast_forward",
    "model_ops",
    "run_reference",
]


@dataclass(frozen=True)
class Op:
    """One node of a network (see the module docstring for types, attrs and weights)."""

    type: str
    attrs: Mapping[str, Any] = field(default_factory=dict)
    weights: Mapping[str, np.ndarray] = field(default_factory=dict)
    inputs: tuple[int | str, ...] = (-1,)
    name: str = ""


_ACTIVATIONS = ("relu", "leaky_relu", "sigmoid", "tanh")
OP_TYPES = (
    "conv",
    "dense",
    "max_pool",
    "avg_pool",
    "global_avg_pool",
    "batch_norm",
    *_ACTIVATIONS,
    "softmax",
    "flatten",
    "dropout",
    "identity",
    "add",
    "concat",
)
_ATTRS = {
    "conv": ("stride", "padding", "dilation", "groups"),
    "max_pool": ("size", "stride", "padding"),
    "avg_pool": ("size", "stride", "padding"),
    "batch_norm": ("eps",),
    "leaky_relu": ("alpha",),
    "softmax": ("axis",),
    "concat": ("axis",),
}
_REQUIRED_WEIGHTS = {
    "conv": ("w",),
    "dense": ("w",),
    "batch_norm": ("gamma", "beta", "mean", "var"),
}


def _op_label(i: int, op: Op) -> str:
    return f"op {i} ({op.type}{' ' + repr(op.name) if op.name else ''})"


def _resolve_inputs(ops: Sequence[Op]) -> list[tuple[int, ...]]:
    """Absolute input indices per op; -1 stands for the network input."""
    out = []
    for i, op in enumerate(ops):
        if op.type not in OP_TYPES:
            hint = did_you_mean(op.type, OP_TYPES) or f" (one of {', '.join(OP_TYPES)})"
            raise ValueError(f"{_op_label(i, op)}: unknown op type{hint}")
        if not op.inputs:
            raise ValueError(f"{_op_label(i, op)}: needs at least one input")
        idx = []
        for ref in op.inputs:
            if isinstance(ref, str):
                if ref != "input":
                    raise ValueError(f"{_op_label(i, op)}: input {ref!r} is not 'input'")
                j = -1
            elif ref < 0:
                j = i + int(ref)
                if j < -1:
                    raise ValueError(f"{_op_label(i, op)}: input {ref} reaches before the input")
            else:
                j = int(ref)
                if j >= i:
                    raise ValueError(f"{_op_label(i, op)}: input {ref} is not an earlier op")
            idx.append(j)
        if op.type not in ("add", "concat") and len(idx) != 1:
            raise ValueError(f"{_op_label(i, op)}: takes one input, got {len(idx)}")
        for key in op.attrs:
            if key not in _ATTRS.get(op.type, ()):
                allowed = ", ".join(_ATTRS.get(op.type, ())) or "none"
                raise ValueError(f"{_op_label(i, op)}: unknown attribute {key!r} ({allowed})")
        if op.type in ("max_pool", "avg_pool") and "size" not in op.attrs:
            raise ValueError(f"{_op_label(i, op)}: missing attribute 'size'")
        for key in _REQUIRED_WEIGHTS.get(op.type, ()):
            if key not in op.weights:
                raise ValueError(f"{_op_label(i, op)}: missing weight {key!r}")
        out.append(tuple(idx))
    return out


def _apply(op: Op, xs: list[np.ndarray]) -> np.ndarray:
    """One op through the plain functional path."""
    a, wts, x = op.attrs, op.weights, xs[0]
    t = op.type
    if t == "conv":
        return F.conv2d(x, wts["w"], wts.get("b"), **a)
    if t == "dense":
        return F.dense(x, wts["w"], wts.get("b"))
    if t == "max_pool":
        return F.max_pool2d(x, **a)
    if t == "avg_pool":
        return F.avg_pool2d(x, **a)
    if t == "global_avg_pool":
        return F.global_avg_pool(x)
    if t == "batch_norm":
        return F.batch_norm(
            x, wts["gamma"], wts["beta"], wts["mean"], wts["var"], a.get("eps", 1e-5)
        )
    if t == "relu":
        return F.relu(x)
    if t == "leaky_relu":
        return F.leaky_relu(x, a.get("alpha", 0.01))
    if t == "sigmoid":
        return F.sigmoid(x)
    if t == "tanh":
        return F.tanh(x)
    if t == "softmax":
        return F.softmax(x, a.get("axis", -1))
    if t == "flatten":
        return F.flatten(x)
    if t in ("dropout", "identity"):
        return x
    if t == "add":
        out = xs[0]
        for other in xs[1:]:
            out = out + other
        return out
    if t == "concat":
        return np.concatenate(xs, axis=a.get("axis", 1))
    raise AssertionError(t)  # unreachable: types are validated first


def run_reference(ops: Sequence[Op], x: Any) -> np.ndarray:
    """Run a spec op by op through :mod:`pipeline.cnn.functional` (the semantics)."""
    inputs = _resolve_inputs(ops)
    vals: dict[int, np.ndarray] = {-1: np.asarray(x)}
    for i, op in enumerate(ops):
        try:
            vals[i] = _apply(op, [vals[j] for j in inputs[i]])
        except ValueError as e:
            raise ValueError(f"{_op_label(i, op)}: {e}") from e
    return vals[len(ops) - 1]


# --------------------------------------------------------------------- the layout


@dataclass(frozen=True)
class _Geom:
    """A flat padded NHWC layout: each row is followed by ``pc`` zero pixels, each
    image by ``pr`` zero rows; ``lead``/``tail`` zero rows guard both ends."""

    h: int
    w: int
    c: int
    pr: int
    pc: int

    @property
    def wq(self) -> int:
        return self.w + self.pc

    @property
    def img_rows(self) -> int:
        return (self.h + self.pr) * self.wq

    @property
    def lead(self) -> int:
        return self.pr * self.wq + self.pc

    def total_rows(self, n: int) -> int:
        return 2 * self.lead + n * self.img_rows

    def alloc(self, n: int) -> np.ndarray:
        return np.zeros((self.total_rows(n), self.c), dtype=np.float32)

    def interior(self, buf: np.ndarray, n: int) -> np.ndarray:
        """(n, h, w, c) view of the pixels."""
        body = buf[self.lead : self.lead + n * self.img_rows]
        return body.reshape(n, self.h + self.pr, self.wq, self.c)[:, : self.h, : self.w]


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


# ----------------------------------------------------------------------- the steps


class _Worker:
    """Buffers of one thread, for one batch-part size."""

    def __init__(self, net: CompiledNet, n: int):
        self.n = n
        self.bufs = {key: g.alloc(n) for key, g in net.geoms.items()}
        self.scratch = np.empty(net.scratch_elems, dtype=np.float32)
        self.scratch2 = np.empty(net.scratch2_elems, dtype=np.float32)
        self.scratch3 = np.empty(net.scratch2_elems, dtype=np.float32)
        self.dense_out = {i: np.empty((n, s.w.shape[1]), np.float32) for i, s in net.dense.items()}


@dataclass
class _FastConv:
    """A same-size conv (stride 1) + folded batch norm + activation + max-pool."""

    src: int  # value index read (its geometry key is src_geom)
    dst: int  # value index written
    src_geom: int
    dst_geom: int  # geometry key of the destination buffer
    pads: tuple[tuple[int, int], tuple[int, int]]
    kernel: tuple[int, int]
    w_rows: np.ndarray  # (kh, kw*C, F) or (1, kh*kw*C, F) when im2col
    im2col: bool
    bias: np.ndarray  # (F,)
    act: str  # "", "relu", "leaky_relu"
    alpha: float
    pool: int  # 0: none, else size == stride
    chunk_imgs: int


@dataclass
class _Dense:
    w: np.ndarray  # (in, out), permuted to HWC order if hwc
    bias: np.ndarray | None
    act: str
    alpha: float
    hwc: bool


class CompiledNet:
    """A network compiled for fast float32 inference; call it on an (N, C, H, W) batch.

    Build it with :func:`compile_inference`. Calls are serialised by a lock (buffers are
    reused between calls).
    """

    def __init__(
        self,
        ops: Sequence[Op],
        input_shape: tuple[int, int, int],
        threads: int | None = None,
        chunk_rows: int = 4096,
        im2col_max_k: int = 64,
    ):
        self.ops = list(ops)
        self.input_shape = tuple(int(a) for a in input_shape)
        if len(self.input_shape) != 3:
            raise ValueError(f"input_shape must be one image's (C, H, W), got {input_shape}")
        self.inputs = _resolve_inputs(self.ops)
        if threads is None:
            threads = F.usable_cpus()
        self.threads = max(1, int(threads))
        self.chunk_rows = int(chunk_rows)
        self.im2col_max_k = int(im2col_max_k)
        self._lock = threading.Lock()
        self._workers: dict[tuple[int, int], _Worker] = {}
        self._shapes = self._infer_shapes()
        self._plan()

    # ---------------------------------------------------------------- compile time

    def _infer_shapes(self) -> dict[int, tuple[int, ...]]:
        """Per-image output shapes, from the functional path on a one-image batch."""
        x = np.zeros((1, *self.input_shape), dtype=np.float32)
        vals: dict[int, np.ndarray] = {-1: x}
        for i, op in enumerate(self.ops):
            try:
                vals[i] = _apply(op, [vals[j] for j in self.inputs[i]])
            except ValueError as e:
                raise ValueError(f"{_op_label(i, op)}: {e}") from e
        return {i: v.shape[1:] for i, v in vals.items()}

    def _fast_conv_pads(self, i: int):
        """Resolved pads if op i is a conv the fast path computes, else None."""
        op = self.ops[i]
        if op.type != "conv" or len(self._shapes[self.inputs[i][0]]) != 3:
            return None
        a = op.attrs
        w = np.asarray(op.weights["w"])
        if w.ndim != 4 or a.get("groups", 1) != 1:
            return None
        if F._pair(a.get("stride", 1), "stride") != (1, 1):
            return None
        if F._pair(a.get("dilation", 1), "dilation") != (1, 1):
            return None
        kh, kw = w.shape[2:]
        h, wd = self._shapes[self.inputs[i][0]][1:]
        pads = F.resolve_padding(a.get("padding", 0), (kh, kw), 1, 1, (h, wd))
        if sum(pads[0]) != kh - 1 or sum(pads[1]) != kw - 1:
            return None  # output size differs from input size
        return pads

    def _plan(self) -> None:
        ops, inputs = self.ops, self.inputs
        n_ops = len(ops)
        consumers: dict[int, list[int]] = {i: [] for i in range(-1, n_ops)}
        for i, ins in enumerate(inputs):
            for j in ins:
                consumers[j].append(i)
        fast_pads = {i: p for i in range(n_ops) if (p := self._fast_conv_pads(i)) is not None}

        def sole(i: int) -> int | None:
            cs = consumers[i]
            return cs[0] if len(cs) == 1 and i != n_ops - 1 else None

        # fuse conv [-> batch_norm] [-> relu | leaky_relu] [-> max_pool(size == stride)]
        fused_into: dict[int, int] = {}  # op index -> fast conv index that computes it
        chains: dict[int, dict[str, Any]] = {}
        for i in sorted(fast_pads):
            chain: dict[str, Any] = {"bn": None, "act": "", "alpha": 0.0, "pool": 0, "last": i}
            cur = i
            nxt = sole(cur)
            if nxt is not None and ops[nxt].type == "batch_norm":
                chain["bn"], cur = nxt, nxt
                nxt = sole(cur)
            if nxt is not None and ops[nxt].type in ("relu", "leaky_relu"):
                alpha = float(ops[nxt].attrs.get("alpha", 0.01))
                if ops[nxt].type == "relu" or 0 <= alpha <= 1:
                    chain["act"] = ops[nxt].type
                    chain["alpha"] = alpha if ops[nxt].type == "leaky_relu" else 0.0
                    cur = nxt
                    nxt = sole(cur)
            if nxt is not None and ops[nxt].type == "max_pool":
                a = ops[nxt].attrs
                k = F._pair(a["size"], "size")
                s = k if a.get("stride") is None else F._pair(a["stride"], "stride")
                p = F.resolve_padding(a.get("padding", 0), k, s, 1, self._shapes[cur][1:])
                if k[0] == k[1] == s[0] == s[1] and p == ((0, 0), (0, 0)):
                    chain["pool"] = k[0]
                    cur = nxt
            chain["last"] = cur
            chains[i] = chain
            for j in (chain["bn"], cur):
                if j is not None and j != i:
                    fused_into[j] = i
            if chain["act"]:
                # the activation op is the sole consumer of conv or bn
                act_src = chain["bn"] if chain["bn"] is not None else i
                fused_into[consumers[act_src][0]] = i

        produced_by_fast = {chains[i]["last"]: i for i in chains}

        # geometry of each value: padded for fast conv readers, plain NHWC for fast writers
        geoms: dict[int, _Geom] = {}
        need: dict[int, tuple[int, int]] = {}
        for i, pads in fast_pads.items():
            j = inputs[i][0]
            pr, pc = max(pads[0]), max(pads[1])
            old = need.get(j, (0, 0))
            need[j] = (max(old[0], pr), max(old[1], pc))
        for j, (pr, pc) in need.items():
            c, h, w = self._shapes[j]
            geoms[j] = _Geom(h, w, c, pr, pc)
        for last in produced_by_fast:
            if last not in geoms:
                c, h, w = self._shapes[last]
                geoms[last] = _Geom(h, w, c, 0, 0)
        self.geoms = geoms

        # dense ops: fused activation and HWC-permuted weights after flatten of NHWC
        nhwc_vals = set(geoms)
        flatten_hwc: set[int] = set()
        for i, op in enumerate(ops):
            if op.type != "flatten":
                continue
            j = inputs[i][0]
            if (
                j in nhwc_vals
                and consumers[i]
                and all(ops[k].type == "dense" for k in consumers[i])
            ):
                flatten_hwc.add(i)
        self.dense: dict[int, _Dense] = {}
        for i, op in enumerate(ops):
            if op.type != "dense" or len(self._shapes[inputs[i][0]]) != 1:
                continue
            w = np.asarray(op.weights["w"], dtype=np.float32)
            hwc = inputs[i][0] in flatten_hwc
            if hwc:
                c, h, wd = self._shapes[inputs[inputs[i][0]][0]]
                w = w.reshape(-1, c, h, wd).transpose(0, 2, 3, 1).reshape(w.shape[0], -1)
            b = op.weights.get("b")
            act, alpha, last = "", 0.0, i
            nxt = sole(i)
            if nxt is not None and ops[nxt].type in ("relu", "leaky_relu"):
                act = ops[nxt].type
                alpha = float(ops[nxt].attrs.get("alpha", 0.01)) if act == "leaky_relu" else 0.0
                fused_into[nxt] = i
                last = nxt
            self.dense[i] = _Dense(
                np.ascontiguousarray(w.T),
                None if b is None else np.asarray(b, dtype=np.float32),
                act,
                alpha,
                hwc,
            )
            produced_by_fast[last] = i

        # the steps, in op order
        steps: list[tuple[str, Any]] = []
        if -1 in geoms:
            steps.append(("to_padded", -1))
        scratch = scratch2 = 1
        for i in range(n_ops):
            if i in fused_into:
                continue
            if i in chains:
                conv = self._make_conv(i, chains[i], geoms)
                steps.append(("conv", conv))
                g = geoms[conv.src_geom]
                kh = conv.kernel[0]
                rows = conv.chunk_imgs * g.img_rows
                k = conv.w_rows.shape[1]
                ext = rows + (0 if conv.im2col else (kh - 1) * g.wq)
                scratch = max(scratch, ext * k)
                scratch2 = max(scratch2, rows * conv.w_rows.shape[2])
                continue
            if i in self.dense:
                steps.append(("dense", i))
                continue
            if i in flatten_hwc:
                steps.append(("flatten_hwc", i))
                continue
            steps.append(("functional", i))
            if i in geoms:
                steps.append(("to_padded", i))
        self.scratch_elems, self.scratch2_elems = scratch, scratch2
        self.steps = steps
        # dense ops write into their fused activation's value
        self._dense_dst = {i: last for last, i in produced_by_fast.items() if i in self.dense}

    def _make_conv(self, i: int, chain: dict[str, Any], geoms: dict[int, _Geom]) -> _FastConv:
        op = self.ops[i]
        w = np.asarray(op.weights["w"], dtype=np.float64)
        n_f, c, kh, kw = w.shape
        b = op.weights.get("b")
        b = np.zeros(n_f) if b is None else np.asarray(b, dtype=np.float64)
        if chain["bn"] is not None:
            bn = self.ops[chain["bn"]]
            eps = bn.attrs.get("eps", 1e-5)
            scale = np.asarray(bn.weights["gamma"], np.float64) / np.sqrt(
                np.asarray(bn.weights["var"], np.float64) + eps
            )
            w = w * scale[:, None, None, None]
            b = (b - np.asarray(bn.weights["mean"], np.float64)) * scale + np.asarray(
                bn.weights["beta"], np.float64
            )
        src = self.inputs[i][0]
        g = geoms[src]
        im2col = kh > 1 and kw * c < self.im2col_max_k
        wt = w.transpose(2, 3, 1, 0)  # (kh, kw, C, F)
        w_rows = wt.reshape(1, kh * kw * c, n_f) if im2col else wt.reshape(kh, kw * c, n_f)
        chunk_imgs = max(1, self.chunk_rows // g.img_rows)
        return _FastConv(
            src=src,
            dst=chain["last"],
            src_geom=src,
            dst_geom=chain["last"],
            pads=self._fast_conv_pads(i),
            kernel=(kh, kw),
            w_rows=np.ascontiguousarray(w_rows, dtype=np.float32),
            im2col=im2col,
            bias=b.astype(np.float32),
            act=chain["act"],
            alpha=chain["alpha"],
            pool=chain["pool"],
            chunk_imgs=chunk_imgs,
        )

    # -------------------------------------------------------------------- run time

    def __call__(self, x: Any) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"expected a (N, {', '.join(map(str, self.input_shape))}) batch, got {x.shape}"
            )
        if x.dtype != np.float32:
            x = x.astype(np.float32)
        n = x.shape[0]
        out_shape = (n, *self._shapes[len(self.ops) - 1])
        out = np.empty(out_shape, dtype=np.float32)
        if n == 0:
            return out
        parts = min(self.threads, n)
        bounds = [round(k * n / parts) for k in range(parts + 1)]
        with self._lock:
            if parts == 1:
                out[...] = self._run_part(x, 0)
                return out
            errors: list[BaseException] = []

            def work(k: int) -> None:
                try:
                    a, b = bounds[k], bounds[k + 1]
                    with F.serial_region():  # fallbacks: this thread is one core's share
                        out[a:b] = self._run_part(x[a:b], k)
                except BaseException as e:  # re-raised in the caller's thread
                    errors.append(e)

            with F.single_thread_blas():
                ts = [threading.Thread(target=work, args=(k,)) for k in range(1, parts)]
                for t in ts:
                    t.start()
                work(0)
                for t in ts:
                    t.join()
            if errors:
                raise errors[0]
        return out

    def _worker(self, k: int, n: int) -> _Worker:
        key = (k, n)
        wk = self._workers.get(key)
        if wk is None:
            if len(self._workers) >= 4 * self.threads:  # keep a few batch sizes only
                self._workers.clear()
            wk = self._workers[key] = _Worker(self, n)
        return wk

    def _run_part(self, x: np.ndarray, k: int) -> np.ndarray:
        n = x.shape[0]
        wk = self._worker(k, n)
        vals: dict[int, _Val] = {-1: _Val(std=x)}
        for kind, arg in self.steps:
            if kind == "conv":
                vals[arg.dst] = self._conv(arg, wk, n)
            elif kind == "dense":
                vals[self._dense_dst[arg]] = self._dense(arg, vals, wk)
            elif kind == "flatten_hwc":
                src = vals[self.inputs[arg][0]]
                flat = np.ascontiguousarray(src.get_nhwc()).reshape(n, -1)
                vals[arg] = _Val(flat_hwc=flat, chw=self._shapes[self.inputs[arg][0]])
            elif kind == "functional":
                op = self.ops[arg]
                vals[arg] = _Val(std=_apply(op, [vals[j].get_std() for j in self.inputs[arg]]))
            else:  # to_padded
                g = self.geoms[arg]
                buf = wk.bufs[arg]
                inner = g.interior(buf, n)
                inner[...] = vals[arg].get_nhwc()
                vals[arg] = _Val(nhwc=inner, buf=buf)
        return vals[len(self.ops) - 1].get_std()

    def _dense(self, i: int, vals: dict[int, _Val], wk: _Worker) -> _Val:
        d = self.dense[i]
        src = vals[self.inputs[i][0]]
        x = src.flat_hwc if d.hwc else src.get_std()
        y = wk.dense_out[i]
        np.matmul(x, d.w, out=y)
        if d.bias is not None:
            y += d.bias
        _activate(y, d.act, d.alpha)
        return _Val(std=y)

    def _conv(self, cv: _FastConv, wk: _Worker, n: int) -> _Val:
        gi, go = self.geoms[cv.src_geom], self.geoms[cv.dst_geom]
        src, dst = wk.bufs[cv.src_geom], wk.bufs[cv.dst_geom]
        kh, kw = cv.kernel
        (t, _), (lft, _) = cv.pads
        c = gi.c
        n_f = cv.w_rows.shape[2]
        wq = gi.wq
        item = src.itemsize
        direct = not cv.pool and gi == _Geom(go.h, go.w, gi.c, go.pr, go.pc)
        dst_inner = go.interior(dst, n)
        for k0 in range(0, n, cv.chunk_imgs):
            m = min(cv.chunk_imgs, n - k0)
            rows = m * gi.img_rows
            q0 = gi.lead + k0 * gi.img_rows
            first = q0 - t * wq - lft  # buffer row of the chunk's first (top-left) tap
            k_cols = cv.w_rows.shape[1]
            if cv.im2col:
                s = wk.scratch[: rows * k_cols].reshape(rows, kh, kw * c)
                view = as_strided(
                    src[first:],
                    (rows, kh, kw * c),
                    (c * item, wq * c * item, item),
                    writeable=False,
                )
                np.copyto(s, view)
                s = s.reshape(rows, k_cols)
            else:
                ext = rows + (kh - 1) * wq
                s = wk.scratch[: ext * k_cols].reshape(ext, k_cols)
                view = as_strided(src[first:], (ext, k_cols), (c * item, item), writeable=False)
                np.copyto(s, view)
            if direct:
                acc = dst[q0 : q0 + rows]
            else:
                acc = wk.scratch2[: rows * n_f].reshape(rows, n_f)
            np.matmul(s[:rows], cv.w_rows[0], out=acc)
            if kh > 1 and not cv.im2col:
                tmp = wk.scratch3[: rows * n_f].reshape(rows, n_f)
                for i in range(1, kh):
                    np.matmul(s[i * wq : i * wq + rows], cv.w_rows[i], out=tmp)
                    acc += tmp
            if direct:
                acc += cv.bias
                _activate(acc, cv.act, cv.alpha)
                if gi.pr or gi.pc:
                    block = acc.reshape(m, gi.h + gi.pr, wq, n_f)
                    block[:, gi.h :] = 0
                    block[:, : gi.h, gi.w :] = 0
                continue
            full = acc.reshape(m, gi.h + gi.pr, wq, n_f)[:, : gi.h, : gi.w]
            out = dst_inner[k0 : k0 + m]
            if cv.pool:
                p = cv.pool
                ho, wo = gi.h // p, gi.w // p
                taps = [full[:, a : ho * p : p, b : wo * p : p] for a in range(p) for b in range(p)]
                np.copyto(out, taps[0])
                for tap in taps[1:]:
                    np.maximum(out, tap, out=out)
            else:
                np.copyto(out, full)
            out += cv.bias
            _activate(out, cv.act, cv.alpha)
        return _Val(nhwc=dst_inner, buf=dst)


def _activate(y: np.ndarray, act: str, alpha: float) -> None:
    """In place: ReLU, LeakyReLU (0 <= alpha <= 1: max(y, alpha*y)) or nothing."""
    if act == "relu":
        np.maximum(y, 0, out=y)
    elif act == "leaky_relu":
        np.maximum(y, y * np.float32(alpha), out=y)


def compile_inference(
    ops: Sequence[Op],
    input_shape: Sequence[int],
    *,
    threads: int | None = None,
    chunk_rows: int = 4096,
) -> Callable[[np.ndarray], np.ndarray]:
    """Compile a network spec for fast float32 inference.

    Parameters
    ----------
    ops : the network (see the module docstring for the spec).
    input_shape : one image's (C, H, W).
    threads : Python worker threads over the batch (default: the usable CPUs).
    chunk_rows : output pixels per GEMM chunk (about 4-8k keeps temporaries in cache).

    Returns
    -------
    A :class:`CompiledNet`: ``net(x)`` maps an (N, C, H, W) batch to the last op's
    float32 output, with the semantics of :func:`run_reference`.
    """
    return CompiledNet(ops, tuple(input_shape), threads=threads, chunk_rows=chunk_rows)


# ------------------------------------------------------------- pipeline.cnn.model glue


def model_ops(model: Any) -> list[Op] | None:
    """The evaluation graph of a :class:`pipeline.cnn.model.Model` (up to its logits) as
    a spec, or None when a layer type has no op here (the model then keeps its layers).

    Uses the model's public structure: ``spec.nodes`` (``type``, ``name``, ``args``,
    ``inputs``, ``layer``), ``spec.output_index``, and ``params`` / ``buffers`` keyed
    ``"<layer>.<param>"``. Batch norm uses the running statistics; dropout is the identity.
    """
    spec = model.spec
    ops: list[Op] = []
    where: dict[int, int | str] = {-1: "input"}  # node index -> op index
    p, bufs = model.params, model.buffers
    for node in spec.nodes[: spec.output_index + 1]:
        a, name = node.args, node.name
        ins = tuple(where[j] for j in node.inputs)
        t = node.type
        if t == "conv2d":
            w = {"w": p[f"{name}.weight"]}
            if a.bias:
                w["b"] = p[f"{name}.bias"]
            attrs = {
                "stride": a.stride,
                "padding": node.layer.pads,
                "dilation": a.dilation,
                "groups": a.groups,
            }
            ops.append(Op("conv", attrs, w, ins, name))
        elif t == "dense":
            w = {"w": p[f"{name}.weight"]}
            if a.bias:
                w["b"] = p[f"{name}.bias"]
            ops.append(Op("dense", {}, w, ins, name))
        elif t in ("maxpool2d", "avgpool2d"):
            attrs = {"size": a.size, "stride": node.layer.stride, "padding": a.padding}
            ops.append(Op("max_pool" if t == "maxpool2d" else "avg_pool", attrs, {}, ins, name))
        elif t == "global_avgpool":  # (N, C), not (N, C, 1, 1)
            ops.append(Op("global_avg_pool", {}, {}, ins, name))
            ops.append(Op("flatten", name=name))
        elif t == "batchnorm2d":
            w = {
                "gamma": p[f"{name}.weight"],
                "beta": p[f"{name}.bias"],
                "mean": bufs[f"{name}.running_mean"],
                "var": bufs[f"{name}.running_var"],
            }
            ops.append(Op("batch_norm", {"eps": a.eps}, w, ins, name))
        elif t == "leaky_relu":
            ops.append(Op("leaky_relu", {"alpha": a.alpha}, {}, ins, name))
        elif t == "softmax":
            ops.append(Op("softmax", {"axis": -1}, {}, ins, name))
        elif t == "concat":
            ops.append(Op("concat", {"axis": 1}, {}, ins, name))
        elif t == "dropout":
            ops.append(Op("identity", {}, {}, ins, name))
        elif t in ("relu", "sigmoid", "tanh", "flatten", "add"):
            ops.append(Op(t, {}, {}, ins, name))
        else:
            return None
        where[node.index] = len(ops) - 1
    return ops


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
    """Evaluation-mode logits of a float32 :class:`pipeline.cnn.model.Model` through a
    compiled network, or None when the model cannot use it (float64, an unknown layer).

    The compiled network is cached per model and rebuilt when any parameter or buffer
    has changed since (training updates them in place)."""
    if np.dtype(model.dtype) != np.float32:
        return None
    key = _fingerprint(model)
    with _compiled_lock:
        hit = _compiled.get(model)
    if hit is None or hit[0] != key:
        ops = model_ops(model)
        net = None if ops is None else compile_inference(ops, model.input_shape)
        hit = (key, net)
        with _compiled_lock:
            _compiled[model] = hit
    net = hit[1]
    return None if net is None else net(x)
