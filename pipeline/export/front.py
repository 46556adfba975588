"""The sensor a model takes: the sensor front end of a config's chain, checked against the
model's input, against another config's sensor and against an input dtype."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from pipeline.classifier import to_nchw
from pipeline.cnn.model import Model
from pipeline.cnn.onnx_export import SensorFront
from pipeline.config import LoadedConfig
from pipeline.datasets import Dataset
from pipeline.errors import UserError
from pipeline.runner import Chain, build_chain, open_config_dataset, stream
from pipeline.stage import SignalInfo, Unit

__all__ = [
    "FRONT_FIELDS",
    "check_input_dtype",
    "check_same_sensor",
    "dataset_info",
    "front_mismatch",
    "model_inputs",
    "sensor_front",
]

# The SensorFront fields two sensors must share for a model trained on one to take the other.
FRONT_FIELDS = (
    "bits",
    "black_level_dn",
    "white_level_dn",
    "cfa",
    "cfa_tile",
    "adc_shape",
    "demosaic",
    "wb_gains",
    "white_balance",
    "ccm",
    "raw_output",
    "mono_output",
    "clip",
    "encode",
    "gamma",
    "curve",
    "log_compression",
    "thresholds",
)


def dataset_info(loaded: LoadedConfig, model: Model | None) -> tuple[Dataset | None, SignalInfo]:
    """The config's dataset and its SignalInfo; when the dataset cannot be opened (a run
    folder moved away from its data), None and a stand-in of the model's image size (enough
    to set up the sensor stages, whose settings do not depend on pixel values)."""
    try:
        dataset = open_config_dataset(loaded)
        return dataset, dataset.info()
    except UserError:
        if model is None or len(model.input_shape) != 3:
            raise
        _, h, w = model.input_shape
        return None, SignalInfo(Unit.IMAGE, (h, w, 3), np.uint8, {"encoding": "srgb8"})


def sensor_front(
    loaded: LoadedConfig, model: Model | None = None, *, registry: Any = None
) -> tuple[SensorFront | None, Chain]:
    """The sensor settings of a config's chain (None without a raw stage) and the chain.

    Raises UserError when the chain's output does not fit ``model``'s input."""
    _, info = dataset_info(loaded, model)
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
    try:
        return SensorFront.from_chain(chain), chain
    except UserError as exc:
        raise exc.located(file=loaded.file) from None


def front_mismatch(expected: SensorFront, got: SensorFront) -> list[str]:
    """Fields in which ``got`` differs from ``expected``, as ``"bits 12 (model: 10)"``."""
    e, g = expected.as_dict(), got.as_dict()
    return [_difference(k, g[k], e[k]) for k in FRONT_FIELDS if e[k] != g[k]]


def _difference(key: str, got: Any, expected: Any) -> str:
    """``"bits 12 (model: 10)"``; a threshold table by its size, not its values."""
    if key == "thresholds":
        got_n, expected_n = ("none" if t is None else f"{len(t)} values" for t in (got, expected))
        return f"thresholds differ ({got_n}; model: {expected_n})"
    return f"{key} {got} (model: {expected})"


def check_same_sensor(
    expected: SensorFront | None, got: SensorFront | None, file: str, what: str
) -> None:
    """UserError (at ``file``, key ``sensor``) unless ``got`` is the sensor ``expected``
    (nothing to check when ``expected`` is None)."""
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


def check_input_dtype(input_dtype: str, bits: int) -> None:
    """UserError unless ``input_dtype`` holds every code of a ``bits``-bit ADC exactly.

    An unsigned or signed integer type holds ``0 .. 2**bits - 1`` when it has at least
    ``bits`` value bits; float32 holds integers exactly up to ``2**24`` (its 24-bit
    significand)."""
    dtype = np.dtype(input_dtype)
    if dtype.kind in "ui":
        value_bits = 8 * dtype.itemsize - (1 if dtype.kind == "i" else 0)
    else:
        value_bits = np.finfo(dtype).nmant + 1
    if bits > value_bits:
        top = 2**bits - 1
        raise UserError(
            f"{input_dtype} cannot hold the ADC's {bits}-bit codes (up to {top}); "
            f"choose a dtype of at least {bits} bits",
            key="input_dtype",
        )


def model_inputs(
    chain: Chain,
    dataset: Dataset,
    batch_size: int,
    *,
    adc_codes: bool,
    start: int = 0,
    stop: int | None = None,
    file: str = "",
) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """``(x, labels)`` per batch of images ``start..stop`` through the runner's stream: the
    ADC codes (the input of the last, raw, stage) when ``adc_codes``, else the chain's
    output as (N, C, H, W) float32. Same arrays as ``sensorlab run`` gives these images."""
    upto = len(chain.sensor_stages) - (1 if adc_codes else 0)
    for b in stream(chain, dataset, batch_size, upto=upto, start=start, stop=stop, file=file):
        yield (b.last if adc_codes else to_nchw(b.last)), b.labels
