"""Optimisers (SGD with momentum / Nesterov, Adam, AdamW) and learning-rate schedules.

The update equations follow PyTorch's documented algorithms (torch.optim.SGD, Adam,
AdamW), which for AdamW is Loshchilov & Hutter, "Decoupled Weight Decay Regularization"
(ICLR 2019), Algorithm 2, with the schedule multiplier folded into the learning rate.

An optimiser updates the model's parameter arrays in place, so the model and the optimiser
share them. ``decay`` names the parameters that weight decay applies to (by default every
parameter with two or more axes: conv and dense weights, not biases or batch-norm scales).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from pipeline.threads import run_chunks

__all__ = ["SGD", "Adam", "AdamW", "LRSchedule", "Optimizer", "default_decay", "make_optimizer"]


_BLOCK = 1 << 16
"""Values per block of an Adam update; large parameters are updated by threads, a block
each."""


def default_decay(params: Mapping[str, np.ndarray]) -> set[str]:
    """Names of the parameters weight decay applies to: those with >= 2 axes (weights)."""
    return {k for k, v in params.items() if v.ndim >= 2}


class Optimizer:
    """Base class: holds the parameter dict, the per-parameter state and the step count.

    Parameters
    ----------
    params : name -> array, updated in place by :meth:`step`.
    lr : default learning rate (a schedule passes its own to :meth:`step`).
    weight_decay : decay coefficient (per step, scaled by the learning rate).
    decay : names that weight decay applies to; default :func:`default_decay`.
    """

    def __init__(
        self,
        params: Mapping[str, np.ndarray],
        lr: float,
        weight_decay: float = 0.0,
        decay: Collection[str] | None = None,
    ):
        self.params = params
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.decay = set(default_decay(params) if decay is None else decay)
        unknown = self.decay - set(params)
        if unknown:
            raise KeyError(f"decay names unknown parameters: {sorted(unknown)}")
        self.t = 0  # steps taken
        self.state: dict[str, dict[str, np.ndarray]] = {k: {} for k in params}

    def step(self, grads: Mapping[str, np.ndarray], lr: float | None = None) -> None:
        """Apply one update from ``grads`` (same keys as ``params``)."""
        lr = self.lr if lr is None else float(lr)
        self.t += 1
        for name, p in self.params.items():
            self._update(name, p, np.asarray(grads[name], dtype=p.dtype), lr)

    def _update(self, name: str, p: np.ndarray, g: np.ndarray, lr: float) -> None:
        raise NotImplementedError

    def _wd(self, name: str) -> float:
        return self.weight_decay if name in self.decay else 0.0

    # -- checkpoints
    def state_dict(self) -> dict[str, np.ndarray]:
        """Flat arrays for a checkpoint: ``t`` and ``<slot>/<param name>``."""
        out = {"t": np.array(self.t, dtype=np.int64)}
        for name, slots in self.state.items():
            for slot, arr in slots.items():
                out[f"{slot}/{name}"] = arr
        return out

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore what :meth:`state_dict` gave (copies the arrays)."""
        self.t = int(state["t"])
        self.state = {k: {} for k in self.params}
        for key, arr in state.items():
            if key == "t":
                continue
            slot, name = key.split("/", 1)
            if name not in self.params:
                raise KeyError(f"optimiser state for unknown parameter {name!r}")
            self.state[name][slot] = np.array(arr, dtype=self.params[name].dtype)


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum and Nesterov momentum.

    Per step (PyTorch's SGD, dampening 0)::

        g = grad + wd * p                       (L2 weight decay)
        b = g                 on the first step, else  b = mu * b + g
        g = g + mu * b        (Nesterov)  or   g = b   (classical momentum)
        p = p - lr * g
    """

    def __init__(
        self,
        params,
        lr: float,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        decay=None,
    ):
        super().__init__(params, lr, weight_decay, decay)
        if nesterov and momentum <= 0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)

    def _update(self, name, p, g, lr):
        wd = self._wd(name)
        if wd:
            g = g + wd * p
        if self.momentum:
            slots = self.state[name]
            if "momentum" not in slots:
                buf = slots["momentum"] = g.copy()
            else:
                buf = slots["momentum"]
                buf *= self.momentum
                buf += g
            g = g + self.momentum * buf if self.nesterov else buf
        p -= lr * g


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) with L2 weight decay added to the gradient.

    Per step t = 1, 2, ... (PyTorch's Adam)::

        g = grad + wd * p
        m = b1 * m + (1 - b1) * g ;  v = b2 * v + (1 - b2) * g^2
        p = p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    """

    decoupled = False

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decay=None,
    ):
        super().__init__(params, lr, weight_decay, decay)
        self.beta1, self.beta2 = (float(b) for b in betas)
        self.eps = float(eps)

    def _update(self, name, p, g, lr):
        wd = self._wd(name)
        slots = self.state[name]
        if "m" not in slots:
            slots["m"] = np.zeros_like(p)
            slots["v"] = np.zeros_like(p)
        flat = [a.reshape(-1) for a in (p, np.ascontiguousarray(g), slots["m"], slots["v"])]
        blocks = [slice(a, a + _BLOCK) for a in range(0, p.size, _BLOCK)]
        if len(blocks) > 1:  # element-wise: any split gives the same values
            run_chunks(
                len(blocks), lambda k: self._adam_block(*(a[blocks[k]] for a in flat), lr, wd)
            )
        else:
            self._adam_block(*flat, lr, wd)

    def _adam_block(
        self, p: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray, lr: float, wd: float
    ) -> None:
        """The update of one flat block, in place, with the class docstring's operations
        in their order (so the rounding does not depend on the blocks)."""
        if wd and self.decoupled:
            p *= 1.0 - lr * wd
        elif wd:
            g = g + wd * p
        m *= self.beta1
        tmp = np.multiply(g, 1.0 - self.beta1)
        m += tmp
        v *= self.beta2
        np.multiply(g, g, out=tmp)
        tmp *= 1.0 - self.beta2
        v += tmp
        bias1 = 1.0 - self.beta1**self.t
        bias2 = 1.0 - self.beta2**self.t
        denom = np.sqrt(v)
        denom /= math.sqrt(bias2)
        denom += self.eps
        np.multiply(m, lr / bias1, out=tmp)
        tmp /= denom
        p -= tmp


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019)::

    p = p * (1 - lr * wd)        then the Adam step without the L2 term
    """

    decoupled = True


def make_optimizer(
    kind: Literal["sgd", "adam", "adamw"],
    params: Mapping[str, np.ndarray],
    *,
    lr: float,
    momentum: float = 0.0,
    nesterov: bool = False,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    decay: Collection[str] | None = None,
) -> Optimizer:
    """Build an optimiser by name."""
    if kind == "sgd":
        return SGD(params, lr, momentum, nesterov, weight_decay, decay)
    if kind == "adam":
        return Adam(params, lr, betas, eps, weight_decay, decay)
    if kind == "adamw":
        return AdamW(params, lr, betas, eps, weight_decay, decay)
    raise ValueError(f"unknown optimiser {kind!r}")


@dataclass(frozen=True)
class LRSchedule:
    """Learning rate per step: linear warm-up, then constant, step or cosine decay.

    Warm-up: during the first ``warmup_epochs`` epochs, step s (counted from the start of
    training, ``steps_per_epoch`` steps an epoch) uses ``lr * (s + 1) / (warmup_epochs *
    steps_per_epoch)``, reaching ``lr`` on the last warm-up step. Decay counts epochs
    ``e' = epoch - warmup_epochs`` after warm-up and is constant within an epoch:

    - constant: ``lr``
    - step: ``lr * gamma ** floor(e' / step_epochs)``
    - cosine: ``min_lr + (lr - min_lr) * (1 + cos(pi * e' / (epochs - warmup_epochs))) / 2``
      (Loshchilov & Hutter, SGDR, 2017, without restarts; like PyTorch's
      CosineAnnealingLR stepped per epoch with T_max = epochs - warmup_epochs)
    """

    kind: Literal["constant", "step", "cosine"]
    lr: float
    epochs: int
    warmup_epochs: int = 0
    step_epochs: int = 10
    gamma: float = 0.1
    min_lr: float = 0.0

    def __post_init__(self):
        if self.kind not in ("constant", "step", "cosine"):
            raise ValueError(f"unknown schedule {self.kind!r}")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError("warmup_epochs must be >= 0 and < epochs")

    def __call__(self, epoch: int, step: int = 0, steps_per_epoch: int = 1) -> float:
        """Learning rate for ``step`` (0-based) of ``epoch`` (0-based)."""
        e = epoch - self.warmup_epochs
        if e < 0:
            warm = (epoch * steps_per_epoch + step + 1) / (self.warmup_epochs * steps_per_epoch)
            return self.lr * min(1.0, warm)
        if self.kind == "constant":
            return self.lr
        if self.kind == "step":
            return self.lr * self.gamma ** (e // self.step_epochs)
        span = self.epochs - self.warmup_epochs
        return self.min_lr + (self.lr - self.min_lr) * (1.0 + math.cos(math.pi * e / span)) / 2.0
