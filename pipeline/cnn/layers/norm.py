"""Normalisation and regularisation layers: batch norm and dropout."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from pipeline.cnn import functional as F
from pipeline.cnn.layers.base import (
    ChannelAffine,
    Elementwise,
    Layer,
    LayerArgs,
    f32_attr,
    onnx_const,
    register,
)

BN_NODE_OPSET = 14
"""From this opset batch norm is written as BatchNormalization. Below it, as Mul + Add
with the folded scale and shift: BatchNormalization-9 (opsets 9-13) has a momentum
attribute with a schema default, which onnx.reference takes as training mode (it blends
the batch's statistics into the running ones, up to 0.36 relative off)."""


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
    onnx_ops = ("BatchNormalization", "Mul")

    def fused(self, p):
        scale = np.asarray(p["weight"], np.float64) / np.sqrt(
            np.asarray(p["running_var"], np.float64) + self.args.eps
        )
        return ChannelAffine(
            np.asarray(p["running_mean"], np.float64), scale, np.asarray(p["bias"], np.float64)
        )

    def to_onnx(self, name, inputs, out, params, opset):
        from onnx import helper

        if opset < BN_NODE_OPSET:
            return self._mul_add(name, inputs[0], out, params)
        keys = ("weight", "bias", "running_mean", "running_var")
        ins = [inputs[0], *(f"{name}.{k}" for k in keys)]
        momentum = 1.0 - self.args.momentum  # ONNX weighs the running value
        node = helper.make_node(
            "BatchNormalization", ins, [out], name=name, epsilon=self.args.eps, momentum=momentum
        )
        return [node], self._inits(name, params)

    def _mul_add(self, name, src, out, params):
        """y = x * scale + shift, scale = gamma / sqrt(var + eps), shift = beta - mean *
        scale (float64, stored as float32 (C, 1, 1))."""
        from onnx import helper

        affine = self.fused(params)
        scale = affine.scale.reshape(-1, 1, 1)
        shift = (affine.offset - affine.center * affine.scale).reshape(-1, 1, 1)
        inits = [
            onnx_const(f"{name}.scale", scale.astype(np.float32)),
            onnx_const(f"{name}.shift", shift.astype(np.float32)),
        ]
        nodes = [
            helper.make_node("Mul", [src, f"{name}.scale"], [f"{out}/scaled"], name=name),
            helper.make_node(
                "Add", [f"{out}/scaled", f"{name}.shift"], [out], name=f"{name}/shift"
            ),
        ]
        return nodes, inits

    @classmethod
    def from_onnx(cls, reader, n, a):
        if n.op_type == "Mul":
            cls._from_mul(reader, n)
            return
        shape = reader.spatial(n)
        if a.get("training_mode", 0):
            raise reader.fail("training_mode=1 is not supported", n)
        what = ("scale", "B", "mean", "var")
        vals = [reader.const_input(n, i, w) for i, w in enumerate(what, 1)]
        if any(v is None for v in vals):
            raise reader.fail("scale, B, mean and var must be constants", n)
        # ONNX: running = momentum * running + (1 - momentum) * batch; sensorlab the reverse
        momentum = float(f"{1.0 - f32_attr(a.get('momentum', 0.9)):.12g}")
        args = {"eps": f32_attr(a.get("epsilon", 1e-5)), "momentum": momentum}
        if not 0.0 < momentum <= 1.0:
            args.pop("momentum")
        weights = dict(zip(("weight", "bias", "running_mean", "running_var"), vals, strict=True))
        reader.add(n, "batchnorm2d", [n.input[0]], shape, args, weights)

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

    def backward(self, dy, cache, p, *, need_dx=True):
        if cache is None:
            raise RuntimeError("batchnorm2d: backward needs a forward pass in training mode")
        dx, dgamma, dbeta = F.batch_norm_backward(dy, cache)
        return [dx], {"weight": dgamma, "bias": dbeta}

    @classmethod
    def _from_mul(cls, reader, n) -> None:
        """Mul of a (C, H, W) map by a per-channel constant (how batch norm is written below
        opset 14): a batch norm with that scale and a zero shift; the Add of a per-channel
        constant that follows becomes its shift (``Add.from_onnx``)."""
        x, k = n.input[0], n.input[1]
        if x in reader.consts:
            x, k = k, x
        if k not in reader.consts:
            raise reader.fail("only a Mul by a per-channel constant (a batch norm) is supported", n)
        shape = reader.shape.get(x)
        scale = np.asarray(reader.consts[k], np.float32)
        reader.src(n, x)
        if shape is None or len(shape) != 3 or scale.shape not in ((shape[0], 1, 1), (shape[0],)):
            raise reader.fail(
                f"only a Mul of (N, C, H, W) by a (C, 1, 1) constant is supported, got input "
                f"{shape} and constant {scale.shape}",
                n,
            )
        c = shape[0]
        eps = BatchNormArgs.model_fields["eps"].default
        weights = {
            "weight": scale.reshape(c),
            "bias": np.zeros(c, np.float32),
            "running_mean": np.zeros(c, np.float32),
            "running_var": np.full(c, 1.0 - eps, np.float32),
        }
        reader.add(n, "batchnorm2d", [x], shape, {}, weights)


class DropoutArgs(LayerArgs):
    rate: float = Field(
        0.5, ge=0.0, lt=1.0, description="Fraction of values zeroed in training (off in eval)."
    )


@register
class Dropout(Elementwise):
    """Inverted dropout: in training, zero a fraction ``rate`` and scale the rest by
    1 / (1 - rate); identity in evaluation."""

    type = "dropout"
    Args = DropoutArgs
    args: DropoutArgs
    onnx_ops = ("Dropout",)

    def to_onnx(self, name, inputs, out, params, opset):
        from onnx import helper

        ratio = onnx_const(f"{name}.ratio", np.array(self.args.rate, np.float32))
        return [helper.make_node("Dropout", [inputs[0], ratio.name], [out], name=name)], [ratio]

    @classmethod
    def from_onnx(cls, reader, n, a):
        ratio = reader.const_input(n, 1, "ratio")
        if len(n.input) > 2 and n.input[2]:
            mode = reader.consts.get(n.input[2])
            if mode is None or bool(np.asarray(mode)):
                raise reader.fail("training_mode must be a constant false", n)
        rate = f32_attr(ratio if ratio is not None else a.get("ratio", 0.5))
        reader.activation(n, "dropout", {"rate": rate})

    def forward(self, xs, p, *, train=False, rng=None):
        (x,) = xs
        if not train or self.args.rate == 0.0:
            return x, None
        if rng is None:
            raise ValueError("dropout in training mode needs a random generator")
        y, mask = F.dropout(x, self.args.rate, rng)
        return y, mask

    def backward(self, dy, cache, p, *, need_dx=True):
        if cache is None:
            return [dy], {}
        return [F.dropout_backward(dy, cache)], {}


# --------------------------------------------------------------------------- structure
