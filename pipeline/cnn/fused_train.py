"""Training's fused chains: conv -> ReLU [-> max-pool] as one kernel, forward and backward.

:meth:`pipeline.cnn.model.Model.forward` (``train=True``) and :meth:`Model.backward` run
every node through its layer's ``forward`` and ``backward``, except the chains found here:
a stride-1, one-group convolution whose output has its input's size, read only by a ReLU,
optionally read only by a max-pool whose size equals its stride (the chains the compiled
evaluator fuses, found by the same :func:`pipeline.cnn.fast.follow_chain` on the layers'
kernel forms). A chain runs :func:`pipeline.cnn.functional.conv2d_relu_train` and
:func:`~pipeline.cnn.functional.conv2d_relu_backward`: the ReLU on each GEMM chunk while
it is in cache, pooling before the ReLU, the masked and routed gradient written straight
into the convolution's gradient matrix. Values and gradients are the same bits as the
layers' own functions in turn (``tests/cnn/test_fused_train.py``); only fewer passes over
memory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.cnn import functional as F
from pipeline.cnn.fast import flat_conv_pads, follow_chain, pool_fuses
from pipeline.cnn.graph import INPUT, Node
from pipeline.cnn.layers.base import Activation, ConvKernel, MaxPoolWindow

__all__ = ["ConvReluChain", "train_chains"]


@dataclass(frozen=True)
class ConvReluChain:
    """conv -> ReLU [-> max-pool]: ``nodes`` in order, ``pool`` the pool size (0: none)."""

    nodes: tuple[Node, ...]
    pool: int

    @property
    def conv(self) -> Node:
        return self.nodes[0]

    @property
    def last(self) -> int:
        """Index of the node whose output the chain produces."""
        return self.nodes[-1].index

    def forward(self, x: np.ndarray, p: Mapping[str, np.ndarray]) -> tuple[np.ndarray, Any]:
        """The chain's output for the convolution's input ``x`` and parameters ``p``."""
        layer = self.conv.layer
        return F.conv2d_relu_train(
            x, p["weight"], p.get("bias"), layer.pads, layer.args.dilation, self.pool
        )

    def backward(
        self, dy: np.ndarray, cache: Any, p: Mapping[str, np.ndarray], *, need_dx: bool = True
    ) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
        """(dx of the convolution's input or None, the convolution's parameter gradients)."""
        layer = self.conv.layer
        dx, dw, db = F.conv2d_relu_backward(
            dy, cache, p["weight"], layer.pads, layer.args.dilation, need_dx=need_dx
        )
        grads = {"weight": dw}
        if "bias" in p:
            grads["bias"] = db
        return dx, grads


def train_chains(
    nodes: Sequence[Node], params: Mapping[int, Mapping[str, np.ndarray]]
) -> dict[int, ConvReluChain]:
    """The fused chains among ``nodes`` (a graph's nodes up to its output, in file
    order), keyed by the index of their convolution; ``params`` by node index."""
    out = nodes[-1].index
    forms = {nd.index: nd.layer.fused(params[nd.index]) for nd in nodes}
    consumers: dict[int, list[int]] = {INPUT: [], **{nd.index: [] for nd in nodes}}
    for nd in nodes:
        for j in nd.inputs:
            consumers[j].append(nd.index)
    steps = (
        ("act", Activation, lambda f: f.alpha == 0.0),
        ("pool", MaxPoolWindow, pool_fuses),
    )
    chains = {}
    for nd in nodes:
        form = forms[nd.index]
        if not isinstance(form, ConvKernel):
            continue
        if flat_conv_pads(form, nd.layer.input_shapes[0]) is None:
            continue
        chain = follow_chain(nd.index, forms, consumers, out, steps)
        if chain["act"] is None:  # a convolution alone runs its layer's own kernels
            continue
        members = tuple(nodes[k] for k in chain["nodes"])
        chains[nd.index] = ConvReluChain(members, chain["pool"])
    return chains
