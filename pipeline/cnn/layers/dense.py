"""The fully connected layer."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from pipeline.cnn import functional as F
from pipeline.cnn.layers.base import (
    DenseKernel,
    Layer,
    LayerArgs,
    PosInt,
    ShapeError,
    _fmt,
    _he_or_glorot,
    register,
)


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
    onnx_ops = ("Gemm", "MatMul")
    int8_ops = ("Gemm", "MatMul")

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

    def backward(self, dy, cache, p, *, need_dx=True):
        dx, dw, db = F.dense_backward(dy, cache, p["weight"], need_dx=need_dx)
        grads = {"weight": dw}
        if self.args.bias:
            grads["bias"] = db
        return [dx], grads

    def fused(self, p):
        return DenseKernel(p["weight"], p.get("bias"))

    def to_onnx(self, name, inputs, out, params, opset):
        from onnx import helper

        ins = [inputs[0], f"{name}.weight"] + ([f"{name}.bias"] if self.args.bias else [])
        return [helper.make_node("Gemm", ins, [out], name=name, transB=1)], self._inits(
            name, params
        )

    @classmethod
    def from_onnx(cls, reader, n, a):
        if n.op_type == "MatMul":
            b = reader.const_input(n, 1, "second operand")
            if b is None or b.ndim != 2:
                raise reader.fail("only MatMul with a constant 2-D second operand is supported", n)
            cls._add_dense(reader, n, np.ascontiguousarray(b.T), None)
            return
        if a.get("transA", 0):
            raise reader.fail("transA=1 is not supported", n)
        b = reader.const_input(n, 1, "weight (B)")
        c = reader.const_input(n, 2, "bias (C)")
        if b is None or b.ndim != 2:
            raise reader.fail("B must be a 2-D constant", n)
        weight = (b if a.get("transB", 0) else b.T) * np.float32(a.get("alpha", 1.0))
        bias = None
        if c is not None:
            units = weight.shape[0]
            try:
                bias = np.broadcast_to(c * np.float32(a.get("beta", 1.0)), (1, units))[0]
            except ValueError:
                raise reader.fail(
                    f"C of shape {c.shape} does not broadcast to ({units},)", n
                ) from None
        cls._add_dense(reader, n, np.ascontiguousarray(weight), bias)

    @staticmethod
    def _add_dense(reader, n, weight: np.ndarray, bias: np.ndarray | None) -> None:
        src = n.input[0]
        shape = reader.shape.get(src)
        if shape is None or len(shape) != 1 or weight.shape[1] != shape[0]:
            raise reader.fail(
                f"expects (N, {weight.shape[1]}) input, got one sample of shape {shape}", n
            )
        units = int(weight.shape[0])
        weights = {"weight": weight} | ({"bias": bias} if bias is not None else {})
        reader.add(n, "dense", [src], (units,), {"units": units, "bias": bias is not None}, weights)
