"""A trained CNN to ONNX and back through the sensor chain: export, int8, evaluation.

``RUN_OR_MODEL`` is a model YAML (weights ``<stem>.npz`` beside it, or ``--weights``) or a
training run folder written by ``sensorlab train`` (``model.yaml``, ``model.npz`` and the
resolved ``config.yaml``, whose sensor chain gives the sensor settings the model was
trained on). One module per job:

- :mod:`~pipeline.export.source`: load a model source (:func:`load_source`).
- :mod:`~pipeline.export.front`: the sensor front end of a config's chain, checked against
  the model, another sensor and an input dtype; the model's inputs streamed by the runner.
- :mod:`~pipeline.export.runtimes`: onnxruntime and OpenCV DNN (:class:`OnnxRunner`).
- :mod:`~pipeline.export.int8`: static QDQ quantisation (per-channel symmetric int8
  weights, uint8 activations, biases in float) with onnxruntime's tools, and the report
  (``<out stem>.report.json``: float and int8 accuracy on held-out images, agreement),
  written together with the model.
- :mod:`~pipeline.export.write`: :func:`export_model` (the ONNX file, atomically; with
  ``front="raw"`` the graph takes the ADC's integer codes).
- :mod:`~pipeline.export.evaluate`: :func:`evaluate` on numpy, onnxruntime or opencv.

The commands are in :mod:`pipeline.cli` (``export``, ``eval``, ``import``).
"""

from __future__ import annotations

from pipeline.export.evaluate import EvalResult, evaluate
from pipeline.export.front import (
    check_input_dtype,
    check_same_sensor,
    front_mismatch,
    model_inputs,
    sensor_front,
)
from pipeline.export.int8 import INT8_OP_TYPES, int8_report, quantize_int8, report_path_for
from pipeline.export.runtimes import BACKENDS, OPENCV_ENGINES, OnnxRunner
from pipeline.export.source import ModelSource, load_run_config, load_source
from pipeline.export.write import (
    DEFAULT_CALIBRATION_IMAGES,
    INPUT_DTYPES,
    ExportResult,
    export_model,
)

__all__ = [
    "BACKENDS",
    "DEFAULT_CALIBRATION_IMAGES",
    "INPUT_DTYPES",
    "INT8_OP_TYPES",
    "OPENCV_ENGINES",
    "EvalResult",
    "ExportResult",
    "ModelSource",
    "OnnxRunner",
    "check_input_dtype",
    "check_same_sensor",
    "evaluate",
    "export_model",
    "front_mismatch",
    "int8_report",
    "load_run_config",
    "load_source",
    "model_inputs",
    "quantize_int8",
    "report_path_for",
    "sensor_front",
]
