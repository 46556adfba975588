"""int8 export: static QDQ quantisation of a float ONNX model with onnxruntime's tools, the
report comparing the float and int8 models on held-out images, and the two files written
together."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

# INT8_OP_TYPES: the operator types the int8 export quantises, derived from the layer
# classes (each declares its own); the sensor front end is excluded by name as well, since
# it also holds a Conv, Mul and Add that must stay exact.
from pipeline.cnn.onnx_export import (
    FRONT_PREFIX,
    INT8_OP_TYPES,
    check_onnx,
    ir_version_for,
    save_onnx,
)
from pipeline.export.runtimes import OnnxRunner
from pipeline.files import ordinary_mode

__all__ = [
    "INT8_OP_TYPES",
    "int8_report",
    "quantize_int8",
    "report_path_for",
    "write_model_and_report",
]


class _ArrayReader:
    """onnxruntime CalibrationDataReader over a list of input batches."""

    def __init__(self, name: str, batches: list[np.ndarray]):
        self.name = name
        self.batches = batches
        self._it = iter(batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self._it, None)
        return None if x is None else {self.name: x}

    def rewind(self) -> None:
        self._it = iter(self.batches)


def quantize_int8(
    float_proto: Any, calibration: list[np.ndarray], *, float_layers: Sequence[str] = ()
) -> Any:
    """Static QDQ quantisation with onnxruntime's tools.

    ``quant_pre_process`` (ORT graph optimisation, ONNX shape inference; symbolic shape
    inference skipped, so sympy is not needed), then ``quantize_static``: per-channel
    symmetric int8 weights, uint8 activations calibrated by min/max on ``calibration`` (the
    model's input batches), biases left in float (OpenCV's new engine cannot run a quantised
    bias), the operators of :data:`INT8_OP_TYPES` only and never the sensor front end nor
    the layers named in ``float_layers`` (which stay float, e.g. a sensitive last layer).

    Returns the quantised ``ModelProto`` with the float model's opset, IR version and
    metadata (plus a ``quantization`` entry), checked by :func:`check_onnx`.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    class Reader(_ArrayReader, CalibrationDataReader):
        pass

    opset = next(o.version for o in float_proto.opset_import if o.domain in ("", "ai.onnx"))
    input_name = float_proto.graph.input[0].name
    with tempfile.TemporaryDirectory() as tmp:
        src, pre, out = (Path(tmp) / f for f in ("float.onnx", "pre.onnx", "int8.onnx"))
        src.write_bytes(float_proto.SerializeToString())
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        names = [n.name for n in onnx.load(str(pre)).graph.node]
        kept = [n for n in names if any(n == k or n.startswith(f"{k}/") for k in float_layers)]
        front_nodes = [
            n.name for n in onnx.load(str(pre)).graph.node if n.name.startswith(FRONT_PREFIX)
        ]
        quantize_static(
            str(pre),
            str(out),
            Reader(input_name, calibration),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(INT8_OP_TYPES),
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=front_nodes + kept,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"QuantizeBias": False, "WeightSymmetric": True},
        )
        q = onnx.load(str(out))
    _carry_over(float_proto, q, opset)
    _set_metadata(float_proto, q, calibration, float_layers)
    check_onnx(q)
    return q


def _carry_over(float_proto: Any, q: Any, opset: int) -> None:
    """Give the quantised model the float model's opset, IR version and producer."""
    used = {n.domain for n in q.graph.node} | {""}
    keep = [o for o in q.opset_import if o.domain in used or (o.domain == "ai.onnx")]
    del q.opset_import[:]
    q.opset_import.extend(keep)
    q.ir_version = ir_version_for(opset)
    q.producer_name = float_proto.producer_name
    q.producer_version = float_proto.producer_version
    q.doc_string = float_proto.doc_string


def _set_metadata(
    float_proto: Any, q: Any, calibration: list[np.ndarray], float_layers: Sequence[str]
) -> None:
    """The float model's metadata plus a ``quantization`` entry describing the int8 model."""
    from onnx import helper

    meta = {p.key: p.value for p in float_proto.metadata_props}
    tensors = {o for n in q.graph.node for o in n.output}
    if meta.get("cnn_input") not in tensors:  # pre-processing removed the front's Identity
        meta.pop("cnn_input", None)
    meta["quantization"] = json.dumps(
        {
            "format": "QDQ",
            "tool": "onnxruntime.quantization.quantize_static",
            "weights": "int8, per-channel, symmetric",
            "activations": "uint8, asymmetric, min/max calibration",
            "bias": "float",
            "op_types": list(INT8_OP_TYPES),
            "calibration_batches": len(calibration),
            "calibration_images": int(sum(len(b) for b in calibration)),
            "float_layers": list(float_layers),
        }
    )
    del q.metadata_props[:]
    helper.set_model_props(q, meta)


def _logits(runner: Callable[[np.ndarray], np.ndarray], xs: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([runner(x) for x in xs]) if xs else np.zeros((0, 0), np.float32)


def int8_report(
    float_proto: Any,
    int8_proto: Any,
    inputs: list[np.ndarray],
    labels: np.ndarray | None,
    *,
    calibration_images: int,
    config_file: str,
) -> dict[str, Any]:
    """Accuracy of the float and the int8 model on the same held-out images (onnxruntime),
    the agreement of their predictions and the logit differences."""
    import onnxruntime as ort

    zf = _logits(OnnxRunner(float_proto, "onnxruntime"), inputs)
    zq = _logits(OnnxRunner(int8_proto, "onnxruntime"), inputs)
    pf, pq = zf.argmax(axis=1), zq.argmax(axis=1)
    report: dict[str, Any] = {
        "config": config_file,
        "runtime": f"onnxruntime {ort.__version__} (CPU)",
        "calibration_images": calibration_images,
        "held_out_images": len(pf),
        "agreement": float(np.mean(pf == pq)) if len(pf) else None,
        "max_abs_logit_diff": float(np.max(np.abs(zf - zq))) if len(pf) else None,
        "mean_abs_logit_diff": float(np.mean(np.abs(zf - zq))) if len(pf) else None,
        "float": {"accuracy": None},
        "int8": {"accuracy": None},
    }
    if labels is not None and len(labels):
        report["float"]["accuracy"] = float(np.mean(pf == labels))
        report["int8"]["accuracy"] = float(np.mean(pq == labels))
    return report


def report_path_for(out: Path) -> Path:
    """``model.int8.onnx`` -> ``model.int8.report.json``."""
    return out.with_name(f"{out.stem}.report.json")


def write_model_and_report(proto: Any, out: Path, report: dict[str, Any] | None) -> Path | None:
    """Write the ONNX model and (for an int8 export) its report beside it, together.

    Both are first written in full to temporary files in the target folder; then the
    report and the model are renamed into place, the model last. If anything fails before
    the model's rename, neither new file is left (a report renamed already is removed), so
    a model never sits beside a report about another model. Returns the report's path.
    """
    if report is None:
        save_onnx(proto, out)
        return None
    from pipeline.store import jsonable

    rpath = report_path_for(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{rpath.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(jsonable(report), fh, indent=2)
            fh.write("\n")
        ordinary_mode(tmp)
        old_report = rpath.read_bytes() if rpath.is_file() else None
        os.replace(tmp, rpath)
        try:
            save_onnx(proto, out)
        except BaseException:
            if old_report is None:
                rpath.unlink(missing_ok=True)
            else:
                rpath.write_bytes(old_report)
            raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return rpath
