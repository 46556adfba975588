"""ONNX import: an ONNX model whose operators sensorlab supports -> a model YAML plus weights.

Each ONNX node becomes one layer row (named after the node when it can be), its constant
inputs (initializers or ``Constant`` nodes) the layer's weights:

===================================  ======================================================
ONNX                                 layer
===================================  ======================================================
Conv (2-D; pads, auto_pad, group)    conv2d
Gemm (any transB, alpha, beta)       dense
MatMul (constant B) [+ Add bias]     dense
Relu, LeakyRelu, Sigmoid, Tanh       relu, leaky_relu, sigmoid, tanh
Softmax (last axis)                  softmax
MaxPool, AveragePool                 maxpool2d, avgpool2d (floor sizes, symmetric pads;
                                     AveragePool with count_include_pad=0 when padded)
GlobalAveragePool + Flatten/Reshape  global_avgpool
BatchNormalization (inference)       batchnorm2d
Dropout                              dropout
Flatten (axis 1), Reshape (N, -1)    flatten
Add, Sum (of two layer outputs)      add
Concat (channels or features)        concat
Identity                             (nothing)
===================================  ======================================================

A graph exported by :mod:`pipeline.cnn.onnx_export` with the raw sensor front end is
imported from its CNN input on (the front end is fixed by the sensor, not trained). The
first graph output is the model's output; a Softmax that produces it becomes the trailing
softmax layer (the model's output activation).

Anything else is refused with one line that names every unsupported operator.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import yaml
from onnx import numpy_helper

from pipeline.cnn.graph import parse_graph
from pipeline.cnn.model import Model
from pipeline.cnn.onnx_export import read_metadata
from pipeline.errors import UserError
from pipeline.files import ordinary_mode

__all__ = ["SUPPORTED_OPS", "ImportedModel", "import_onnx", "load_onnx", "write_imported"]

SUPPORTED_OPS = (
    "AveragePool",
    "BatchNormalization",
    "Concat",
    "Constant",
    "Conv",
    "Dropout",
    "Flatten",
    "Gemm",
    "GlobalAveragePool",
    "Identity",
    "LeakyRelu",
    "MatMul",
    "MaxPool",
    "Relu",
    "Reshape",
    "Sigmoid",
    "Softmax",
    "Sum",
    "Tanh",
    "Add",
)
_INPUT = "input"


@dataclass
class ImportedModel:
    """A model read from ONNX: the model YAML mapping, the built model and its metadata."""

    data: dict[str, Any]  # what the model YAML holds
    model: Model
    metadata: dict[str, Any]
    dropped_front: bool  # a sensor front end was left out


def load_onnx(path: str | Path) -> onnx.ModelProto:
    """Read an ONNX file, or a UserError naming it."""
    path = Path(path)
    try:
        return onnx.load(str(path))
    except FileNotFoundError:
        raise UserError("ONNX file not found", file=path) from None
    except IsADirectoryError:
        raise UserError("is a folder, expected an .onnx file", file=path) from None
    except Exception as exc:  # protobuf DecodeError and friends
        raise UserError(f"not a readable ONNX model: {exc}", file=path) from None


def _f32(value: Any) -> float:
    """A float32 attribute as the shortest decimal that rounds to it (0.1, not
    0.10000000149011612), so a value written from YAML reads back as written."""
    return float(str(np.float32(value)))


class _Converter:
    """Walks a graph in node order and writes layer rows."""

    def __init__(self, proto: onnx.ModelProto, file: str | None):
        self.file = file
        self.graph = proto.graph
        self.meta = read_metadata(proto)
        self.consts: dict[str, np.ndarray] = {
            t.name: numpy_helper.to_array(t) for t in self.graph.initializer
        }
        self.rows: list[dict[str, Any]] = []
        self.weights: dict[str, np.ndarray] = {}
        self.ref: dict[str, str] = {}  # tensor -> layer name (or "input")
        self.shape: dict[str, tuple[int, ...]] = {}  # tensor -> one sample's shape
        # GlobalAveragePool output -> (its node, its input), until a Flatten reads it
        self.pending_gap: dict[str, tuple[onnx.NodeProto, str]] = {}
        self.used_names: set[str] = {_INPUT}
        self.readers: dict[str, int] = {}
        self.dropped_front = False

    def fail(self, message: str, node: onnx.NodeProto | None = None) -> UserError:
        where = f"node {node.name or node.op_type!r} ({node.op_type}): " if node is not None else ""
        return UserError(f"{where}{message}", file=self.file)

    # ------------------------------------------------------------------ setup
    def run(self, name: str | None) -> dict[str, Any]:
        graph = self.graph
        nodes = list(graph.node)
        for n in nodes:
            if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
                self.consts[n.output[0]] = self._constant(n)
        output = graph.output[0].name if graph.output else None
        if output is None:
            raise self.fail("the graph has no output")
        start, in_shape = self._start(nodes)
        needed = self._ancestors(nodes, output, stop=start)
        nodes = [n for n in nodes if id(n) in needed and n.op_type != "Constant"]
        unsupported = sorted(
            {
                n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
                for n in nodes
                if n.domain not in ("", "ai.onnx") or n.op_type not in SUPPORTED_OPS
            }
        )
        if unsupported:
            raise self.fail(
                f"unsupported ONNX operator{'s' if len(unsupported) > 1 else ''}: "
                f"{', '.join(unsupported)} (sensorlab imports "
                f"{', '.join(sorted(set(SUPPORTED_OPS) - {'Constant'}))})"
            )
        for n in nodes:
            for t in n.input:
                self.readers[t] = self.readers.get(t, 0) + 1
        self.ref[start] = _INPUT
        self.shape[start] = in_shape
        for n in nodes:
            self._convert(n)
        if output not in self.ref:
            raise self.fail(f"the output {output!r} is not computed from the input")
        if self.ref[output] == _INPUT:
            raise self.fail("the graph has no layers between its input and output")
        last = self.rows[-1]
        if last["name"] != self.ref[output] and not (
            last["type"] == "softmax"
            and len(self.rows) > 1
            and self.rows[-2]["name"] == self.ref[output]
        ):
            raise self.fail(f"the output {output!r} is not the last layer's output")
        self._output_softmax(output)
        k = self.shape[output]
        if len(k) != 1:
            raise self.fail(f"the output must be (N, classes), got one sample of shape {k}")
        classes = self.meta.get("class_names")
        if not (isinstance(classes, list) and len(classes) == k[0]):
            classes = [f"c{i}" for i in range(k[0])]
        model_name = name or self.meta.get("model_name") or graph.name or "imported"
        return {
            "name": str(model_name),
            "description": f"imported from ONNX ({Path(self.file).name if self.file else 'model'})",
            "input": list(in_shape),
            "classes": [str(c) for c in classes],
            "layers": self.rows,
        }

    def _output_softmax(self, logits: str) -> None:
        """A further graph output that is Softmax(first output) (how a model with an output
        activation is exported) becomes the trailing softmax layer."""
        for out in self.graph.output[1:]:
            for n in self.graph.node:
                if out.name in n.output and n.op_type == "Softmax" and list(n.input) == [logits]:
                    self.readers[logits] = self.readers.get(logits, 0) + 1
                    self._op_Softmax(n, self._attrs(n))
                    return

    def _constant(self, n: onnx.NodeProto) -> np.ndarray:
        for a in n.attribute:
            if a.name == "value":
                return numpy_helper.to_array(a.t)
            if a.name in ("value_float", "value_int"):
                return np.array(onnx.helper.get_attribute_value(a))
            if a.name in ("value_floats", "value_ints"):
                return np.array(onnx.helper.get_attribute_value(a))
        raise self.fail("a Constant node without a tensor value", n)

    def _start(self, nodes: list[onnx.NodeProto]) -> tuple[str, tuple[int, ...]]:
        """The tensor the CNN starts from and one sample's shape."""
        if self.meta.get("front") == "raw" and isinstance(self.meta.get("cnn_input"), str):
            shape = self.meta.get("cnn_input_shape")
            if isinstance(shape, list) and all(isinstance(d, int) for d in shape):
                self.dropped_front = True
                return self.meta["cnn_input"], tuple(shape)
        inputs = [i for i in self.graph.input if i.name not in self.consts]
        if len(inputs) != 1:
            raise self.fail(f"the graph must have one data input, it has {len(inputs)}")
        vi = inputs[0]
        t = vi.type.tensor_type
        if t.elem_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
            name = onnx.TensorProto.DataType.Name(t.elem_type)
            raise self.fail(f"the input {vi.name!r} must be float, got {name}")
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        if len(dims) not in (2, 4) or any(d is None or d < 1 for d in dims[1:]):
            raise self.fail(
                f"the input {vi.name!r} must be (N, C, H, W) or (N, D) with fixed C, H, W, "
                f"got {dims}"
            )
        return vi.name, tuple(int(d) for d in dims[1:])

    @staticmethod
    def _ancestors(nodes: list[onnx.NodeProto], output: str, stop: str) -> set[int]:
        producer = {o: n for n in nodes for o in n.output}
        seen: set[int] = set()
        todo = [output]
        while todo:
            t = todo.pop()
            if t == stop or t not in producer:
                continue
            n = producer[t]
            if id(n) in seen:
                continue
            seen.add(id(n))
            todo.extend(i for i in n.input if i)
        return seen

    # ------------------------------------------------------------------ helpers
    def _attrs(self, n: onnx.NodeProto) -> dict[str, Any]:
        out = {}
        for a in n.attribute:
            v = onnx.helper.get_attribute_value(a)
            out[a.name] = v.decode() if isinstance(v, bytes) else v
        return out

    def _layer_name(self, n: onnx.NodeProto, layer_type: str) -> str:
        base = n.name if n.name and n.name not in self.used_names else ""
        if not base or not all(c.isprintable() for c in base):
            base = f"{layer_type}_{len(self.rows)}"
        name, k = base, 2
        while name in self.used_names:
            name, k = f"{base}_{k}", k + 1
        self.used_names.add(name)
        return name

    def _src(self, n: onnx.NodeProto, tensor: str) -> str:
        if tensor in self.pending_gap:
            raise self.fail(
                "a GlobalAveragePool output may only be flattened (sensorlab's global_avgpool "
                "gives (C,) features)",
                n,
            )
        if tensor not in self.ref:
            if tensor in self.consts:
                raise self.fail(f"a constant operand ({tensor!r}) is not supported here", n)
            raise self.fail(f"input {tensor!r} is not computed from the graph input", n)
        return self.ref[tensor]

    def _const_input(self, n: onnx.NodeProto, i: int, what: str) -> np.ndarray | None:
        if len(n.input) <= i or not n.input[i]:
            return None
        t = n.input[i]
        if t not in self.consts:
            raise self.fail(f"the {what} must be a constant (an initializer)", n)
        return np.asarray(self.consts[t], dtype=np.float32)

    def _add(
        self,
        n: onnx.NodeProto,
        layer_type: str,
        sources: list[str],
        out_shape: tuple[int, ...],
        args: Mapping[str, Any] | None = None,
        weights: Mapping[str, np.ndarray] | None = None,
        output: str | None = None,
    ) -> str:
        name = self._layer_name(n, layer_type)
        row: dict[str, Any] = {"type": layer_type, "name": name}
        srcs = [self._src(n, s) for s in sources]
        prev = self.rows[-1]["name"] if self.rows else _INPUT
        if srcs != [prev]:
            row["from"] = srcs[0] if len(srcs) == 1 else srcs
        row.update(args or {})
        self.rows.append(row)
        for k, v in (weights or {}).items():
            self.weights[f"{name}.{k}"] = np.asarray(v, dtype=np.float32)
        out = output or n.output[0]
        self.ref[out] = name
        self.shape[out] = out_shape
        return name

    def _alias(self, n: onnx.NodeProto, src: str) -> None:
        self._src(n, src)
        self.ref[n.output[0]] = self.ref[src]
        self.shape[n.output[0]] = self.shape[src]

    def _extra_outputs(self, n: onnx.NodeProto) -> None:
        for o in n.output[1:]:
            if o and self.readers.get(o, 0):
                raise self.fail(f"its output {o!r} is used; only the first output is", n)

    # ------------------------------------------------------------------ nodes
    def _convert(self, n: onnx.NodeProto) -> None:
        op = n.op_type
        a = self._attrs(n)
        self._extra_outputs(n)
        handler = getattr(self, f"_op_{op}")
        handler(n, a)

    def _spatial(self, n: onnx.NodeProto) -> tuple[int, int, int]:
        shape = self.shape[n.input[0]] if n.input[0] in self.shape else None
        self._src(n, n.input[0])
        if shape is None or len(shape) != 3:
            raise self.fail(f"expects (N, C, H, W) input, got one sample of shape {shape}", n)
        return shape

    def _pads(
        self,
        n: onnx.NodeProto,
        a: dict[str, Any],
        hw: tuple[int, int],
        window: tuple[int, int],
        stride: tuple[int, int],
    ) -> tuple[tuple[int, int], tuple[int, int]]:
        auto = a.get("auto_pad", "NOTSET")
        if auto in ("NOTSET", ""):
            p = list(a.get("pads", [0, 0, 0, 0]))
            if len(p) != 4:
                raise self.fail(f"expects 2-D pads, got {p}", n)
            return (int(p[0]), int(p[2])), (int(p[1]), int(p[3]))
        if auto == "VALID":
            return (0, 0), (0, 0)
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            out = []
            for size, k, s in zip(hw, window, stride, strict=True):
                total = max(0, (-(-size // s) - 1) * s + k - size)
                small, big = total // 2, total - total // 2
                out.append((small, big) if auto == "SAME_UPPER" else (big, small))
            return out[0], out[1]
        raise self.fail(f"unknown auto_pad {auto!r}", n)

    def _op_Conv(self, n, a):
        _, h, w = self._spatial(n)
        weight = self._const_input(n, 1, "weight")
        bias = self._const_input(n, 2, "bias")
        if weight is None or weight.ndim != 4:
            raise self.fail("only 2-D convolutions (4-D weights) are supported", n)
        f, _, kh, kw = weight.shape
        stride = tuple(a.get("strides", (1, 1)))
        dilation = tuple(a.get("dilations", (1, 1)))
        groups = int(a.get("group", 1))
        window = tuple(dilation[i] * (weight.shape[2 + i] - 1) + 1 for i in range(2))
        pads = self._pads(n, a, (h, w), window, stride)
        args: dict[str, Any] = {
            "filters": int(f),
            "kernel": [int(kh), int(kw)],
            "stride": [int(s) for s in stride],
            "padding": [list(pads[0]), list(pads[1])],
            "dilation": [int(d) for d in dilation],
            "groups": groups,
            "bias": bias is not None,
        }
        oh = (h + sum(pads[0]) - window[0]) // stride[0] + 1
        ow = (w + sum(pads[1]) - window[1]) // stride[1] + 1
        weights = {"weight": weight} | ({"bias": bias.reshape(f)} if bias is not None else {})
        self._add(n, "conv2d", [n.input[0]], (int(f), oh, ow), args, weights)

    def _dense(self, n, src: str, weight: np.ndarray, bias: np.ndarray | None):
        shape = self.shape.get(src)
        if shape is None or len(shape) != 1 or weight.shape[1] != shape[0]:
            raise self.fail(
                f"expects (N, {weight.shape[1]}) input, got one sample of shape {shape}", n
            )
        units = int(weight.shape[0])
        weights = {"weight": weight} | ({"bias": bias} if bias is not None else {})
        args = {"units": units, "bias": bias is not None}
        return self._add(n, "dense", [src], (units,), args, weights)

    def _op_Gemm(self, n, a):
        if a.get("transA", 0):
            raise self.fail("transA=1 is not supported", n)
        b = self._const_input(n, 1, "weight (B)")
        c = self._const_input(n, 2, "bias (C)")
        if b is None or b.ndim != 2:
            raise self.fail("B must be a 2-D constant", n)
        weight = (b if a.get("transB", 0) else b.T) * np.float32(a.get("alpha", 1.0))
        bias = None
        if c is not None:
            units = weight.shape[0]
            try:
                bias = np.broadcast_to(c * np.float32(a.get("beta", 1.0)), (1, units))[0]
            except ValueError:
                raise self.fail(
                    f"C of shape {c.shape} does not broadcast to ({units},)", n
                ) from None
        self._dense(n, n.input[0], np.ascontiguousarray(weight), bias)

    def _op_MatMul(self, n, a):
        b = self._const_input(n, 1, "second operand")
        if b is None or b.ndim != 2:
            raise self.fail("only MatMul with a constant 2-D second operand is supported", n)
        self._dense(n, n.input[0], np.ascontiguousarray(b.T), None)

    def _activation(self, n, layer_type: str, args: dict[str, Any] | None = None):
        src = n.input[0]
        self._src(n, src)
        self._add(n, layer_type, [src], self.shape[src], args)

    def _op_Relu(self, n, a):
        self._activation(n, "relu")

    def _op_LeakyRelu(self, n, a):
        self._activation(n, "leaky_relu", {"alpha": _f32(a.get("alpha", 0.01))})

    def _op_Sigmoid(self, n, a):
        self._activation(n, "sigmoid")

    def _op_Tanh(self, n, a):
        self._activation(n, "tanh")

    def _op_Softmax(self, n, a):
        shape = self.shape.get(n.input[0])
        self._src(n, n.input[0])
        axis = int(a.get("axis", -1))
        if shape is None or len(shape) != 1 or axis not in (-1, 1):
            raise self.fail("only a softmax over the features of (N, D) is supported", n)
        self._activation(n, "softmax")

    def _pool(self, n, a, layer_type: str):
        c, h, w = self._spatial(n)
        size = tuple(int(k) for k in a["kernel_shape"])
        stride = tuple(int(s) for s in a.get("strides", (1, 1)))
        if a.get("ceil_mode", 0):
            raise self.fail("ceil_mode=1 is not supported (sensorlab pools round down)", n)
        if any(d != 1 for d in a.get("dilations", (1, 1))):
            raise self.fail("dilated pooling is not supported", n)
        if a.get("storage_order", 0):
            raise self.fail("storage_order=1 is not supported", n)
        (t, b), (left, r) = self._pads(n, a, (h, w), size, stride)
        if t != b or left != r:
            raise self.fail(f"asymmetric pads {[t, left, b, r]} are not supported for pooling", n)
        if layer_type == "avgpool2d" and a.get("count_include_pad", 0) and (t or left):
            raise self.fail("count_include_pad=1 with padding is not supported", n)
        oh = (h + 2 * t - size[0]) // stride[0] + 1
        ow = (w + 2 * left - size[1]) // stride[1] + 1
        args = {"size": list(size), "stride": list(stride), "padding": [t, left]}
        self._add(n, layer_type, [n.input[0]], (c, oh, ow), args)

    def _op_MaxPool(self, n, a):
        self._pool(n, a, "maxpool2d")

    def _op_AveragePool(self, n, a):
        self._pool(n, a, "avgpool2d")

    def _op_GlobalAveragePool(self, n, a):
        c, _, _ = self._spatial(n)
        self.pending_gap[n.output[0]] = (n, n.input[0])
        self.shape[n.output[0]] = (c, 1, 1)

    def _flatten_like(self, n) -> None:
        src = n.input[0]
        if src in self.pending_gap:
            gap_node, gap_in = self.pending_gap.pop(src)
            c = self.shape[gap_in][0]
            self._add(gap_node, "global_avgpool", [gap_in], (c,), output=n.output[0])
            return
        self._src(n, src)
        shape = self.shape[src]
        self._add(n, "flatten", [src], (int(np.prod(shape)),))

    def _op_Flatten(self, n, a):
        if int(a.get("axis", 1)) != 1:
            raise self.fail("only Flatten with axis=1 is supported", n)
        self._flatten_like(n)

    def _op_Reshape(self, n, a):
        target = self.consts.get(n.input[1]) if len(n.input) > 1 else None
        src = n.input[0]
        shape = self.shape.get(src)
        if target is None or shape is None:
            raise self.fail("only Reshape with a constant shape is supported", n)
        t = [int(v) for v in np.asarray(target).ravel()]
        size = int(np.prod(shape))
        ok = len(t) == 2 and t[0] >= -1 and t[1] in (-1, size) and t != [-1, -1]
        if not ok:
            raise self.fail(f"only a Reshape to (N, {size}) (a flatten) is supported, got {t}", n)
        self._flatten_like(n)

    def _op_BatchNormalization(self, n, a):
        shape = self._spatial(n)
        if a.get("training_mode", 0):
            raise self.fail("training_mode=1 is not supported", n)
        vals = [
            self._const_input(n, i, w)
            for i, w in enumerate(("", "scale", "B", "mean", "var"))
            if i > 0
        ]
        if any(v is None for v in vals):
            raise self.fail("scale, B, mean and var must be constants", n)
        # ONNX: running = momentum * running + (1 - momentum) * batch; sensorlab the reverse
        momentum = float(f"{1.0 - _f32(a.get('momentum', 0.9)):.12g}")
        args = {"eps": _f32(a.get("epsilon", 1e-5)), "momentum": momentum}
        if not 0.0 < momentum <= 1.0:
            args.pop("momentum")
        weights = dict(zip(("weight", "bias", "running_mean", "running_var"), vals, strict=True))
        self._add(n, "batchnorm2d", [n.input[0]], shape, args, weights)

    def _op_Dropout(self, n, a):
        ratio = self._const_input(n, 1, "ratio")
        if len(n.input) > 2 and n.input[2]:
            mode = self.consts.get(n.input[2])
            if mode is None or bool(np.asarray(mode)):
                raise self.fail("training_mode must be a constant false", n)
        rate = _f32(ratio if ratio is not None else a.get("ratio", 0.5))
        self._activation(n, "dropout", {"rate": rate})

    def _op_Identity(self, n, a):
        self._alias(n, n.input[0])

    def _merge_add(self, n, srcs: list[str]) -> None:
        shapes = [self.shape.get(s) for s in srcs]
        for s in srcs:
            self._src(n, s)
        if any(sh != shapes[0] for sh in shapes):
            raise self.fail(f"only an add of equal shapes is supported, got {shapes}", n)
        first = self.ref[srcs[0]]
        last = self.rows[-1] if self.rows else None
        # a chain of binary Adds (how an n-ary add is exported) becomes one add layer
        if (
            last is not None
            and last["type"] == "add"
            and last["name"] == first
            and self.readers.get(srcs[0], 0) == 1
            and srcs[0] not in [o.name for o in self.graph.output]
        ):
            last["from"] = [*last["from"], *(self.ref[s] for s in srcs[1:])]
            self.ref[n.output[0]] = first
            self.shape[n.output[0]] = shapes[0]
            return
        self._add(n, "add", srcs, shapes[0])
        self.rows[-1]["from"] = [self.ref[s] for s in srcs]

    def _op_Add(self, n, a):
        x, y = n.input[0], n.input[1]
        if y in self.consts or x in self.consts:
            const, src = (y, x) if y in self.consts else (x, y)
            last = self.rows[-1] if self.rows else None
            c = np.asarray(self.consts[const], np.float32)
            if (
                last is not None
                and last["type"] == "dense"
                and not last["bias"]
                and self.ref.get(src) == last["name"]
                and self.readers.get(src, 0) == 1
                and c.size == last["units"]
            ):
                last["bias"] = True
                self.weights[f"{last['name']}.bias"] = c.reshape(-1)
                self.ref[n.output[0]] = last["name"]
                self.shape[n.output[0]] = self.shape[src]
                return
            raise self.fail("an Add of a constant is supported only as a MatMul's bias", n)
        self._merge_add(n, [x, y])

    def _op_Sum(self, n, a):
        if len(n.input) == 1:
            self._alias(n, n.input[0])
            return
        self._merge_add(n, list(n.input))

    def _op_Concat(self, n, a):
        shapes = [self.shape.get(s) for s in n.input]
        for s in n.input:
            self._src(n, s)
        rank = len(shapes[0]) + 1
        axis = int(a["axis"])
        if axis < 0:
            axis += rank
        if axis != 1 or any(len(s) != rank - 1 or s[1:] != shapes[0][1:] for s in shapes):
            raise self.fail("only a concat along channels (axis 1) is supported", n)
        out = (sum(s[0] for s in shapes), *shapes[0][1:])
        self._add(n, "concat", list(n.input), out)
        self.rows[-1]["from"] = [self.ref[s] for s in n.input]


def import_onnx(source: str | Path | onnx.ModelProto, *, name: str | None = None) -> ImportedModel:
    """Convert an ONNX model into a sensorlab model (YAML mapping + weights).

    Parameters
    ----------
    source : an .onnx path or a loaded ``ModelProto``.
    name : the model's name (default: the ``model_name`` metadata, else the graph name).

    Raises
    ------
    UserError : unreadable file, unsupported operators (all named in one line), or a layer
        whose attributes sensorlab cannot express.
    """
    file = None
    if isinstance(source, onnx.ModelProto):
        proto = source
    else:
        file = str(source)
        proto = load_onnx(source)
    conv = _Converter(proto, file)
    data = conv.run(name)
    try:
        spec = parse_graph(data, source=file)
    except UserError as exc:
        raise UserError(
            f"the imported graph does not check: {exc.message}", file=file, key=exc.key
        ) from None
    model = Model(spec)
    model.set_state_arrays(conv.weights, source=file)
    return ImportedModel(data, model, conv.meta, conv.dropped_front)


def write_imported(imported: ImportedModel, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``<name>.yaml`` and ``<name>.npz`` (weights beside the YAML, so
    ``load_model`` finds them) into ``out_dir``, each atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in imported.data["name"])
    yaml_path = out_dir / f"{stem}.yaml"
    npz_path = out_dir / f"{stem}.npz"
    text = _yaml_text(imported.data)
    fd, tmp = tempfile.mkstemp(prefix=f".{yaml_path.name}.", suffix=".tmp", dir=out_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        imported.model.save(npz_path)
        ordinary_mode(tmp)  # mkstemp makes 0600
        os.replace(tmp, yaml_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return yaml_path, npz_path


def _yaml_text(data: dict[str, Any]) -> str:
    """The model YAML with one flow-style row per layer, like the shipped model files."""
    head = {k: data[k] for k in ("name", "description", "input", "classes")}
    text = yaml.safe_dump(head, sort_keys=False, default_flow_style=None, width=100)
    rows = [
        "  - " + yaml.safe_dump(row, default_flow_style=True, sort_keys=False, width=10_000).strip()
        for row in data["layers"]
    ]
    return text + "layers:\n" + "\n".join(rows) + "\n"
