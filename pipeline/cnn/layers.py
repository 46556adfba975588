"""CNN layers: one class per YAML layer type, with argument checks, shape inference,
initialisation, and forward and backward side by side.

A layer is built from its validated keyword arguments and the shapes of its inputs
(one sample each, no batch axis: ``(C, H, W)`` or ``(D,)``); it knows its output shape
before any data flows (Keras-style), so :mod:`pipeline.cnn.graph` checks a whole graph when
it is loaded. ``forward`` and ``backward`` take batch-first arrays and call the plain array
functions in :mod:`pipeline.cnn.functional`.

Layer types are found by name in :data:`LAYERS`; a YAML file names a type, never an import
path. Every spatial output size follows ``floor((W - F + 2P) / S) + 1`` (ONNX's default,
pooling included), with ``F = dilation * (kernel - 1) + 1``.

Parameters live outside the layer, in the model's ordered dict (``"<layer>.<param>"``); a
layer receives its own slice as a dict keyed by the short names ``weight``, ``bias``,
``running_mean``, ``running_var``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from pipeline.cnn import functional as F

__all__ = [
    "LAYERS",
    "Layer",
    "LayerArgs",
    "ShapeError",
    "register",
]

Shape = tuple[int, ...]
Pads = tuple[tuple[int, int], tuple[int, int]]  # ((top, bottom), (left, right))

# Activation that follows a layer, used to pick its initialisation: None (linear),
# "relu", or ("leaky_relu", alpha).
Activation = Any


class ShapeError(ValueError):
    """A layer's inputs do not fit it; the graph adds the file and the layer to the message."""


# --------------------------------------------------------------------------- arguments


def _no_bool(v: Any) -> Any:
    if isinstance(v, bool):
        raise ValueError(f"must be a number, got {v!r}")
    return v


def _as_pair(v: Any, minimum: int) -> tuple[int, int]:
    """An int or a two-item list of ints, each >= ``minimum``, as a ``(h, w)`` tuple."""
    if isinstance(v, int) and not isinstance(v, bool):
        v = (v, v)
    if (
        isinstance(v, (list, tuple))
        and len(v) == 2
        and all(isinstance(i, int) and not isinstance(i, bool) for i in v)
        and all(i >= minimum for i in v)
    ):
        return (int(v[0]), int(v[1]))
    raise ValueError(f"must be an integer >= {minimum} or a pair [h, w] of them, got {v!r}")


def _pair_ge1(v: Any) -> tuple[int, int]:
    return _as_pair(v, 1)


def _pair_ge0(v: Any) -> tuple[int, int]:
    return _as_pair(v, 0)


def _conv_padding(v: Any) -> str | Pads:
    """Conv padding: int, [h, w], [[top, bottom], [left, right]], "same" or "valid"."""
    if v == "valid":
        return ((0, 0), (0, 0))
    if v == "same":
        return "same"
    if (
        isinstance(v, (list, tuple))
        and len(v) == 2
        and all(isinstance(p, (list, tuple)) for p in v)
    ):
        try:
            top_bottom, left_right = _pair_ge0(v[0]), _pair_ge0(v[1])
        except ValueError:
            pass
        else:
            return (top_bottom, left_right)
    try:
        ph, pw = _pair_ge0(v)
    except ValueError:
        raise ValueError(
            "must be an integer >= 0, [h, w], [[top, bottom], [left, right]], "
            f"'same' or 'valid', got {v!r}"
        ) from None
    return ((ph, ph), (pw, pw))


PosInt = Annotated[int, BeforeValidator(_no_bool), Field(ge=1)]
Pair1 = Annotated[tuple[int, int], BeforeValidator(_pair_ge1)]
Pair0 = Annotated[tuple[int, int], BeforeValidator(_pair_ge0)]
OptPair1 = Annotated[
    tuple[int, int] | None, BeforeValidator(lambda v: None if v is None else _pair_ge1(v))
]
ConvPadding = Annotated[str | Pads, BeforeValidator(_conv_padding)]


class LayerArgs(BaseModel):
    """A layer's keyword arguments: unknown keys are errors, types are strict, frozen."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class NoArgs(LayerArgs):
    """A layer without arguments."""


# --------------------------------------------------------------------------- base class


class Layer:
    """One node type of the layer graph.

    Subclasses set ``type`` (the YAML name), ``Args`` (a :class:`LayerArgs` model) and
    ``n_inputs`` (min, max; max None = any number), and implement :meth:`infer_shape`,
    :meth:`forward` and :meth:`backward`; layers with parameters also implement
    :meth:`param_shapes` (and :meth:`buffer_shapes` for non-trained state) and :meth:`init`.
    """

    type: ClassVar[str]
    Args: ClassVar[type[LayerArgs]] = NoArgs
    n_inputs: ClassVar[tuple[int, int | None]] = (1, 1)

    def __init__(self, args: LayerArgs, input_shapes: Sequence[Shape]):
        self.args = args
        self.input_shapes: tuple[Shape, ...] = tuple(tuple(int(d) for d in s) for s in input_shapes)
        self.output_shape: Shape = self.infer_shape(self.input_shapes)

    # -- shapes and parameters
    def infer_shape(self, shapes: tuple[Shape, ...]) -> Shape:
        """Output shape (one sample) for these input shapes; :class:`ShapeError` if they do
        not fit."""
        raise NotImplementedError

    def param_shapes(self) -> dict[str, Shape]:
        """Trained parameters: short name -> shape."""
        return {}

    def buffer_shapes(self) -> dict[str, Shape]:
        """Non-trained state saved with the weights (e.g. running statistics)."""
        return {}

    def init(
        self, rng: np.random.Generator, dtype: np.dtype, activation: Activation = None
    ) -> dict[str, np.ndarray]:
        """Initial values of parameters and buffers; ``activation`` is what follows this
        layer (picks He or Glorot for ``init: auto``)."""
        return {}

    # -- computation
    def forward(
        self,
        xs: Sequence[np.ndarray],
        p: Mapping[str, np.ndarray],
        *,
        train: bool = False,
        rng: np.random.Generator | None = None,
    ) -> tuple[np.ndarray, Any]:
        """Batch-first output and the cache :meth:`backward` needs."""
        raise NotImplementedError

    def backward(
        self, dy: np.ndarray, cache: Any, p: Mapping[str, np.ndarray]
    ) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
        """Gradients with respect to each input and to each parameter (short names)."""
        raise NotImplementedError

    # -- helpers
    @property
    def n_params(self) -> int:
        return sum(math.prod(s) for s in self.param_shapes().values())

    def _one_input(self, shapes: tuple[Shape, ...], ndim: int, what: str) -> Shape:
        (shape,) = shapes
        if len(shape) != ndim:
            raise ShapeError(f"{self.type} expects {what} input, got {_fmt(shape)}")
        return shape


LAYERS: dict[str, type[Layer]] = {}


def register(cls: type[Layer]) -> type[Layer]:
    """Class decorator: make a layer type available to model YAML files by its ``type``."""
    if cls.type in LAYERS:
        raise ValueError(f"layer type {cls.type!r} is already registered")
    LAYERS[cls.type] = cls
    return cls


def _fmt(shape: Shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _hw(pair: tuple[int, int]) -> str:
    return f"{pair[0]}×{pair[1]}"


def _spatial_out(
    layer_type: str,
    hw: tuple[int, int],
    window: tuple[int, int],
    stride: tuple[int, int],
    pads: Pads,
    what: str,
) -> tuple[int, int]:
    """floor((W - F + P_total) / S) + 1 per axis; ShapeError when the window does not fit."""
    padded = (hw[0] + sum(pads[0]), hw[1] + sum(pads[1]))
    if window[0] > padded[0] or window[1] > padded[1]:
        pad_note = "" if padded == hw else f" (input {_hw(hw)} plus padding)"
        raise ShapeError(
            f"{layer_type}: {what} {_hw(window)} is larger than the input {_hw(padded)}"
            f"{pad_note}; output size would be < 1"
        )
    return tuple((padded[i] - window[i]) // stride[i] + 1 for i in range(2))


def _he_or_glorot(
    init: str,
    activation: Activation,
    shape: Shape,
    fan_in: int,
    fan_out: int,
    rng: np.random.Generator,
    dtype: np.dtype,
) -> np.ndarray:
    """He normal (std = gain / sqrt(fan_in), gain = sqrt(2 / (1 + a^2)); He et al. 2015) for
    layers followed by (leaky) ReLU, Glorot uniform (limit = sqrt(6 / (fan_in + fan_out));
    Glorot & Bengio 2010) otherwise."""
    if init == "auto":
        init = "he" if activation is not None else "glorot"
    if init == "he":
        alpha = activation[1] if isinstance(activation, tuple) else 0.0
        std = math.sqrt(2.0 / (1.0 + alpha**2) / fan_in)
        return (rng.standard_normal(shape) * std).astype(dtype)
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape).astype(dtype)


# --------------------------------------------------------------------------- conv / dense


class Conv2dArgs(LayerArgs):
    filters: PosInt = Field(description="Output channels.")
    kernel: Pair1 = Field(description="Kernel size, pixels: k or [kh, kw].")
    stride: Pair1 = Field((1, 1), description="Stride, pixels.")
    padding: ConvPadding = Field(
        ((0, 0), (0, 0)),
        description="Zero padding, pixels: p, [ph, pw], [[top, bottom], [left, right]], "
        "'same' (output = ceil(input / stride)) or 'valid' (= 0).",
    )
    dilation: Pair1 = Field((1, 1), description="Kernel dilation.")
    groups: PosInt = Field(1, description="Channel groups (groups = channels: depthwise).")
    bias: bool = Field(True, description="Add a learned bias per filter.")
    init: Literal["auto", "he", "glorot"] = Field(
        "auto", description="Weight init; auto = He before (leaky) ReLU, else Glorot."
    )


@register
class Conv2d(Layer):
    """2-D convolution (cross-correlation, like ONNX Conv), weight (F, C/groups, kh, kw)."""

    type = "conv2d"
    Args = Conv2dArgs
    args: Conv2dArgs

    def infer_shape(self, shapes: tuple[Shape, ...]) -> Shape:
        a = self.args
        c, h, w = self._one_input(shapes, 3, "(C, H, W)")
        if c % a.groups or a.filters % a.groups:
            raise ShapeError(
                f"conv2d: groups={a.groups} must divide both the input channels ({c}) "
                f"and filters ({a.filters})"
            )
        pads = F.resolve_padding(a.padding, a.kernel, a.stride, a.dilation, input_size=(h, w))
        self.pads: Pads = (
            (int(pads[0][0]), int(pads[0][1])),
            (int(pads[1][0]), int(pads[1][1])),
        )
        window = tuple(a.dilation[i] * (a.kernel[i] - 1) + 1 for i in range(2))
        what = "kernel" if window == a.kernel else f"dilated kernel (kernel {_hw(a.kernel)})"
        oh, ow = _spatial_out("conv2d", (h, w), window, a.stride, self.pads, what)
        return (a.filters, oh, ow)

    def param_shapes(self) -> dict[str, Shape]:
        a = self.args
        c = self.input_shapes[0][0]
        shapes = {"weight": (a.filters, c // a.groups, *a.kernel)}
        if a.bias:
            shapes["bias"] = (a.filters,)
        return shapes

    def init(self, rng, dtype, activation=None):
        a = self.args
        wshape = self.param_shapes()["weight"]
        receptive = a.kernel[0] * a.kernel[1]
        out = {
            "weight": _he_or_glorot(
                a.init,
                activation,
                wshape,
                fan_in=wshape[1] * receptive,
                fan_out=a.filters * receptive,
                rng=rng,
                dtype=dtype,
            )
        }
        if a.bias:
            out["bias"] = np.zeros(a.filters, dtype)
        return out

    def forward(self, xs, p, *, train=False, rng=None):
        a = self.args
        (x,) = xs
        y = F.conv2d(x, p["weight"], p.get("bias"), a.stride, self.pads, a.dilation, a.groups)
        return y, x

    def backward(self, dy, cache, p):
        a = self.args
        dx, dw, db = F.conv2d_backward(
            dy, cache, p["weight"], a.stride, self.pads, a.dilation, a.groups
        )
        grads = {"weight": dw}
        if a.bias:
            grads["bias"] = db
        return [dx], grads


class DenseArgs(LayerArgs):
    units: PosInt = Field(description="Output features.")
    bias: bool = Field(True, description="Add a learned bias per unit.")
    init: Literal["auto", "he", "glorot"] = Field(
        "auto", description="Weight init; auto = He before (leaky) ReLU, else Glorot."
    )


@register
class Dense(Layer):
    """Fully connected layer y = x W^T + b, weight (units, in) like ONNX Gemm(transB=1)."""

    type = "dense"
    Args = DenseArgs
    args: DenseArgs

    def infer_shape(self, shapes):
        (shape,) = shapes
        if len(shape) != 1:
            raise ShapeError(f"dense expects 1-D input, got {_fmt(shape)}; add flatten")
        return (self.args.units,)

    def param_shapes(self):
        shapes = {"weight": (self.args.units, self.input_shapes[0][0])}
        if self.args.bias:
            shapes["bias"] = (self.args.units,)
        return shapes

    def init(self, rng, dtype, activation=None):
        units, fan_in = self.param_shapes()["weight"]
        out = {
            "weight": _he_or_glorot(
                self.args.init, activation, (units, fan_in), fan_in, units, rng, dtype
            )
        }
        if self.args.bias:
            out["bias"] = np.zeros(units, dtype)
        return out

    def forward(self, xs, p, *, train=False, rng=None):
        (x,) = xs
        return F.dense(x, p["weight"], p.get("bias")), x

    def backward(self, dy, cache, p):
        dx, dw, db = F.dense_backward(dy, cache, p["weight"])
        grads = {"weight": dw}
        if self.args.bias:
            grads["bias"] = db
        return [dx], grads


# --------------------------------------------------------------------------- activations


class _Elementwise(Layer):
    def infer_shape(self, shapes):
        return shapes[0]


@register
class ReLU(_Elementwise):
    """max(x, 0)."""

    type = "relu"

    def forward(self, xs, p, *, train=False, rng=None):
        return F.relu(xs[0]), xs[0]

    def backward(self, dy, cache, p):
        return [F.relu_backward(dy, cache)], {}


class LeakyReLUArgs(LayerArgs):
    alpha: float = Field(0.01, ge=0.0, le=1.0, description="Slope for x < 0.")


@register
class LeakyReLU(_Elementwise):
    """x for x > 0, alpha * x otherwise."""

    type = "leaky_relu"
    Args = LeakyReLUArgs
    args: LeakyReLUArgs

    def forward(self, xs, p, *, train=False, rng=None):
        return F.leaky_relu(xs[0], self.args.alpha), xs[0]

    def backward(self, dy, cache, p):
        return [F.leaky_relu_backward(dy, cache, self.args.alpha)], {}


@register
class Sigmoid(_Elementwise):
    """1 / (1 + exp(-x))."""

    type = "sigmoid"

    def forward(self, xs, p, *, train=False, rng=None):
        y = F.sigmoid(xs[0])
        return y, y

    def backward(self, dy, cache, p):
        return [F.sigmoid_backward(dy, cache)], {}


@register
class Tanh(_Elementwise):
    """tanh(x)."""

    type = "tanh"

    def forward(self, xs, p, *, train=False, rng=None):
        y = F.tanh(xs[0])
        return y, y

    def backward(self, dy, cache, p):
        return [F.tanh_backward(dy, cache)], {}


@register
class Softmax(Layer):
    """Softmax over the features of a 1-D input. As a model's last layer it is the output
    activation: :meth:`pipeline.cnn.model.Model.forward` returns the logits before it."""

    type = "softmax"

    def infer_shape(self, shapes):
        return self._one_input(shapes, 1, "1-D")

    def forward(self, xs, p, *, train=False, rng=None):
        y = F.softmax(xs[0])
        return y, y

    def backward(self, dy, cache, p):
        y = cache
        return [y * (dy - np.sum(dy * y, axis=1, keepdims=True))], {}


# --------------------------------------------------------------------------- pooling


class PoolArgs(LayerArgs):
    size: Pair1 = Field(description="Window, pixels: k or [kh, kw].")
    stride: OptPair1 = Field(None, description="Stride, pixels; default = size.")
    padding: Pair0 = Field(
        (0, 0), description="Padding, pixels, each side: p or [ph, pw]; at most half the window."
    )


class _Pool2d(Layer):
    Args = PoolArgs
    args: PoolArgs

    def infer_shape(self, shapes):
        a = self.args
        c, h, w = self._one_input(shapes, 3, "(C, H, W)")
        self.stride = a.stride or a.size
        if any(2 * a.padding[i] > a.size[i] for i in range(2)):
            raise ShapeError(
                f"{self.type}: padding {_hw(a.padding)} is more than half the window {_hw(a.size)}"
            )
        pads = ((a.padding[0], a.padding[0]), (a.padding[1], a.padding[1]))
        oh, ow = _spatial_out(self.type, (h, w), a.size, self.stride, pads, "window")
        return (c, oh, ow)


@register
class MaxPool2d(_Pool2d):
    """Max over windows; padding never wins (it counts as -inf), like ONNX MaxPool."""

    type = "maxpool2d"

    def forward(self, xs, p, *, train=False, rng=None):
        a = self.args
        return F.max_pool2d(xs[0], a.size, self.stride, a.padding), xs[0]

    def backward(self, dy, cache, p):
        a = self.args
        return [F.max_pool2d_backward(dy, cache, a.size, self.stride, a.padding)], {}


@register
class AvgPool2d(_Pool2d):
    """Mean over windows; a window overlapping the padding averages its real pixels only
    (ONNX AveragePool's default count_include_pad=0)."""

    type = "avgpool2d"

    def forward(self, xs, p, *, train=False, rng=None):
        a = self.args
        return F.avg_pool2d(xs[0], a.size, self.stride, a.padding), xs[0].shape

    def backward(self, dy, cache, p):
        a = self.args
        return [F.avg_pool2d_backward(dy, cache, a.size, self.stride, a.padding)], {}


@register
class GlobalAvgPool(Layer):
    """Mean over H and W: (C, H, W) -> (C,), ready for dense."""

    type = "global_avgpool"

    def infer_shape(self, shapes):
        c, _, _ = self._one_input(shapes, 3, "(C, H, W)")
        return (c,)

    def forward(self, xs, p, *, train=False, rng=None):
        x = xs[0]
        return F.global_avg_pool(x).reshape(x.shape[0], x.shape[1]), x.shape

    def backward(self, dy, cache, p):
        return [F.global_avg_pool_backward(dy, cache)], {}


# --------------------------------------------------------------------------- normalisation


class BatchNormArgs(LayerArgs):
    eps: float = Field(1e-5, gt=0.0, le=1.0, description="Added to the variance.")
    momentum: float = Field(
        0.1,
        gt=0.0,
        le=1.0,
        description="Running-statistics update: running = (1 - m) * running + m * batch "
        "(PyTorch's convention; running variance uses the unbiased batch variance).",
    )


@register
class BatchNorm2d(Layer):
    """Per-channel batch normalisation (Ioffe & Szegedy 2015): batch statistics in training,
    running statistics in evaluation."""

    type = "batchnorm2d"
    Args = BatchNormArgs
    args: BatchNormArgs

    def infer_shape(self, shapes):
        return self._one_input(shapes, 3, "(C, H, W)")

    def param_shapes(self):
        c = self.input_shapes[0][0]
        return {"weight": (c,), "bias": (c,)}

    def buffer_shapes(self):
        c = self.input_shapes[0][0]
        return {"running_mean": (c,), "running_var": (c,)}

    def init(self, rng, dtype, activation=None):
        c = self.input_shapes[0][0]
        return {
            "weight": np.ones(c, dtype),
            "bias": np.zeros(c, dtype),
            "running_mean": np.zeros(c, dtype),
            "running_var": np.ones(c, dtype),
        }

    def forward(self, xs, p, *, train=False, rng=None):
        (x,) = xs
        a = self.args
        if not train:
            y = F.batch_norm(x, p["weight"], p["bias"], p["running_mean"], p["running_var"], a.eps)
            return y, None
        y, cache, mean, var = F.batch_norm_train(x, p["weight"], p["bias"], a.eps)
        n = x.shape[0] * x.shape[2] * x.shape[3]
        unbiased = var * (n / (n - 1)) if n > 1 else var
        rm, rv = p["running_mean"], p["running_var"]
        rm *= 1.0 - a.momentum
        rm += a.momentum * np.asarray(mean, rm.dtype).reshape(rm.shape)
        rv *= 1.0 - a.momentum
        rv += a.momentum * np.asarray(unbiased, rv.dtype).reshape(rv.shape)
        return y, cache

    def backward(self, dy, cache, p):
        if cache is None:
            raise RuntimeError("batchnorm2d: backward needs a forward pass in training mode")
        dx, dgamma, dbeta = F.batch_norm_backward(dy, cache)
        return [dx], {"weight": dgamma, "bias": dbeta}


class DropoutArgs(LayerArgs):
    rate: float = Field(
        0.5, ge=0.0, lt=1.0, description="Fraction of values zeroed in training (off in eval)."
    )


@register
class Dropout(_Elementwise):
    """Inverted dropout: in training, zero a fraction ``rate`` and scale the rest by
    1 / (1 - rate); identity in evaluation."""

    type = "dropout"
    Args = DropoutArgs
    args: DropoutArgs

    def forward(self, xs, p, *, train=False, rng=None):
        (x,) = xs
        if not train or self.args.rate == 0.0:
            return x, None
        if rng is None:
            raise ValueError("dropout in training mode needs a random generator")
        y, mask = F.dropout(x, self.args.rate, rng)
        return y, mask

    def backward(self, dy, cache, p):
        if cache is None:
            return [dy], {}
        return [F.dropout_backward(dy, cache)], {}


# --------------------------------------------------------------------------- structure


@register
class Flatten(Layer):
    """(C, H, W) -> (C * H * W,), in C-order like ONNX Flatten(axis=1)."""

    type = "flatten"

    def infer_shape(self, shapes):
        return (math.prod(shapes[0]),)

    def forward(self, xs, p, *, train=False, rng=None):
        x = xs[0]
        return F.flatten(x), x.shape

    def backward(self, dy, cache, p):
        return [F.flatten_backward(dy, cache)], {}


@register
class Add(Layer):
    """Element-wise sum of two or more inputs of one shape (a skip connection)."""

    type = "add"
    n_inputs = (2, None)

    def infer_shape(self, shapes):
        if any(s != shapes[0] for s in shapes[1:]):
            raise ShapeError("add expects inputs of one shape")
        return shapes[0]

    def forward(self, xs, p, *, train=False, rng=None):
        y = xs[0] + xs[1]
        for x in xs[2:]:
            y += x
        return y, len(xs)

    def backward(self, dy, cache, p):
        return [dy] * cache, {}


@register
class Concat(Layer):
    """Join two or more inputs along channels ((C, H, W): same H, W) or features ((D,))."""

    type = "concat"
    n_inputs = (2, None)

    def infer_shape(self, shapes):
        ndims = {len(s) for s in shapes}
        rest = {s[1:] for s in shapes}
        if len(ndims) != 1 or len(rest) != 1 or len(shapes[0]) not in (1, 3):
            raise ShapeError(
                "concat expects inputs that differ only in channels (C, H, W) or features (D,)"
            )
        return (sum(s[0] for s in shapes), *shapes[0][1:])

    def forward(self, xs, p, *, train=False, rng=None):
        sizes = [x.shape[1] for x in xs]
        return np.concatenate(xs, axis=1), sizes

    def backward(self, dy, cache, p):
        bounds = np.cumsum(cache)[:-1]
        return list(np.split(dy, bounds, axis=1)), {}
