"""CNN layers: one class per YAML layer type (see :mod:`pipeline.cnn.layers.base` for the
interface). Every module of this package is imported here, so a new module with a
``@register`` class is a new layer type with no other edit."""

from __future__ import annotations

import importlib
import pkgutil

from pipeline.cnn.layers.base import LAYERS, Layer, LayerArgs, ShapeError, register

__all__ = [
    "LAYERS",
    "Layer",
    "LayerArgs",
    "ShapeError",
    "int8_op_types",
    "onnx_importers",
    "register",
]

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base":
        importlib.import_module(f"{__name__}.{_info.name}")


def onnx_importers() -> dict[str, type[Layer]]:
    """ONNX operator -> the layer class that imports it (from each class's ``onnx_ops``)."""
    out: dict[str, type[Layer]] = {}
    for cls in LAYERS.values():
        for op in cls.onnx_ops:
            if op in out:
                raise ValueError(f"ONNX {op} is claimed by {out[op].type} and {cls.type}")
            out[op] = cls
    return out


def int8_op_types() -> tuple[str, ...]:
    """ONNX operators the int8 export quantises: the union of the layers' ``int8_ops``,
    sorted."""
    return tuple(sorted({op for cls in LAYERS.values() for op in cls.int8_ops}))
