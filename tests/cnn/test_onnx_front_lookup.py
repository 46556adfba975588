"""The ONNX raw front end of a companded ADC (log, sqrt, table): a Gather from the raw
stage's own table of linearised codes. Every code 0 .. 2**bits - 1 goes through the graph
on every runtime and must give the NumPy raw stage's float32, bit for bit; the table
itself is checked against the inverse transfer curves' equations."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.cnn.onnx_export import (
    FRONT_PREFIX,
    MAX_LOOKUP_BITS,
    RAW_INPUT_NAME,
    SensorFront,
    export_onnx,
    read_metadata,
)
from pipeline.config import load_config
from pipeline.errors import UserError
from pipeline.runner import build_chain, open_config_dataset
from pipeline.stage import Batch
from sensors.curves import linearize_codes
from tests.cnn.test_onnx_export import (
    LAYER_CASES,
    _with_cnn_input_output,
    case_model,
    runtimes,
)

SIZE = (64, 64)  # 4096 pixels: every code of a 12-bit ADC once
OFFSET = FRONT_PREFIX + "offset"  # the linearised codes, black subtracted, before scaling


def _table(bits: int, black: int) -> list[float]:
    """A companding table: thresholds spaced as squares, (j + 1/2)**2 / (m + 1/2)**2."""
    m = (1 << bits) - 1 - black
    return (((np.arange(m) + 0.5) / (m + 0.5)) ** 2).tolist()


def _adc(bits: int, curve: str) -> dict:
    adc = {"stage": "adc", "bits": bits, "curve": curve}
    if curve == "table":
        adc["thresholds"] = _table(bits, (1 << bits) // 16)
    return adc


def _chain(tmp_path, adc: dict, raw: dict | None = None, cfa: str = "mono"):
    x = np.random.default_rng(0).integers(0, 256, (2, *SIZE, 3), dtype=np.uint8)
    np.savez(tmp_path / "random.npz", x=x, y=np.arange(2) % 3)
    sensor = [
        {"stage": "scene", "mean_photons": 3000},
        {"stage": "photodetector", "cfa": cfa},
        adc,
        {"stage": "raw", **(raw or {})},
    ]
    loaded = load_config(
        {
            "seed": 1,
            "dataset": {"kind": "npz", "path": "random.npz", "split": "all"},
            "sensor": sensor,
        },
        base_dir=tmp_path,
    )
    return build_chain(loaded, open_config_dataset(loaded).info())


def _probe(front: SensorFront, input_dtype: str, opset: int = 17):
    """The exported model with the linearised codes and the CNN input as extra outputs."""
    import onnx
    from onnx import helper

    model = case_model(LAYER_CASES["relu"], input_shape=front.cnn_shape)
    proto = export_onnx(model, opset=opset, front=front, with_front=True, input_dtype=input_dtype)
    probe = _with_cnn_input_output(proto, front.cnn_shape)
    probe.graph.output.append(
        helper.make_tensor_value_info(OFFSET, onnx.TensorProto.FLOAT, ["N", *front.adc_shape])
    )
    return proto, probe


def _every_code(bits: int, dtype: str) -> np.ndarray:
    return np.resize(np.arange(1 << bits), (1, *SIZE)).astype(dtype)


@pytest.mark.parametrize("curve", ["log", "sqrt", "table"])
@pytest.mark.parametrize(
    ("bits", "dtype"),
    [(b, d) for b in (2, 4, 8) for d in ("uint8", "uint16")] + [(10, "uint16"), (12, "uint16")],
)
def test_every_code_gives_the_raw_stages_float32_on_every_runtime(tmp_path, curve, bits, dtype):
    chain = _chain(tmp_path, _adc(bits, curve))
    front = SensorFront.from_chain(chain)
    assert front.linearized and front.curve == curve
    raw = chain.sensor_stages[-1]
    codes = _every_code(bits, dtype)
    linear = linearize_codes(codes, front.black_level_dn, chain.infos[-2].attrs["adc_transfer"])
    cnn_input = raw.process(codes, Batch(np.arange(1))).transpose(0, 3, 1, 2)
    _, probe = _probe(front, dtype)
    for name, run in runtimes(tmp_path).items():
        got_linear, got_input = run(probe, {RAW_INPUT_NAME: codes}, [OFFSET, "input"])
        assert np.array_equal(np.asarray(got_linear).reshape(codes.shape), linear), name
        assert np.array_equal(np.asarray(got_input).reshape(cnn_input.shape), cnn_input), name


@pytest.mark.parametrize("bits", [4, 10])
def test_the_lookup_is_the_inverse_transfer_curve(tmp_path, bits):
    # the table against the equations: log x = (exp(y ln(1 + μ)) - 1) / μ, sqrt x = y²,
    # table: the midpoint of the code's decision interval; y = (code - black) / 2**bits
    black = (1 << bits) // 16
    mu = 255.0
    for curve in ("log", "sqrt", "table"):
        chain = _chain(tmp_path, _adc(bits, curve))
        lookup, span = chain.sensor_stages[-1].linear_lookup()
        transfer = chain.infos[-2].attrs["adc_transfer"]
        full_scale = transfer["full_scale"]
        k = np.arange(1 << bits) - black
        y = np.abs(k) / (1 << bits)
        if curve == "log":
            u = np.expm1(y * np.log1p(mu)) / mu
        elif curve == "sqrt":
            u = y * y
        else:
            t = np.array(_table(bits, black))
            edges = np.concatenate([[0.0], t, [1.0]])
            mid = np.concatenate([[0.0], (edges[1:-1] + edges[2:]) / 2])
            u = mid[np.minimum(np.abs(k), t.size)]
        expected = np.sign(k) * u * full_scale
        assert lookup.dtype == np.float32 and lookup.shape == (1 << bits,)
        assert np.allclose(lookup, expected, rtol=1e-6, atol=1e-6 * full_scale), curve
        white = chain.infos[-1].attrs["white_level_dn"]
        assert span == pytest.approx(float(lookup[int(white)]), rel=1e-6)


@pytest.mark.parametrize("opset", [13, 17, 21])
def test_the_lookup_front_runs_at_every_opset_and_input_dtype(tmp_path, opset):
    chain = _chain(tmp_path, _adc(10, "table"), {"wb_gains": [2.0, 1.0, 1.5]}, cfa="RGGB")
    front = SensorFront.from_chain(chain)
    codes16 = _every_code(10, "uint16")
    linear = linearize_codes(codes16, front.black_level_dn, chain.infos[-2].attrs["adc_transfer"])
    cnn_input = chain.sensor_stages[-1].process(codes16, Batch(np.arange(1))).transpose(0, 3, 1, 2)
    for dtype in ("uint16", "int32", "float32"):
        proto, probe = _probe(front, dtype, opset)
        assert proto.opset_import[0].version == opset
        assert [n.op_type for n in proto.graph.node[:2]] == ["Cast", "Gather"]
        for name, run in runtimes(tmp_path).items():
            got_linear, got_input = run(
                probe, {RAW_INPUT_NAME: codes16.astype(dtype)}, [OFFSET, "input"]
            )
            assert np.array_equal(np.asarray(got_linear).reshape(codes16.shape), linear), name
            # the bilinear demosaic's convolution sums in another order: float32 round-off
            got = np.asarray(got_input).reshape(cnn_input.shape)
            assert np.max(np.abs(got - cnn_input)) <= 1e-5, (name, dtype)


def test_linear_curves_keep_the_subtraction_front(tmp_path):
    front = SensorFront.from_chain(_chain(tmp_path, {"stage": "adc", "bits": 10}))
    assert not front.linearized and front.code_lookup is None
    proto, _ = _probe(front, "uint16")
    assert "Gather" not in {n.op_type for n in proto.graph.node if n.name.startswith(FRONT_PREFIX)}


def test_metadata_names_the_curve_and_keeps_the_table_out(tmp_path):
    chain = _chain(tmp_path, _adc(6, "table"))
    front = SensorFront.from_chain(chain)
    proto, _ = _probe(front, "uint8")
    meta = read_metadata(proto)
    sensor = meta["sensor"]
    assert sensor["curve"] == "table" and sensor["thresholds"] == _table(6, 4)
    assert "code_lookup" not in sensor and "lookup_span" not in sensor
    assert SensorFront.from_dict(sensor) == front  # the lookup is not compared
    lo, hi = front.input_range()
    assert lo == pytest.approx(float(front.code_lookup.min()) / front.lookup_span)
    assert hi == pytest.approx(float(front.code_lookup.max()) / front.lookup_span)


def test_a_linearised_front_without_its_lookup_or_too_wide_is_refused(tmp_path):
    chain = _chain(tmp_path, _adc(8, "log"))
    front = SensorFront.from_chain(chain)
    model = case_model(LAYER_CASES["relu"], input_shape=front.cnn_shape)
    from_metadata = SensorFront.from_dict(front.as_dict())
    with pytest.raises(UserError, match="lookup table"):
        export_onnx(model, front=from_metadata, with_front=True)
    wide = SensorFront.from_chain(_chain(tmp_path, _adc(MAX_LOOKUP_BITS + 1, "sqrt")))
    with pytest.raises(UserError, match=f"up to {MAX_LOOKUP_BITS} bits"):
        export_onnx(model, front=wide, with_front=True)
    export_onnx(model, front=wide)  # without the front end the settings are metadata only
