"""Pooling layers: max, average and global average."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from pipeline.cnn import functional as F
from pipeline.cnn.layers.base import (
    Layer,
    LayerArgs,
    MaxPoolWindow,
    OptPair1,
    Pair0,
    Pair1,
    ShapeError,
    _hw,
    _spatial_out,
    register,
)


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

    def to_onnx(self, name, inputs, out, params, opset):
        from onnx import helper

        ph, pw = self.args.padding
        attrs: dict[str, Any] = {
            "kernel_shape": list(self.args.size),
            "strides": list(self.stride),
            "pads": [ph, pw, ph, pw],
        }
        if self.type == "avgpool2d":
            attrs["count_include_pad"] = 0
        return [helper.make_node(self.onnx_ops[0], list(inputs), [out], name=name, **attrs)], []

    @classmethod
    def from_onnx(cls, reader, n, a):
        c, h, w = reader.spatial(n)
        size = tuple(int(k) for k in a["kernel_shape"])
        stride = tuple(int(s) for s in a.get("strides", (1, 1)))
        if a.get("ceil_mode", 0):
            raise reader.fail("ceil_mode=1 is not supported (sensorlab pools round down)", n)
        if any(d != 1 for d in a.get("dilations", (1, 1))):
            raise reader.fail("dilated pooling is not supported", n)
        if a.get("storage_order", 0):
            raise reader.fail("storage_order=1 is not supported", n)
        (t, b), (left, r) = reader.pads(n, a, (h, w), size, stride)
        if t != b or left != r:
            raise reader.fail(f"asymmetric pads {[t, left, b, r]} are not supported for pooling", n)
        if cls.type == "avgpool2d" and a.get("count_include_pad", 0) and (t or left):
            raise reader.fail("count_include_pad=1 with padding is not supported", n)
        oh = (h + 2 * t - size[0]) // stride[0] + 1
        ow = (w + 2 * left - size[1]) // stride[1] + 1
        args = {"size": list(size), "stride": list(stride), "padding": [t, left]}
        reader.add(n, cls.type, [n.input[0]], (c, oh, ow), args)


@register
class MaxPool2d(_Pool2d):
    """Max over windows; padding never wins (it counts as -inf), like ONNX MaxPool."""

    type = "maxpool2d"
    onnx_ops = ("MaxPool",)
    int8_ops = ("MaxPool",)

    def fused(self, p):
        return MaxPoolWindow(self.args.size, self.stride, self.args.padding)

    def forward(self, xs, p, *, train=False, rng=None):
        a = self.args
        return F.max_pool2d(xs[0], a.size, self.stride, a.padding), xs[0]

    def backward(self, dy, cache, p, *, need_dx=True):
        a = self.args
        return [F.max_pool2d_backward(dy, cache, a.size, self.stride, a.padding)], {}


@register
class AvgPool2d(_Pool2d):
    """Mean over windows; a window overlapping the padding averages its real pixels only
    (ONNX AveragePool's default count_include_pad=0)."""

    type = "avgpool2d"
    onnx_ops = ("AveragePool",)
    int8_ops = ("AveragePool",)

    def forward(self, xs, p, *, train=False, rng=None):
        a = self.args
        return F.avg_pool2d(xs[0], a.size, self.stride, a.padding), xs[0].shape

    def backward(self, dy, cache, p, *, need_dx=True):
        a = self.args
        return [F.avg_pool2d_backward(dy, cache, a.size, self.stride, a.padding)], {}


@register
class GlobalAvgPool(Layer):
    """Mean over H and W: (C, H, W) -> (C,), ready for dense."""

    type = "global_avgpool"
    onnx_ops = ("GlobalAveragePool",)
    int8_ops = ("GlobalAveragePool",)

    def to_onnx(self, name, inputs, out, params, opset):
        from onnx import helper

        mid = f"{out}/gap"
        return [
            helper.make_node("GlobalAveragePool", list(inputs), [mid], name=name),
            helper.make_node("Flatten", [mid], [out], name=f"{name}/flatten", axis=1),
        ], []

    @classmethod
    def from_onnx(cls, reader, n, a):
        """GlobalAveragePool is half the pattern: the Flatten or Reshape that reads it
        (:class:`pipeline.cnn.layers.structure.Flatten`) adds the layer."""
        c, _, _ = reader.spatial(n)
        reader.pending_gap[n.output[0]] = (n, n.input[0])
        reader.shape[n.output[0]] = (c, 1, 1)

    def infer_shape(self, shapes):
        c, _, _ = self._one_input(shapes, 3, "(C, H, W)")
        return (c,)

    def forward(self, xs, p, *, train=False, rng=None):
        x = xs[0]
        return F.global_avg_pool(x).reshape(x.shape[0], x.shape[1]), x.shape

    def backward(self, dy, cache, p, *, need_dx=True):
        return [F.global_avg_pool_backward(dy, cache)], {}
