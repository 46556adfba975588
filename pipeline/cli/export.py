"""``sensorlab export RUN_OR_MODEL --out FILE.onnx``: a trained CNN as an ONNX model
(:mod:`pipeline.export`)."""

from __future__ import annotations

import argparse
from typing import Any

from pipeline.cnn.onnx_export import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET
from pipeline.export import (
    DEFAULT_CALIBRATION_IMAGES,
    INPUT_DTYPES,
    export_model,
    load_source,
)

__all__ = ["cmd_export", "register"]


def register(sub: Any) -> None:
    """Add ``sensorlab export``."""
    p = sub.add_parser(
        "export",
        help="write an ONNX model of a trained network (optionally with the sensor front end, "
        "optionally int8)",
        description="Write an ONNX model of a trained network. RUN_OR_MODEL is a training "
        "run folder or a model YAML with its weights beside it.",
    )
    p.add_argument("source", metavar="RUN_OR_MODEL", help="training run folder or model YAML")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument(
        "--opset",
        type=int,
        default=DEFAULT_OPSET,
        help=f"ONNX opset, {MIN_OPSET} to {MAX_OPSET} (default {DEFAULT_OPSET})",
    )
    p.add_argument(
        "--front",
        choices=("none", "raw"),
        default="none",
        help="raw: the model takes the ADC's integer codes (black level, white "
        "level, demosaic in the graph; log, sqrt and table codes linearised by a lookup)",
    )
    p.add_argument("--int8", action="store_true", help="static int8 (QDQ) quantisation")
    p.add_argument(
        "--calibration",
        metavar="CONFIG",
        help="run config whose simulated sensor output calibrates --int8",
    )
    p.add_argument(
        "--calibration-images",
        type=int,
        default=DEFAULT_CALIBRATION_IMAGES,
        help="images of the calibration config used to calibrate; the rest are "
        f"held out for the report (default {DEFAULT_CALIBRATION_IMAGES})",
    )
    p.add_argument(
        "--float-layers",
        nargs="+",
        default=[],
        metavar="LAYER",
        help="layers (by name) that --int8 leaves in float, e.g. the last dense layer",
    )
    p.add_argument(
        "--config",
        help="run config whose sensor the model takes (default: the run folder's config.yaml)",
    )
    p.add_argument("--weights", help="weights .npz (default: beside the model YAML)")
    p.add_argument(
        "--input-dtype",
        choices=INPUT_DTYPES,
        help="dtype of the raw front end's input (default: the ADC's)",
    )
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    source = load_source(args.source, weights=args.weights, config=args.config)
    result = export_model(
        source,
        args.out,
        opset=args.opset,
        front=args.front,
        int8=args.int8,
        calibration=args.calibration,
        calibration_images=args.calibration_images,
        input_dtype=args.input_dtype,
        float_layers=args.float_layers,
    )
    proto = result.proto
    kind = "int8 (QDQ)" if args.int8 else "float32"
    inp = proto.graph.input[0]
    print(
        f"wrote {result.path}: {kind}, opset {args.opset}, IR {proto.ir_version}, input "
        f"{inp.name!r}, {len(proto.graph.node)} nodes"
    )
    if result.report is not None:
        r = result.report
        acc = [r["float"]["accuracy"], r["int8"]["accuracy"]]
        accs = ", ".join(
            f"{k} {'n/a' if a is None else f'{a:.4f}'}"
            for k, a in zip(("float", "int8"), acc, strict=True)
        )
        print(
            f"held-out {r['held_out_images']} images: accuracy {accs}; predictions agree "
            f"on {r['agreement']:.4f}"
        )
        print(f"report: {result.report_path}")
    return 0
