"""The 2-D convolution layer."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from pipeline.cnn import functional as F
from pipeline.cnn.layers.base import (
    ConvKernel,
    ConvPadding,
    Layer,
    LayerArgs,
    Pads,
    Pair1,
    PosInt,
    ShapeError,
    _he_or_glorot,
    _hw,
    _spatial_out,
    onnx_const,
    register,
)


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
    onnx_ops = ("Conv",)
    int8_ops = ("Conv",)

    def infer_shape(self, shapes):
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

    def param_shapes(self):
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
        return F.conv2d_train(
            x, p["weight"], p.get("bias"), a.stride, self.pads, a.dilation, a.groups
        )

    def backward(self, dy, cache, p, *, need_dx=True):
        a = self.args
        dx, dw, db = F.conv2d_backward(
            dy, cache, p["weight"], a.stride, self.pads, a.dilation, a.groups, need_dx=need_dx
        )
        grads = {"weight": dw}
        if a.bias:
            grads["bias"] = db
        return [dx], grads

    def fused(self, p):
        a = self.args
        return ConvKernel(p["weight"], p.get("bias"), a.stride, self.pads, a.dilation, a.groups)

    def to_onnx(self, name, inputs, out, params, opset):
        from onnx import helper

        a = self.args
        (top, bottom), (left, right) = self.pads
        ins = [inputs[0], f"{name}.weight"] + ([f"{name}.bias"] if a.bias else [])
        inits = self._inits(name, params)
        kernel, dilation = list(a.kernel), list(a.dilation)
        depthwise = a.groups > 1 and a.groups == self.input_shapes[0][0]
        if depthwise and dilation != [1, 1]:
            # OpenCV's classic ONNX engine computes some padded, dilated depthwise
            # convolutions wrongly (OpenCV 5.0); the same kernel with the gaps filled by
            # zeros is the identical undilated convolution.
            w = np.asarray(params["weight"], np.float32)
            dh, dw = dilation
            wide = np.zeros(
                (*w.shape[:2], dh * (w.shape[2] - 1) + 1, dw * (w.shape[3] - 1) + 1), np.float32
            )
            wide[:, :, ::dh, ::dw] = w
            inits = [
                onnx_const(f"{name}.{k}", wide if k == "weight" else v) for k, v in params.items()
            ]
            kernel, dilation = list(wide.shape[2:]), [1, 1]
        node = helper.make_node(
            "Conv",
            ins,
            [out],
            name=name,
            kernel_shape=kernel,
            strides=list(a.stride),
            pads=[top, left, bottom, right],
            dilations=dilation,
            group=a.groups,
        )
        return [node], inits

    @classmethod
    def from_onnx(cls, reader, n, a):
        _, h, w = reader.spatial(n)
        weight = reader.const_input(n, 1, "weight")
        bias = reader.const_input(n, 2, "bias")
        if weight is None or weight.ndim != 4:
            raise reader.fail("only 2-D convolutions (4-D weights) are supported", n)
        f, _, kh, kw = weight.shape
        stride = tuple(a.get("strides", (1, 1)))
        dilation = tuple(a.get("dilations", (1, 1)))
        window = tuple(dilation[i] * (weight.shape[2 + i] - 1) + 1 for i in range(2))
        pads = reader.pads(n, a, (h, w), window, stride)
        args = {
            "filters": int(f),
            "kernel": [int(kh), int(kw)],
            "stride": [int(s) for s in stride],
            "padding": [list(pads[0]), list(pads[1])],
            "dilation": [int(d) for d in dilation],
            "groups": int(a.get("group", 1)),
            "bias": bias is not None,
        }
        oh = (h + sum(pads[0]) - window[0]) // stride[0] + 1
        ow = (w + sum(pads[1]) - window[1]) // stride[1] + 1
        weights = {"weight": weight} | ({"bias": bias.reshape(f)} if bias is not None else {})
        reader.add(n, "conv2d", [n.input[0]], (int(f), oh, ow), args, weights)
