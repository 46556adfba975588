"""Structure layers: flatten, add (skip connections) and concat."""

from __future__ import annotations

import math

import numpy as np

from pipeline.cnn import functional as F
from pipeline.cnn.layers.base import Flattens, Layer, ShapeError, register


@register
class Flatten(Layer):
    """(C, H, W) -> (C * H * W,), in C-order like ONNX Flatten(axis=1)."""

    type = "flatten"
    onnx_ops = ("Flatten", "Reshape")

    def fused(self, p):
        return Flattens()

    def to_onnx(self, name, inputs, out, params, opset):
        from onnx import helper

        return [helper.make_node("Flatten", list(inputs), [out], name=name, axis=1)], []

    @classmethod
    def from_onnx(cls, reader, n, a):
        """Flatten(axis=1) or Reshape to (N, -1); after a GlobalAveragePool the pair is one
        global_avgpool layer."""
        if n.op_type == "Flatten" and int(a.get("axis", 1)) != 1:
            raise reader.fail("only Flatten with axis=1 is supported", n)
        src = n.input[0]
        if n.op_type == "Reshape":
            target = reader.consts.get(n.input[1]) if len(n.input) > 1 else None
            shape = reader.shape.get(src)
            if target is None or shape is None:
                raise reader.fail("only Reshape with a constant shape is supported", n)
            t = [int(v) for v in np.asarray(target).ravel()]
            size = math.prod(shape)
            if not (len(t) == 2 and t[0] >= -1 and t[1] in (-1, size) and t != [-1, -1]):
                raise reader.fail(
                    f"only a Reshape to (N, {size}) (a flatten) is supported, got {t}", n
                )
        if src in reader.pending_gap:
            gap_node, gap_in = reader.pending_gap.pop(src)
            c = reader.shape[gap_in][0]
            reader.add(gap_node, "global_avgpool", [gap_in], (c,), output=n.output[0])
            return
        reader.src(n, src)
        reader.add(n, "flatten", [src], (math.prod(reader.shape[src]),))

    def infer_shape(self, shapes):
        return (math.prod(shapes[0]),)

    def forward(self, xs, p, *, train=False, rng=None):
        x = xs[0]
        return F.flatten(x), x.shape

    def backward(self, dy, cache, p, *, need_dx=True):
        return [F.flatten_backward(dy, cache)], {}


@register
class Add(Layer):
    """Element-wise sum of two or more inputs of one shape (a skip connection)."""

    type = "add"
    n_inputs = (2, None)
    onnx_ops = ("Add", "Sum")
    int8_ops = ("Add",)

    def infer_shape(self, shapes):
        if any(s != shapes[0] for s in shapes[1:]):
            raise ShapeError("add expects inputs of one shape")
        return shapes[0]

    def forward(self, xs, p, *, train=False, rng=None):
        y = xs[0] + xs[1]
        for x in xs[2:]:
            y += x
        return y, len(xs)

    def backward(self, dy, cache, p, *, need_dx=True):
        return [dy] * cache, {}

    def to_onnx(self, name, inputs, out, params, opset):
        from onnx import helper

        nodes, acc = [], inputs[0]
        for k, other in enumerate(inputs[1:], start=1):
            dst = out if k == len(inputs) - 1 else f"{out}/sum{k}"
            node_name = name if k == 1 else f"{name}/add{k}"
            nodes.append(helper.make_node("Add", [acc, other], [dst], name=node_name))
            acc = dst
        return nodes, []

    @classmethod
    def from_onnx(cls, reader, n, a):
        """Add or Sum of layer outputs; an Add of a constant is a bias-less dense layer's
        bias (how MatMul + Add is written)."""
        if n.op_type == "Sum" and len(n.input) == 1:
            reader.alias(n, n.input[0])
            return
        if n.op_type == "Add" and (n.input[0] in reader.consts or n.input[1] in reader.consts):
            cls._dense_bias(reader, n)
            return
        srcs = list(n.input)
        shapes = [reader.shape.get(s) for s in srcs]
        for s in srcs:
            reader.src(n, s)
        if any(sh != shapes[0] for sh in shapes):
            raise reader.fail(f"only an add of equal shapes is supported, got {shapes}", n)
        first = reader.ref[srcs[0]]
        last = reader.rows[-1] if reader.rows else None
        # a chain of binary Adds (how an n-ary add is exported) becomes one add layer
        if (
            last is not None
            and last["type"] == "add"
            and last["name"] == first
            and reader.readers.get(srcs[0], 0) == 1
            and srcs[0] not in [o.name for o in reader.graph.output]
        ):
            last["from"] = [*last["from"], *(reader.ref[s] for s in srcs[1:])]
            reader.ref[n.output[0]] = first
            reader.shape[n.output[0]] = shapes[0]
            return
        reader.add(n, "add", srcs, shapes[0])
        reader.rows[-1]["from"] = [reader.ref[s] for s in srcs]

    @staticmethod
    def _dense_bias(reader, n) -> None:
        """An Add of a constant is the bias of the layer before it: a dense layer without
        one (MatMul + Add) or a batch norm read from a Mul (below opset 14)."""
        x, y = n.input[0], n.input[1]
        const, src = (y, x) if y in reader.consts else (x, y)
        last = reader.rows[-1] if reader.rows else None
        c = np.asarray(reader.consts[const], np.float32)
        name = last["name"] if last is not None else None
        bias = reader.weights.get(f"{name}.bias")
        if last is None or reader.ref.get(src) != name or reader.readers.get(src, 0) != 1:
            open_bias = False
        elif last["type"] == "dense":
            open_bias = not last["bias"] and c.size == last["units"]
        else:
            open_bias = (
                last["type"] == "batchnorm2d"
                and not np.any(bias)
                and not np.any(reader.weights[f"{name}.running_mean"])
                and c.shape in ((bias.size, 1, 1), (bias.size,))
            )
        if not open_bias:
            raise reader.fail(
                "an Add of a constant is supported only as a MatMul's bias or a batch norm's "
                "shift (Mul + Add)",
                n,
            )
        if last["type"] == "dense":
            last["bias"] = True
        reader.weights[f"{name}.bias"] = c.reshape(-1)
        reader.ref[n.output[0]] = name
        reader.shape[n.output[0]] = reader.shape[src]


@register
class Concat(Layer):
    """Join two or more inputs along channels ((C, H, W): same H, W) or features ((D,))."""

    type = "concat"
    n_inputs = (2, None)
    onnx_ops = ("Concat",)
    int8_ops = ("Concat",)

    def to_onnx(self, name, inputs, out, params, opset):
        from onnx import helper

        return [helper.make_node("Concat", list(inputs), [out], name=name, axis=1)], []

    @classmethod
    def from_onnx(cls, reader, n, a):
        shapes = [reader.shape.get(s) for s in n.input]
        for s in n.input:
            reader.src(n, s)
        rank = len(shapes[0]) + 1
        axis = int(a["axis"])
        if axis < 0:
            axis += rank
        if axis != 1 or any(len(s) != rank - 1 or s[1:] != shapes[0][1:] for s in shapes):
            raise reader.fail("only a concat along channels (axis 1) is supported", n)
        out = (sum(s[0] for s in shapes), *shapes[0][1:])
        reader.add(n, "concat", list(n.input), out)
        reader.rows[-1]["from"] = [reader.ref[s] for s in n.input]

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

    def backward(self, dy, cache, p, *, need_dx=True):
        bounds = np.cumsum(cache)[:-1]
        return list(np.split(dy, bounds, axis=1)), {}
