"""The training loop: mini-batch gradient descent on softmax cross-entropy.

:func:`fit` trains a :class:`pipeline.cnn.model.Model` on in-memory arrays (shuffled with
a seed, split into training and validation sets) or on batches from an iterator factory,
with a learning-rate schedule, early stopping on the validation loss, and checkpoints from
which a resumed run reproduces the uninterrupted one bit for bit.

Randomness: epoch ``e`` draws its shuffling order and dropout masks from
``default_rng([seed, 0x7A1, e])``, so the random state at an epoch boundary is fully given
by ``(seed, epoch)``, which the checkpoint stores.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.cnn import functional as F
from pipeline.cnn.model import Model, read_npz, write_npz_atomic
from pipeline.cnn.optim import Optimizer
from pipeline.cnn.train_config import TrainConfig
from pipeline.errors import UserError

__all__ = [
    "Callback",
    "FitResult",
    "TrainConfig",
    "evaluate",
    "fit",
    "split_train_val",
]

_SHUFFLE_TAG = 0x7A1
_SPLIT_TAG = 0x5B1

Batches = Iterable[tuple[np.ndarray, np.ndarray]]
# Arrays (x (N, C, H, W), labels (N,)) or a factory: epoch -> iterable of (x, labels) batches.
Data = tuple[np.ndarray, np.ndarray] | Callable[[int], Batches]


class Callback:
    """Hooks called by :func:`fit`; override what you need."""

    def on_train_begin(self, *, start_epoch: int, epochs: int, steps_per_epoch: int | None):
        pass

    def on_batch_end(self, epoch: int, step: int, logs: dict[str, float]) -> None:
        """``logs``: loss and accuracy of this batch, running means over the epoch so far
        (``epoch_loss``, ``epoch_accuracy``), and ``lr``."""

    def on_epoch_end(self, epoch: int, record: dict[str, float]) -> None:
        """``record``: the epoch's row of the history."""

    def on_train_end(self, result: FitResult) -> None:
        pass


@dataclass
class FitResult:
    """What :func:`fit` did."""

    history: list[dict[str, float]] = field(default_factory=list)  # one row per epoch
    best_epoch: int | None = None  # epoch with the lowest validation loss
    stopped_early: bool = False
    restored_best: bool = False

    @property
    def epochs_run(self) -> int:
        return len(self.history)


# --------------------------------------------------------------------------- data


def split_train_val(
    x: np.ndarray, y: np.ndarray, val_fraction: float, seed: int
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray] | None]:
    """Stratified, seeded split: ``round(val_fraction * n_c)`` images of each class ``c``
    go to validation (order kept). Returns ((x_train, y_train), (x_val, y_val) or None)."""
    if val_fraction <= 0:
        return (x, y), None
    rng = np.random.default_rng([seed, _SPLIT_TAG])
    val_mask = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        k = round(val_fraction * len(idx))
        val_mask[rng.permutation(idx)[:k]] = True
    if val_mask.all() or not val_mask.any():
        raise UserError(
            f"val_fraction {val_fraction} of {len(y)} images leaves "
            f"{'no training' if val_mask.all() else 'no validation'} images",
            key="train.val_fraction",
        )
    return (x[~val_mask], y[~val_mask]), (x[val_mask], y[val_mask])


def _check_arrays(model: Model, x: np.ndarray, y: np.ndarray, what: str) -> None:
    if len(x) != len(y):
        raise UserError(f"{what}: {len(x)} images but {len(y)} labels")
    if len(y) == 0:
        raise UserError(f"{what}: no images")
    if not np.issubdtype(np.asarray(y).dtype, np.integer):
        raise UserError(f"{what}: labels must be integers, got {np.asarray(y).dtype}")
    k = len(model.class_names)
    if y.min() < 0 or y.max() >= k:
        raise UserError(
            f"{what}: labels must be in 0..{k - 1} (the model's {k} classes), "
            f"got {int(y.min())}..{int(y.max())}"
        )


def _array_batches(
    x: np.ndarray, y: np.ndarray, batch_size: int, rng: np.random.Generator | None
) -> Batches:
    order = rng.permutation(len(x)) if rng is not None else np.arange(len(x))
    for start in range(0, len(x), batch_size):
        idx = order[start : start + batch_size]
        if rng is None:
            yield x[start : start + batch_size], y[start : start + batch_size]
        else:
            yield x[idx], y[idx]


def evaluate(model: Model, data: Data, batch_size: int = 256, *, epoch: int = 0) -> dict[str, Any]:
    """Mean cross-entropy, accuracy and confusion matrix (rows true, columns predicted)
    in evaluation mode."""
    k = len(model.class_names)
    batches = (
        _array_batches(data[0], data[1], batch_size, None)
        if isinstance(data, tuple)
        else data(epoch)
    )
    loss_sum, n = 0.0, 0
    confusion = np.zeros((k, k), dtype=np.int64)
    for xb, yb in batches:
        logits = model.forward(xb)
        loss, _ = F.cross_entropy(logits.astype(np.float64), yb)
        loss_sum += float(loss) * len(yb)
        n += len(yb)
        np.add.at(confusion, (yb, np.argmax(logits, axis=1)), 1)
    if n == 0:
        raise UserError("validation data is empty")
    return {
        "loss": loss_sum / n,
        "accuracy": float(np.trace(confusion)) / n,
        "n": n,
        "confusion": confusion,
    }


# --------------------------------------------------------------------------- fit


@dataclass
class _State:
    """Everything besides model and optimiser that a resumed run needs."""

    epoch: int = 0  # next epoch to run
    history: list[dict[str, float]] = field(default_factory=list)
    best_loss: float = math.inf
    best_epoch: int | None = None
    bad_epochs: int = 0
    stopped_early: bool = False
    best_arrays: dict[str, np.ndarray] | None = None


def fit(
    model: Model,
    train_data: Data,
    val_data: Data | None = None,
    cfg: TrainConfig | None = None,
    callbacks: Sequence[Callback] = (),
    *,
    checkpoint: str | Path | None = None,
    resume: bool = False,
) -> FitResult:
    """Train ``model`` in place.

    Parameters
    ----------
    model : the model; its current weights are the starting point.
    train_data : ``(x, labels)`` arrays, x (N, C, H, W) and integer labels (N,), shuffled
        each epoch with the seed; or a factory ``epoch -> iterable of (x, labels)`` batches.
    val_data : the same for validation (factory called with the epoch); when None and
        ``train_data`` are arrays, ``cfg.val_fraction`` of them are held out.
    cfg : :class:`TrainConfig` (defaults if None).
    callbacks : :class:`Callback` objects (progress bars, logging).
    checkpoint : file to write every ``cfg.checkpoint_every`` epochs and at the end (.npz:
        model, optimiser, epoch, history, early-stopping state, config).
    resume : continue from ``checkpoint`` if it exists (same config, except ``epochs``).

    Returns
    -------
    FitResult : history rows (epoch, lr, train_loss, train_accuracy, val_loss,
        val_accuracy, time_s), best epoch, whether it stopped early.
    """
    cfg = cfg or TrainConfig()
    train_data, val_data, steps_per_epoch = _checked_data(model, train_data, val_data, cfg)
    opt = cfg.make_optimizer(model)
    schedule = cfg.make_schedule()
    st = _State()
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    if resume and checkpoint is not None and checkpoint.exists():
        st = _load_checkpoint(checkpoint, model, opt, cfg)

    for cb in callbacks:
        cb.on_train_begin(start_epoch=st.epoch, epochs=cfg.epochs, steps_per_epoch=steps_per_epoch)

    while st.epoch < cfg.epochs and not st.stopped_early:
        epoch = st.epoch
        t0 = time.perf_counter()
        rng = np.random.default_rng([cfg.seed, _SHUFFLE_TAG, epoch])
        batches, spe = _epoch_batches(train_data, cfg.batch_size, rng, epoch, steps_per_epoch)
        record = _train_epoch(model, opt, schedule, batches, spe, epoch, rng, callbacks)
        if val_data is not None:
            _validate(model, val_data, cfg, epoch, record, st)
        record["time_s"] = time.perf_counter() - t0
        st.history.append(record)
        st.epoch = epoch + 1
        done = st.epoch >= cfg.epochs or st.stopped_early
        if checkpoint is not None and (done or st.epoch % cfg.checkpoint_every == 0):
            _save_checkpoint(checkpoint, model, opt, cfg, st)
        for cb in callbacks:
            cb.on_epoch_end(epoch, record)

    result = FitResult(history=st.history, best_epoch=st.best_epoch, stopped_early=st.stopped_early)
    if cfg.restore_best and st.best_arrays is not None:
        model.set_state_arrays(st.best_arrays)
        result.restored_best = True
    for cb in callbacks:
        cb.on_train_end(result)
    return result


def _checked_data(
    model: Model, train_data: Data, val_data: Data | None, cfg: TrainConfig
) -> tuple[Data, Data | None, int | None]:
    """Training and validation data checked against the model (validation held out of
    training arrays when not given), and the steps per epoch when known."""
    steps_per_epoch: int | None = None
    if isinstance(train_data, tuple):
        x, y = train_data
        y = np.asarray(y)
        _check_arrays(model, x, y, "training data")
        if val_data is None:
            (x, y), val_data = split_train_val(x, y, cfg.val_fraction, cfg.seed)
        train_data = (x, y)
        steps_per_epoch = math.ceil(len(x) / cfg.batch_size)
    if isinstance(val_data, tuple):
        _check_arrays(model, val_data[0], np.asarray(val_data[1]), "validation data")
    if cfg.patience is not None and val_data is None:
        raise UserError(
            "patience (early stopping) needs validation data; set val_fraction > 0",
            key="train.patience",
        )
    return train_data, val_data, steps_per_epoch


def _epoch_batches(
    train_data: Data, batch_size: int, rng: np.random.Generator, epoch: int, spe: int | None
) -> tuple[Iterable[tuple[np.ndarray, np.ndarray]], int | None]:
    """The epoch's batches (arrays shuffled with ``rng``, or the factory's) and their count
    when known."""
    if isinstance(train_data, tuple):
        batches = _array_batches(*train_data, batch_size, rng)
    else:
        batches = train_data(epoch)
    if spe is None and hasattr(batches, "__len__"):
        spe = len(batches)
    return batches, spe


def _train_epoch(
    model: Model,
    opt: Optimizer,
    schedule: Callable[..., float],
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    spe: int | None,
    epoch: int,
    rng: np.random.Generator,
    callbacks: Sequence[Callback],
) -> dict[str, float]:
    """One pass over ``batches``: forward, backward, optimiser step; the epoch's record."""
    loss_sum, correct, n = 0.0, 0, 0
    lr = schedule(epoch, 0, spe or 1)
    for step, (xb, yb) in enumerate(batches):
        yb = np.asarray(yb)
        lr = schedule(epoch, step, spe) if spe else schedule(epoch)
        logits = model.forward(xb, train=True, rng=rng)
        loss, dlogits = F.cross_entropy(logits, yb)
        loss = float(loss)
        if not math.isfinite(loss):
            raise UserError(
                f"training diverged: loss is {loss} at epoch {epoch} step {step}; "
                f"lower the learning rate (lr = {lr:g})",
                key="train.lr",
            )
        opt.step(model.backward(dlogits), lr)
        hits = int(np.sum(np.argmax(logits, axis=1) == yb))
        loss_sum += loss * len(yb)
        correct += hits
        n += len(yb)
        logs = {
            "loss": loss,
            "accuracy": hits / len(yb),
            "epoch_loss": loss_sum / n,
            "epoch_accuracy": correct / n,
            "lr": lr,
        }
        for cb in callbacks:
            cb.on_batch_end(epoch, step, logs)
    if n == 0:
        raise UserError(f"training data gave no batches in epoch {epoch}")
    return {"epoch": epoch, "lr": lr, "train_loss": loss_sum / n, "train_accuracy": correct / n}


def _validate(
    model: Model, val_data: Data, cfg: TrainConfig, epoch: int, record: dict, st: _State
) -> None:
    """Validation loss and accuracy into ``record``; best-epoch and early-stopping state."""
    val = evaluate(model, val_data, max(cfg.batch_size, 256), epoch=epoch)
    record["val_loss"] = val["loss"]
    record["val_accuracy"] = val["accuracy"]
    if val["loss"] < st.best_loss:
        st.best_loss, st.best_epoch, st.bad_epochs = val["loss"], epoch, 0
        if cfg.restore_best:
            st.best_arrays = {k: v.copy() for k, v in model.state_arrays().items()}
    else:
        st.bad_epochs += 1
        if cfg.patience is not None and st.bad_epochs >= cfg.patience:
            st.stopped_early = True


# --------------------------------------------------------------------------- checkpoints

_RESUMABLE_CHANGES = {"epochs"}  # config fields a resumed run may change


def _save_checkpoint(path: Path, model: Model, opt: Optimizer, cfg: TrainConfig, st: _State):
    arrays: dict[str, np.ndarray] = {}
    for k, v in model.state_arrays().items():
        arrays[f"model/{k}"] = v
    for k, v in opt.state_dict().items():
        arrays[f"opt/{k}"] = v
    if st.best_arrays is not None:
        for k, v in st.best_arrays.items():
            arrays[f"best/{k}"] = v
    meta = {
        "format": "sensorlab-checkpoint-1",
        "epoch": st.epoch,
        "history": st.history,
        "best_loss": None if math.isinf(st.best_loss) else st.best_loss,
        "best_epoch": st.best_epoch,
        "bad_epochs": st.bad_epochs,
        "stopped_early": st.stopped_early,
        "config": cfg.model_dump(),
        "yaml_hash": model.yaml_hash,
        "rng": {"seed": cfg.seed, "tag": _SHUFFLE_TAG, "next_epoch": st.epoch},
    }
    arrays["meta"] = np.array(json.dumps(meta))
    write_npz_atomic(path, arrays)


def _load_checkpoint(path: Path, model: Model, opt: Optimizer, cfg: TrainConfig) -> _State:
    arrays = read_npz(path, what="checkpoint")
    if "meta" not in arrays:
        raise UserError("not a sensorlab training checkpoint", file=path)
    meta = json.loads(str(arrays.pop("meta")))
    if meta.get("yaml_hash") != model.yaml_hash:
        raise UserError(
            f"checkpoint belongs to another model graph than {model.spec.source or 'this one'}",
            file=path,
        )
    saved = meta["config"]
    now = cfg.model_dump()
    changed = sorted(k for k in now if saved.get(k) != now[k] and k not in _RESUMABLE_CHANGES)
    if changed:
        diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in changed)
        raise UserError(
            f"cannot resume: the training config changed since the checkpoint ({diffs})",
            file=path,
        )
    groups: dict[str, dict[str, np.ndarray]] = {"model": {}, "opt": {}, "best": {}}
    for key, v in arrays.items():
        group, name = key.split("/", 1)
        groups[group][name] = v
    model.set_state_arrays(groups["model"], source=str(path))
    opt.load_state_dict(groups["opt"])
    return _State(
        epoch=int(meta["epoch"]),
        history=list(meta["history"]),
        best_loss=math.inf if meta["best_loss"] is None else float(meta["best_loss"]),
        best_epoch=meta["best_epoch"],
        bad_epochs=int(meta["bad_epochs"]),
        stopped_early=bool(meta["stopped_early"]),
        best_arrays=groups["best"] or None,
    )
