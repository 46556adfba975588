"""ONNX runtimes: an ONNX model run on onnxruntime (CPU) or OpenCV DNN."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.cnn.onnx_export import LOGITS_NAME
from pipeline.errors import UserError

__all__ = ["BACKENDS", "OPENCV_ENGINES", "OnnxRunner", "input_dtype_of"]

BACKENDS = ("numpy", "onnxruntime", "opencv")
OPENCV_ENGINES = ("auto", "new", "classic")


def input_dtype_of(proto: Any) -> np.dtype:
    """The NumPy dtype of an ONNX model's first input."""
    from onnx import helper

    return np.dtype(
        helper.tensor_dtype_to_np_dtype(proto.graph.input[0].type.tensor_type.elem_type)
    )


class OnnxRunner:
    """Runs an ONNX model on onnxruntime (CPU) or OpenCV DNN; ``runner(x)`` gives logits.

    Parameters
    ----------
    proto : the model.
    backend : "onnxruntime" or "opencv".
    engine : OpenCV's ONNX engine: "auto" (the new engine, falling back to the classic
        one), "new" or "classic".
    """

    def __init__(self, proto: Any, backend: str, engine: str = "auto"):
        self.backend = backend
        self.input_name = proto.graph.input[0].name
        self.output_names = [o.name for o in proto.graph.output]
        self.input_dtype = input_dtype_of(proto)
        data = proto.SerializeToString()
        if backend == "onnxruntime":
            self._session = _ort_session(data)
        elif backend == "opencv":
            self._net = _opencv_net(data, engine)
        else:
            raise ValueError(f"unknown ONNX backend {backend!r}")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=self.input_dtype)
        if self.backend == "onnxruntime":
            return self._session.run([LOGITS_NAME], {self.input_name: x})[0]
        import cv2

        self._net.setInput(x, self.input_name)
        try:  # the new engine wants every graph output requested at once
            outs = self._net.forward(self.output_names)
            return np.asarray(outs[self.output_names.index(LOGITS_NAME)])
        except cv2.error as exc:
            raise UserError(f"OpenCV failed to run the model: {_last_line(exc)}") from None


def _ort_session(data: bytes) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _opencv_net(data: bytes, engine: str) -> Any:
    import cv2

    flag = {"auto": "ENGINE_AUTO", "new": "ENGINE_NEW", "classic": "ENGINE_CLASSIC"}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        path.write_bytes(data)
        try:
            return cv2.dnn.readNetFromONNX(str(path), getattr(cv2.dnn, flag[engine]))
        except cv2.error as exc:
            raise UserError(
                f"OpenCV ({engine} engine) cannot read the model: {_last_line(exc)}"
            ) from None


def _last_line(exc: Exception) -> str:
    lines = [s for s in str(exc).strip().splitlines() if s.strip()]
    return lines[-1].strip() if lines else type(exc).__name__
