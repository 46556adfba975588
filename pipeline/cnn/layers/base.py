"""The layer interface: one class per YAML layer type is the one place that knows it.

A layer class (a subclass of :class:`Layer`, registered with :func:`register`) holds,
side by side, everything about its type:

===================== =====================================================================
``type``, ``Args``    the YAML name and its keyword arguments (a strict pydantic model)
``n_inputs``          how many inputs it reads (min, max; None = any)
``infer_shape``       output shape from input shapes, one sample each, ``(C, H, W)`` or
                      ``(D,)``; a :class:`ShapeError` when they do not fit (Keras-style: a
                      graph is checked before any data flows)
``param_shapes``,     trained parameters and saved state (``weight``, ``bias``,
``buffer_shapes``,    ``running_mean``, ``running_var``), and their initial values
``init``
``forward``,          batch-first arrays through :mod:`pipeline.cnn.functional`; forward
``backward``          returns the cache its backward reads (micrograd-style: an op's
                      forward and backward next to each other)
``fused``             the hook of the compiled evaluator (:mod:`pipeline.cnn.fast`): its
                      evaluation-mode computation as one of the kernel forms below, or None
                      (the evaluator then calls ``forward``)
``to_onnx``           its ONNX nodes and initializers at a given opset
``onnx_ops``,         the ONNX operators it is imported from, and the importer
``from_onnx``         (:class:`pipeline.cnn.onnx_import` dispatches by operator)
``int8_ops``          the ONNX operators of its emission that the int8 export quantises
===================== =====================================================================

Every spatial output size follows ``floor((W - F + 2P) / S) + 1`` (ONNX's default, pooling
included), with ``F = dilation * (kernel - 1) + 1``.

Parameters live outside the layer, in the model's ordered dict (``"<layer>.<param>"``); a
layer receives its own slice as a dict keyed by the short names.

Adding a layer type is one module in this package (every module here is imported by the
package, so ``@register`` is all it takes) plus its tests and its row in docs/layers.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

if TYPE_CHECKING:  # onnx is imported where a layer is exported or imported
    import onnx

__all__ = [
    "LAYERS",
    "Activation",
    "ChannelAffine",
    "ConvKernel",
    "DenseKernel",
    "Flattens",
    "Fused",
    "Layer",
    "LayerArgs",
    "MaxPoolWindow",
    "OnnxNodes",
    "ShapeError",
    "f32_attr",
    "onnx_const",
    "register",
]

Shape = tuple[int, ...]
Pads = tuple[tuple[int, int], tuple[int, int]]  # ((top, bottom), (left, right))

# Activation that follows a layer, used to pick its initialisation: None (linear),
# "relu", or ("leaky_relu", alpha).
InitActivation = Any
OnnxNodes = tuple[list["onnx.NodeProto"], list["onnx.TensorProto"]]


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


# ------------------------------------------------------------- compiled-evaluator forms
# What a layer's evaluation-mode computation *is*, for the compiled evaluator to fuse
# (pipeline.cnn.fast): algebra, not layer names. A layer that returns None from
# ``fused`` is run by its own ``forward``.


@dataclass(frozen=True)
class ConvKernel:
    """y = conv(x, weight) + bias (ONNX Conv), pads resolved ((top, bottom), (left, right))."""

    weight: np.ndarray
    bias: np.ndarray | None
    stride: tuple[int, int]
    pads: Pads
    dilation: tuple[int, int]
    groups: int


@dataclass(frozen=True)
class ChannelAffine:
    """y = (x - center[c]) * scale[c] + offset[c] per channel (an evaluation-mode batch
    norm), float64."""

    center: np.ndarray
    scale: np.ndarray
    offset: np.ndarray


@dataclass(frozen=True)
class Activation:
    """y = max(x, alpha * x), 0 <= alpha <= 1 (ReLU: alpha = 0)."""

    alpha: float


@dataclass(frozen=True)
class MaxPoolWindow:
    """Max over windows ``size`` with ``stride`` and symmetric zero-free ``padding``."""

    size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]


@dataclass(frozen=True)
class DenseKernel:
    """y = x weight^T + bias on (N, D) features."""

    weight: np.ndarray
    bias: np.ndarray | None


@dataclass(frozen=True)
class Flattens:
    """(N, C, H, W) -> (N, C*H*W) in C order."""


Fused = ConvKernel | ChannelAffine | Activation | MaxPoolWindow | DenseKernel | Flattens


def onnx_const(name: str, value: Any) -> onnx.TensorProto:
    """An initializer named ``name`` holding ``value`` (C order)."""
    from onnx import numpy_helper

    return numpy_helper.from_array(np.array(value, order="C"), name)


def f32_attr(value: Any) -> float:
    """A float32 ONNX attribute as the shortest decimal that rounds to it (0.1, not
    0.10000000149011612), so a value written from YAML reads back as written."""
    return float(str(np.float32(value)))


class Layer:
    """One node type of the layer graph (the module docstring lists what a class holds).

    Subclasses set ``type``, ``Args`` and ``n_inputs`` and implement :meth:`infer_shape`,
    :meth:`forward`, :meth:`backward` and :meth:`to_onnx`; layers with parameters also
    implement :meth:`param_shapes` (and :meth:`buffer_shapes`) and :meth:`init`.
    """

    type: ClassVar[str]
    Args: ClassVar[type[LayerArgs]] = NoArgs
    n_inputs: ClassVar[tuple[int, int | None]] = (1, 1)
    onnx_ops: ClassVar[tuple[str, ...]] = ()
    int8_ops: ClassVar[tuple[str, ...]] = ()

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
        self, rng: np.random.Generator, dtype: np.dtype, activation: InitActivation = None
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
        self, dy: np.ndarray, cache: Any, p: Mapping[str, np.ndarray], *, need_dx: bool = True
    ) -> tuple[list[np.ndarray | None], dict[str, np.ndarray]]:
        """Gradients with respect to each input and to each parameter (short names).
        ``need_dx=False``: the caller drops the input gradients (the layer reads only the
        network's input), so a layer may skip them and return None in their place."""
        raise NotImplementedError

    # -- compiled evaluator
    def fused(self, p: Mapping[str, np.ndarray]) -> Fused | None:
        """This layer's evaluation-mode computation as a kernel form the compiled evaluator
        may fuse, or None (it then calls :meth:`forward`)."""
        return None

    # -- ONNX
    def to_onnx(
        self,
        name: str,
        inputs: Sequence[str],
        out: str,
        params: Mapping[str, np.ndarray],
        opset: int,
    ) -> OnnxNodes:
        """ONNX nodes computing ``out`` from ``inputs`` (evaluation mode) and the
        initializers they read (named ``<name>.<param>``)."""
        raise NotImplementedError(f"layer type {self.type!r} has no ONNX export")

    @classmethod
    def from_onnx(cls, reader: Any, node: onnx.NodeProto, attrs: dict[str, Any]) -> None:
        """Add this layer for an ONNX ``node`` of one of :attr:`onnx_ops` to ``reader``
        (a :class:`pipeline.cnn.onnx_import.OnnxReader`), or raise ``reader.fail``."""
        raise NotImplementedError

    # -- helpers
    def _inits(self, name: str, params: Mapping[str, np.ndarray]) -> list[onnx.TensorProto]:
        return [onnx_const(f"{name}.{k}", np.asarray(v, np.float32)) for k, v in params.items()]

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
    activation: InitActivation,
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


class Elementwise(Layer):
    """A one-input layer whose output has its input's shape, exported as the one ONNX
    operator ``onnx_ops[0]`` with :meth:`onnx_attrs` and imported back with
    :meth:`args_from_onnx`."""

    def infer_shape(self, shapes):
        return shapes[0]

    def onnx_attrs(self) -> dict[str, Any]:
        """Attributes of the ONNX node."""
        return {}

    @classmethod
    def args_from_onnx(cls, attrs: dict[str, Any]) -> dict[str, Any]:
        """Layer arguments from the ONNX node's attributes."""
        return {}

    def to_onnx(self, name, inputs, out, params, opset):
        from onnx import helper

        node = helper.make_node(
            self.onnx_ops[0], list(inputs), [out], name=name, **self.onnx_attrs()
        )
        return [node], []

    @classmethod
    def from_onnx(cls, reader, n, a):
        reader.activation(n, cls.type, cls.args_from_onnx(a))
