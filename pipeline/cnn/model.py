"""A CNN built from a model YAML: parameters, forward and backward passes, saved weights.

``load_model("configs/models/rgb32.yaml")`` reads the graph and the weights saved next to
it (``rgb32.npz``). The weights file carries the hash of the canonical graph it was trained
for (:attr:`pipeline.cnn.graph.GraphSpec.yaml_hash`); a pair that does not belong together
is refused with one line naming both files.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pipeline.cnn.fast import fast_forward
from pipeline.cnn.fused_train import ConvReluChain, train_chains
from pipeline.cnn.graph import INPUT, GraphSpec, Node, load_graph
from pipeline.cnn.heap import keep_freed_memory
from pipeline.errors import UserError
from pipeline.files import ordinary_mode
from pipeline.npyfile import check_npz

__all__ = ["HASH_KEY", "MODEL_KEY", "Model", "load_model"]

HASH_KEY = "__yaml_hash__"  # npz entry: hash of the canonical graph the weights belong to
MODEL_KEY = "__model_yaml__"  # npz entry: the canonical graph as YAML text (provenance)
_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class Model:
    """A layer graph with its parameters.

    Parameters
    ----------
    spec : the checked graph (:func:`pipeline.cnn.graph.load_graph`).
    dtype : float32 (default) or float64; parameters and activations use it.
    init_seed : seed of the initial weights (He normal before (leaky) ReLU, Glorot uniform
        otherwise; biases 0). Layer ``i`` draws from ``default_rng([init_seed, i])``, so
        adding a layer does not change the others' initial values.

    Attributes
    ----------
    params : ordered dict ``"<layer>.<param>"`` -> array of trained parameters.
    buffers : ordered dict of saved, non-trained state (batch-norm running statistics).
    """

    fast_eval: bool = True
    """Evaluation of a float32 model uses the compiled evaluator (pipeline.cnn.fast)."""
    fuse_train: bool = True
    """Training runs conv -> ReLU [-> max-pool] chains as one kernel
    (pipeline.cnn.fused_train; the same values as the layers in turn)."""

    def __init__(self, spec: GraphSpec, *, dtype: Any = np.float32, init_seed: int = 0):
        self.spec = spec
        self.dtype = np.dtype(dtype)
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype}")
        self.params: dict[str, np.ndarray] = {}
        self.buffers: dict[str, np.ndarray] = {}
        self._slots: dict[int, list[tuple[str, str, bool]]] = {}  # node -> (short, full, buf)
        for node in spec.nodes:
            slots = [(k, f"{node.name}.{k}", False) for k in node.layer.param_shapes()]
            slots += [(k, f"{node.name}.{k}", True) for k in node.layer.buffer_shapes()]
            if slots:
                self._slots[node.index] = slots
        self._out = spec.output_index
        self._uses = [0] * len(spec.nodes)
        self._input_uses = 0
        for node in spec.nodes[: self._out + 1]:
            for j in node.inputs:
                if j == INPUT:
                    self._input_uses += 1
                else:
                    self._uses[j] += 1
        self._tape: list[Any] | None = None
        self._train_chains: dict[int, ConvReluChain] | None = None
        self._rng = np.random.default_rng([init_seed, 0xD50])
        self.init_params(init_seed)

    # ------------------------------------------------------------------ description
    @property
    def input_shape(self) -> tuple[int, ...]:
        """One sample's shape, channels first, e.g. (3, 32, 32)."""
        return self.spec.input_shape

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.spec.classes

    @property
    def yaml_hash(self) -> str:
        """Hash of the canonical graph; saved with the weights, checked when loading."""
        return self.spec.yaml_hash

    @property
    def n_params(self) -> int:
        return sum(p.size for p in self.params.values())

    def __repr__(self) -> str:
        return (
            f"Model({self.spec.name!r}, input={self.input_shape}, "
            f"classes={len(self.class_names)}, params={self.n_params:,}, dtype={self.dtype})"
        )

    # ------------------------------------------------------------------ parameters
    def init_params(self, seed: int = 0) -> None:
        """(Re)initialise every parameter and buffer from ``seed``."""
        self.params.clear()
        self.buffers.clear()
        for node in self.spec.nodes:
            if node.index not in self._slots:
                continue
            rng = np.random.default_rng([seed, node.index])
            values = node.layer.init(rng, self.dtype, self._activation_after(node))
            for short, full, is_buffer in self._slots[node.index]:
                (self.buffers if is_buffer else self.params)[full] = np.ascontiguousarray(
                    values[short], dtype=self.dtype
                )

    def _activation_after(self, node: Node) -> Any:
        """What follows ``node`` (through a batch norm): "relu", ("leaky_relu", a) or None."""
        nodes, consumers = self.spec.nodes, self.spec.consumers
        nxt = consumers[node.index]
        if len(nxt) == 1 and nodes[nxt[0]].type == "batchnorm2d":
            nxt = consumers[nxt[0]]
        if len(nxt) != 1:
            return None
        follower = nodes[nxt[0]]
        if follower.type == "relu":
            return "relu"
        if follower.type == "leaky_relu":
            return ("leaky_relu", follower.args.alpha)
        return None

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Parameters and buffers in one ordered dict (what :meth:`save` writes)."""
        return {**self.params, **self.buffers}

    def set_state_arrays(self, arrays: dict[str, np.ndarray], *, source: str | None = None):
        """Copy values into the existing arrays (in place; optimisers keep their references).

        Raises UserError naming ``source`` when a name is missing or extra or a shape
        differs."""
        own = self.state_arrays()
        missing = [k for k in own if k not in arrays]
        extra = [k for k in arrays if k not in own]
        if missing or extra:
            what = []
            if missing:
                what.append(f"missing {', '.join(missing[:3])}{'...' if len(missing) > 3 else ''}")
            if extra:
                what.append(f"unexpected {', '.join(extra[:3])}{'...' if len(extra) > 3 else ''}")
            raise UserError(
                f"weights do not fit model {self.spec.name!r}: {'; '.join(what)}", file=source
            )
        for k, target in own.items():
            value = np.asarray(arrays[k])
            if value.shape != target.shape:
                raise UserError(
                    f"weights do not fit model {self.spec.name!r}: {k} has shape "
                    f"{value.shape}, the model needs {target.shape}",
                    file=source,
                )
            target[...] = value

    # ------------------------------------------------------------------ computation
    def layer_params(self, node: Node) -> dict[str, np.ndarray]:
        """The parameters and buffers of ``node``'s layer, by short name (the arrays
        themselves, not copies)."""
        slots = self._slots.get(node.index)
        if not slots:
            return {}
        return {s: (self.buffers if b else self.params)[f] for s, f, b in slots}

    def _check_input(self, x: Any) -> np.ndarray:
        x = np.asarray(x)
        if x.shape == self.input_shape:
            x = x[None]
        if x.shape[1:] != self.input_shape:
            raise UserError(
                f"model {self.spec.name!r} takes (N, {', '.join(map(str, self.input_shape))}) "
                f"or one {self.input_shape}, got an array of shape {x.shape}",
                file=self.spec.source,
                key="input",
            )
        if not np.issubdtype(x.dtype, np.floating) and not np.issubdtype(x.dtype, np.integer):
            raise TypeError(f"model input must be numeric, got dtype {x.dtype}")
        return np.ascontiguousarray(x, dtype=self.dtype)

    def forward(
        self, x: Any, train: bool = False, *, rng: np.random.Generator | None = None
    ) -> np.ndarray:
        """Logits (N, classes) for images (N, C, H, W), or (1, classes) for one (C, H, W).

        ``train=True`` uses batch statistics in batch norm and draws dropout masks from
        ``rng`` (the model's own generator if None), and records what :meth:`backward`
        needs. A trailing softmax layer is the output activation: ``forward`` returns the
        logits before it (see :meth:`predict_proba`).
        """
        x = self._check_input(x)
        if train:
            return self._forward_train(x, rng if rng is not None else self._rng)
        self._tape = None
        return self._forward_eval(x)

    def _forward_eval(self, x: np.ndarray) -> np.ndarray:
        """Evaluation-mode forward pass of a checked (N, C, H, W) array of ``self.dtype``:
        batch norm uses running statistics, dropout is off, nothing is recorded.
        Intermediate outputs are dropped as soon as their last reader has run.

        A float32 model runs through :func:`pipeline.cnn.fast.fast_forward` (same
        results to float32 rounding, several times faster) unless ``fast_eval`` is False."""
        if self.fast_eval:
            y = fast_forward(self, x)
            if y is not None:
                return y
        outs: dict[int, np.ndarray] = {INPUT: x}
        uses = list(self._uses)
        for node in self.spec.nodes[: self._out + 1]:
            y, _ = node.layer.forward(
                [outs[j] for j in node.inputs], self.layer_params(node), train=False
            )
            for j in node.inputs:
                if j != INPUT:
                    uses[j] -= 1
                    if uses[j] == 0:
                        del outs[j]
            outs[node.index] = y
        return outs[self._out]

    def _forward_train(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        keep_freed_memory()  # steps reuse their feature maps' pages (pipeline.cnn.heap)
        outs: dict[int, np.ndarray] = {INPUT: x}
        uses = list(self._uses)
        tape: list[Any] = [None] * (self._out + 1)
        chains = self.train_chains()
        inner = {nd.index for ch in chains.values() for nd in ch.nodes[1:]}
        for node in self.spec.nodes[: self._out + 1]:
            if node.index in inner:
                continue
            xs = [outs[j] for j in node.inputs]
            chain = chains.get(node.index)
            if chain is not None:  # conv -> ReLU [-> pool] in one kernel
                y, cache = chain.forward(xs[0], self.layer_params(node))
                index = chain.last
            else:
                y, cache = node.layer.forward(xs, self.layer_params(node), train=True, rng=rng)
                index = node.index
            tape[index] = cache
            for j in node.inputs:
                if j != INPUT:
                    uses[j] -= 1
                    if uses[j] == 0:
                        del outs[j]
            outs[index] = y
        self._tape = tape
        return outs[self._out]

    def train_chains(self) -> dict[int, ConvReluChain]:
        """The chains training runs fused (:mod:`pipeline.cnn.fused_train`), by the index
        of their convolution node; none when :attr:`fuse_train` is False."""
        if not self.fuse_train:
            return {}
        if self._train_chains is None:
            nodes = self.spec.nodes[: self._out + 1]
            params = {nd.index: self.layer_params(nd) for nd in nodes}
            self._train_chains = train_chains(nodes, params)
        return self._train_chains

    def backward(
        self, dlogits: np.ndarray, *, input_grad: bool = False
    ) -> dict[str, np.ndarray] | tuple[dict[str, np.ndarray], np.ndarray]:
        """Gradients of the loss with respect to every parameter, given dloss/dlogits of the
        last ``forward(x, train=True)``; with ``input_grad=True`` also dloss/dx.

        Returns an ordered dict with the keys of :attr:`params` (and the input gradient)."""
        if self._tape is None:
            raise RuntimeError("backward needs a forward(x, train=True) pass first")
        tape, self._tape = self._tape, None
        dys: dict[int, np.ndarray] = {self._out: np.asarray(dlogits, dtype=self.dtype)}
        grads: dict[str, np.ndarray] = {}
        chains = {ch.last: ch for ch in self.train_chains().values()}
        inner = {nd.index for ch in chains.values() for nd in ch.nodes[:-1]}
        for node in reversed(self.spec.nodes[: self._out + 1]):
            if node.index in inner:
                continue
            dy = dys.pop(node.index)
            chain = chains.get(node.index)
            first = node if chain is None else chain.conv
            need_dx = input_grad or any(j != INPUT for j in first.inputs)
            p = self.layer_params(first)
            if chain is None:
                dxs, dps = node.layer.backward(dy, tape[node.index], p, need_dx=need_dx)
            else:
                dx, dps = chain.backward(dy, tape[node.index], p, need_dx=need_dx)
                dxs = [dx]
            tape[node.index] = None
            for short, g in dps.items():
                grads[f"{first.name}.{short}"] = g
            for j, dx in zip(first.inputs, dxs, strict=True):
                if j == INPUT and not input_grad:
                    continue
                dys[j] = dx if j not in dys else dys[j] + dx
        ordered = {k: grads[k] for k in self.params}
        if input_grad:
            return ordered, dys[INPUT]
        return ordered

    def iter_logits(self, x: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
        """Logits of ``x`` in evaluation mode, one array per batch of ``batch_size``."""
        for start in range(0, len(x), batch_size):
            yield self.forward(x[start : start + batch_size])

    def predict_proba(self, x: Any, batch_size: int = 256) -> np.ndarray:
        """Class probabilities (softmax of the logits), (N, classes)."""
        from pipeline.cnn import functional as F

        x = self._check_input(x)
        return np.concatenate([F.softmax(z) for z in self.iter_logits(x, batch_size)])

    def predict(self, x: Any, batch_size: int = 256) -> np.ndarray:
        """Class indices (N,) of the highest score."""
        x = self._check_input(x)
        return np.concatenate([np.argmax(z, axis=1) for z in self.iter_logits(x, batch_size)])

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path) -> Path:
        """Write parameters, buffers and the graph's hash to ``path`` (.npz), atomically."""
        path = Path(path)
        arrays = {k: np.asarray(v) for k, v in self.state_arrays().items()}
        arrays[HASH_KEY] = np.array(self.yaml_hash)
        arrays[MODEL_KEY] = np.array(yaml.safe_dump(self.spec.canonical(), sort_keys=False))
        write_npz_atomic(path, arrays)
        return path

    def load_weights(self, path: str | Path) -> None:
        """Read weights saved by :meth:`save`; refuse weights made for another graph."""
        path = Path(path)
        arrays = read_npz(path, what="weights file")
        saved_hash = arrays.pop(HASH_KEY, None)
        arrays.pop(MODEL_KEY, None)
        if saved_hash is None:
            raise UserError(
                "not a sensorlab weights file (no model hash inside); save weights with "
                "Model.save or `sensorlab train`",
                file=path,
            )
        saved_hash = str(saved_hash)
        if saved_hash != self.yaml_hash:
            yaml_file = self.spec.source or f"model {self.spec.name!r}"
            raise UserError(
                f"these weights belong to another model graph (hash {saved_hash[:12]}), not to "
                f"{yaml_file} (hash {self.yaml_hash[:12]}); use the weights trained with this "
                "YAML or retrain",
                file=path,
            )
        self.set_state_arrays(arrays, source=str(path))


def read_npz(path: Path, *, what: str) -> dict[str, np.ndarray]:
    """All arrays of an .npz file (no pickles), or a UserError naming the file."""
    check_npz(path, what=what)
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise UserError(f"{what} not found", file=path) from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise UserError(f"cannot read {what} (.npz expected): {exc}", file=path) from None


def write_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write an uncompressed .npz next to ``path`` under a temporary name, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        ordinary_mode(tmp)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_model(
    yaml_path: str | Path,
    weights: str | Path | None = None,
    *,
    dtype: Any = np.float32,
    init_seed: int | None = None,
) -> Model:
    """Build the model of a YAML file and load its weights.

    Parameters
    ----------
    yaml_path : the model YAML.
    weights : .npz written by :meth:`Model.save`; default ``<stem>.npz`` next to the YAML.
    dtype : float32 (default) or float64.
    init_seed : when given and the default weights file does not exist, start from random
        weights drawn with this seed instead of failing.

    Raises
    ------
    UserError : bad YAML, missing weights (unless ``init_seed``), weights for another graph.
    """
    yaml_path = Path(yaml_path)
    spec = load_graph(yaml_path)
    model = Model(spec, dtype=dtype, init_seed=0 if init_seed is None else init_seed)
    if weights is None:
        weights = yaml_path.with_suffix(".npz")
        if not weights.exists():
            if init_seed is not None:
                return model
            raise UserError(
                f"no weights: {weights} does not exist; train the model (sensorlab train) "
                "or pass weights=..., or init_seed=... for random weights",
                file=yaml_path,
            )
    model.load_weights(weights)
    return model
