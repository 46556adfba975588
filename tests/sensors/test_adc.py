"""The ADC: codes against the transfer equation, companding inverses, Lloyd–Max, the stage."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pipeline.stage import Batch, SignalInfo, StageError, Unit
from sensors.adc import (
    ADCStage,
    compand,
    default_black_level,
    dequantize,
    dtype_for_bits,
    equal_probability_thresholds,
    expand,
    lloyd_max,
    quantize,
)


# -- quantize: the transfer equation ---------------------------------------------------
def test_three_bit_adc_with_five_volt_reference():
    # LSB = 5 V / 2**3 = 0.625 V; code = floor(V / LSB + 1/2): code k covers
    # [k - 1/2, k + 1/2) LSB, centred on k LSB; everything from 6.5 LSB up clips to 7.
    lsb = 0.625
    volts = np.array([0.0, 0.3124, 0.3125, 0.9374, 0.9375, 2.5, 4.0624, 4.0625, 5.0, 7.0, -0.1])
    expected = [0, 0, 1, 1, 2, 4, 6, 7, 7, 7, 0]
    codes = quantize(volts, 3, 5.0)
    assert codes.tolist() == expected
    assert codes.dtype == np.uint8
    assert np.allclose(dequantize(np.arange(8), 3, 5.0), np.arange(8) * lsb)


def test_one_bit_adc_is_a_comparator_at_half_scale():
    # the one transition is half an LSB (a quarter of full scale) above the centre of code 0
    v = np.array([-1.0, 0.0, 0.24, 0.25, 0.26, 1.0, 3.0])
    for rounding in ("floor", "nearest"):
        assert quantize(v, 1, 1.0, rounding=rounding).tolist() == [0, 0, 0, 1, 1, 1, 1]


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6])
@pytest.mark.parametrize("rounding", ["floor", "nearest"])
@pytest.mark.parametrize("black_level", [0, 1])
def test_exhaustive_codes_against_the_transfer_equation(bits, rounding, black_level):
    # code = clip(floor(2**bits * v / FS + black_level + 1/2), 0, 2**bits - 1) for both
    # roundings: the pedestal sits at the centre of code black_level (floor rounding adds
    # 1/2 LSB of analog offset, nearest rounding is its own 1/2)
    full_scale = 5.0
    top = (1 << bits) - 1
    # every eighth of an LSB from -2 LSB to full scale + 2 LSB; v = 5 j / 2**(bits+3) is
    # exact in binary, so v / FS * 2**bits = j / 8 exactly and the reference is integer maths
    j = np.arange(-16, 8 * (1 << bits) + 17)
    v = full_scale * j / (1 << (bits + 3))
    expected = np.clip((j + 4) // 8 + black_level, 0, top)  # + 1/2 LSB = 4 eighths
    codes = quantize(v, bits, full_scale, rounding=rounding, black_level=black_level)
    assert codes.tolist() == expected.tolist()
    # every code from 2 LSB below the black level to the top is reached, monotonically
    assert set(codes.tolist()) == set(range(max(0, black_level - 2), top + 1))
    assert np.all(np.diff(codes.astype(int)) >= 0)


def _signal_at_lsb(level_lsb, bits, curve, full_scale=1.0):
    """The signal whose curve output is ``level_lsb`` LSB above the black level."""
    if curve == "table":
        return full_scale * np.asarray(level_lsb, dtype=np.float64) / (1 << bits)
    return full_scale * expand(np.asarray(level_lsb, dtype=np.float64) / (1 << bits), curve)


def _uniform_table(bits):
    """The table of the linear curve: thresholds t_k = (k - 1/2) / 2**bits."""
    black = default_black_level(bits)
    return (np.arange(1, (1 << bits) - black) - 0.5) / (1 << bits)


ALL_CURVES = ["linear", "log", "sqrt", "table"]
# the table curve takes only floor rounding (its thresholds are decision levels)
CURVE_ROUNDINGS = [(c, r) for c in ALL_CURVES for r in ("floor", "nearest")][:-1]


@pytest.mark.parametrize("bits", range(1, 25))
@pytest.mark.parametrize(("curve", "rounding"), CURVE_ROUNDINGS)
def test_the_default_pedestal_sits_at_a_code_centre(bits, curve, rounding):
    # a zero signal is half an LSB from both edges of the black code, for every
    # configuration; so a signal below 1/2 LSB (no noise) gives the code of a dark pixel
    black = default_black_level(bits)
    kw = {"curve": curve, "rounding": rounding, "black_level": black}
    if curve == "table":
        kw["thresholds"] = _uniform_table(bits)
    inside = _signal_at_lsb([-0.49, -0.3, 0.0, 0.3, 0.49], bits, curve)
    assert quantize(inside, bits, **kw).tolist() == [black] * 5
    outside = _signal_at_lsb([-0.51, 0.51], bits, curve)
    assert quantize(outside, bits, **kw).tolist() == [max(black - 1, 0), black + 1]
    assert dequantize(black, bits, **kw) == 0.0  # the black code stands for a zero signal


@pytest.mark.parametrize("bits", [4, 8, 12])
@pytest.mark.parametrize("curve", ALL_CURVES)
def test_a_sub_half_lsb_signal_does_not_change_a_dark_pixels_codes(bits, curve):
    # The ablation behind the old "light detector": read noise << 1 LSB, a dark pixel vs a
    # pixel at 0.3 LSB. With the pedestal on a code edge, noise flipped half the dark
    # pixels one code down and none of the lit ones; centred, both give the black code.
    black = default_black_level(bits)
    kw = {"curve": curve, "black_level": black}
    if curve == "table":
        kw["thresholds"] = _uniform_table(bits)
    noise = 0.02 * np.random.default_rng(8).standard_normal(100_000)  # 0.02 LSB rms
    dark = quantize(_signal_at_lsb(noise, bits, curve), bits, **kw)
    lit = quantize(_signal_at_lsb(0.3 + noise, bits, curve), bits, **kw)
    assert np.array_equal(np.bincount(dark), np.bincount(lit))
    # noise-free quantiser: identical codes
    assert quantize(_signal_at_lsb(0.0, bits, curve), bits, **kw) == quantize(
        _signal_at_lsb(0.3, bits, curve), bits, **kw
    )


@pytest.mark.parametrize(
    ("bits", "sigma_lsb"), [(4, 0.1), (4, 0.25), (8, 0.3), (8, 2.0), (12, 1.0)]
)
@pytest.mark.parametrize("curve", ALL_CURVES)
def test_a_dark_pixels_mean_code_is_the_black_level(bits, curve, sigma_lsb):
    # symmetric noise around the centre of code B gives a code distribution symmetric
    # around B, so E[code] = B exactly while no code is clipped at 0 (checked)
    black = default_black_level(bits)
    kw = {"curve": curve, "black_level": black}
    if curve == "table":
        kw["thresholds"] = _uniform_table(bits)
    n = 200_000
    noise = sigma_lsb * np.random.default_rng(bits).standard_normal(n)
    assert np.abs(noise).max() < black + 0.5  # no code clipped at 0
    codes = quantize(_signal_at_lsb(noise, bits, curve), bits, **kw).astype(np.float64)
    var = sigma_lsb**2 + 1 / 12  # an upper bound of the code variance
    assert codes.mean() == pytest.approx(black, abs=5 * np.sqrt(var / n))


def test_black_level_keeps_negative_noise():
    codes = quantize(np.array([-3.0, -1.0, 0.0, 1.0]), 10, 1024.0, black_level=64)
    assert codes.tolist() == [61, 63, 64, 65]


def test_twenty_four_bits_use_uint32_and_resolve_every_code():
    bits = 24
    rng = np.random.default_rng(0)
    k = rng.integers(0, 1 << bits, size=1000)
    centres = k / (1 << bits)  # code k is centred on k LSB
    codes = quantize(centres, bits, 1.0)
    assert codes.dtype == np.uint32
    assert np.array_equal(codes, k)
    transitions = (np.array([1, (1 << 24) - 1]) - 0.5) / (1 << bits)
    below = transitions - 2.0**-40  # 2**-16 LSB below: adding the 1/2 LSB keeps it below
    assert quantize(below, bits).tolist() == [0, (1 << 24) - 2]
    assert quantize(transitions, bits).tolist() == [1, (1 << 24) - 1]
    assert quantize(np.array([0.0, 1.0 - 2.0**-24, 1.0, np.inf, -np.inf]), bits).tolist() == [
        0,
        (1 << 24) - 1,
        (1 << 24) - 1,
        (1 << 24) - 1,
        0,
    ]


@pytest.mark.parametrize(
    ("bits", "dtype"),
    [(1, np.uint8), (8, np.uint8), (9, np.uint16), (16, np.uint16), (17, np.uint32)],
)
def test_dtype_is_the_smallest_unsigned_type(bits, dtype):
    assert dtype_for_bits(bits) == np.dtype(dtype)
    assert quantize(np.zeros(3), bits).dtype == np.dtype(dtype)


def test_scalar_and_shape_are_kept():
    assert quantize(0.3, 4).shape == ()
    assert int(quantize(0.3, 4)) == math.floor(0.3 * 16 + 0.5)
    assert quantize(np.zeros((2, 3, 4)), 4).shape == (2, 3, 4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"bits": 0}, "bits"),
        ({"bits": 25}, "bits"),
        ({"bits": 8, "curve": "cubic"}, "curve"),
        ({"bits": 8, "rounding": "ceil"}, "rounding"),
        ({"bits": 8, "black_level": 256}, "black_level"),
        ({"bits": 8, "full_scale": 0.0}, "full_scale"),
        ({"bits": 8, "curve": "table"}, "thresholds"),
        ({"bits": 2, "curve": "table", "thresholds": [0.1, 0.2, 0.3, 0.4]}, "thresholds"),
        ({"bits": 2, "curve": "table", "thresholds": [0.2, 0.1]}, "increasing"),
        ({"bits": 2, "curve": "table", "thresholds": [0.0, 0.1]}, "above 0"),
        ({"bits": 8, "transitions": [1.0, 2.0]}, "transitions"),
        ({"bits": 2, "transitions": [1.0, 3.0, 2.0]}, "non-decreasing"),
        ({"bits": 2, "curve": "table", "thresholds": [0.2], "transitions": [1.0]}, "transitions"),
    ],
)
def test_bad_parameters_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        quantize(np.zeros(2), **kwargs)


def test_nan_raises():
    with pytest.raises(ValueError, match="NaN"):
        quantize(np.array([0.1, np.nan]), 8)


# -- companding curves -----------------------------------------------------------------
def test_companding_curves_match_their_closed_forms():
    u = np.linspace(0, 1, 101)
    assert np.allclose(compand(u, "sqrt"), np.sqrt(u))
    mu = 255.0
    assert np.allclose(compand(u, "log", log_compression=mu), np.log(1 + mu * u) / np.log(1 + mu))
    for curve in ("linear", "sqrt", "log"):
        assert compand(0.0, curve) == 0.0
        assert compand(1.0, curve) == pytest.approx(1.0)
        assert np.allclose(compand(-u, curve), -compand(u, curve))  # odd extension
        assert np.allclose(expand(compand(u, curve), curve), u, atol=1e-12)


@pytest.mark.parametrize("curve", ["log", "sqrt"])
@pytest.mark.parametrize("bits", [4, 8, 12])
@pytest.mark.parametrize("rounding", ["floor", "nearest"])
def test_companded_codes_invert_to_within_half_a_code(curve, bits, rounding):
    full_scale, black = 3.0, 2
    kw = {"curve": curve, "rounding": rounding, "black_level": black}
    codes = np.arange(black, 1 << bits)
    assert np.array_equal(
        quantize(dequantize(codes, bits, full_scale, **kw), bits, full_scale, **kw), codes
    )
    # s → code → representative value: within half a code in the companded domain
    top_signal = full_scale * expand(((1 << bits) - 1 - black) / (1 << bits), curve)
    s = np.random.default_rng(1).uniform(0, top_signal, 20_000)
    back = dequantize(quantize(s, bits, full_scale, **kw), bits, full_scale, **kw)
    err_codes = (1 << bits) * (compand(back / full_scale, curve) - compand(s / full_scale, curve))
    assert np.max(np.abs(err_codes)) <= 0.5 + 1e-9


def test_sqrt_companding_codes_follow_the_square_root():
    # 8-bit sqrt ADC: code = floor(256 * sqrt(s / FS) + 1/2); s = FS ((k - 1/2)/256)**2 is
    # the transition into code k (k >= 1)
    k = np.arange(1, 256)
    s = 1000.0 * ((k - 0.5) / 256.0) ** 2
    assert np.array_equal(quantize(s, 8, 1000.0, curve="sqrt"), k)
    assert np.array_equal(quantize(s * (1 - 1e-9), 8, 1000.0, curve="sqrt"), k - 1)


# -- table curve and fitted quantisers -------------------------------------------------
def test_table_curve_counts_thresholds_below_the_signal():
    # code = clip(black + sign(u) #{t_k <= |u|}, 0, 7): odd, so the black code is (-t0, t0)
    t = np.array([0.1, 0.15, 0.5, 0.9])
    u = np.random.default_rng(2).uniform(-0.2, 1.2, 5000)
    u[:4] = t  # exactly on a threshold: the upper code
    u[4:8] = -t  # mirrored: the lower code
    steps = (np.abs(u)[:, None] >= t[None, :]).sum(axis=1)
    expected = np.clip(3 + np.sign(u) * steps, 0, 7)
    codes = quantize(u * 2.0, 3, 2.0, curve="table", thresholds=t, black_level=3)
    assert np.array_equal(codes, expected)
    assert codes[4:8].tolist() == [2, 1, 0, 0]
    rep = dequantize(np.arange(8), 3, 2.0, curve="table", thresholds=t, black_level=3)
    mid = np.array([0.0, 0.125, 0.325, 0.7, 0.95]) * 2.0  # black: 0; then interval midpoints
    assert np.allclose(rep, [-mid[3], -mid[2], -mid[1], 0.0, *mid[1:]])
    with pytest.raises(ValueError, match="floor"):
        quantize(u, 3, curve="table", thresholds=t, rounding="nearest")


def test_lloyd_max_matches_max_1960_for_a_gaussian():
    x = np.random.default_rng(3).standard_normal(400_000)
    # 1 bit: threshold 0, levels ±sqrt(2/pi); 2 bits (Max 1960, Table I): thresholds
    # 0, ±0.9816 and levels ±0.4528, ±1.510. Sampling error of a level ~ 0.7/sqrt(1e5)
    # ≈ 0.002; tolerance 0.01 (5 sigma).
    t1, l1 = lloyd_max(x, 1)
    assert t1 == pytest.approx([0.0], abs=0.01)
    assert l1 == pytest.approx([-math.sqrt(2 / math.pi), math.sqrt(2 / math.pi)], abs=0.01)
    t2, l2 = lloyd_max(x, 2)
    assert t2 == pytest.approx([-0.9816, 0.0, 0.9816], abs=0.01)
    assert l2 == pytest.approx([-1.510, -0.4528, 0.4528, 1.510], abs=0.01)


def test_lloyd_max_and_cdf_thresholds_of_uniform_data_are_uniform():
    x = np.random.default_rng(4).uniform(0, 4.0, 200_000)
    ideal = np.arange(1, 8) / 8
    t, levels = lloyd_max(x, 3, full_scale=4.0)
    assert t == pytest.approx(ideal, abs=0.01)
    assert levels == pytest.approx((np.arange(8) + 0.5) / 8, abs=0.01)
    assert equal_probability_thresholds(x, 3, full_scale=4.0) == pytest.approx(ideal, abs=0.01)
    # the fitted table quantises like the uniform 3-bit ADC almost everywhere, once the
    # ADC's pedestal centring (half a code, 0.25 here) is undone: a table's black code
    # covers [0, t_0), the linear curve's [-1/2, 1/2) LSB
    codes = quantize(x, 3, 4.0, curve="table", thresholds=t)
    assert np.mean(codes == quantize(x - 0.25, 3, 4.0)) > 0.97
    rep = dequantize(codes, 3, 4.0, curve="table", thresholds=t, levels=levels)
    assert np.mean((rep - x) ** 2) == pytest.approx((4.0 / 8) ** 2 / 12, rel=0.05)


def test_lloyd_max_and_cdf_thresholds_fill_fewer_cells_when_asked():
    # a 3-bit table read with black level 2 has 6 codes for a non-negative signal: on
    # uniform data the optimum (MSE and equal probability alike) puts thresholds at k/6
    x = np.random.default_rng(5).uniform(0, 1.0, 200_000)
    ideal = np.arange(1, 6) / 6
    t, levels = lloyd_max(x, 3, n_cells=6)
    assert t == pytest.approx(ideal, abs=0.01)
    assert levels == pytest.approx((np.arange(6) + 0.5) / 6, abs=0.01)
    assert equal_probability_thresholds(x, 3, n_cells=6) == pytest.approx(ideal, abs=0.01)
    with pytest.raises(ValueError, match="n_cells"):
        lloyd_max(x, 3, n_cells=9)


def test_lloyd_max_needs_enough_distinct_samples():
    with pytest.raises(ValueError, match="distinct"):
        lloyd_max(np.array([0.0, 1.0, 1.0, 1.0]), 2)


# -- property tests --------------------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(
    bits=st.integers(1, 24),
    curve=st.sampled_from(["linear", "log", "sqrt"]),
    rounding=st.sampled_from(["floor", "nearest"]),
    black_fraction=st.floats(0, 1),
    full_scale=st.floats(1e-3, 1e6),
    x=hnp.arrays(
        np.float64,
        st.integers(1, 64),
        elements=st.floats(-1e7, 1e7) | st.sampled_from([np.inf, -np.inf]),
    ),
)
def test_codes_are_in_range_monotone_and_smallest_dtype(
    bits, curve, rounding, black_fraction, full_scale, x
):
    black = int(black_fraction * ((1 << bits) - 2))
    kw = {"curve": curve, "rounding": rounding, "black_level": black}
    codes = quantize(np.sort(x), bits, full_scale, **kw)
    assert codes.dtype == dtype_for_bits(bits)
    assert codes.min() >= 0 and codes.max() <= (1 << bits) - 1
    assert np.all(np.diff(codes.astype(np.int64)) >= 0)


@settings(max_examples=100, deadline=None)
@given(
    bits=st.integers(1, 12),
    t=hnp.arrays(np.float64, st.integers(1, 40), elements=st.floats(1e-3, 1.5), unique=True),
    x=hnp.arrays(np.float64, st.integers(1, 64), elements=st.floats(-2, 2)),
)
def test_table_codes_are_in_range_and_monotone(bits, t, x):
    t = np.sort(t)[: (1 << bits) - 1]
    black = (1 << bits) // 16
    codes = quantize(np.sort(x), bits, 1.0, curve="table", thresholds=t, black_level=black)
    assert codes.max() <= min(black + t.size, (1 << bits) - 1)
    assert np.all(np.diff(codes.astype(np.int64)) >= 0)


# -- the stage -------------------------------------------------------------------------
def _electrons(shape=(6, 8), full_well=1000.0):
    return SignalInfo(Unit.ELECTRONS, shape, np.float32, {"full_well_e": full_well})


def _run(stage, x, info):
    out_info = stage.setup(info)
    out = stage.process(x, Batch(np.arange(len(x))))
    assert out.dtype == out_info.dtype
    assert out.shape == (len(x), *out_info.shape)
    return out, out_info


def test_stage_default_gain_maps_the_full_well_to_the_top_code():
    stage = ADCStage(ADCStage.Params(bits=10))
    e = np.linspace(-20, 1200, 2 * 6 * 8).reshape(2, 6, 8).astype(np.float32)
    out, info = _run(stage, e, _electrons())
    black = default_black_level(10)
    assert black == 64
    k = (1023 - black) / 1000.0
    a = info.attrs
    assert a["bits"] == 10 and a["black_level_dn"] == black and a["curve"] == "linear"
    assert a["white_level_dn"] == 1023
    assert a["system_gain_dn_per_e"] == pytest.approx(k)
    expected = np.clip(np.floor(k * e.astype(np.float64) + black + 0.5), 0, 1023)
    assert np.array_equal(out, expected)
    assert out.dtype == np.uint16


def test_stage_system_gain_and_analog_gain():
    stage = ADCStage(
        ADCStage.Params(bits=12, system_gain_dn_per_e=0.5, analog_gain=2.0, black_level_dn=0)
    )
    e = np.arange(0, 5000, 7, dtype=np.float32)[None, :]
    out, info = _run(
        stage, e, SignalInfo(Unit.ELECTRONS, e.shape[1:], np.float32, {"full_well_e": 3000.0})
    )
    assert info.attrs["system_gain_dn_per_e"] == pytest.approx(1.0)
    assert np.array_equal(out[0], np.clip(np.floor(e[0].astype(np.float64)), 0, 4095))
    assert info.attrs["white_level_dn"] == 3000  # the full well's code


def test_stage_conversion_gain_and_full_scale():
    # K = 2**N * CG / FS = 4096 * 50e-6 V / 1.0 V = 0.2048 DN/e-
    stage = ADCStage(ADCStage.Params(bits=12, conversion_gain_uv_per_e=50.0, full_scale_v=1.0))
    e = np.array([[0.0, 100.0, 1e4, 1e5]], dtype=np.float32)
    out, info = _run(stage, e, SignalInfo(Unit.ELECTRONS, (4,), np.float32))
    assert info.attrs["system_gain_dn_per_e"] == pytest.approx(0.2048)
    assert info.attrs["white_level_dn"] == 4095
    assert out[0].tolist() == [256, 256 + 20, 256 + 2048, 4095]


def test_stage_takes_volts_with_a_full_scale():
    stage = ADCStage(ADCStage.Params(bits=3, full_scale_v=5.0, black_level_dn=0))
    v = np.array([[0.0, 0.625, 3.2, 6.0]])
    out, info = _run(stage, v, SignalInfo(Unit.VOLTS, (4,), np.float64))
    assert out[0].tolist() == [0, 1, 5, 7]
    assert info.attrs["system_gain_dn_per_e"] is None


def test_stage_transfer_attr_linearises_codes():
    for curve in ("linear", "sqrt", "log"):
        stage = ADCStage(ADCStage.Params(bits=12, curve=curve))
        e = np.random.default_rng(5).uniform(0, 1000, (3, 6, 8)).astype(np.float32)
        out, info = _run(stage, e, _electrons())
        assert info.attrs["white_level_dn"] == 4095
        back = dequantize(out, **info.attrs["adc_transfer"])
        transfer = info.attrs["adc_transfer"]
        err = (1 << 12) * (
            compand(back / transfer["full_scale"], curve)
            - compand(e.astype(np.float64) / transfer["full_scale"], curve)
        )
        assert np.max(np.abs(err)) <= 0.5 + 1e-9


def test_stage_table_from_npy_and_csv(tmp_path):
    t = np.array([0.05, 0.2, 0.4, 0.7])
    np.save(tmp_path / "t.npy", t)
    (tmp_path / "t.csv").write_text("# thresholds\n0.05\n0.2\n0.4\n0.7\n")
    e = np.linspace(0, 1100, 40, dtype=np.float32)[None, :]
    results = []
    for source in (str(tmp_path / "t.npy"), str(tmp_path / "t.csv"), t.tolist()):
        stage = ADCStage(
            ADCStage.Params(bits=3, curve="table", thresholds=source, black_level_dn=0)
        )
        out, info = _run(
            stage, e, SignalInfo(Unit.ELECTRONS, (40,), np.float32, {"full_well_e": 1000.0})
        )
        results.append(out)
        # default gain: the full well reaches the last threshold (the top reachable code)
        fs = info.attrs["adc_transfer"]["full_scale"]
        assert 1000.0 / fs == pytest.approx(0.7)
        assert info.attrs["white_level_dn"] == 4
    assert all(np.array_equal(results[0], r) for r in results)
    u = e[0].astype(np.float64) * 0.7 / 1000.0
    assert np.array_equal(results[0][0], (u[:, None] >= t[None, :]).sum(axis=1))


@pytest.mark.parametrize(
    ("params", "info", "key"),
    [
        ({"bits": 4, "black_level_dn": 15}, _electrons(), "black_level_dn"),
        (
            {"system_gain_dn_per_e": 1.0, "conversion_gain_uv_per_e": 5.0},
            _electrons(),
            "conversion_gain_uv_per_e",
        ),
        ({"conversion_gain_uv_per_e": 5.0}, _electrons(), "full_scale_v"),
        ({"full_scale_v": 1.0}, _electrons(), "full_scale_v"),
        ({}, SignalInfo(Unit.ELECTRONS, (4, 4), np.float32), "system_gain_dn_per_e"),
        ({}, SignalInfo(Unit.VOLTS, (4, 4), np.float32), "full_scale_v"),
        (
            {"full_scale_v": 1.0, "system_gain_dn_per_e": 1.0},
            SignalInfo(Unit.VOLTS, (4,), np.float32),
            "system_gain_dn_per_e",
        ),
        ({"curve": "table"}, _electrons(), "thresholds"),
        ({"curve": "table", "thresholds": "/nonexistent/t.npy"}, _electrons(), "thresholds"),
        ({"curve": "table", "thresholds": [0.3, 0.2]}, _electrons(), "thresholds"),
        ({"curve": "table", "thresholds": [0.2], "rounding": "nearest"}, _electrons(), "rounding"),
        ({"thresholds": [0.2]}, _electrons(), "thresholds"),
    ],
)
def test_stage_setup_errors_name_the_parameter(params, info, key):
    stage = ADCStage(ADCStage.Params(**params))
    with pytest.raises(StageError) as err:
        stage.setup(info)
    assert err.value.key == key


def test_stage_rejects_photons_and_nan():
    with pytest.raises(StageError, match="electrons or volts"):
        ADCStage().setup(SignalInfo(Unit.PHOTONS, (4, 4, 3), np.float32))
    stage = ADCStage()
    stage.setup(_electrons((2,)))
    with pytest.raises(StageError, match="NaN"):
        stage.process(np.array([[1.0, np.nan]]), Batch(np.arange(1)))


def test_params_validate_ranges():
    with pytest.raises(ValueError):
        ADCStage.Params(bits=0)
    with pytest.raises(ValueError):
        ADCStage.Params(bits=25)
    with pytest.raises(ValueError):
        ADCStage.Params(system_gain_dn_per_e=-1.0)


def test_stage_read_noise_does_not_tell_35_electrons_from_dark_at_4_bits():
    # The case: 4 bits, full well 10 000 e-, so 1 LSB = 10 000 / 14 = 714 e-;
    # read noise 2 e-. A dark pixel and one with 35 e- (0.05 LSB) must give the same codes.
    stage = ADCStage(ADCStage.Params(bits=4))
    info = stage.setup(_electrons((100, 100), full_well=10_000.0))
    assert 1 / info.attrs["system_gain_dn_per_e"] == pytest.approx(10_000 / 14)
    read = 2.0 * np.random.default_rng(9).standard_normal((2, 100, 100)).astype(np.float32)
    batch = Batch(np.arange(2))
    dark = stage.process(read, batch)
    lit = stage.process(read + np.float32(35.0), batch)
    assert np.array_equal(np.bincount(dark.ravel()), np.bincount(lit.ravel()))
    assert set(dark.ravel().tolist()) == {info.attrs["black_level_dn"]}
