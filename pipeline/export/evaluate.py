"""``evaluate``: classify a config's dataset through its sensor chain with one backend:
NumPy (the chain ``sensorlab run`` builds), onnxruntime or OpenCV (an ONNX model)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.cnn.onnx_export import (
    INPUT_NAME,
    RAW_INPUT_NAME,
    SensorFront,
    export_onnx,
    read_metadata,
)
from pipeline.config import LoadedConfig, load_config, with_overrides
from pipeline.datasets import Dataset
from pipeline.errors import UserError
from pipeline.export.front import check_same_sensor, model_inputs, sensor_front
from pipeline.export.runtimes import BACKENDS, OnnxRunner
from pipeline.export.source import ModelSource
from pipeline.metrics import classification_metrics
from pipeline.runner import build_chain, open_config_dataset, stream

__all__ = ["EvalResult", "evaluate"]

# (logits, labels) of one batch
_Scored = tuple[np.ndarray, np.ndarray | None]


@dataclass
class EvalResult:
    """Predictions of one backend on a config's dataset."""

    backend: str
    logits: np.ndarray
    predictions: np.ndarray
    labels: np.ndarray | None
    metrics: dict[str, Any] = field(default_factory=dict)
    onnx_file: str | None = None


def evaluate(
    source: ModelSource,
    *,
    backend: str = "numpy",
    onnx_file: str | Path | None = None,
    config: str | Path | None = None,
    engine: str = "auto",
    registry: Any = None,
    overrides: Sequence[str] = (),
) -> EvalResult:
    """Classify a config's dataset through its sensor chain with one backend.

    Parameters
    ----------
    source : the model (and the config of its training run).
    backend : "numpy" (the chain ``sensorlab run`` builds, classifier included),
        "onnxruntime" or "opencv".
    onnx_file : the ONNX model for an ONNX backend (default: the float export of the
        model, made in memory); one with a raw front end is fed the ADC codes.
    config : the run config whose dataset and sensor to use (default: the run's).
    engine : OpenCV's ONNX engine (auto, new, classic).
    overrides : ``KEY=VALUE`` changes to that config (``dataset.split=val``).
    """
    if backend not in BACKENDS:
        raise UserError(
            f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})", key="backend"
        )
    if onnx_file is not None and backend == "numpy":
        raise UserError("--onnx runs on the onnxruntime or opencv backend, not numpy", key="onnx")
    loaded = load_config(config, registry=registry) if config is not None else source.config
    if loaded is None:
        raise UserError(
            "eval needs a config for its dataset and sensor (--config CONFIG)", key="config"
        )
    loaded = with_overrides(loaded, overrides, registry=registry)
    dataset = open_config_dataset(loaded)
    if backend == "numpy":
        scored = _numpy_scores(source, loaded, dataset, registry)
    else:
        scored = _onnx_scores(source, loaded, dataset, backend, onnx_file, engine, registry)
    logits: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    has_labels = True
    for z, y in scored:
        logits.append(np.asarray(z, np.float32))
        has_labels &= y is not None
        if y is not None:
            labels.append(np.asarray(y))
    class_names = source.model.class_names
    z = np.concatenate(logits) if logits else np.zeros((0, len(class_names)), np.float32)
    preds = z.argmax(axis=1)
    y_all = np.concatenate(labels) if (has_labels and labels) else None
    metrics = classification_metrics(y_all, preds, class_names) if y_all is not None else {}
    return EvalResult(
        backend, z, preds, y_all, metrics, None if onnx_file is None else str(onnx_file)
    )


def _numpy_scores(
    source: ModelSource, loaded: LoadedConfig, dataset: Dataset, registry: Any
) -> Iterator[_Scored]:
    """Logits from the very chain ``sensorlab run`` builds, with the source's model."""
    if source.weights_path is None:
        raise UserError("the numpy backend needs the model's files", key="model")
    overrides = {
        "model.path": str(Path(source.yaml_path).resolve()),
        "model.weights": str(Path(source.weights_path).resolve()),
    }
    run_cfg = load_config(loaded.raw, overrides, registry=registry, base_dir=loaded.base_dir)
    run_cfg.file = loaded.file
    chain = build_chain(run_cfg, dataset.info(), registry=registry)
    for b in stream(chain, dataset, loaded.config.run.batch_size, file=loaded.file):
        yield b.last, b.labels


def _onnx_scores(
    source: ModelSource,
    loaded: LoadedConfig,
    dataset: Dataset,
    backend: str,
    onnx_file: str | Path | None,
    engine: str,
    registry: Any,
) -> Iterator[_Scored]:
    """Logits of an ONNX model (the given file, or the float export made in memory) fed the
    sensor chain's output, or the ADC's codes when the model has the raw front end."""
    from pipeline.cnn.onnx_import import load_onnx

    model = source.model
    proto = load_onnx(onnx_file) if onnx_file is not None else export_onnx(model)
    meta = read_metadata(proto)
    file = str(onnx_file) if onnx_file is not None else None
    if meta.get("model_yaml_hash") not in (None, model.yaml_hash):
        raise UserError(
            f"this ONNX file was exported from another model graph (hash "
            f"{str(meta['model_yaml_hash'])[:12]}), not from {source.yaml_path} "
            f"(hash {model.yaml_hash[:12]})",
            file=file,
        )
    raw_front = meta.get("front") == "raw"
    settings, chain = sensor_front(loaded, model, registry=registry)
    if raw_front:
        expected = SensorFront.from_dict(meta["sensor"])
        check_same_sensor(expected, settings, loaded.file, "the config")
    runner = OnnxRunner(proto, backend, engine)
    expected_input = RAW_INPUT_NAME if raw_front else INPUT_NAME
    if runner.input_name != expected_input:
        raise UserError(
            f"the model's input is {runner.input_name!r}, expected "
            f"{expected_input!r} (a sensorlab export)",
            file=file,
        )
    batch_size = loaded.config.run.batch_size
    for x, y in model_inputs(chain, dataset, batch_size, adc_codes=raw_front, file=loaded.file):
        yield runner(x), y
