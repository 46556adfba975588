"""``sensorlab train CONFIG``: train the configured model on the sensor's view of the
dataset (:mod:`pipeline.train`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

import pipeline.train
from pipeline.cli.common import add_set_option, run_overrides
from pipeline.report import write_report
from pipeline.train import TrainingInterrupted, TrainRun, blas_threads, train_from_config

__all__ = ["cmd_train", "register", "summary"]


def register(sub: Any) -> None:
    """Add ``sensorlab train``."""
    p = sub.add_parser(
        "train",
        help="train the configured model on the dataset as seen through the sensor chain",
        description=(pipeline.train.__doc__ or "").split("\n\n")[1],
    )
    p.add_argument("config", help="run config YAML (with model: and train: sections)")
    add_set_option(p)
    p.add_argument("--out", help="folder that receives the run folder (run.out)")
    p.add_argument("--name", help="run folder name (overrides run.name, --set included)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run named --name from its checkpoint",
    )
    p.add_argument(
        "--blas-threads",
        type=int,
        metavar="N",
        help="BLAS threads while training (default: BLAS's own choice); 1 is much faster on "
        "a busy machine, where multi-threaded GEMMs on small matrices stall",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar, summary only")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    progress = not args.quiet  # a bar on a terminal, a line per 10 % in a log
    try:
        with blas_threads(args.blas_threads):
            run = train_from_config(
                args.config, run_overrides(args), resume=args.resume, progress=progress
            )
    except TrainingInterrupted as exc:  # a checkpoint is kept: say how to go on
        print(f"sensorlab: {exc}", file=sys.stderr)
        return 130
    print(summary(run))
    print(f"report: {write_report(run.path)}")
    return 0


def summary(run: TrainRun) -> str:
    """A few lines: data, epochs, final validation accuracy, where the run folder is."""
    t = run.metrics["training"]
    lines = [
        f"sensorlab train {run.model.spec.name}: {t['train_images']} training images, "
        f"{t['val_images']} validation, {t['epochs_run']} epoch{'s' * (t['epochs_run'] != 1)} "
        f"in {t['seconds']:.1f} s" + (" (stopped early)" if t["stopped_early"] else "")
    ]
    lines.append(
        f"final train loss {t['final_train_loss']:.4f}, accuracy {t['final_train_accuracy']:.4f}"
    )
    if run.metrics.get("accuracy") is not None:
        lo, hi = run.metrics["accuracy_ci95"]
        best = t["best_epoch"]
        lines.append(
            f"validation accuracy {run.metrics['accuracy']:.4f} (95% CI {lo:.4f}–{hi:.4f}), "
            f"loss {run.metrics['loss']:.4f}"
            + (f", weights of epoch {best + 1}" if t["restored_best_weights"] else "")
        )
    if run.path is not None:
        lines.append(f"run folder: {run.path}")
    return "\n".join(lines)
