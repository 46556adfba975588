"""The ONNX raw front end of the RGBW fusion (``demosaic: rgbw_fusion``) and of the RGBW
auto gain over the colour pixels: graph ops (Mul, Pad, Conv, Relu, Add, Div) against the
NumPy raw stage on every runtime."""

from __future__ import annotations

import pytest

from pipeline.cnn.onnx_export import (
    FRONT_PREFIX,
    INPUT_NAME,
    RAW_INPUT_NAME,
    SensorFront,
    export_onnx,
    read_metadata,
)
from tests.cnn.test_onnx_export import (
    LAYER_CASES,
    LOGITS_NAME,
    TOL,
    _with_cnn_input_output,
    case_model,
    chain_for,
    max_diff,
    runtimes,
)
from tests.cnn.test_onnx_front_colour import _sensor

RGB_MODE = [
    {"stage": "scene", "mean_photons": 300},
    {"stage": "photodetector", "cfa": "RGBW", "qe": [0.5, 0.6, 0.4], "qe_w": 0.7},
    {"stage": "adc", "bits": 10},
    {"stage": "raw", "demosaic": "rgbw_fusion", "auto_gain": True},
]
CASES = {
    "fusion-illuminant-gain-fit": _sensor(
        "RGBW",
        {"demosaic": "rgbw_fusion", "white_balance": "illuminant", "auto_gain": True, "ccm": "fit"},
    ),
    "fusion-no-wb": _sensor("RGBW", {"demosaic": "rgbw_fusion"}, illuminant="D65"),
    "bilinear-colour-pixel-gain": _sensor(
        "RGBW", {"white_balance": "illuminant", "auto_gain": True}
    ),
    "fusion-rgb-mode": RGB_MODE,
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_rgbw_front_equals_the_numpy_raw_stage_on_every_runtime(case, tmp_path):
    front, dn, nchw = chain_for(tmp_path, CASES[case], size=(12, 10), n=4)
    model = case_model(LAYER_CASES["conv2d"], input_shape=nchw.shape[1:])
    proto = export_onnx(model, front=front, with_front=True)
    ops = {n.name: n.op_type for n in proto.graph.node if n.name.startswith(FRONT_PREFIX)}
    if front.demosaic == "rgbw_fusion":
        assert ops[FRONT_PREFIX + "w_ratio"] == "Div" and ops[FRONT_PREFIX + "w_hat"] == "Conv"
    if front.auto_gain:
        assert ops[FRONT_PREFIX + "gain_px"] == "Mul"  # the mean over the colour pixels
    probe = _with_cnn_input_output(proto, nchw.shape[1:])
    expected = model.forward(nchw)
    for name, run in runtimes(tmp_path).items():
        logits, cnn_input = run(probe, {RAW_INPUT_NAME: dn}, [LOGITS_NAME, INPUT_NAME])
        assert max_diff(cnn_input, nchw) <= 1e-5, name
        assert max_diff(logits, expected) <= TOL, name


def test_metadata_round_trips_the_fusion_and_older_metadata_has_no_fusion_keys(tmp_path):
    front, _, nchw = chain_for(tmp_path, RGB_MODE)
    assert front.rgbw_coefficients is not None and front.rgbw_guard > 0
    model = case_model(LAYER_CASES["relu"], input_shape=nchw.shape[1:])
    meta = read_metadata(export_onnx(model, front=front))
    assert SensorFront.from_dict(meta["sensor"]) == front
    assert "rgbw_fusion" in meta["input_range"]["formula"]
    plain, _, _ = chain_for(tmp_path, _sensor("RGBW", {}))
    assert "rgbw_coefficients" not in plain.as_dict()
