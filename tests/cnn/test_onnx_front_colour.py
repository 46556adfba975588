"""The ONNX raw front end of a colour pipeline (issue 17 item 4): fixed white-balance
gains (given or from the illuminant) and the CCM as graph ops, against the NumPy raw stage
on every runtime (onnxruntime, onnx.reference, OpenCV DNN's two engines); per-image
white balance is refused."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.cnn.onnx_export import (
    FRONT_PREFIX,
    INPUT_NAME,
    RAW_INPUT_NAME,
    SensorFront,
    export_onnx,
    read_metadata,
)
from pipeline.errors import UserError
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

MATRIX = [[1.7, -0.5, -0.2], [-0.3, 1.6, -0.3], [0.05, -0.6, 1.55]]


def _sensor(cfa: str, raw: dict, illuminant: str = "A") -> list[dict]:
    return [
        {
            "stage": "scene",
            "mean_photons": 3000,
            "spectral": "recover",
            "recovery": "mallett2019",
            "illuminant": illuminant,
            "band_range_nm": [400, 700, 20],
        },
        {"stage": "photodetector", "cfa": cfa, "qe_curves": "camera", "qe": 0.6},
        {"stage": "adc", "bits": 10},
        {"stage": "raw", **raw},
    ]


CASES = {
    "RGGB-illuminant-fit": ("RGGB", {"white_balance": "illuminant", "ccm": "fit"}),
    "RGGB-gains-matrix-clip": ("RGGB", {"wb_gains": [1.8, 1.0, 1.4], "ccm": MATRIX, "clip": True}),
    "RGBW-illuminant-fit": ("RGBW", {"white_balance": "illuminant", "ccm": "fit"}),
    "stacked-illuminant-matrix": ("stacked", {"white_balance": "illuminant", "ccm": MATRIX}),
    "RGGB-auto-gain-fit": (
        "RGGB",
        {"white_balance": "illuminant", "ccm": "fit", "auto_gain": True},
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_colour_front_equals_the_numpy_raw_stage_on_every_runtime(case, tmp_path):
    cfa, raw = CASES[case]
    front, dn, nchw = chain_for(tmp_path, _sensor(cfa, raw), size=(12, 10), n=4)
    assert front.ccm is not None
    if raw.get("white_balance") == "illuminant":
        assert front.wb_gains != (1.0, 1.0, 1.0) and front.wb_gains[1] == 1.0
    model = case_model(LAYER_CASES["conv2d"], input_shape=nchw.shape[1:])
    proto = export_onnx(model, front=front, with_front=True)
    ops = {n.name: n.op_type for n in proto.graph.node if n.name.startswith(FRONT_PREFIX)}
    assert ops[FRONT_PREFIX + "colour_correction"] == "Conv"
    probe = _with_cnn_input_output(proto, nchw.shape[1:])
    expected = model.forward(nchw)
    for name, run in runtimes(tmp_path).items():
        logits, cnn_input = run(probe, {RAW_INPUT_NAME: dn}, [LOGITS_NAME, INPUT_NAME])
        assert max_diff(cnn_input, nchw) <= 1e-5, name  # values ~1: float32 round-off
        assert max_diff(logits, expected) <= TOL, name


def test_metadata_carries_the_gains_and_matrix(tmp_path):
    front, _, nchw = chain_for(
        tmp_path, _sensor("RGGB", {"white_balance": "illuminant", "ccm": "fit"})
    )
    model = case_model(LAYER_CASES["relu"], input_shape=nchw.shape[1:])
    meta = read_metadata(export_onnx(model, front=front))
    assert SensorFront.from_dict(meta["sensor"]) == front
    assert meta["sensor"]["white_balance"] == "illuminant"
    assert np.allclose(meta["sensor"]["ccm"], front.ccm)


def test_input_range_bounds_the_colour_corrected_values(tmp_path):
    front, _, nchw = chain_for(tmp_path, _sensor("RGGB", {"ccm": MATRIX}))
    lo, hi = front.input_range()
    assert lo <= nchw.min() and nchw.max() <= hi
    # analytic: normalised codes span [-b/s, (2**10 - 1 - b)/s]; row i reaches its positive
    # weights times the top and its negative weights times the bottom
    span = front.white_level_dn - front.black_level_dn
    low, high = -front.black_level_dn / span, (1023 - front.black_level_dn) / span
    m = np.array(MATRIX)
    assert hi == pytest.approx(max((np.where(m > 0, m * high, m * low)).sum(axis=1)))
    assert lo == pytest.approx(min((np.where(m > 0, m * low, m * high)).sum(axis=1)))


@pytest.mark.parametrize("method", ["gray_world", "white_patch"])
def test_per_image_white_balance_is_refused_by_the_front_end(tmp_path, method):
    front, _, nchw = chain_for(tmp_path, _sensor("RGGB", {"white_balance": method}))
    model = case_model(LAYER_CASES["relu"], input_shape=nchw.shape[1:])
    with pytest.raises(UserError, match=f"white_balance: {method} is per image") as err:
        export_onnx(model, front=front, with_front=True)
    assert "\n" not in str(err.value)
    export_onnx(model, front=front)  # without the front end: metadata only
