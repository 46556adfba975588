"""The model YAML: a layer graph, parsed and checked before any data flows.

A model file states its input (channels first, like ONNX), its class names and a list of
layers, one compact row each, keyword arguments only::

    name: rgb32
    input: [3, 32, 32]
    classes: [c0, c1, c2]
    layers:
      - {type: conv2d, filters: 32, kernel: 3, padding: same, name: c1}
      - {type: relu}
      - {type: add, from: [-1, c1]}   # earlier layers by name or negative index
      - {type: flatten}
      - {type: dense, units: 3}

``from`` names the layers a row reads: a name, a negative index relative to the row
(``-1`` = the previous layer, the default; reaching one before layer 0 means the model
input), a non-negative absolute index, or ``input``. A layer reads only earlier layers, so
the graph has no cycles. Every problem raises :class:`pipeline.errors.UserError` with one
line naming the file, the layer (index and name) and what does not fit.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pipeline import limits
from pipeline.cnn.layers import LAYERS, Layer, LayerArgs, ShapeError
from pipeline.errors import UserError, did_you_mean

__all__ = ["INPUT", "GraphSpec", "Node", "load_graph", "parse_graph"]

INPUT = -1  # node index of the model input in Node.inputs
INPUT_NAME = "input"
TOP_LEVEL_KEYS = ("name", "description", "input", "classes", "layers")
ROW_KEYS = ("type", "name", "from")


@dataclass(frozen=True)
class Node:
    """One layer of a parsed graph."""

    index: int
    name: str
    type: str
    args: LayerArgs
    inputs: tuple[int, ...]  # node indices, INPUT (-1) for the model input
    layer: Layer
    named: bool  # the name was given in the file (not generated)

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.layer.output_shape

    @property
    def key(self) -> str:
        """Where the layer is in the file: ``layers[4] (fc1)``."""
        return f"layers[{self.index}] ({self.name})"


@dataclass(frozen=True)
class GraphSpec:
    """A checked layer graph: nodes in file order, each reading only earlier nodes."""

    name: str
    input_shape: tuple[int, ...]
    classes: tuple[str, ...]
    nodes: tuple[Node, ...]
    source: str | None = None  # the file it came from, for messages
    description: str = ""
    consumers: tuple[tuple[int, ...], ...] = field(default=(), repr=False)

    @property
    def output_index(self) -> int:
        """Index of the node whose output is the logits: the last node, or the input of a
        trailing softmax (the output activation, which the loss does not want)."""
        last = self.nodes[-1]
        if last.type == "softmax" and last.inputs[0] != INPUT:
            return last.inputs[0]
        return last.index

    @property
    def has_output_softmax(self) -> bool:
        return self.output_index != self.nodes[-1].index

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def canonical(self) -> dict[str, Any]:
        """The graph with every argument resolved (defaults filled, pairs expanded, ``from``
        as names): two files that build the same network give the same dict. The
        ``name`` and ``description`` are left out: they do not change the network."""
        layers = []
        for n in self.nodes:
            row: dict[str, Any] = {"type": n.type, "name": n.name}
            row["from"] = [INPUT_NAME if i == INPUT else self.nodes[i].name for i in n.inputs]
            row.update(_plain(n.args.model_dump()))
            layers.append(row)
        return {
            "input": list(self.input_shape),
            "classes": list(self.classes),
            "layers": layers,
        }

    @property
    def yaml_hash(self) -> str:
        """SHA-256 (hex) of :meth:`canonical` as sorted compact JSON: the identity of the
        network that weights belong to."""
        text = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def summary(self) -> str:
        """A table of layers: index, name, type, inputs, output shape, parameter count."""
        rows = [("#", "name", "type", "from", "output", "params")]
        for n in self.nodes:
            src = ",".join(INPUT_NAME if i == INPUT else self.nodes[i].name for i in n.inputs)
            rows.append(
                (
                    str(n.index),
                    n.name,
                    n.type,
                    src,
                    "x".join(map(str, n.output_shape)),
                    f"{n.layer.n_params:,}",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(6)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        total = sum(n.layer.n_params for n in self.nodes)
        lines.append(f"input {'x'.join(map(str, self.input_shape))}, {total:,} parameters")
        return "\n".join(lines)


def _plain(value: Any) -> Any:
    """Tuples to lists, recursively (JSON/YAML friendly)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _shape_str(shape: Sequence[int]) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


# --------------------------------------------------------------------------- loading


def load_graph(path: str | Path) -> GraphSpec:
    """Read and check a model YAML file (``yaml.safe_load``; a YAML file never runs code)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError("model file not found", file=path) from None
    except OSError as exc:
        raise UserError(f"cannot read model file: {exc.strerror}", file=path) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise UserError(f"{where}invalid YAML: {problem}", file=path) from None
    return parse_graph(data, source=str(path))


def parse_graph(data: Any, source: str | None = None) -> GraphSpec:
    """Check a model description (the mapping a model YAML holds) and build its graph.

    Parameters
    ----------
    data : mapping with ``input``, ``classes``, ``layers`` (and optional ``name``,
        ``description``).
    source : the file name used in error messages.

    Raises
    ------
    UserError : one line naming the file, the layer and the problem.
    """

    def fail(message: str, key: str | None = None) -> UserError:
        return UserError(message, file=source, key=key)

    name, description = _parse_header(data, source, fail)
    input_shape = _parse_input(data["input"], fail)
    _check_size("activation_values", math.prod(input_shape), "the input", "input", fail)
    classes = _parse_classes(data["classes"], fail)

    rows = data["layers"]
    if not isinstance(rows, list) or not rows:
        raise fail("must be a non-empty list of layer rows", key="layers")

    nodes: list[Node] = []
    names: dict[str, int] = {}
    given_names: dict[str, int] = {}
    total_params = 0
    for i, row in enumerate(rows):
        if isinstance(row, Mapping) and isinstance(row.get("name"), str):
            given_names.setdefault(row["name"], i)
    for i, row in enumerate(rows):
        node = _parse_row(i, row, nodes, names, given_names, input_shape, fail)
        total_params += _check_node_size(node, fail)
        _check_size("model_params", total_params, "the model", node.key, fail)
        nodes.append(node)
        names[node.name] = i
    consumers = _consumers(nodes, fail)
    _check_output(nodes[-1], classes, fail)

    return GraphSpec(
        name=name,
        input_shape=input_shape,
        classes=classes,
        nodes=tuple(nodes),
        source=source,
        description=description,
        consumers=tuple(tuple(c) for c in consumers),
    )


def _check_node_size(node: Node, fail) -> int:
    """Refuse a layer whose parameters or output exceed the limits (before any array
    exists); returns its parameter and buffer count."""
    shapes = [*node.layer.param_shapes().values(), *node.layer.buffer_shapes().values()]
    params = sum(math.prod(s) for s in shapes)
    _check_size("layer_params", params, "this layer", node.key, fail)
    _check_size("activation_values", math.prod(node.output_shape), "its output", node.key, fail)
    return params


def _check_size(name: str, value: int, what: str, key: str, fail) -> None:
    try:
        limits.check(name, value, what=what)
    except UserError as exc:
        raise fail(exc.message, key=key) from None


def _parse_header(data: Any, source: str | None, fail) -> tuple[str, str]:
    """Top-level keys checked; the model's name and description."""
    if not isinstance(data, Mapping):
        raise fail(f"a model file must be a mapping with input, classes, layers; got {_kind(data)}")
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            raise fail(f"unknown key{did_you_mean(str(key), TOP_LEVEL_KEYS)}", key=str(key))
    for key in ("input", "classes", "layers"):
        if key not in data:
            raise fail(f"missing key {key!r}")
    name = data.get("name")
    if name is None:
        name = Path(source).stem if source else "model"
    if not isinstance(name, str) or not name:
        raise fail(f"must be a non-empty string, got {name!r}", key="name")
    description = data.get("description") or ""
    if not isinstance(description, str):
        raise fail("must be a string", key="description")
    return name, description


def _consumers(nodes: list[Node], fail) -> list[list[int]]:
    """Who reads each node; every node but the last must be read."""
    consumers: list[list[int]] = [[] for _ in nodes]
    for n in nodes:
        for j in n.inputs:
            if j != INPUT:
                consumers[j].append(n.index)
    for n in nodes[:-1]:
        if not consumers[n.index]:
            raise fail(
                "output is never used; only the last layer's output leaves the graph "
                "(read it with `from` or remove the layer)",
                key=n.key,
            )
    return consumers


def _check_output(last: Node, classes: tuple[str, ...], fail) -> None:
    """The last layer gives one score per class."""
    if len(last.output_shape) != 1:
        raise fail(
            f"the last layer must give one score per class (1-D), got "
            f"{_shape_str(last.output_shape)}; add flatten and dense",
            key=last.key,
        )
    width = last.output_shape[0]
    if width != len(classes):
        raise fail(
            f"the last layer gives {width} scores but classes lists {len(classes)} names",
            key=last.key,
        )


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


def _parse_input(value: Any, fail) -> tuple[int, ...]:
    ok = (
        isinstance(value, list)
        and len(value) in (1, 3)
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
    )
    if not ok:
        raise fail(
            f"must be [C, H, W] (channels first) or [D], positive integers; got {value!r}",
            key="input",
        )
    return tuple(value)


def _parse_classes(value: Any, fail) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) < 2:
        raise fail(f"must be a list of at least 2 class names, got {value!r}", key="classes")
    out = []
    for i, c in enumerate(value):
        if isinstance(c, bool) or not isinstance(c, (str, int)) or c == "":
            raise fail(
                f"must be a non-empty name (quote it: YAML reads yes/no as booleans), got {c!r}",
                key=f"classes[{i}]",
            )
        out.append(str(c))
    seen: dict[str, int] = {}
    for i, c in enumerate(out):
        if c in seen:
            raise fail(f"duplicate class name {c!r} (also classes[{seen[c]}])", key=f"classes[{i}]")
        seen[c] = i
    return tuple(out)


def _parse_row(
    i: int,
    row: Any,
    nodes: list[Node],
    names: dict[str, int],
    given_names: dict[str, int],
    input_shape: tuple[int, ...],
    fail,
) -> Node:
    key = f"layers[{i}]"
    if not isinstance(row, Mapping):
        raise fail(f"must be a mapping like {{type: relu}}, got {row!r}", key=key)
    layer_type = row.get("type")
    if not isinstance(layer_type, str):
        raise fail(f"missing layer type (e.g. type: conv2d); got {row!r}", key=key)

    name = row.get("name")
    named = name is not None
    name = _row_name(i, name, layer_type, names, given_names, fail, key)
    key = f"{key} ({name})"

    cls = LAYERS.get(layer_type)
    if cls is None:
        raise fail(f"unknown layer type {layer_type!r}{did_you_mean(layer_type, LAYERS)}", key=key)

    inputs = _parse_from(row.get("from", -1), i, names, given_names, fail, key)
    lo, hi = cls.n_inputs
    if len(inputs) < lo or (hi is not None and len(inputs) > hi):
        want = f"{lo}" if lo == hi else f"at least {lo}" if hi is None else f"{lo} to {hi}"
        raise fail(f"{layer_type} takes {want} input(s), `from` gives {len(inputs)}", key=key)

    arg_values = {k: v for k, v in row.items() if k not in ROW_KEYS}
    try:
        args = cls.Args(**arg_values)
    except ValidationError as exc:
        raise fail(_arg_error(layer_type, cls, exc), key=key) from None
    except TypeError as exc:  # non-string keys
        raise fail(f"{layer_type}: bad arguments: {exc}", key=key) from None

    shapes = [input_shape if j == INPUT else nodes[j].output_shape for j in inputs]
    layer = _build_layer(cls, args, inputs, shapes, nodes, fail, key)
    return Node(
        index=i, name=name, type=layer_type, args=args, inputs=inputs, layer=layer, named=named
    )


def _row_name(
    i: int, name: Any, layer_type: str, names: dict, given_names: dict, fail, key: str
) -> str:
    """A row's given name checked, or its automatic name ``<type>_<index>``."""
    if name is not None:
        if not isinstance(name, str) or not name:
            raise fail(f"name must be a non-empty string, got {name!r}", key=key)
        if name == INPUT_NAME:
            raise fail(f"the name {INPUT_NAME!r} is reserved for the model input", key=key)
        if name in names:
            raise fail(f"duplicate name {name!r} (also layers[{names[name]}])", key=key)
        return name
    name = f"{layer_type}_{i}"
    if name in given_names:
        raise fail(
            f"the automatic name of this layer, {name!r}, is also given to "
            f"layers[{given_names[name]}]; name one of them differently",
            key=key,
        )
    return name


def _build_layer(cls, args, inputs, shapes, nodes: list[Node], fail, key: str) -> Layer:
    """The layer for these input shapes, or its ShapeError with the inputs named."""
    try:
        return cls(args, shapes)
    except ShapeError as exc:
        src = " and ".join(
            f"{_shape_str(s)} from {INPUT_NAME if j == INPUT else nodes[j].name}"
            for j, s in zip(inputs, shapes, strict=True)
        )
        msg = str(exc)
        if len(inputs) > 1:
            msg = f"{msg}; got {src}"
        elif "got" not in msg:
            msg = f"{msg} (input {src})"
        raise fail(msg, key=key) from None


def _parse_from(
    value: Any,
    i: int,
    names: dict[str, int],
    given_names: dict[str, int],
    fail,
    key: str,
) -> tuple[int, ...]:
    refs = value if isinstance(value, list) else [value]
    if not refs:
        raise fail("`from` is empty; name the layer(s) this one reads", key=key)
    out = []
    for ref in refs:
        if isinstance(ref, bool):
            raise fail(f"from: {ref!r} is not a layer name or index", key=key)
        if isinstance(ref, int):
            j = i + ref if ref < 0 else ref
            if ref < 0 and j < INPUT:
                raise fail(
                    f"from: {ref} points {-ref} layers back, before the model input "
                    f"(this is layer {i}; at most {-(i + 1)})",
                    key=key,
                )
            if j >= i:
                what = "this layer itself" if j == i else f"a later layer (layers[{j}])"
                raise fail(
                    f"from: {ref} refers to {what}; a layer reads only earlier layers (no cycles)",
                    key=key,
                )
        elif isinstance(ref, str):
            if ref == INPUT_NAME:
                j = INPUT
            elif ref in names:
                j = names[ref]
            elif ref in given_names:
                j = given_names[ref]
                what = "this layer itself" if j == i else f"a later layer (layers[{j}])"
                raise fail(
                    f"from: {ref!r} refers to {what}; a layer reads only earlier layers "
                    "(no cycles)",
                    key=key,
                )
            else:
                raise fail(
                    f"from: unknown layer {ref!r}{did_you_mean(ref, [*names, INPUT_NAME])}",
                    key=key,
                )
        else:
            raise fail(f"from: {ref!r} is not a layer name or index", key=key)
        out.append(j)
    return tuple(out)


def _arg_error(layer_type: str, cls: type[Layer], exc: ValidationError) -> str:
    """The first pydantic error as one line: ``conv2d: unknown argument 'filter' (did you
    mean 'filters'?)``."""
    errors = exc.errors()
    # a misspelt argument also shows up as a missing one: report the misspelling
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = [str(p) for p in err["loc"]]
    fields = list(cls.Args.model_fields)
    arg = loc[0] if loc else ""
    if err["type"] == "extra_forbidden":
        allowed = [*fields, *ROW_KEYS]
        hint = did_you_mean(arg, allowed)
        if not fields:
            hint = f" ({layer_type} takes no arguments)"
        return f"{layer_type}: unknown argument {arg!r}{hint}"
    if err["type"] == "missing":
        return f"{layer_type}: missing argument {arg!r}"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
        return f"{layer_type}.{arg}: {msg}"
    return f"{layer_type}.{arg}: {msg[:1].lower()}{msg[1:]}, got {err.get('input')!r}"
