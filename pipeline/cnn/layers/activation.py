"""Activation layers: ReLU, LeakyReLU, Sigmoid, Tanh, and Softmax."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from pipeline.cnn import functional as F
from pipeline.cnn.layers.base import Activation, Elementwise, Layer, LayerArgs, f32_attr, register


@register
class ReLU(Elementwise):
    """max(x, 0)."""

    type = "relu"
    onnx_ops = ("Relu",)
    int8_ops = ("Relu",)

    def forward(self, xs, p, *, train=False, rng=None):
        return F.relu(xs[0]), xs[0]

    def backward(self, dy, cache, p):
        return [F.relu_backward(dy, cache)], {}

    def fused(self, p):
        return Activation(0.0)


class LeakyReLUArgs(LayerArgs):
    alpha: float = Field(0.01, ge=0.0, le=1.0, description="Slope for x < 0.")


@register
class LeakyReLU(Elementwise):
    """x for x > 0, alpha * x otherwise."""

    type = "leaky_relu"
    Args = LeakyReLUArgs
    args: LeakyReLUArgs
    onnx_ops = ("LeakyRelu",)
    int8_ops = ("LeakyRelu",)

    def forward(self, xs, p, *, train=False, rng=None):
        return F.leaky_relu(xs[0], self.args.alpha), xs[0]

    def backward(self, dy, cache, p):
        return [F.leaky_relu_backward(dy, cache, self.args.alpha)], {}

    def fused(self, p):
        return Activation(float(self.args.alpha))

    def onnx_attrs(self):
        return {"alpha": self.args.alpha}

    @classmethod
    def args_from_onnx(cls, attrs):
        return {"alpha": f32_attr(attrs.get("alpha", 0.01))}


@register
class Sigmoid(Elementwise):
    """1 / (1 + exp(-x))."""

    type = "sigmoid"
    onnx_ops = ("Sigmoid",)
    int8_ops = ("Sigmoid",)

    def forward(self, xs, p, *, train=False, rng=None):
        y = F.sigmoid(xs[0])
        return y, y

    def backward(self, dy, cache, p):
        return [F.sigmoid_backward(dy, cache)], {}


@register
class Tanh(Elementwise):
    """tanh(x)."""

    type = "tanh"
    onnx_ops = ("Tanh",)
    int8_ops = ("Tanh",)

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
    onnx_ops = ("Softmax",)

    def infer_shape(self, shapes):
        return self._one_input(shapes, 1, "1-D")

    def forward(self, xs, p, *, train=False, rng=None):
        y = F.softmax(xs[0])
        return y, y

    def backward(self, dy, cache, p):
        y = cache
        return [y * (dy - np.sum(dy * y, axis=1, keepdims=True))], {}

    def to_onnx(self, name, inputs, out, params, opset):
        from onnx import helper

        return [helper.make_node("Softmax", list(inputs), [out], name=name, axis=-1)], []

    @classmethod
    def from_onnx(cls, reader, n, a):
        shape = reader.shape.get(n.input[0])
        reader.src(n, n.input[0])
        if shape is None or len(shape) != 1 or int(a.get("axis", -1)) not in (-1, 1):
            raise reader.fail("only a softmax over the features of (N, D) is supported", n)
        reader.activation(n, "softmax")

