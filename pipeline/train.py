"""``sensorlab train``: train the configured model on the dataset as the sensor sees it.

The dataset's ``train`` split (and its ``val`` split, for validation) is streamed once
through the configured sensor chain (so a model can be trained on 4-bit or 12-bit images,
in dim light or bright), kept in memory as (N, C, H, W) float32, and the model YAML named
by ``model.path`` is trained on it from random weights, with the ``train:`` section of
the config (:class:`TrainConfig`). Each image's sensor noise is drawn once (per image,
from the run seed), not anew every epoch.

A run folder is written atomically (built under a hidden name, renamed when complete)::

    <run.out>/<name>/
        model.yaml      the model graph (copied from model.path)
        model.npz       trained weights (load_model("model.yaml") finds them)
        config.yaml     the config as resolved (overrides applied, defaults filled)
        history.csv     one row per epoch: lr, train/val loss and accuracy, seconds
        curves.png      loss and accuracy per epoch
        metrics.json    final validation metrics (accuracy with 95 % interval, per-class
                        accuracy, confusion matrix, loss) and a summary of the training
        manifest.json   versions, timings, where the data came from

While training, a checkpoint is kept beside the folder (``.<name>.checkpoint.npz``);
``--resume --name NAME`` continues an interrupted run from it, reproducing the weights of
an uninterrupted run exactly. It is removed when the run completes.
"""

from __future__ import annotations

import csv
import io
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pipeline._version import __version__
from pipeline.classifier import to_nchw
from pipeline.cnn.graph import load_graph
from pipeline.cnn.model import Model
from pipeline.cnn.training import Callback, FitResult, TrainConfig, evaluate, fit, split_train_val
from pipeline.errors import UserError
from pipeline.progress import progress as progress_reporter

__all__ = [
    "ChainData",
    "TrainRun",
    "TrainingInterrupted",
    "blas_threads",
    "chain_arrays",
    "load_train_config",
    "to_nchw",
    "train_arrays",
    "train_cell",
    "train_from_config",
]

HISTORY_COLUMNS = (
    "epoch",
    "lr",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "time_s",
)


@dataclass
class TrainRun:
    """What a training run gives back."""

    model: Model
    result: FitResult
    metrics: dict[str, Any]  # final validation metrics (metrics.json)
    path: Path | None  # the run folder


# --------------------------------------------------------------------------- arrays


class _Progress(Callback):
    """Progress over all training steps with the running loss and accuracy (a bar on a
    terminal, a line per 10 % in a log; :mod:`pipeline.progress`); one line per epoch with
    the validation figures."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None

    def on_train_begin(self, *, start_epoch, epochs, steps_per_epoch):
        if not self.enabled:
            return
        total = None if steps_per_epoch is None else epochs * steps_per_epoch
        initial = 0 if steps_per_epoch is None else start_epoch * steps_per_epoch
        self.epochs = epochs
        self.bar = progress_reporter(total, initial=initial, unit="step", desc="train")

    def on_batch_end(self, epoch, step, logs):
        if self.bar is None:
            return
        self.bar.set_description(f"epoch {epoch + 1}/{self.epochs}", refresh=False)
        self.bar.set_postfix(
            loss=f"{logs['epoch_loss']:.4f}", acc=f"{logs['epoch_accuracy']:.3f}", refresh=False
        )
        self.bar.update(1)

    def on_epoch_end(self, epoch, record):
        if self.bar is None:
            return
        line = (
            f"epoch {epoch + 1}/{self.epochs}: loss {record['train_loss']:.4f} "
            f"acc {record['train_accuracy']:.3f}"
        )
        if "val_loss" in record:
            line += f" | val loss {record['val_loss']:.4f} acc {record['val_accuracy']:.3f}"
        self.bar.write(line + f" | {record['time_s']:.1f} s", file=sys.stderr)

    def on_train_end(self, result):
        if self.bar is not None:
            self.bar.close()


def train_arrays(
    model: Model,
    x: np.ndarray,
    y: np.ndarray,
    cfg: TrainConfig,
    *,
    val: tuple[np.ndarray, np.ndarray] | None = None,
    out: str | Path | None = None,
    name: str | None = None,
    model_yaml: str | Path | None = None,
    config: dict[str, Any] | None = None,
    manifest: dict[str, Any] | None = None,
    resume: bool = False,
    progress: bool = False,
) -> TrainRun:
    """Train ``model`` on arrays and (with ``out``) write the run folder atomically.

    Parameters
    ----------
    model : the model to train (its current weights are the start).
    x, y : training images (N, C, H, W) and integer labels (N,).
    val : validation images and labels; when None, ``cfg.val_fraction`` of ``x, y``
        (stratified by class) are held out for validation.
    cfg : the training settings.
    out, name : write the run folder ``out/name`` (nothing is written when ``out`` is None).
    model_yaml : the model file copied into the folder (default: the graph's source).
    config : the resolved run config written as config.yaml (default: just ``train``).
    manifest : extra entries for manifest.json.
    resume : continue from the checkpoint ``out/.<name>.checkpoint.npz`` left by an
        interrupted run of the same name.
    progress : show progress on stderr (a bar on a terminal, lines in a log).
    """
    from pipeline.metrics import classification_metrics
    from pipeline.store import RunWriter

    y = np.asarray(y)
    if val is None:
        (x_tr, y_tr), val = split_train_val(x, y, cfg.val_fraction, cfg.seed)
    else:
        x_tr, y_tr = x, y
    writer = checkpoint = None
    if out is not None:
        name = name or f"{model.spec.name}-train-{_stamp()}"
        out = Path(out)
        checkpoint = out / f".{name}.checkpoint.npz"
        if resume and not checkpoint.exists():
            raise UserError(
                f"nothing to resume: no checkpoint {checkpoint} (resume needs the --name of "
                "the interrupted run)",
                key="run.name",
            )
        if not resume and checkpoint.exists():
            checkpoint.unlink()
        writer = RunWriter(out, name)
    try:
        t0 = time.perf_counter()
        result = fit(
            model,
            (x_tr, y_tr),
            val,
            cfg,
            [_Progress(progress)],
            checkpoint=checkpoint,
            resume=resume,
        )
        train_seconds = time.perf_counter() - t0
        metrics: dict[str, Any] = {}
        if val is not None:
            ev = evaluate(model, val, max(cfg.batch_size, 256))
            preds = np.concatenate([np.argmax(z, axis=1) for z in model.iter_logits(val[0], 256)])
            metrics = classification_metrics(val[1], preds, model.class_names)
            metrics["loss"] = ev["loss"]
        metrics["training"] = {
            "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch,
            "stopped_early": result.stopped_early,
            "restored_best_weights": result.restored_best,
            "train_images": len(y_tr),
            "val_images": 0 if val is None else len(val[1]),
            "seconds": round(train_seconds, 3),
            "final_train_loss": result.history[-1]["train_loss"],
            "final_train_accuracy": result.history[-1]["train_accuracy"],
            "model_hash": model.yaml_hash,
        }
        run = TrainRun(model, result, metrics, None)
        if writer is not None:
            _write_folder(writer, run, cfg, model_yaml, config)
            run.path = writer.commit(_manifest(run, cfg, manifest))
            if checkpoint is not None:
                checkpoint.unlink(missing_ok=True)
        return run
    except BaseException as exc:
        if writer is not None:
            writer.abort()
        if isinstance(exc, KeyboardInterrupt) and checkpoint is not None and checkpoint.exists():
            raise TrainingInterrupted(checkpoint, str(name)) from exc
        raise


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C with its checkpoint kept; the message says how to resume.

    Attributes
    ----------
    checkpoint : the kept checkpoint file.
    name : the run name to pass to ``--resume --name``.
    """

    def __init__(self, checkpoint: Path, name: str) -> None:
        super().__init__(
            f"interrupted; the checkpoint {checkpoint} is kept: continue with the same "
            f"command plus --resume --name {name}"
        )
        self.checkpoint = checkpoint
        self.name = name


def _stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def _write_folder(writer, run: TrainRun, cfg, model_yaml, config) -> None:
    from pipeline.store import write_json_atomic

    model = run.model
    source = Path(model_yaml) if model_yaml is not None else None
    if source is None and model.spec.source:
        source = Path(model.spec.source)
    if source is not None and source.is_file():
        shutil.copyfile(source, writer.path("model.yaml"))
    else:
        text = yaml.safe_dump({"name": model.spec.name, **model.spec.canonical()}, sort_keys=False)
        writer.path("model.yaml").write_text(text, encoding="utf-8")
    model.save(writer.path("model.npz"))
    resolved = dict(config) if config is not None else {}
    resolved["train"] = cfg.model_dump(mode="json")
    writer.path("config.yaml").write_text(
        yaml.safe_dump(resolved, sort_keys=False), encoding="utf-8"
    )
    writer.path("history.csv").write_text(history_csv(run.result.history), encoding="utf-8")
    plot_history(run.result.history, writer.path("curves.png"), title=model.spec.name)
    write_json_atomic(writer.path("metrics.json"), run.metrics)


def _manifest(run: TrainRun, cfg: TrainConfig, extra: dict[str, Any] | None) -> dict[str, Any]:
    import platform

    return {
        "sensorlab": __version__,
        "kind": "train",
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {
            "name": run.model.spec.name,
            "hash": run.model.yaml_hash,
            "parameters": run.model.n_params,
            "input_shape": list(run.model.input_shape),
            "classes": list(run.model.class_names),
        },
        "train": cfg.model_dump(mode="json"),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "metrics": {k: run.metrics.get(k) for k in ("accuracy", "accuracy_ci95", "loss", "n")},
        **(extra or {}),
    }


def history_csv(history: Sequence[dict[str, float]]) -> str:
    """The history as CSV text, one row per epoch (empty cells where no validation ran)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: row.get(k, "") for k in HISTORY_COLUMNS})
    return buf.getvalue()


def plot_history(history: Sequence[dict[str, float]], path: Path, title: str = "") -> None:
    """Loss and accuracy per epoch (training and validation) as a PNG (Agg, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [r["epoch"] + 1 for r in history]
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    for ax, what, label in zip(
        fig.subplots(1, 2), ("loss", "accuracy"), ("cross-entropy", "accuracy"), strict=True
    ):
        ax.plot(epochs, [r[f"train_{what}"] for r in history], "o-", ms=3, label="train")
        if history and f"val_{what}" in history[0]:
            ax.plot(epochs, [r[f"val_{what}"] for r in history], "s-", ms=3, label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=100)


# --------------------------------------------------------------------------- from a config


def load_train_config(
    source: str | Path,
    overrides: Sequence[str] | dict[str, Any] | None = None,
    *,
    registry: Any = None,
) -> tuple[Any, TrainConfig]:
    """The validated run config and its ``train:`` section (defaults when absent)."""
    from pipeline.config import LoadedConfig, load_config

    if isinstance(source, LoadedConfig) and not overrides:
        return source, source.config.train
    if isinstance(source, LoadedConfig):
        source = load_config(source.raw, overrides, registry=registry, base_dir=source.base_dir)
        return source, source.config.train
    loaded = load_config(source, overrides, registry=registry)
    return loaded, loaded.config.train


@dataclass
class ChainData:
    """A dataset split as the sensor sees it."""

    x: np.ndarray  # (N, C, H, W) float32, the sensor chain's output
    y: np.ndarray  # (N,) int64 labels
    chain: Any  # the pipeline.runner.Chain that made x
    class_names: tuple[str, ...]  # the dataset's


def chain_arrays(
    loaded: Any,
    *,
    split: str | None = "train",
    registry: Any = None,
    progress: bool = False,
    chain: Any = None,
) -> ChainData:
    """The dataset's ``split`` streamed through the sensor chain (built here unless given)."""
    from pipeline.runner import build_chain, open_config_dataset

    dataset = open_config_dataset(loaded, split=split)
    if chain is None:
        chain = build_chain(loaded, dataset.info(), registry=registry, with_model=False)
    xs, ys = [], []
    with progress_reporter(
        len(dataset), unit="img", desc=f"sensor ({split})", show=progress
    ) as bar:
        for x, labels, index in chain.stream(
            dataset, loaded.config.run.batch_size, file=loaded.file
        ):
            if labels is None:
                raise UserError(
                    "the dataset has no labels to train on", file=loaded.file, key="dataset"
                )
            xs.append(to_nchw(x))
            ys.append(np.asarray(labels, dtype=np.int64))
            bar.update(len(index))
    if not xs:
        raise UserError(f"the dataset's {split} split is empty", file=loaded.file, key="dataset")
    x, y = np.concatenate(xs), np.concatenate(ys)
    if not np.isfinite(x).all():
        raise UserError(
            "the sensor chain gave NaN or inf for some images", file=loaded.file, key="sensor"
        )
    return ChainData(x, y, chain, tuple(dataset.class_names))


def _check_fit(model: Model, model_path: Path, data: ChainData, loaded: Any):
    """The chain's images fit the model's input, the dataset's classes its classes."""
    x, y = data.x, data.y
    if data.class_names and data.class_names != model.class_names:
        raise UserError(
            f"the model {model_path} has classes ({_names(model.class_names)}), the dataset "
            f"has ({_names(data.class_names)}); make the model's classes list match",
            file=loaded.file,
            key="model.path",
        )
    if x.shape[1:] != model.input_shape:
        raise UserError(
            f"the model {model_path} takes (C,H,W) = {model.input_shape}, the sensor chain "
            f"gives {x.shape[1:]}",
            file=loaded.file,
            key="model.path",
        )
    k = len(model.class_names)
    if y.min() < 0 or y.max() >= k:
        raise UserError(
            f"the dataset has labels {int(y.min())}..{int(y.max())}, the model "
            f"{model_path} has {k} classes",
            file=loaded.file,
            key="model.path",
        )


def _names(names: Sequence[str]) -> str:
    return ", ".join(names[:4]) + (f", ... {len(names)} in all" if len(names) > 4 else "")


def _has_splits(loaded: Any) -> bool:
    return "split" in type(loaded.config.dataset).model_fields


def train_from_config(
    source: str | Path,
    overrides: Sequence[str] | dict[str, Any] | None = None,
    *,
    registry: Any = None,
    resume: bool = False,
    progress: bool = False,
    init_weights: str | Path | None = None,
    out: str | Path | None = None,
    name: str | None = None,
) -> TrainRun:
    """Train the config's model on its dataset as seen through its sensor chain.

    ``init_weights`` starts from those weights instead of a seeded initialisation
    (fine-tuning); ``out`` and ``name`` override ``run.out`` and ``run.name``.

    Training images are the dataset's ``train`` split and validation images its ``val``
    split, both through the configured sensor stages; a dataset without splits (or with
    an empty val split) gives its images to training, which then holds out
    ``train.val_fraction`` of them. The run folder goes to ``run.out`` under ``run.name``
    (default ``<config stem>-train-<UTC time>``); an existing one is refused before any
    work is done."""
    from pipeline.store import check_run_name_free

    loaded, cfg = load_train_config(source, overrides, registry=registry)
    config = loaded.config
    if config.model is None:
        raise UserError(
            "train needs a model: add `model: {path: <model YAML>}`", file=loaded.file, key="model"
        )
    model_path = loaded.resolve(config.model.path)
    try:
        spec = load_graph(model_path)
    except UserError as exc:
        raise exc.located(file=loaded.file) from None
    model = Model(spec, init_seed=cfg.seed)
    if init_weights is not None:
        model.load_weights(init_weights)
    run_opts = config.run
    stem = Path(loaded.file).stem if str(loaded.file).endswith((".yaml", ".yml")) else "train"
    name = name or run_opts.name or f"{stem}-train-{_stamp()}"
    out = run_opts.out if out is None else out
    try:
        check_run_name_free(out, name)  # before the data is streamed through the sensor
    except UserError as exc:
        raise exc.located(file=loaded.file) from None

    splits = _has_splits(loaded)
    train = chain_arrays(
        loaded, split="train" if splits else None, registry=registry, progress=progress
    )
    _check_fit(model, model_path, train, loaded)
    x, y, chain = train.x, train.y, train.chain
    val = None
    if splits:
        try:
            v = chain_arrays(loaded, split="val", progress=progress, chain=chain)
        except UserError as exc:
            if exc.key != "dataset.split":  # an empty val split: hold out from train
                raise
        else:
            _check_fit(model, model_path, v, loaded)
            val = (v.x, v.y)

    resolved = loaded.portable(registry)
    # the run folder holds its own copy of the model: its config points there
    resolved["model"] = {"path": "model.yaml", "weights": "model.npz"}
    manifest = {
        "config_file": str(loaded.file),
        "model_file": str(model_path),
        "seed": config.seed,
        "sensor_seed": config.sensor_seed if config.sensor_seed is not None else config.seed,
        "data": {
            "train_split": "train" if splits else None,
            "val_split": "val" if val is not None else None,
            "images": len(y),
            "val_images": None if val is None else len(val[1]),
            "shape": list(x.shape[1:]),
            "chain": [f"{n} ({i.unit})" for n, i in zip(chain.names, chain.infos[1:], strict=True)],
            "class_counts": np.bincount(y, minlength=len(model.class_names)).tolist(),
            "min": float(x.min()),
            "max": float(x.max()),
        },
    }
    try:
        return train_arrays(
            model,
            x,
            y,
            cfg,
            val=val,
            out=out,
            name=name,
            model_yaml=model_path,
            config=resolved,
            manifest=manifest,
            resume=resume,
            progress=progress,
        )
    except UserError as exc:
        raise exc.located(file=loaded.file) from None


def train_cell(
    loaded: Any, out_dir: str | Path, *, init: str = "scratch", registry: Any = None
) -> Path:
    """Train one sweep cell's model (the hook of ``sensorlab sweep`` with ``train:``).

    Parameters
    ----------
    loaded : the cell's LoadedConfig (base config with the cell's overrides).
    out_dir : an empty folder; the training run folder is written inside it.
    init : ``"scratch"`` (the model graph with fresh seeded weights) or ``"base"``
        (start from the weights the config's ``model:`` names: fine-tuning).
    registry : stage registry (default: installed stages).

    Returns
    -------
    The trained model's YAML (its weights ``model.npz`` beside it).
    """
    if init not in ("scratch", "base"):
        raise ValueError(f"init must be 'scratch' or 'base', got {init!r}")
    weights = None
    if init == "base":
        ref = loaded.config.model
        if ref is None:
            raise UserError("fine-tuning needs a model with weights", file=loaded.file, key="model")
        model_path = loaded.resolve(ref.path)
        weights = loaded.resolve(ref.weights) if ref.weights else model_path.with_suffix(".npz")
    run = train_from_config(
        loaded, registry=registry, init_weights=weights, out=out_dir, name="train"
    )
    return Path(run.path) / "model.yaml"


@contextmanager
def blas_threads(n: int | None) -> Iterator[None]:
    """Limit BLAS to ``n`` threads inside the block (threadpoolctl); None leaves it alone."""
    if n is None:
        yield
        return
    if n < 1:
        raise UserError(f"--blas-threads must be >= 1, got {n}")
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        raise UserError("--blas-threads needs the threadpoolctl package") from None
    with threadpool_limits(n, user_api="blas"):
        yield
