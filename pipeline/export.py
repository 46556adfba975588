"""``sensorlab export``, ``sensorlab eval`` and ``sensorlab import``: a trained CNN to ONNX
and back, and classification through the sensor chain on NumPy, onnxruntime or OpenCV.

``RUN_OR_MODEL`` is a model YAML (weights ``<stem>.npz`` beside it, or ``--weights``) or a
training run folder written by ``sensorlab train`` (``model.yaml``, ``model.npz`` and the
resolved ``config.yaml``, whose sensor chain gives the sensor settings the model was
trained on).

- ``export`` writes the ONNX model (:mod:`pipeline.cnn.onnx_export`) atomically; with
  ``--front raw`` the graph takes the ADC's integer codes; with ``--int8 --calibration
  CONFIG`` it is quantised statically (QDQ, per-channel symmetric int8 weights, uint8
  activations, biases left in float) with onnxruntime's tools, calibrated on the sensor
  output that CONFIG simulates, and a report (``<out stem>.report.json``) gives the float
  and int8 accuracy on held-out images of the same config and the agreement of their
  predictions.
- ``eval`` classifies a config's dataset through its sensor chain with one backend:
  ``numpy`` (the very chain ``sensorlab run`` builds), ``onnxruntime`` or ``opencv``
  (an ONNX file given by ``--onnx``, or the float export made in memory).
- ``import`` turns an ONNX model whose operators sensorlab supports into a model YAML and
  weights (:mod:`pipeline.cnn.onnx_import`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.cnn.model import Model, load_model
from pipeline.cnn.onnx_export import (
    DEFAULT_OPSET,
    FRONT_PREFIX,
    INPUT_NAME,
    INT8_OP_TYPES,
    LOGITS_NAME,
    MAX_OPSET,
    MIN_OPSET,
    RAW_INPUT_NAME,
    SensorFront,
    check_onnx,
    check_opset,
    export_onnx,
    ir_version_for,
    read_metadata,
    save_onnx,
)
from pipeline.errors import UserError, did_you_mean

__all__ = [
    "BACKENDS",
    "EvalResult",
    "ExportResult",
    "ModelSource",
    "OnnxRunner",
    "evaluate",
    "export_model",
    "load_source",
    "quantize_int8",
    "register",
    "sensor_front",
]

BACKENDS = ("numpy", "onnxruntime", "opencv")
OPENCV_ENGINES = ("auto", "new", "classic")
INPUT_DTYPES = ("uint8", "uint16", "uint32", "int32", "float32")
RUN_FILES = ("model.yaml", "model.npz")
DEFAULT_CALIBRATION_IMAGES = 128


# --------------------------------------------------------------------------- model sources


@dataclass
class ModelSource:
    """A model named on the command line, with the config it was trained with (if known).

    Attributes
    ----------
    model : the CNN with its weights.
    yaml_path, weights_path : its files.
    run_dir : the training run folder, if the source is one.
    config : the run's resolved config (a run folder) or the ``--config`` given.
    """

    model: Model
    yaml_path: Path
    weights_path: Path | None
    run_dir: Path | None = None
    config: Any = None  # pipeline.config.LoadedConfig


def load_source(
    path: str | Path,
    *,
    weights: str | Path | None = None,
    config: str | Path | None = None,
    registry: Any = None,
) -> ModelSource:
    """Read ``RUN_OR_MODEL``: a run folder or a model YAML (with its weights).

    Parameters
    ----------
    path : a training run folder or a model YAML.
    weights : the weights .npz (default: ``model.npz`` in a run, ``<stem>.npz`` by a YAML).
    config : a run config whose sensor the model takes (default: a run's ``config.yaml``).

    Raises
    ------
    UserError : a missing path, a run folder without its files, missing, corrupt or
        mismatched weights, a bad config.
    """
    from pipeline.config import load_config

    path = Path(path)
    if not path.exists():
        raise UserError("no such model YAML or run folder", file=path)
    run_dir = None
    loaded = None
    if path.is_dir():
        missing = [f for f in RUN_FILES if not (path / f).is_file()]
        if missing:
            raise UserError(
                f"not a training run folder (no {', '.join(missing)}); give a run folder "
                "written by `sensorlab train` or a model YAML",
                file=path,
            )
        run_dir, yaml_path = path, path / "model.yaml"
        weights_path = Path(weights) if weights else path / "model.npz"
        if config is None and (path / "config.yaml").is_file():
            loaded = load_run_config(path, registry=registry)
        model = load_model(yaml_path, weights_path)
    else:
        yaml_path = path
        model = load_model(yaml_path, weights)  # default <stem>.npz, with a hint when absent
        weights_path = Path(weights) if weights else path.with_suffix(".npz")
    if config is not None:
        loaded = load_config(config, registry=registry)
    return ModelSource(model, yaml_path, weights_path, run_dir, loaded)


def load_run_config(run_dir: Path, *, registry: Any = None) -> Any:
    """A run folder's ``config.yaml`` (the ``train:`` section set aside), its relative paths
    resolved against the folder of the config the run was trained from (the manifest's
    ``config_file``) when that still exists, else against the run folder."""
    from pipeline.config import load_config, read_yaml

    file = run_dir / "config.yaml"
    raw = read_yaml(file)
    if not isinstance(raw, dict):
        raise UserError("top level must be a mapping", file=file)
    raw = {k: v for k, v in raw.items() if k != "train"}
    base = run_dir
    manifest = run_dir / "manifest.json"
    if manifest.is_file():
        try:
            original = json.loads(manifest.read_text(encoding="utf-8")).get("config_file")
        except (OSError, ValueError):
            original = None
        if isinstance(original, str) and Path(original).is_file():
            base = Path(original).resolve().parent
    try:
        loaded = load_config(raw, registry=registry, base_dir=base)
    except UserError as exc:
        raise UserError(exc.message, file=file, key=exc.key) from None
    loaded.file = str(file)
    return loaded


def _dataset_info(loaded: Any, model: Model | None) -> tuple[Any, Any]:
    """The config's dataset and its SignalInfo; when the dataset cannot be opened (a run
    folder moved away from its data), a stand-in of the model's image size (enough to set
    up the sensor stages, whose settings do not depend on pixel values)."""
    from pipeline.runner import open_config_dataset
    from pipeline.stage import SignalInfo, Unit

    try:
        dataset = open_config_dataset(loaded)
        return dataset, dataset.info()
    except UserError:
        if model is None or len(model.input_shape) != 3:
            raise
        _, h, w = model.input_shape
        return None, SignalInfo(Unit.IMAGE, (h, w, 3), np.uint8, {"encoding": "srgb8"})


def sensor_front(
    loaded: Any, model: Model | None = None, *, registry: Any = None
) -> tuple[SensorFront | None, Any]:
    """The sensor settings of a config's chain (None without a raw stage) and the chain.

    Raises UserError when the chain's output does not fit ``model``'s input."""
    from pipeline.runner import build_chain

    _, info = _dataset_info(loaded, model)
    chain = build_chain(loaded, info, registry=registry, with_model=False)
    if model is not None:
        out = chain.infos[-1]
        shape = out.shape if len(out.shape) == 3 else (*out.shape, 1)
        chw = (shape[2], shape[0], shape[1])
        if chw != tuple(model.input_shape):
            raise UserError(
                f"the sensor chain gives (C,H,W) = {chw}, the model takes "
                f"{tuple(model.input_shape)}",
                file=loaded.file,
                key="sensor",
            )
    return SensorFront.from_chain(chain), chain


_FRONT_FIELDS = (
    "bits",
    "black_level_dn",
    "white_level_dn",
    "cfa",
    "cfa_tile",
    "adc_shape",
    "demosaic",
    "wb_gains",
    "raw_output",
    "mono_output",
    "clip",
    "encode",
    "gamma",
)


def front_mismatch(expected: SensorFront, got: SensorFront) -> list[str]:
    """Fields in which ``got`` differs from ``expected``, as ``"bits 12 (model: 10)"``."""
    e, g = expected.as_dict(), got.as_dict()
    return [f"{k} {g[k]} (model: {e[k]})" for k in _FRONT_FIELDS if e[k] != g[k]]


def _check_same_sensor(expected: SensorFront | None, got: SensorFront | None, file: str, what: str):
    if expected is None:
        return
    if got is None:
        raise UserError(
            f"{what} has no ADC + raw stage; the model takes that sensor's output",
            file=file,
            key="sensor",
        )
    diff = front_mismatch(expected, got)
    if diff:
        raise UserError(
            f"{what}'s sensor does not match the one the model was trained on: " + ", ".join(diff),
            file=file,
            key="sensor",
        )


# --------------------------------------------------------------------------- sensor data


def _to_nchw(x: np.ndarray) -> np.ndarray:
    """Sensor-chain output (N, H, W, C) or (N, H, W) -> (N, C, H, W) float32, as the
    classifier stage converts it."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 3:
        return x[:, None, :, :]
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def sensor_batches(
    chain: Any,
    dataset: Any,
    batch_size: int,
    *,
    adc_codes: bool,
    start: int = 0,
    stop: int | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """``(x, labels)`` per batch of images ``start..stop``: the ADC codes (the input of the
    last, raw, stage) when ``adc_codes``, else the chain's output as (N, C, H, W) float32.
    Same arrays as the runner's for the same images (noise is keyed by image identity)."""
    from pipeline.runner import batch_for

    stop = len(dataset) if stop is None else min(stop, len(dataset))
    upto = len(chain.sensor_stages) - (1 if adc_codes else 0)
    for lo in range(start, stop, batch_size):
        hi = min(lo + batch_size, stop)
        images, labels = dataset.read(lo, hi)
        outs = chain.apply(images, batch_for(dataset, np.arange(lo, hi)), upto=upto)
        x = outs[-1] if outs else images
        yield (x if adc_codes else _to_nchw(x)), labels


# --------------------------------------------------------------------------- ONNX runners


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
        graph_input = proto.graph.input[0]
        self.input_name = graph_input.name
        self.output_names = [o.name for o in proto.graph.output]
        from onnx import helper

        self.input_dtype = helper.tensor_dtype_to_np_dtype(graph_input.type.tensor_type.elem_type)
        data = proto.SerializeToString()
        if backend == "onnxruntime":
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.log_severity_level = 3
            self._session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        elif backend == "opencv":
            import cv2

            flag = {"auto": "ENGINE_AUTO", "new": "ENGINE_NEW", "classic": "ENGINE_CLASSIC"}
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "model.onnx"
                path.write_bytes(data)
                try:
                    self._net = cv2.dnn.readNetFromONNX(str(path), getattr(cv2.dnn, flag[engine]))
                except cv2.error as exc:
                    raise UserError(
                        f"OpenCV ({engine} engine) cannot read the model: {_last_line(exc)}"
                    ) from None
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


def _last_line(exc: Exception) -> str:
    lines = [s for s in str(exc).strip().splitlines() if s.strip()]
    return lines[-1].strip() if lines else type(exc).__name__


# --------------------------------------------------------------------------- int8


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
    from onnx import helper
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
    used = {n.domain for n in q.graph.node} | {""}
    keep = [o for o in q.opset_import if o.domain in used or (o.domain == "ai.onnx")]
    del q.opset_import[:]
    q.opset_import.extend(keep)
    q.ir_version = ir_version_for(opset)
    q.producer_name = float_proto.producer_name
    q.producer_version = float_proto.producer_version
    q.doc_string = float_proto.doc_string
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
    check_onnx(q)
    return q


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


# --------------------------------------------------------------------------- export


@dataclass
class ExportResult:
    """What ``export_model`` wrote."""

    path: Path
    proto: Any
    front: SensorFront | None
    report: dict[str, Any] | None = None
    report_path: Path | None = None


def report_path_for(out: Path) -> Path:
    """``model.int8.onnx`` -> ``model.int8.report.json``."""
    return out.with_name(f"{out.stem}.report.json")


def export_model(
    source: ModelSource,
    out: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    front: str = "none",
    int8: bool = False,
    calibration: str | Path | None = None,
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    held_out_images: int | None = None,
    input_dtype: str | None = None,
    float_layers: Sequence[str] = (),
    registry: Any = None,
) -> ExportResult:
    """Export ``source`` to ONNX at ``out`` (written atomically; nothing is written when
    anything fails).

    Parameters
    ----------
    source : the model (and its training config, for the sensor settings).
    out : the .onnx file.
    opset : MIN_OPSET..MAX_OPSET (13..21).
    front : "none" (input: the normalised (N, C, H, W) image) or "raw" (input: ADC codes).
    int8 : quantise (needs ``calibration``).
    calibration : a run config whose simulated sensor output calibrates the int8 model;
        its sensor must be the model's.
    calibration_images : the first images of that config's dataset used to calibrate; the
        images after them (``held_out_images`` of them, default all) are held out for the
        report.
    input_dtype : the raw front end's input dtype (default: the ADC's).
    float_layers : layers (by name) that the int8 export leaves in float.
    """
    from pipeline.config import load_config

    out = Path(out)
    opset = check_opset(opset)
    if front not in ("none", "raw"):
        raise UserError(f"--front must be none or raw, got {front!r}", key="front")
    if int8 and calibration is None:
        raise UserError(
            "--int8 needs --calibration CONFIG (simulated sensor output to calibrate on)",
            key="calibration",
        )
    if calibration is not None and not int8:
        raise UserError("--calibration is used only with --int8", key="calibration")
    if float_layers and not int8:
        raise UserError("--float-layers is used only with --int8", key="float_layers")
    layer_names = [n.name for n in source.model.spec.nodes]
    for name in float_layers:
        if name not in layer_names:
            raise UserError(
                f"no layer {name!r} in the model{did_you_mean(name, layer_names)}",
                key="float_layers",
            )
    if input_dtype is not None and front != "raw":
        raise UserError(
            "--input-dtype applies to the raw front end (--front raw)", key="input_dtype"
        )
    if out.suffix.lower() != ".onnx":
        raise UserError("the output file must end in .onnx", file=out)
    if out.is_dir():
        raise UserError("is a folder, expected an .onnx file name", file=out)
    model = source.model
    settings = None
    if source.config is not None:
        settings, _ = sensor_front(source.config, model, registry=registry)
    cal = cal_chain = cal_data = None
    if int8:
        cal = load_config(calibration, registry=registry)
        cal_data, _ = _dataset_info(cal, None)
        cal_settings, cal_chain = sensor_front(cal, model, registry=registry)
        _check_same_sensor(settings, cal_settings, cal.file, "the calibration config")
        if settings is None:
            settings = cal_settings
        if calibration_images < 1:
            raise UserError("--calibration-images must be at least 1", key="calibration_images")
        if len(cal_data) <= calibration_images:
            raise UserError(
                f"the dataset has {len(cal_data)} images; calibrating on "
                f"{calibration_images} leaves none held out for the accuracy report "
                "(use --calibration-images or a larger dataset)",
                file=cal.file,
                key="dataset",
            )
    with_front = front == "raw"
    if with_front and settings is None:
        raise UserError(
            "--front raw needs the sensor the model was trained on: give a training run "
            "folder, or --config CONFIG",
            key="front",
        )
    proto = export_onnx(
        model, opset=opset, front=settings, with_front=with_front, input_dtype=input_dtype
    )
    report = None
    if int8:
        bs = cal.config.run.batch_size
        batches = list(
            sensor_batches(cal_chain, cal_data, bs, adc_codes=with_front, stop=calibration_images)
        )
        dtype = _input_dtype(proto)
        calib = [np.ascontiguousarray(x, dtype=dtype) for x, _ in batches]
        qproto = quantize_int8(proto, calib, float_layers=float_layers)
        stop = None if held_out_images is None else calibration_images + held_out_images
        held = list(
            sensor_batches(
                cal_chain, cal_data, bs, adc_codes=with_front, start=calibration_images, stop=stop
            )
        )
        xs = [np.ascontiguousarray(x, dtype=dtype) for x, _ in held]
        labels = (
            None
            if any(y is None for _, y in held)
            else np.concatenate([np.asarray(y) for _, y in held])
        )
        report = int8_report(
            proto,
            qproto,
            xs,
            labels,
            calibration_images=calibration_images,
            config_file=str(cal.file),
        )
        report |= {
            "model": str(source.yaml_path),
            "onnx": str(out),
            "opset": opset,
            "front": front,
            "float_layers": list(float_layers),
        }
        proto = qproto
    save_onnx(proto, out)
    rpath = None
    if report is not None:
        from pipeline.store import write_json_atomic

        rpath = report_path_for(out)
        write_json_atomic(rpath, report)
    return ExportResult(out, proto, settings, report, rpath)


def _input_dtype(proto: Any) -> np.dtype:
    from onnx import helper

    return np.dtype(
        helper.tensor_dtype_to_np_dtype(proto.graph.input[0].type.tensor_type.elem_type)
    )


# --------------------------------------------------------------------------- eval


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
    """
    from pipeline.config import load_config
    from pipeline.metrics import classification_metrics
    from pipeline.runner import build_chain, open_config_dataset

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
    dataset = open_config_dataset(loaded)
    model = source.model
    batch_size = loaded.config.run.batch_size
    logits: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    has_labels = True
    if backend == "numpy":
        if source.weights_path is None:
            raise UserError("the numpy backend needs the model's files", key="model")
        overrides = {
            "model.path": str(Path(source.yaml_path).resolve()),
            "model.weights": str(Path(source.weights_path).resolve()),
        }
        run_cfg = load_config(loaded.raw, overrides, registry=registry, base_dir=loaded.base_dir)
        run_cfg.file = loaded.file
        chain = build_chain(run_cfg, dataset.info(), registry=registry)
        for z, y, _ in chain.stream(dataset, batch_size, sensor_only=False, file=loaded.file):
            logits.append(np.asarray(z, np.float32))
            has_labels &= y is not None
            if y is not None:
                labels.append(np.asarray(y))
    else:
        from pipeline.cnn.onnx_import import load_onnx

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
            _check_same_sensor(expected, settings, loaded.file, "the config")
        runner = OnnxRunner(proto, backend, engine)
        expected_input = RAW_INPUT_NAME if raw_front else INPUT_NAME
        if runner.input_name != expected_input:
            raise UserError(
                f"the model's input is {runner.input_name!r}, expected "
                f"{expected_input!r} (a sensorlab export)",
                file=file,
            )
        for x, y in sensor_batches(chain, dataset, batch_size, adc_codes=raw_front):
            logits.append(np.asarray(runner(x), np.float32))
            has_labels &= y is not None
            if y is not None:
                labels.append(np.asarray(y))
    z = np.concatenate(logits) if logits else np.zeros((0, len(model.class_names)), np.float32)
    preds = z.argmax(axis=1)
    y_all = np.concatenate(labels) if (has_labels and labels) else None
    metrics = classification_metrics(y_all, preds, model.class_names) if y_all is not None else {}
    return EvalResult(
        backend, z, preds, y_all, metrics, None if onnx_file is None else str(onnx_file)
    )


# --------------------------------------------------------------------------- CLI


def register(sub: Any) -> None:
    """Add ``sensorlab export``, ``sensorlab eval`` and ``sensorlab import``."""
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
        "level, demosaic in the graph)",
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

    p = sub.add_parser(
        "eval",
        help="classify a config's dataset through the sensor chain on numpy, onnxruntime "
        "or opencv and report accuracy",
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
    p.add_argument(
        "--engine",
        choices=OPENCV_ENGINES,
        default="auto",
        help="OpenCV's ONNX engine (opencv backend)",
    )
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "import",
        help="turn an ONNX model (supported operators only) into a model YAML plus weights",
    )
    p.add_argument("onnx", metavar="MODEL.onnx")
    p.add_argument("--out", required=True, help="folder for <name>.yaml and <name>.npz")
    p.add_argument("--name", help="model name (default: from the ONNX file)")
    p.set_defaults(func=cmd_import)


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


def cmd_eval(args: argparse.Namespace) -> int:
    source = load_source(args.source, weights=args.weights)
    result = evaluate(
        source, backend=args.backend, onnx_file=args.onnx, config=args.config, engine=args.engine
    )
    if args.json:
        from pipeline.cli import print_json

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


def cmd_import(args: argparse.Namespace) -> int:
    from pipeline.cnn.onnx_import import import_onnx, write_imported

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
