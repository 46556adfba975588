"""ONNX import: an ONNX model whose operators sensorlab supports -> a model YAML plus weights.

Each ONNX node becomes one layer row (named after the node when it can be), its constant
inputs (initializers or ``Constant`` nodes) the layer's weights. The layer class that
lists the node's operator in its ``onnx_ops`` reads it (``Layer.from_onnx``); the table of
ONNX operators -> layers is in docs/layers.md. Identity nodes are skipped.

A graph exported by :mod:`pipeline.cnn.onnx_export` with the raw sensor front end is
imported from its CNN input on (the front end is fixed by the sensor, not trained). The
first graph output is the model's output; a Softmax that produces it becomes the trailing
softmax layer (the model's output activation).

Anything else is refused with one line that names every unsupported operator.
"""

from __future__ import annotations

import math
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

from pipeline import limits
from pipeline.cnn.graph import parse_graph
from pipeline.cnn.layers import onnx_importers
from pipeline.cnn.model import Model
from pipeline.cnn.onnx_export import read_metadata
from pipeline.errors import UserError
from pipeline.files import ordinary_mode

__all__ = [
    "SUPPORTED_OPS",
    "ImportedModel",
    "OnnxReader",
    "import_onnx",
    "load_onnx",
    "write_imported",
]

_IMPORTERS = onnx_importers()
SUPPORTED_OPS = tuple(sorted({*_IMPORTERS, "Constant", "Identity"}))
"""ONNX operators the importer reads: those the layer classes claim (``onnx_ops``), plus
Constant and Identity."""
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


def initializer_array(t: onnx.TensorProto, file: str | None) -> np.ndarray:
    """An initializer as an array, after checking its dims against its data and the limits.

    Raises
    ------
    UserError : more values than the ``layer_params`` limit, or dims that do not match the
        number of values stored.
    """
    what = f"initializer {t.name[:60]!r}"
    if any(d < 0 for d in t.dims):
        raise UserError(f"{what} has negative dims {list(t.dims)}", file=file)
    count = math.prod(int(d) for d in t.dims)
    limits.check("layer_params", count, what=what, file=file)
    if t.data_location == onnx.TensorProto.EXTERNAL:
        raise UserError(f"{what} keeps its data in an external file (not supported)", file=file)
    try:
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{what} has an unknown data type {t.data_type}", file=file) from None
    stored = len(t.raw_data) // itemsize if t.raw_data else _field_values(t)
    if stored != count:
        raise UserError(
            f"{what} declares dims {list(t.dims)} ({count:,} values) but holds {stored:,}",
            file=file,
        )
    return numpy_helper.to_array(t)


def _field_values(t: onnx.TensorProto) -> int:
    """How many values an initializer stores in its typed fields (not ``raw_data``)."""
    fields = (t.float_data, t.int32_data, t.int64_data, t.double_data, t.uint64_data)
    n = sum(len(f) for f in fields) + len(t.string_data)
    if t.data_type in (onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128):
        n //= 2
    return n


class OnnxReader:
    """Walks a graph in node order and writes layer rows; each node goes to the layer class
    that claims its operator (``Layer.from_onnx``), which uses the helpers below (``add``,
    ``src``, ``spatial``, ``const_input``, ``pads``, ``activation``, ``alias``, ``fail``)
    and the tables ``shape``, ``ref``, ``rows``, ``weights``, ``consts``, ``readers``."""

    def __init__(self, proto: onnx.ModelProto, file: str | None):
        self.file = file
        self.graph = proto.graph
        self.meta = read_metadata(proto)
        self.consts: dict[str, np.ndarray] = {
            t.name: initializer_array(t, file) for t in self.graph.initializer
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
        self._check_supported(nodes)
        for n in nodes:
            for t in n.input:
                self.readers[t] = self.readers.get(t, 0) + 1
        self.ref[start] = _INPUT
        self.shape[start] = in_shape
        for n in nodes:
            self._convert(n)
        self._check_output(output)
        self._output_softmax(output)
        classes = self._classes(output)
        model_name = name or self.meta.get("model_name") or graph.name or "imported"
        return {
            "name": str(model_name),
            "description": f"imported from ONNX ({Path(self.file).name if self.file else 'model'})",
            "input": list(in_shape),
            "classes": [str(c) for c in classes],
            "layers": self.rows,
        }

    def _classes(self, output: str) -> list[str]:
        """Class names from the metadata, or c0, c1, ... when they do not fit the output."""
        k = self.shape[output]
        if len(k) != 1:
            raise self.fail(f"the output must be (N, classes), got one sample of shape {k}")
        classes = self.meta.get("class_names")
        if not (isinstance(classes, list) and len(classes) == k[0]):
            classes = [f"c{i}" for i in range(k[0])]
        return classes

    def _check_supported(self, nodes: list[onnx.NodeProto]) -> None:
        """One error naming every operator no layer class imports."""
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

    def _check_output(self, output: str) -> None:
        """The graph's first output is the last layer's output (or the input of a trailing
        softmax)."""
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

    def _output_softmax(self, logits: str) -> None:
        """A further graph output that is Softmax(first output) (how a model with an output
        activation is exported) becomes the trailing softmax layer."""
        for out in self.graph.output[1:]:
            for n in self.graph.node:
                if out.name in n.output and n.op_type == "Softmax" and list(n.input) == [logits]:
                    self.readers[logits] = self.readers.get(logits, 0) + 1
                    _IMPORTERS["Softmax"].from_onnx(self, n, self._attrs(n))
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

    def src(self, n: onnx.NodeProto, tensor: str) -> str:
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

    def const_input(self, n: onnx.NodeProto, i: int, what: str) -> np.ndarray | None:
        if len(n.input) <= i or not n.input[i]:
            return None
        t = n.input[i]
        if t not in self.consts:
            raise self.fail(f"the {what} must be a constant (an initializer)", n)
        return np.asarray(self.consts[t], dtype=np.float32)

    def add(
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
        srcs = [self.src(n, s) for s in sources]
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

    def alias(self, n: onnx.NodeProto, src: str) -> None:
        self.src(n, src)
        self.ref[n.output[0]] = self.ref[src]
        self.shape[n.output[0]] = self.shape[src]

    def _extra_outputs(self, n: onnx.NodeProto) -> None:
        for o in n.output[1:]:
            if o and self.readers.get(o, 0):
                raise self.fail(f"its output {o!r} is used; only the first output is", n)

    # ------------------------------------------------------------------ nodes
    def _convert(self, n: onnx.NodeProto) -> None:
        self._extra_outputs(n)
        if n.op_type == "Identity":
            self.alias(n, n.input[0])
            return
        _IMPORTERS[n.op_type].from_onnx(self, n, self._attrs(n))

    def activation(self, n: onnx.NodeProto, layer_type: str, args: dict | None = None) -> None:
        """A one-input layer whose output has its input's shape."""
        src = n.input[0]
        self.src(n, src)
        self.add(n, layer_type, [src], self.shape[src], args)

    def spatial(self, n: onnx.NodeProto) -> tuple[int, int, int]:
        shape = self.shape[n.input[0]] if n.input[0] in self.shape else None
        self.src(n, n.input[0])
        if shape is None or len(shape) != 3:
            raise self.fail(f"expects (N, C, H, W) input, got one sample of shape {shape}", n)
        return shape

    def pads(
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
    conv = OnnxReader(proto, file)
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
    limits.check(
        "name_chars", len(stem), what="the model name (use --name to choose a shorter one)"
    )
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
