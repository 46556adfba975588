"""``export_model``: a trained CNN written as an ONNX model, optionally with the sensor front
end (input: the ADC's codes) and optionally quantised to int8 with its report."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.cnn.onnx_export import DEFAULT_OPSET, SensorFront, check_opset, export_onnx
from pipeline.config import LoadedConfig, load_config
from pipeline.errors import UserError, did_you_mean
from pipeline.export.front import (
    check_input_dtype,
    check_same_sensor,
    dataset_info,
    model_inputs,
    sensor_front,
)
from pipeline.export.int8 import int8_report, quantize_int8, write_model_and_report
from pipeline.export.runtimes import input_dtype_of
from pipeline.export.source import ModelSource

__all__ = ["DEFAULT_CALIBRATION_IMAGES", "INPUT_DTYPES", "ExportResult", "export_model"]

INPUT_DTYPES = ("uint8", "uint16", "uint32", "int32", "float32")
DEFAULT_CALIBRATION_IMAGES = 128


@dataclass
class ExportResult:
    """What ``export_model`` wrote."""

    path: Path
    proto: Any
    front: SensorFront | None
    report: dict[str, Any] | None = None
    report_path: Path | None = None


@dataclass
class _Calibration:
    """The int8 calibration config with its chain, dataset and image counts."""

    loaded: LoadedConfig
    front: SensorFront | None
    chain: Any
    dataset: Any
    images: int
    held_out: int | None

    def inputs(self, dtype: np.dtype, *, adc_codes: bool, start: int, stop: int | None):
        """The model inputs of images ``start..stop`` as ``dtype``, and their labels (None
        when the dataset has none)."""
        bs = self.loaded.config.run.batch_size
        batches = list(
            model_inputs(
                self.chain,
                self.dataset,
                bs,
                adc_codes=adc_codes,
                start=start,
                stop=stop,
                file=self.loaded.file,
            )
        )
        xs = [np.ascontiguousarray(x, dtype=dtype) for x, _ in batches]
        if any(y is None for _, y in batches):
            return xs, None
        return xs, np.concatenate([np.asarray(y) for _, y in batches]) if batches else None


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
    input_dtype : the raw front end's input dtype (default: the ADC's); it must hold the
        ADC's codes (uint8 on a 10-bit sensor is an error).
    float_layers : layers (by name) that the int8 export leaves in float.
    """
    out = Path(out)
    opset = check_opset(opset)
    _check_options(source, out, front, int8, calibration, input_dtype, float_layers)
    model = source.model
    settings = None
    if source.config is not None:
        settings, _ = sensor_front(source.config, model, registry=registry)
    cal = None
    if int8:
        assert calibration is not None
        cal = _load_calibration(
            source, calibration, calibration_images, held_out_images, settings, registry
        )
        settings = settings or cal.front
    with_front = front == "raw"
    if with_front and settings is None:
        raise UserError(
            "--front raw needs the sensor the model was trained on: give a training run "
            "folder, or --config CONFIG",
            key="front",
        )
    if with_front and input_dtype is not None:
        check_input_dtype(input_dtype, settings.bits)
    proto = export_onnx(
        model, opset=opset, front=settings, with_front=with_front, input_dtype=input_dtype
    )
    report = None
    if cal is not None:
        proto, report = _quantize(proto, cal, with_front, float_layers)
        report |= {
            "model": str(source.yaml_path),
            "onnx": str(out),
            "opset": opset,
            "front": front,
            "float_layers": list(float_layers),
        }
    rpath = write_model_and_report(proto, out, report)
    return ExportResult(out, proto, settings, report, rpath)


def _check_options(
    source: ModelSource,
    out: Path,
    front: str,
    int8: bool,
    calibration: str | Path | None,
    input_dtype: str | None,
    float_layers: Sequence[str],
) -> None:
    """One-line errors for options that do not go together, before any work."""
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


def _load_calibration(
    source: ModelSource,
    calibration: str | Path,
    images: int,
    held_out: int | None,
    settings: SensorFront | None,
    registry: Any,
) -> _Calibration:
    """The calibration config, checked: the model's sensor, enough images to hold some out."""
    cal = load_config(calibration, registry=registry)
    dataset, _ = dataset_info(cal, None)
    cal_settings, chain = sensor_front(cal, source.model, registry=registry)
    check_same_sensor(settings, cal_settings, cal.file, "the calibration config")
    if images < 1:
        raise UserError("--calibration-images must be at least 1", key="calibration_images")
    if len(dataset) <= images:
        raise UserError(
            f"the dataset has {len(dataset)} images; calibrating on "
            f"{images} leaves none held out for the accuracy report "
            "(use --calibration-images or a larger dataset)",
            file=cal.file,
            key="dataset",
        )
    return _Calibration(cal, cal_settings, chain, dataset, images, held_out)


def _quantize(
    proto: Any, cal: _Calibration, with_front: bool, float_layers: Sequence[str]
) -> tuple[Any, dict[str, Any]]:
    """The int8 model calibrated on the first images, and its report on the held-out ones."""
    dtype = input_dtype_of(proto)
    calib, _ = cal.inputs(dtype, adc_codes=with_front, start=0, stop=cal.images)
    qproto = quantize_int8(proto, calib, float_layers=float_layers)
    stop = None if cal.held_out is None else cal.images + cal.held_out
    xs, labels = cal.inputs(dtype, adc_codes=with_front, start=cal.images, stop=stop)
    report = int8_report(
        proto,
        qproto,
        xs,
        labels,
        calibration_images=cal.images,
        config_file=str(cal.loaded.file),
    )
    return qproto, report
