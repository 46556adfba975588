"""The table curve's ADC non-idealities (noise, offset, DNL) against their equations.

Definition (sensors.curves.quantize): in linear LSB (full_scale / 2**bits), the table ADC
gives ``code = #{c : 2**bits τ_c + INL_c <= 2**bits u + offset + noise}``, with τ the
nominal transition levels (the thresholds, mirrored below the black code).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from pipeline.stage import Batch, SignalInfo, Unit
from sensors.adc import ADCStage
from sensors.curves import curve_thresholds, expand, quantize, table_transitions, transition_levels

FULL_WELL = 10_000.0
GAIN = 0.05  # DN/e-: fixed so that linear and table stages share full_scale


def _stage(shape, **params) -> tuple[ADCStage, SignalInfo]:
    stage = ADCStage(ADCStage.Params(system_gain_dn_per_e=GAIN, **params), seed=3, index=3)
    info = SignalInfo(Unit.ELECTRONS, shape, np.float32, {"full_well_e": FULL_WELL})
    return stage, stage.setup(info)


def _linear_table(bits: int, black: int) -> list[float]:
    """The thresholds of the linear ADC: t_j = (j + 1/2) / 2**bits above the black code."""
    top = (1 << bits) - 1
    return ((np.arange(top - black) + 0.5) / (1 << bits)).tolist()


def test_table_transitions_mirror_the_thresholds_around_the_black_code():
    t = np.array([0.1, 0.3, 0.7])
    levels = table_transitions(t, 3, black_level=2)  # transitions c = 1 .. 7
    assert levels.tolist() == [-0.3, -0.1, 0.1, 0.3, 0.7, np.inf, np.inf]
    low = table_transitions(t, 3, black_level=6)
    assert low.tolist() == [-np.inf, -np.inf, -np.inf, -0.7, -0.3, -0.1, 0.1]


def test_gaussian_noise_at_the_thresholds_gives_the_normal_cdf_histogram():
    # a constant signal u between thresholds: P(code = B + j) = Φ((L_j+1 - a)/σ) − Φ((L_j - a)/σ)
    # in LSB, with L the thresholds and a = 2**bits u (IEEE 1241's transition-noise model)
    bits, sigma, black = 6, 1.3, 4
    t = np.array([0.5, 2.0, 3.0, 3.5, 6.0, 9.0, 14.0, 20.0]) / (1 << bits)
    stage, info = _stage(
        (64, 64),
        bits=bits,
        curve="table",
        thresholds=t.tolist(),
        black_level_dn=black,
        noise_lsb=sigma,
    )
    full_scale = info.attrs["adc_transfer"]["full_scale"]
    x = np.full((6, 64, 64), 3.2 / (1 << bits) * full_scale, np.float32)
    codes = stage.process(x, Batch(np.arange(6))).ravel()
    a = float(x.flat[0]) / full_scale * (1 << bits)
    edges = np.concatenate([[-np.inf], -t[::-1] * (1 << bits), t * (1 << bits), [np.inf]])
    black_index = t.size  # edges[k], edges[k + 1] bound code black - t.size + k
    p = np.diff(stats.norm.cdf((edges - a) / sigma))
    code_of = np.arange(p.size) + black - black_index
    keep = code_of >= 0  # codes below 0 clip to 0
    p_clipped = np.concatenate([[p[~keep].sum() + p[keep][0]], p[keep][1:]])
    observed = np.bincount(codes, minlength=(1 << bits))[: p_clipped.size]
    assert codes.max() < p_clipped.size
    big = p_clipped * codes.size > 5  # chi-square cells with enough expected counts
    expected = p_clipped[big] / p_clipped[big].sum() * observed[big].sum()
    assert stats.chisquare(observed[big], expected).pvalue > 1e-6


@pytest.mark.parametrize("delta_lsb", [-1.0, -0.25, 0.0, 0.4, 1.5])
def test_the_probability_of_the_upper_code_at_a_threshold_is_the_normal_cdf(delta_lsb):
    # signal δ LSB above threshold t_j: P(code >= B + j + 1) = Φ(δ / σ), a binomial count
    bits, sigma = 8, 0.6
    t = np.array([2.0, 5.0, 9.0, 14.0]) / (1 << bits)
    n = 40_000
    u = np.full(n, t[2] + delta_lsb / (1 << bits))
    noise = sigma * np.random.default_rng(11).standard_normal(n)
    codes = quantize(u, bits, curve="table", thresholds=t, black_level=3, offset_lsb=noise)
    p = stats.norm.cdf(delta_lsb / sigma)
    assert np.all((codes >= 3 + 2) & (codes <= 3 + 4))  # 3+ LSB from the other thresholds
    above = np.count_nonzero(codes >= 3 + 3)
    assert above / n == pytest.approx(p, abs=5 * np.sqrt(p * (1 - p) / n) + 1e-12)


def test_offset_moves_the_signal_by_that_many_linear_lsb():
    bits, offset = 5, 0.75
    t = np.array([0.3, 1.1, 2.0, 4.5, 7.0]) / (1 << bits)
    u = np.random.default_rng(2).uniform(-0.3, 0.3, 5000)
    shifted = u + offset / (1 << bits)
    distance = np.min(np.abs(np.abs(shifted)[:, None] - t[None]), axis=1)
    ok = distance > 1e-9  # away from round-off at a threshold
    got = quantize(u, bits, curve="table", thresholds=t, black_level=6, offset_lsb=offset)
    want = quantize(shifted, bits, curve="table", thresholds=t, black_level=6)
    assert ok.mean() > 0.99 and np.array_equal(got[ok], want[ok])


def test_ideal_transitions_reproduce_the_ideal_table_path():
    bits, black = 4, 3
    t = np.array([0.02, 0.05, 0.11, 0.2, 0.33, 0.5, 0.8])
    u = np.random.default_rng(4).uniform(-0.3, 1.0, 20_000)
    ideal = quantize(u, bits, curve="table", thresholds=t, black_level=black)
    via_levels = quantize(
        u,
        bits,
        curve="table",
        thresholds=t,
        black_level=black,
        transitions=np.arange(1.0, 1 << bits),
    )
    assert np.array_equal(ideal, via_levels)


def test_dnl_moves_each_threshold_by_the_ladders_inl():
    bits, black = 4, 2
    widths = np.array([1.0, 1.5, 0.5, 1.0, 2.0, 0.2, 1.0, 1.0, 1.3, 0.5, 1.0, 1.0, 1.0, 1.0])
    t_lsb = np.array([0.4, 1.0, 2.5, 3.0, 5.0, 6.5, 9.0, 10.0])  # thresholds in LSB
    stage, info = _stage(
        (40_001,),
        bits=bits,
        curve="table",
        thresholds=(t_lsb / (1 << bits)).tolist(),
        black_level_dn=black,
        dnl_table=widths.tolist(),
    )
    full_scale = info.attrs["adc_transfer"]["full_scale"]
    a = np.linspace(0.0, 12.0, 40_001)  # LSB
    codes = stage.process((a / (1 << bits) * full_scale)[None], Batch(np.arange(1)))[0]
    inl = transition_levels(widths, bits) - np.arange(1, 1 << bits)
    moved = t_lsb + inl[black : black + t_lsb.size]  # threshold j is transition B + j + 1
    expected = black + np.searchsorted(np.sort(moved), a, side="right")
    near = np.min(np.abs(a[:, None] - moved[None]), axis=1) < 1e-6
    assert np.array_equal(codes[~near], expected[~near])


@pytest.mark.parametrize(
    "params",
    [
        {"noise_lsb": 0.7},
        {"offset_lsb": -0.4, "noise_lsb": 0.3},
        {"dnl_rms_lsb": 0.3, "noise_lsb": 0.5},
    ],
    ids=["noise", "offset", "dnl"],
)
def test_a_table_of_the_linear_adcs_thresholds_gives_its_codes_with_every_nonideality(params):
    # the same non-idealities (same seed, same DNL draw) as a linear ADC: the table that
    # holds the linear ADC's thresholds gives the linear ADC's codes
    bits, black = 6, 4
    n_img, shape = 3, (50, 40)
    linear, _ = _stage(shape, bits=bits, black_level_dn=black, **params)
    table, _ = _stage(
        shape,
        bits=bits,
        black_level_dn=black,
        curve="table",
        thresholds=_linear_table(bits, black),
        **params,
    )
    level = np.random.default_rng(5).uniform(-5.0, 64.0, (n_img, *shape)) / GAIN
    batch = Batch(np.arange(n_img))
    a, b = linear.process(level, batch), table.process(level, batch)
    # the two compute a code's level with different round-off: a tie may go either way
    assert np.count_nonzero(a != b) <= 2
    assert len(np.unique(a)) > 50


def test_table_defaults_keep_the_ideal_codes():
    t = _linear_table(4, 1)
    _, info = _stage((8,), bits=4, curve="table", thresholds=t, black_level_dn=1)
    assert info.attrs["adc_transfer"]["thresholds"] == tuple(t)
    stage, _ = _stage((200,), bits=4, curve="table", thresholds=t, black_level_dn=1)
    x = np.linspace(-50, 400, 200)[None]
    got = stage.process(x, Batch(np.arange(1)))
    want = quantize(x, **info.attrs["adc_transfer"] | {"thresholds": np.array(t)})
    assert np.array_equal(got, want)


@pytest.mark.parametrize("curve", ["linear", "log", "sqrt"])
@pytest.mark.parametrize(("bits", "black"), [(2, 0), (4, 1), (8, 16), (10, 64)])
def test_curve_thresholds_reproduce_the_curves_codes(curve, bits, black):
    t = curve_thresholds(bits, curve, black_level=black)
    assert t.size == (1 << bits) - 1 - black and np.all(np.diff(t) > 0)
    # uniform in the companded domain: every code, the narrow ones of log and sqrt too
    y = np.random.default_rng(bits).uniform(-(black + 1) / (1 << bits), 1.01, 50_000)
    u = expand(y, curve)
    want = quantize(u, bits, curve=curve, black_level=black)
    got = quantize(u, bits, curve="table", thresholds=t, black_level=black)
    # the two compare f(u) and u against f⁻¹ of the same level: a tie may go either way
    assert np.count_nonzero(got != want) <= 2
    assert np.array_equal(np.unique(want), np.arange(1 << bits))  # every code tested
