"""ONNX export of a sensorlab CNN, optionally with the sensor's raw front end in the graph.

The graph is built with the ``onnx.helper`` API; each layer class writes its own nodes
(:meth:`pipeline.cnn.layers.Layer.to_onnx`, named after the layer; the table of layer ->
ONNX operators is in docs/layers.md). A trailing softmax is the second output
``probabilities``.

The model takes ``input`` (N, C, H, W) float32 (N dynamic) and gives ``logits`` (N, K);
weights are initializers named ``<layer>.<param>``. With a :class:`SensorFront` the graph
takes the ADC's integer codes instead (``dn``: (N, H, W) for a mosaic or mono sensor,
(N, H, W, 3) for a stacked one) and computes what :class:`sensors.raw.RawStage` does:
cast to float, black-level subtraction (for log, sqrt and table ADC curves: a Gather from
the raw stage's own table of linearised codes), white-level (and white-balance) scaling, and the
bilinear demosaic as a fixed reflect-padded depthwise convolution (the normalised
convolution of :func:`sensors.raw.demosaic_bilinear`), then the CNN.

The IR version is the one that matches the opset (``onnx.helper.VERSION_TABLE``): the
checker does not catch an IR newer than a runtime accepts.

References
----------
ONNX operator specifications, https://onnx.ai/onnx/operators/ (Conv, Gemm, MaxPool,
AveragePool, BatchNormalization, Pad, Cast, Reshape, Gather).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from pipeline._version import __version__
from pipeline.cnn.graph import INPUT, Node
from pipeline.cnn.layers import int8_op_types
from pipeline.cnn.model import Model
from pipeline.errors import UserError
from pipeline.files import ordinary_mode

__all__ = [
    "DEFAULT_OPSET",
    "FRONT_PREFIX",
    "INPUT_NAME",
    "INT8_OP_TYPES",
    "LOGITS_NAME",
    "MAX_LOOKUP_BITS",
    "MAX_OPSET",
    "MIN_OPSET",
    "PROBS_NAME",
    "RAW_INPUT_NAME",
    "SensorFront",
    "check_onnx",
    "export_onnx",
    "ir_version_for",
    "metadata",
    "read_metadata",
    "save_onnx",
]

DEFAULT_OPSET = 17
MIN_OPSET = 13
MAX_OPSET = 21
INPUT_NAME = "input"  # the CNN's float input (a graph input without a front end)
RAW_INPUT_NAME = "dn"  # the ADC codes, the graph input with a raw front end
LOGITS_NAME = "logits"
PROBS_NAME = "probabilities"
BATCH_DIM = "N"
FRONT_PREFIX = "front/"  # names of the front end's nodes and constants
MAX_LOOKUP_BITS = 16  # a linearised front end's Gather table: 2**16 float32 at most (256 KiB)
PRODUCER = "sensorlab"
INT8_OP_TYPES = int8_op_types()
"""ONNX operators the int8 export quantises: those the layer classes declare (``int8_ops``)."""
_RESERVED = {INPUT_NAME, RAW_INPUT_NAME, LOGITS_NAME, PROBS_NAME}
_INPUT_TYPES = {
    "uint8": TensorProto.UINT8,
    "uint16": TensorProto.UINT16,
    "uint32": TensorProto.UINT32,
    "int32": TensorProto.INT32,
    "int64": TensorProto.INT64,
    "float32": TensorProto.FLOAT,
}
_CHANNEL_INDEX = {"R": 0, "G": 1, "B": 2, "W": 3}
# White-balance methods whose gains are known before any image (the raw stage's others,
# gray_world and white_patch, are per-image statistics).
_FIXED_WB = ("none", "illuminant")


def ir_version_for(opset: int) -> int:
    """The IR version that goes with ``opset`` of the default domain (8 for 17, 10 for 21)."""
    return int(helper.find_min_ir_version_for([helper.make_opsetid("", opset)]))


def check_opset(opset: Any) -> int:
    """``opset`` as an int in [MIN_OPSET, MAX_OPSET], or a UserError."""
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)):
        raise UserError(f"--opset must be an integer, got {opset!r}", key="opset")
    if not MIN_OPSET <= int(opset) <= MAX_OPSET:
        raise UserError(
            f"opset must be between {MIN_OPSET} and {MAX_OPSET}, got {opset}", key="opset"
        )
    return int(opset)


# --------------------------------------------------------------------------- sensor front end


@dataclass(frozen=True)
class SensorFront:
    """The sensor settings a model was trained on, and the raw stage that fed it.

    Attributes
    ----------
    bits : ADC resolution.
    black_level_dn, white_level_dn : the codes the raw stage maps to 0 and 1.
    cfa : colour filter ("RGGB", ..., "mono", "stacked").
    cfa_tile : the repeating CFA tile, row-major (None for stacked).
    adc_dtype : the ADC output dtype ("uint8", "uint16", "uint32").
    adc_shape : one image of ADC output: (H, W) or (H, W, 3) for stacked.
    demosaic : the raw stage's demosaic method.
    wb_gains : the fixed white-balance gains R, G, B the raw stage applied (given, or
        from the illuminant; the raw stage's ``wb_gains`` attr).
    white_balance : the raw stage's method; ``gray_world`` and ``white_patch`` are
        per-image statistics, which no fixed graph holds.
    ccm : the 3×3 colour correction after demosaicing (rows: output channels), or None.
    raw_output : "planes" or "mosaic" (the normalised mosaic as one channel).
    mono_output : "replicate" or "single".
    clip : the raw stage clips to [0, 1].
    encode : "linear", "srgb" or "gamma"; gamma : its exponent.
    auto_gain, gain_target, max_gain : the raw stage's per-image digital gain.
    linearized : the raw stage undid the ADC's transfer curve (log, sqrt, table).
    curve, log_compression, thresholds : the ADC's transfer curve (``adc_transfer``
        attrs): two sensors with another curve give the model other inputs.
    rgbw_coefficients, rgbw_guard : ``demosaic: rgbw_fusion``'s ``Ŵ = Σ_c a_c C_c``
        coefficients and its guard δ in normalised units (the raw stage's attrs;
        :mod:`sensors.rgbw`); None for any other demosaic (and then not in :meth:`as_dict`).
    code_lookup, lookup_span : for a linearised front: the raw stage's float32 value of
        every code 0 .. 2**bits - 1 after linearising and subtracting black, and the
        signal span it divides by (``RawStage.linear_lookup``); set by
        :meth:`from_chain`, not part of :meth:`as_dict` (the graph holds the table).
    """

    bits: int
    black_level_dn: float
    white_level_dn: float
    cfa: str
    cfa_tile: tuple[tuple[str, ...], ...] | None
    adc_dtype: str
    adc_shape: tuple[int, ...]
    demosaic: str = "bilinear"
    wb_gains: tuple[float, float, float] = (1.0, 1.0, 1.0)
    raw_output: str = "planes"
    mono_output: str = "replicate"
    clip: bool = False
    encode: str = "linear"
    gamma: float = 2.2
    auto_gain: bool = False
    gain_target: float = 0.18
    max_gain: float = 256.0
    linearized: bool = False
    white_balance: str = "none"
    ccm: tuple[tuple[float, ...], ...] | None = None
    curve: str = "linear"
    log_compression: float = 255.0
    thresholds: tuple[float, ...] | None = None
    rgbw_coefficients: tuple[float, float, float] | None = None
    rgbw_guard: float | None = None
    code_lookup: np.ndarray | None = dataclasses.field(default=None, compare=False, repr=False)
    lookup_span: float | None = dataclasses.field(default=None, compare=False)

    @property
    def layout(self) -> str:
        """ "mosaic", "mono" or "stacked" (how the ADC codes are arranged)."""
        if len(self.adc_shape) == 3:
            return "stacked"
        return "mono" if self.cfa == "mono" else "mosaic"

    @property
    def cnn_shape(self) -> tuple[int, int, int]:
        """(C, H, W) the raw stage gives the CNN."""
        h, w = self.adc_shape[:2]
        if self.raw_output == "mosaic":
            return (1, h, w)
        if self.layout == "mono" and self.mono_output == "single":
            return (1, h, w)
        return (3, h, w)

    def input_range(self) -> tuple[float, float]:
        """The normalised values the raw stage can give: codes 0 and 2**bits - 1 (before clip
        and encode), linearised through :attr:`code_lookup` when the stage linearises."""
        gains = (1.0,) if self.layout == "mono" else self.wb_gains
        if self.linearized and self.code_lookup is not None and self.lookup_span:
            low, high, span = *_ends(self.code_lookup), self.lookup_span
        else:
            low = 0.0 - self.black_level_dn
            high = float(2**self.bits - 1) - self.black_level_dn
            span = self.white_level_dn - self.black_level_dn
        lo_c = np.array([g * low / span for g in gains])
        hi_c = np.array([g * high / span for g in gains])
        if self.ccm is not None:  # each output is Σ_j M_ij·x_j over the box [lo_c, hi_c]
            m = np.asarray(self.ccm)
            lo_c, hi_c = (
                np.minimum(m * lo_c, m * hi_c).sum(axis=1),
                np.maximum(m * lo_c, m * hi_c).sum(axis=1),
            )
        lo, hi = float(lo_c.min()), float(hi_c.max())
        if self.clip:
            lo, hi = max(lo, 0.0), min(hi, 1.0)
        return lo, hi

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in _NOT_METADATA}
        d["thresholds"] = None if self.thresholds is None else list(self.thresholds)
        d["cfa_tile"] = None if self.cfa_tile is None else ["".join(r) for r in self.cfa_tile]
        d["adc_shape"] = list(self.adc_shape)
        d["wb_gains"] = list(self.wb_gains)
        d["ccm"] = None if self.ccm is None else [list(row) for row in self.ccm]
        for key in ("rgbw_coefficients", "rgbw_guard"):  # a fusion's only: older metadata
            if d[key] is None:
                del d[key]
        if self.rgbw_coefficients is not None:
            d["rgbw_coefficients"] = list(self.rgbw_coefficients)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SensorFront:
        d = dict(d)
        tile = d.get("cfa_tile")
        d["cfa_tile"] = None if tile is None else tuple(tuple(row) for row in tile)
        d["adc_shape"] = tuple(d["adc_shape"])
        d["wb_gains"] = tuple(d.get("wb_gains", (1.0, 1.0, 1.0)))
        if d.get("ccm") is not None:
            d["ccm"] = tuple(tuple(float(v) for v in row) for row in d["ccm"])
        if d.get("thresholds") is not None:
            d["thresholds"] = tuple(float(t) for t in d["thresholds"])
        if d.get("rgbw_coefficients") is not None:
            d["rgbw_coefficients"] = tuple(float(a) for a in d["rgbw_coefficients"])
        for key in _NOT_METADATA:
            d.pop(key, None)
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    @classmethod
    def from_chain(cls, chain: Any) -> SensorFront | None:
        """The settings of a runner :class:`~pipeline.runner.Chain` whose last sensor stage
        is a raw stage after an ADC; None when the chain has no raw stage.

        The raw stage's settings are read from its own resolved parameter model (its
        ``Params``, defaults included), the ADC's and the levels from the signal attrs
        the stages declared: the front end keeps no copy of a stage default.

        Raises UserError when the raw stage's parameter model lacks a field the front end
        needs (a plugin raw stage with other parameters)."""
        stages = chain.sensor_stages
        if not stages or stages[-1].kind != "raw":
            return None
        r = len(stages) - 1
        adc_info, raw_info = chain.infos[r], chain.infos[r + 1]
        bits = adc_info.attr("bits")
        if bits is None:
            return None
        tile = adc_info.attr("cfa_tile")
        transfer = adc_info.attr("adc_transfer") or {}
        thresholds = transfer.get("thresholds")
        linearized = bool(raw_info.attr("linearized", False))
        in_graph = linearized and int(bits) <= MAX_LOOKUP_BITS  # no table a graph cannot hold
        lookup = getattr(stages[r], "linear_lookup", None) if in_graph else None
        code_lookup, lookup_span = lookup() if lookup is not None else (None, None)
        settings = _raw_settings(stages[r], chain.keys[r])
        if raw_info.attr("wb_gains") is not None:  # the gains applied, e.g. from the illuminant
            settings["wb_gains"] = tuple(float(g) for g in raw_info.attr("wb_gains"))
        ccm = raw_info.attr("ccm")
        coefficients = raw_info.attr("rgbw_coefficients")
        guard = raw_info.attr("rgbw_guard")
        return cls(
            bits=int(bits),
            black_level_dn=float(raw_info.attr("black_level_dn")),
            white_level_dn=float(raw_info.attr("white_level_dn")),
            cfa=str(adc_info.attr("cfa", "mono" if len(adc_info.shape) == 2 else "stacked")),
            cfa_tile=None if tile is None else tuple(tuple(str(c) for c in row) for row in tile),
            adc_dtype=str(adc_info.dtype),
            adc_shape=tuple(adc_info.shape),
            linearized=linearized,
            curve=str(adc_info.attr("curve", "linear")),
            log_compression=float(transfer.get("log_compression", 255.0)),
            thresholds=None if thresholds is None else tuple(float(t) for t in thresholds),
            code_lookup=code_lookup,
            lookup_span=lookup_span,
            white_balance=str(raw_info.attr("white_balance", "none")),
            ccm=None if ccm is None else tuple(tuple(float(v) for v in row) for row in ccm),
            rgbw_coefficients=None if coefficients is None else tuple(map(float, coefficients)),
            rgbw_guard=None if guard is None else float(guard),
            **settings,
        )


# SensorFront fields the graph holds as a table instead of the metadata.
_NOT_METADATA = ("code_lookup", "lookup_span")


def _ends(values: np.ndarray) -> tuple[float, float]:
    return float(np.min(values)), float(np.max(values))


# SensorFront field -> the raw stage's parameter it is read from.
_RAW_PARAMS = {
    "demosaic": "demosaic",
    "wb_gains": "wb_gains",
    "raw_output": "output",
    "mono_output": "mono_output",
    "clip": "clip",
    "encode": "encode",
    "gamma": "gamma",
    "auto_gain": "auto_gain",
    "gain_target": "gain_target",
    "max_gain": "max_gain",
}


def _raw_settings(stage: Any, key: str) -> dict[str, Any]:
    """The front-end fields of a raw stage, from its parameters validated by its own
    ``Params`` model (so every value, given or default, is the stage's)."""
    params_model = type(stage).Params
    missing = [name for name in _RAW_PARAMS.values() if name not in params_model.model_fields]
    if missing:
        raise UserError(
            f"the raw stage {stage.name!r} has no parameter {', '.join(missing)}; an ONNX "
            "front end reproduces sensorlab's raw stage only",
            key=key,
        )
    p = params_model.model_validate(stage.params.model_dump())
    values = {field: getattr(p, name) for field, name in _RAW_PARAMS.items()}
    values["wb_gains"] = tuple(float(g) for g in values["wb_gains"])
    for field in ("demosaic", "raw_output", "mono_output", "encode"):
        values[field] = str(values[field])
    for field in ("gamma", "gain_target", "max_gain"):
        values[field] = float(values[field])
    values["clip"] = bool(values["clip"])
    values["auto_gain"] = bool(values["auto_gain"])
    return values


def _const(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(value, order="C"), name)


def _tent(period: int) -> np.ndarray:
    i = np.arange(-(period - 1), period, dtype=np.float64)
    return 1.0 - np.abs(i) / period


def _bilinear_plan(tile: Sequence[Sequence[str]], h: int, w: int):
    """Masks (3, H, W), fill (3, H, W) and the tent kernel (ky, kx) of
    :class:`sensors.raw._BilinearDemosaic`, computed with reflect-101 borders in float64."""
    ty, tx = len(tile), len(tile[0])
    codes = np.array([[_CHANNEL_INDEX[c] for c in row] for row in tile], dtype=np.int8)
    cmap = np.tile(codes, (-(-h // ty), -(-w // tx)))[:h, :w]
    masks = np.stack([(cmap == c) for c in range(3)]).astype(np.float64)
    ky, kx = _tent(ty), _tent(tx)
    py, px = ty - 1, tx - 1
    padded = np.pad(masks, ((0, 0), (py, py), (px, px)), mode="reflect")
    weights = np.zeros_like(masks)
    for i, a in enumerate(ky):
        for j, b in enumerate(kx):
            weights += a * b * padded[:, i : i + h, j : j + w]
    fill = np.where(masks > 0, 0.0, 1.0 / np.maximum(weights, 1e-12))
    return masks, fill, np.outer(ky, kx), (py, px)


def _normalised_conv(masks: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """The reflect-101 correlation of (C, H, W) masks by a symmetric kernel, in float64."""
    py, px = kernel.shape[0] // 2, kernel.shape[1] // 2
    h, w = masks.shape[1:]
    padded = np.pad(masks, ((0, 0), (py, py), (px, px)), mode="reflect")
    out = np.zeros_like(masks)
    for i in range(kernel.shape[0]):
        for j in range(kernel.shape[1]):
            out += kernel[i, j] * padded[:, i : i + h, j : j + w]
    return out


def _fusion_plan(tile: Sequence[Sequence[str]], h: int, w: int) -> dict[str, np.ndarray]:
    """The constants of :class:`sensors.rgbw.RgbwFusion`, computed in float64 (float32
    out): colour masks and their normalisation, the W mask and its fill, the kernels."""
    codes = np.array([[_CHANNEL_INDEX[c] for c in row] for row in tile], dtype=np.int8)
    cmap = np.tile(codes, (-(-h // len(tile)), -(-w // len(tile[0]))))[:h, :w]
    colour_masks = np.stack([(cmap == c) for c in range(3)]).astype(np.float64)
    w_mask = (cmap == _CHANNEL_INDEX["W"]).astype(np.float64)
    colour_kernel = np.outer(_tent(len(tile)), _tent(len(tile[0])))
    w_kernel = np.outer(_tent(2), _tent(2))
    colour_norm = 1.0 / _normalised_conv(colour_masks, colour_kernel)
    w_weights = _normalised_conv(w_mask[None], w_kernel)[0]
    w_fill = np.where(w_mask > 0, 0.0, 1.0 / np.maximum(w_weights, 1e-12))
    return {
        "colour_masks": colour_masks.astype(np.float32),
        "colour_norm": colour_norm.astype(np.float32),
        "w_mask": w_mask.astype(np.float32),
        "w_fill": w_fill.astype(np.float32),
        "colour_kernel": colour_kernel,
        "w_kernel": w_kernel,
    }


def _auto_gain_nodes(
    front: SensorFront, src: str, nodes: list, inits: list, colour_only: np.ndarray | None
) -> str:
    """The raw stage's auto gain ``target / max(mean(x), target / max_gain)`` per image,
    shaped (N, 1, ...) like ``src``'s batch, with opset-13 operators (the mean as a
    GlobalAveragePool over a reshaped copy). ``colour_only``: the (H, W) mask of the
    pixels the mean is over (an RGBW's colour pixels), as ``mean(x · mask · size / n)``.
    Returns the gain's tensor name."""
    f = FRONT_PREFIX
    size = int(np.prod(front.adc_shape))
    if colour_only is not None:
        weight = colour_only * (size / float(colour_only.sum()))
        inits.append(_const(f + "gain_pixels", weight.astype(np.float32)[None]))
        nodes.append(
            helper.make_node("Mul", [src, f + "gain_pixels"], [f + "gain_src"], name=f + "gain_px")
        )
        src = f + "gain_src"
    per_image = [-1, *([1] * len(front.adc_shape))]
    inits.append(_const(f + "gain_flat_shape", np.array([-1, 1, size, 1], np.int64)))
    inits.append(_const(f + "gain_shape", np.array(per_image, np.int64)))
    inits.append(_const(f + "gain_floor", np.array(front.gain_target / front.max_gain, np.float32)))
    inits.append(_const(f + "gain_target", np.array(front.gain_target, np.float32)))
    nodes += [
        helper.make_node(
            "Reshape", [src, f + "gain_flat_shape"], [f + "gain_flat"], name=f + "gain_flatten"
        ),
        helper.make_node(
            "GlobalAveragePool", [f + "gain_flat"], [f + "gain_mean4"], name=f + "gain_mean"
        ),
        helper.make_node(
            "Reshape",
            [f + "gain_mean4", f + "gain_shape"],
            [f + "gain_mean_b"],
            name=f + "gain_broadcast",
        ),
        helper.make_node(
            "Max", [f + "gain_mean_b", f + "gain_floor"], [f + "gain_denom"], name=f + "gain_limit"
        ),
        helper.make_node(
            "Div", [f + "gain_target", f + "gain_denom"], [f + "gain"], name=f + "gain_value"
        ),
    ]
    return f + "gain"


def _tent_conv(src: str, dst: str, kernel: np.ndarray, channels: int, tag: str, nodes, inits):
    """A reflect-101-padded depthwise convolution of ``src`` (N, C, H, W) by ``kernel``."""
    f = FRONT_PREFIX
    py, px = kernel.shape[0] // 2, kernel.shape[1] // 2
    inits.append(_const(f + tag + "_pads", np.array([0, 0, py, px, 0, 0, py, px], np.int64)))
    weight = np.broadcast_to(kernel, (channels, 1, *kernel.shape)).astype(np.float32)
    inits.append(_const(f + tag + "_kernel", weight))
    nodes += [
        helper.make_node(
            "Pad",
            [src, f + tag + "_pads"],
            [f + tag + "_padded"],
            name=f + tag + "_reflect",
            mode="reflect",
        ),
        helper.make_node(
            "Conv",
            [f + tag + "_padded", f + tag + "_kernel"],
            [dst],
            name=f + tag + "_conv",
            group=channels,
            kernel_shape=list(kernel.shape),
        ),
    ]


def _fusion_nodes(front: SensorFront, src: str, nodes: list, inits: list) -> str:
    """:class:`sensors.rgbw.RgbwFusion` as graph ops on ``src`` (N, 1, H, W): masks (Mul),
    tent convolutions (Pad, Conv), the normalisations (Mul), ``Ŵ`` as a 1×1 Conv, then
    ``C · (W + δ) / (Relu(Ŵ) + δ)``. Returns the (N, 3, H, W) planes' name."""
    f = FRONT_PREFIX
    h, w = front.adc_shape[:2]
    plan = _fusion_plan(front.cfa_tile, h, w)
    inits += [
        _const(f + "colour_masks", plan["colour_masks"][None]),
        _const(f + "colour_norm", plan["colour_norm"][None]),
        _const(f + "w_mask", plan["w_mask"][None, None]),
        _const(f + "w_fill", plan["w_fill"][None, None]),
        _const(
            f + "w_coefficients",
            np.asarray(front.rgbw_coefficients, np.float32).reshape(1, 3, 1, 1),
        ),
        _const(f + "w_guard", np.array(front.rgbw_guard, np.float32)),
    ]
    nodes += [
        helper.make_node(
            "Mul", [src, f + "colour_masks"], [f + "colour_sparse"], name=f + "cfa_split"
        ),
        helper.make_node("Mul", [src, f + "w_mask"], [f + "w_sparse"], name=f + "w_split"),
    ]
    _tent_conv(
        f + "colour_sparse", f + "colour_sum", plan["colour_kernel"], 3, "colour", nodes, inits
    )
    _tent_conv(f + "w_sparse", f + "w_sum", plan["w_kernel"], 1, "w", nodes, inits)
    nodes += [
        helper.make_node(
            "Mul", [f + "colour_sum", f + "colour_norm"], [f + "colour"], name=f + "colour_lowpass"
        ),
        helper.make_node(
            "Mul", [f + "w_sum", f + "w_fill"], [f + "w_missing"], name=f + "w_normalise"
        ),
        helper.make_node(
            "Add", [f + "w_missing", f + "w_sparse"], [f + "w_dense"], name=f + "w_dense"
        ),
        helper.make_node(
            "Conv", [f + "colour", f + "w_coefficients"], [f + "w_hat"], name=f + "w_hat"
        ),
        helper.make_node("Relu", [f + "w_hat"], [f + "w_hat_pos"], name=f + "w_hat_floor"),
        helper.make_node(
            "Add", [f + "w_hat_pos", f + "w_guard"], [f + "ratio_den"], name=f + "guard_den"
        ),
        helper.make_node(
            "Add", [f + "w_dense", f + "w_guard"], [f + "ratio_num"], name=f + "guard_num"
        ),
        helper.make_node(
            "Div", [f + "ratio_num", f + "ratio_den"], [f + "ratio"], name=f + "w_ratio"
        ),
        helper.make_node("Mul", [f + "colour", f + "ratio"], [f + "planes"], name=f + "fusion"),
    ]
    return f + "planes"


def _black_nodes(front: SensorFront, out: str, nodes: list, inits: list) -> None:
    """Linear codes: ``out = float(dn) - black_level_dn`` (the raw stage's subtraction)."""
    f = FRONT_PREFIX
    nodes.append(
        helper.make_node(
            "Cast", [RAW_INPUT_NAME], [f + "dn_float"], name=f + "cast", to=TensorProto.FLOAT
        )
    )
    inits.append(_const(f + "black_level", np.array(front.black_level_dn, np.float32)))
    nodes.append(
        helper.make_node("Sub", [f + "dn_float", f + "black_level"], [out], name=f + "black")
    )


def _lookup_nodes(front: SensorFront, out: str, nodes: list, inits: list) -> float:
    """Companded codes (log, sqrt, table): ``out = lookup[int64(dn)]``, a Gather from the
    raw stage's own table of linearised values (:attr:`SensorFront.code_lookup`), so every
    code gives the raw stage's float32 bit for bit. Returns the signal span to divide by.

    Codes must lie in ``0 .. 2**bits - 1`` (an N-bit ADC's); a runtime refuses others
    (onnxruntime: index out of bounds)."""
    f = FRONT_PREFIX
    if front.bits > MAX_LOOKUP_BITS:
        raise UserError(
            f"the raw front end linearises ADCs of up to {MAX_LOOKUP_BITS} bits by a lookup "
            f"table; this one has {front.bits} (export without --front)",
            key="front",
        )
    lookup = front.code_lookup
    if lookup is None or front.lookup_span is None:
        raise UserError(
            "the raw front end of a linearised (log/sqrt/table) ADC needs the raw stage's "
            "lookup table (RawStage.linear_lookup); build the front end from the chain",
            key="front",
        )
    lookup = np.asarray(lookup, dtype=np.float32)
    if lookup.shape != (1 << front.bits,):
        raise UserError(
            f"the lookup table has {lookup.size} values, a {front.bits}-bit ADC "
            f"{1 << front.bits} codes",
            key="front",
        )
    nodes.append(
        helper.make_node(
            "Cast", [RAW_INPUT_NAME], [f + "code_index"], name=f + "cast", to=TensorProto.INT64
        )
    )
    inits.append(_const(f + "linearize_table", lookup))
    nodes.append(
        helper.make_node(
            "Gather", [f + "linearize_table", f + "code_index"], [out], name=f + "linearize", axis=0
        )
    )
    return float(front.lookup_span)


def _front_nodes(front: SensorFront, input_dtype: str, out: str):
    """Nodes and initializers of the raw front end: ``dn`` codes -> ``out`` (N, C, H, W)."""
    if input_dtype not in _INPUT_TYPES:
        raise UserError(
            f"unsupported front-end input dtype {input_dtype!r} "
            f"(choose from {', '.join(_INPUT_TYPES)})",
            key="input_dtype",
        )
    f = FRONT_PREFIX
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    h, w = front.adc_shape[:2]
    layout = front.layout
    fusion = front.demosaic == "rgbw_fusion"
    if (
        front.demosaic not in ("bilinear", "rgbw_fusion")
        and layout == "mosaic"
        and front.raw_output == "planes"
    ):
        raise UserError(
            f"the raw front end computes the bilinear and rgbw_fusion demosaics only; the "
            f"model was trained with demosaic: {front.demosaic} (retrain with bilinear, or "
            "export without --front)",
            key="front",
        )
    if fusion and (front.rgbw_coefficients is None or front.rgbw_guard is None):
        raise UserError(
            "demosaic: rgbw_fusion needs the raw stage's rgbw_coefficients and rgbw_guard; "
            "build the front end from the chain",
            key="front",
        )
    if front.encode != "linear":
        raise UserError(
            f"the raw front end does not compute encode: {front.encode}; export without --front",
            key="front",
        )
    if front.white_balance not in _FIXED_WB:
        raise UserError(
            f"the raw front end holds fixed white-balance gains only; white_balance: "
            f"{front.white_balance} is per image (use illuminant or wb_gains, or export "
            "without --front)",
            key="front",
        )
    if front.linearized:
        span = _lookup_nodes(front, f + "offset", nodes, inits)
    else:
        span = front.white_level_dn - front.black_level_dn
        _black_nodes(front, f + "offset", nodes, inits)
    gains = np.array([*front.wb_gains, 1.0], dtype=np.float64) / span
    if layout == "mosaic":
        tile = front.cfa_tile
        if tile is None:
            raise UserError("a mosaic front end needs the CFA tile", key="front")
        codes = np.array([[_CHANNEL_INDEX[c] for c in row] for row in tile], dtype=np.int8)
        cmap = np.tile(codes, (-(-h // len(tile)), -(-w // len(tile[0]))))[:h, :w]
        scale = gains[cmap].astype(np.float32)[None]  # (1, H, W)
        has_w = bool((cmap == _CHANNEL_INDEX["W"]).any())
    elif layout == "stacked":
        scale = gains[:3].astype(np.float32).reshape(1, 1, 1, 3)
    else:
        scale = np.array(1.0 / span, np.float32)
    inits.append(_const(f + "scale", scale))
    nodes.append(
        helper.make_node("Mul", [f + "offset", f + "scale"], [f + "normalised"], name=f + "white")
    )
    last = f + "normalised"
    gain = None
    if front.auto_gain:
        colour_only = (cmap != _CHANNEL_INDEX["W"]) if layout == "mosaic" and has_w else None
        gain = _auto_gain_nodes(front, last, nodes, inits, colour_only)
        if not (fusion and layout == "mosaic" and front.raw_output == "planes"):
            nodes.append(
                helper.make_node("Mul", [last, gain], [f + "gained"], name=f + "gain_apply")
            )
            last, gain = f + "gained", None

    def reshape_nchw(src: str, dst: str) -> None:
        inits.append(_const(f + "nchw_shape", np.array([-1, 1, h, w], np.int64)))
        nodes.append(
            helper.make_node("Reshape", [src, f + "nchw_shape"], [dst], name=f + "to_nchw")
        )

    if layout == "stacked":
        nodes.append(
            helper.make_node(
                "Transpose", [last], [f + "planes"], name=f + "to_nchw", perm=[0, 3, 1, 2]
            )
        )
        last = f + "planes"
    elif front.raw_output == "mosaic" or (layout == "mono" and front.mono_output == "single"):
        reshape_nchw(last, f + "planes")
        last = f + "planes"
    elif layout == "mono":
        reshape_nchw(last, f + "mono")
        nodes.append(
            helper.make_node(
                "Concat", [f + "mono"] * 3, [f + "planes"], name=f + "replicate", axis=1
            )
        )
        last = f + "planes"
    elif fusion:
        reshape_nchw(last, f + "mosaic")
        last = _fusion_nodes(front, f + "mosaic", nodes, inits)
        if gain is not None:  # after the fusion: its guard is in the sensor's electrons
            inits.append(_const(f + "gain_nchw", np.array([-1, 1, 1, 1], np.int64)))
            nodes += [
                helper.make_node(
                    "Reshape", [gain, f + "gain_nchw"], [f + "gain4"], name=f + "gain_to_nchw"
                ),
                helper.make_node("Mul", [last, f + "gain4"], [f + "gained"], name=f + "gain_apply"),
            ]
            last = f + "gained"
    else:  # bilinear demosaic
        masks, fill, kernel, (py, px) = _bilinear_plan(front.cfa_tile, h, w)
        reshape_nchw(last, f + "mosaic")
        inits.append(_const(f + "cfa_masks", masks.astype(np.float32)[None]))
        nodes.append(
            helper.make_node(
                "Mul", [f + "mosaic", f + "cfa_masks"], [f + "sparse"], name=f + "cfa_split"
            )
        )
        inits.append(_const(f + "reflect_pads", np.array([0, 0, py, px, 0, 0, py, px], np.int64)))
        nodes.append(
            helper.make_node(
                "Pad",
                [f + "sparse", f + "reflect_pads"],
                [f + "padded"],
                name=f + "reflect",
                mode="reflect",
            )
        )
        weight = np.broadcast_to(kernel, (3, 1, *kernel.shape)).astype(np.float32)
        inits.append(_const(f + "tent", weight))
        nodes.append(
            helper.make_node(
                "Conv",
                [f + "padded", f + "tent"],
                [f + "interp"],
                name=f + "interpolate",
                group=3,
                kernel_shape=list(kernel.shape),
            )
        )
        inits.append(_const(f + "fill", fill.astype(np.float32)[None]))
        nodes.append(
            helper.make_node(
                "Mul", [f + "interp", f + "fill"], [f + "missing"], name=f + "normalise_weights"
            )
        )
        nodes.append(
            helper.make_node(
                "Add", [f + "missing", f + "sparse"], [f + "planes"], name=f + "demosaic"
            )
        )
        last = f + "planes"
    if front.ccm is not None:  # rgb <- M rgb per pixel: a 1x1 convolution, weight (3, 3, 1, 1)
        inits.append(_const(f + "ccm", np.asarray(front.ccm, np.float32).reshape(3, 3, 1, 1)))
        nodes.append(
            helper.make_node(
                "Conv", [last, f + "ccm"], [f + "corrected"], name=f + "colour_correction"
            )
        )
        last = f + "corrected"
    if front.clip:
        inits.append(_const(f + "zero", np.array(0.0, np.float32)))
        inits.append(_const(f + "one", np.array(1.0, np.float32)))
        nodes.append(
            helper.make_node("Clip", [last, f + "zero", f + "one"], [out], name=f + "clip")
        )
    else:
        nodes.append(helper.make_node("Identity", [last], [out], name=f + "output"))
    dn_shape = [BATCH_DIM, *front.adc_shape]
    dn = helper.make_tensor_value_info(RAW_INPUT_NAME, _INPUT_TYPES[input_dtype], dn_shape)
    return dn, nodes, inits


# --------------------------------------------------------------------------- the CNN


def _tensor_name(node: Node) -> str:
    return node.name if node.name not in _RESERVED else f"{node.name}:out"


def metadata(
    model: Model, front: SensorFront | None, *, with_front: bool, input_dtype: str | None = None
) -> dict[str, str]:
    """The metadata properties a deployment needs (all values are strings; JSON for lists and
    mappings): class names, the model YAML's hash, the expected input range, the sensor
    settings the model was trained on, and how the graph's input and outputs are laid out."""
    if with_front:
        assert front is not None
        dtype = input_dtype or front.adc_dtype
        input_range: dict[str, Any] = {
            "tensor": RAW_INPUT_NAME,
            "unit": "DN",
            "dtype": dtype,
            "min": 0,
            "max": 2**front.bits - 1,
            "layout": "NHWC" if front.layout == "stacked" else "NHW",
        }
    else:
        input_range = {
            "tensor": INPUT_NAME,
            "unit": "normalised",
            "dtype": "float32",
            "nominal": [0.0, 1.0],
            "formula": "(DN - black_level_dn) * wb_gain / (white_level_dn - black_level_dn)",
            "layout": "NCHW",
        }
        if front is not None and front.linearized:
            input_range["formula"] = (
                "(s(DN) - s(black_level_dn)) * wb_gain / (s(white_level_dn) - "
                f"s(black_level_dn)), s the inverse of the ADC's {front.curve} curve"
            )
        if front is not None and front.auto_gain:
            input_range["formula"] += (
                f", then times gain_target / max(image mean, gain_target / max_gain) per image "
                f"(gain_target {front.gain_target}, max_gain {front.max_gain})"
            )
        elif front is not None and front.rgbw_coefficients is None:
            lo, hi = front.input_range()
            input_range |= {"min": lo, "max": hi}
        if front is not None and front.rgbw_coefficients is not None:
            input_range["formula"] += (
                ", then (demosaic: rgbw_fusion) rgb <- c * (w + d) / (max(c . a, 0) + d) with c "
                "the low-passed colour planes, w the dense W plane, a rgbw_coefficients, d "
                "rgbw_guard (the auto gain after it)"
            )
        if front is not None and front.ccm is not None:
            input_range["formula"] += ", then (after demosaicing) rgb <- ccm @ rgb per pixel"
    meta = {
        "model_name": model.spec.name,
        "class_names": json.dumps(list(model.class_names)),
        "model_yaml_hash": model.yaml_hash,
        "input_range": json.dumps(input_range),
        "front": "raw" if with_front else "none",
        "cnn_input": INPUT_NAME,
        "cnn_input_shape": json.dumps(list(model.input_shape)),
        "outputs": json.dumps(
            [LOGITS_NAME, PROBS_NAME] if model.spec.has_output_softmax else [LOGITS_NAME]
        ),
        "sensor": json.dumps(None if front is None else front.as_dict()),
        "sensorlab_version": __version__,
    }
    return meta


def export_onnx(
    model: Model,
    *,
    opset: int = DEFAULT_OPSET,
    front: SensorFront | None = None,
    with_front: bool = False,
    input_dtype: str | None = None,
    extra_metadata: Mapping[str, str] | None = None,
) -> onnx.ModelProto:
    """Build the ONNX model of ``model`` (evaluation mode).

    Parameters
    ----------
    model : the CNN with its weights.
    opset : default-domain opset, MIN_OPSET..MAX_OPSET; the IR version follows it.
    front : the sensor settings the model was trained on (written as metadata).
    with_front : put the raw front end in the graph (needs ``front``): the input is then
        the ADC codes ``dn``.
    input_dtype : the ``dn`` input's dtype (default: the ADC's, e.g. uint16); "int32" suits
        runtimes that refuse unsigned 16-bit inputs.
    extra_metadata : more metadata properties.

    Returns
    -------
    A checked ``onnx.ModelProto`` (:func:`check_onnx`).
    """
    opset = check_opset(opset)
    spec = model.spec
    params = model.state_arrays()
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    if with_front:
        if front is None:
            raise UserError(
                "--front raw needs the sensor settings the model was trained on "
                "(a run folder, or --config)",
                key="front",
            )
        if front.cnn_shape != tuple(model.input_shape):
            raise UserError(
                f"the raw stage gives (C,H,W) = {front.cnn_shape}, the model takes "
                f"{tuple(model.input_shape)}",
                key="front",
            )
        graph_input, fnodes, finits = _front_nodes(
            front, input_dtype or front.adc_dtype, INPUT_NAME
        )
        nodes += fnodes
        inits += finits
    else:
        graph_input = helper.make_tensor_value_info(
            INPUT_NAME, TensorProto.FLOAT, [BATCH_DIM, *model.input_shape]
        )
    out_index = spec.output_index
    names: dict[int, str] = {INPUT: INPUT_NAME}
    for node in spec.nodes[: out_index + 1]:
        out = LOGITS_NAME if node.index == out_index else _tensor_name(node)
        names[node.index] = out
        local = {
            k: params[f"{node.name}.{k}"]
            for k in (*node.layer.param_shapes(), *node.layer.buffer_shapes())
        }
        try:
            lnodes, linits = node.layer.to_onnx(
                node.name, [names[j] for j in node.inputs], out, local, opset
            )
        except NotImplementedError as exc:
            raise UserError(str(exc), key=node.key) from None
        nodes += lnodes
        inits += linits
    k = len(model.class_names)
    outputs = [helper.make_tensor_value_info(LOGITS_NAME, TensorProto.FLOAT, [BATCH_DIM, k])]
    if spec.has_output_softmax:
        last = spec.nodes[-1]
        nodes += last.layer.to_onnx(last.name, [LOGITS_NAME], PROBS_NAME, {}, opset)[0]
        outputs.append(helper.make_tensor_value_info(PROBS_NAME, TensorProto.FLOAT, [BATCH_DIM, k]))
    graph = helper.make_graph(
        nodes,
        spec.name,
        [graph_input],
        outputs,
        initializer=inits,
        doc_string=spec.description or None,
    )
    proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        ir_version=ir_version_for(opset),
        producer_name=PRODUCER,
        producer_version=_version(),
        doc_string=f"sensorlab model {spec.name!r}: {spec.description}".strip(),
    )
    meta = metadata(model, front, with_front=with_front, input_dtype=input_dtype)
    meta |= dict(extra_metadata or {})
    helper.set_model_props(proto, meta)
    check_onnx(proto)
    return proto


def _version() -> str:
    return str(__version__)


def check_onnx(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``onnx.checker.check_model(full_check=True)`` and strict shape inference (types
    checked, data propagated); returns the model with inferred shapes."""
    onnx.checker.check_model(proto, full_check=True)
    return onnx.shape_inference.infer_shapes(
        proto, check_type=True, strict_mode=True, data_prop=True
    )


def save_onnx(proto: onnx.ModelProto, path: str | Path) -> Path:
    """Write ``proto`` to ``path`` atomically (a temporary file in the same folder, then a
    rename): an interrupted export leaves no half-written model."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(proto.SerializeToString())
        ordinary_mode(tmp)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_metadata(proto: onnx.ModelProto) -> dict[str, Any]:
    """The metadata properties with JSON values decoded."""
    out: dict[str, Any] = {}
    for p in proto.metadata_props:
        try:
            out[p.key] = json.loads(p.value)
        except (ValueError, TypeError):
            out[p.key] = p.value
    return out
