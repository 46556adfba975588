"""``sensorlab import MODEL.onnx --out DIR``: an ONNX model (supported operators only) as a
model YAML plus weights (:mod:`pipeline.cnn.onnx_import`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pipeline.cnn.onnx_import import import_onnx, write_imported

__all__ = ["cmd_import", "register"]


def register(sub: Any) -> None:
    """Add ``sensorlab import``."""
    p = sub.add_parser(
        "import",
        help="turn an ONNX model (supported operators only) into a model YAML plus weights",
        description="Read an ONNX model whose operators sensorlab's CNN engine supports and "
        "write <name>.yaml (the layer graph) and <name>.npz (the weights) into --out.",
    )
    p.add_argument("onnx", metavar="MODEL.onnx")
    p.add_argument("--out", required=True, help="folder for <name>.yaml and <name>.npz")
    p.add_argument("--name", help="model name (default: from the ONNX file)")
    p.set_defaults(func=cmd_import)


def cmd_import(args: argparse.Namespace) -> int:
    imported = import_onnx(args.onnx, name=args.name)
    yaml_path, npz_path = write_imported(imported, args.out)
    m = imported.model
    print(
        f"wrote {yaml_path} and {npz_path}: {len(m.spec.nodes)} layers, "
        f"{m.n_params:,} parameters, input {m.input_shape}"
    )
    if imported.dropped_front:
        print(
            "note: the sensor front end (ADC codes to the CNN input) is not a layer; it was "
            "left out (the model takes the normalised image)",
            file=sys.stderr,
        )
    return 0
