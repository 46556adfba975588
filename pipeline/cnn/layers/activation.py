"""Activation layers: ReLU, LeakyReLU, Sigmoid, Tanh, Softmax and HardSigmoid."""

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

    def backward(self, dy, cache, p, *, need_dx=True):
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

    def backward(self, dy, cache, p, *, need_dx=True):
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

    def backward(self, dy, cache, p, *, need_dx=True):
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

    def backward(self, dy, cache, p, *, need_dx=True):
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

    def backward(self, dy, cache, p, *, need_dx=True):
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


class HardSigmoidArgs(LayerArgs):
    alpha: float = Field(0.2, gt=0.0, le=10.0, description="Slope of the linear part.")
    beta: float = Field(0.5, ge=0.0, le=1.0, description="Value at x = 0.")


@register
class HardSigmoid(Elementwise):
    """max(0, min(1, alpha * x + beta)), a piecewise-linear sigmoid (ONNX HardSigmoid;
    Courbariaux et al. 2015). The gradient is alpha inside (0, 1), zero outside."""

    type = "hard_sigmoid"
    Args = HardSigmoidArgs
    args: HardSigmoidArgs
    onnx_ops = ("HardSigmoid",)

    def forward(self, xs, p, *, train=False, rng=None):
        (x,) = xs
        a = self.args
        z = x * x.dtype.type(a.alpha) + x.dtype.type(a.beta)
        return np.clip(z, 0, 1), z

    def backward(self, dy, cache, p, *, need_dx=True):
        inside = (cache > 0) & (cache < 1)
        return [np.where(inside, dy * dy.dtype.type(self.args.alpha), 0).astype(dy.dtype)], {}

    def onnx_attrs(self):
        return {"alpha": self.args.alpha, "beta": self.args.beta}

    @classmethod
    def args_from_onnx(cls, attrs):
        return {
            "alpha": f32_attr(attrs.get("alpha", 0.2)),
            "beta": f32_attr(attrs.get("beta", 0.5)),
        }
