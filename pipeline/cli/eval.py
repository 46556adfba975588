"""``sensorlab eval RUN_OR_MODEL``: classify a config's dataset through the sensor chain on
numpy, onnxruntime or OpenCV and report accuracy (:mod:`pipeline.export.evaluate`)."""

from __future__ import annotations

import argparse
from typing import Any

from pipeline.cli.common import add_set_option, print_json
from pipeline.export import BACKENDS, OPENCV_ENGINES, evaluate, load_source

__all__ = ["cmd_eval", "register"]


def register(sub: Any) -> None:
    """Add ``sensorlab eval``."""
    p = sub.add_parser(
        "eval",
        help="classify a config's dataset through the sensor chain on numpy, onnxruntime "
        "or opencv and report accuracy",
        description="Classify the dataset of a training run's config (or --config) through "
        "its sensor chain with a trained model on one backend, and print the accuracy; "
        "--set changes the config's keys (another dataset split, sensor settings).",
    )
    p.add_argument("source", metavar="RUN_OR_MODEL", help="training run folder or model YAML")
    p.add_argument("--backend", choices=BACKENDS, default="numpy")
    p.add_argument(
        "--onnx",
        metavar="FILE",
        help="ONNX model to run (default: the float export of RUN_OR_MODEL)",
    )
    p.add_argument("--config", help="run config (dataset and sensor); default: the run's")
    p.add_argument("--weights", help="weights .npz (default: beside the model YAML)")
    add_set_option(p)
    p.add_argument(
        "--engine",
        choices=OPENCV_ENGINES,
        default="auto",
        help="OpenCV's ONNX engine (opencv backend)",
    )
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    source = load_source(args.source, weights=args.weights)
    result = evaluate(
        source,
        backend=args.backend,
        onnx_file=args.onnx,
        config=args.config,
        engine=args.engine,
        overrides=args.overrides,
    )
    if args.json:
        print_json(
            {
                "backend": result.backend,
                "onnx": result.onnx_file,
                "images": len(result.predictions),
                **result.metrics,
            }
        )
        return 0
    what = result.backend + (f" ({result.onnx_file})" if result.onnx_file else "")
    m = result.metrics
    if m:
        lo, hi = m["accuracy_ci95"]
        print(f"{what}: accuracy {m['accuracy']:.4f} (95% CI {lo:.4f}–{hi:.4f}) on {m['n']} images")
    else:
        print(f"{what}: {len(result.predictions)} images classified (the dataset has no labels)")
    return 0
