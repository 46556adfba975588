"""ADC non-idealities (noise, offset, DNL, missing codes) against their equations.

Every statistical bound is derived from the sample size: a mean of n values with
variance v is within 5 sqrt(v / n) of its expectation, a variance within
5 v sqrt(2 / (n - 1)) (normal approximation; 5 sigma: a false failure once in ~3.5e6).
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from scipy import stats

from pipeline.stage import Batch, SignalInfo, StageError, Unit
from sensors.adc import DNL_PATTERN_KEY, ADCStage
from sensors.curves import quantize, transition_levels

FULL_WELL = 10_000.0


def _electrons(shape=(64, 64)) -> SignalInfo:
    return SignalInfo(Unit.ELECTRONS, shape, np.float32, {"full_well_e": FULL_WELL})


def _stage(shape=(64, 64), **params) -> tuple[ADCStage, SignalInfo]:
    stage = ADCStage(ADCStage.Params(**params), seed=3, index=3)
    return stage, stage.setup(_electrons(shape))


def _lsb_e(info: SignalInfo) -> float:
    """Electrons per LSB of the comparators' input (linear curve)."""
    return 1.0 / info.attrs["system_gain_dn_per_e"]


# -- temporal noise --------------------------------------------------------------------
@pytest.mark.parametrize("noise_lsb", [0.3, 1.0, 2.5])
def test_adc_noise_adds_its_variance_to_the_codes(noise_lsb):
    # A ramp over many codes: the quantisation error is uniform, var = 1/12 LSB², and is
    # independent of the Gaussian noise, so var(code - level) = noise² + 1/12 (Widrow).
    stage, info = _stage(bits=10, noise_lsb=noise_lsb)
    lsb = _lsb_e(info)
    n_img, h, w = 4, 64, 64
    level_lsb = np.linspace(100.0, 900.0, n_img * h * w).reshape(n_img, h, w)
    codes = stage.process((level_lsb * lsb).astype(np.float32), Batch(np.arange(n_img)))
    signal_codes = level_lsb + info.attrs["black_level_dn"]
    # float32 electrons: the level is known to ~1e-4 LSB, negligible here
    resid = codes.astype(np.float64) - signal_codes
    n = resid.size
    expected = noise_lsb**2 + 1 / 12
    assert resid.var() == pytest.approx(expected, abs=5 * expected * np.sqrt(2 / (n - 1)))
    assert resid.mean() == pytest.approx(0.0, abs=5 * np.sqrt(expected / n))


def test_adc_noise_on_a_constant_input_is_gaussian_around_the_code_centre():
    # a constant input at a code centre: code = B + k with P(k) = Φ((k+½)/σ) - Φ((k-½)/σ)
    sigma = 0.8
    stage, info = _stage(bits=12, noise_lsb=sigma)
    black = info.attrs["black_level_dn"]
    n_img = 8
    codes = stage.process(np.zeros((n_img, 64, 64), np.float32), Batch(np.arange(n_img)))
    k = np.arange(-6, 7)
    p = stats.norm.cdf((k + 0.5) / sigma) - stats.norm.cdf((k - 0.5) / sigma)
    observed = np.array([(codes == black + j).sum() for j in k])
    result = stats.chisquare(observed, p / p.sum() * observed.sum())
    assert result.pvalue > 1e-6


def test_adc_noise_is_keyed_per_image_not_per_batch():
    stage, _ = _stage(shape=(8, 8), bits=8, noise_lsb=1.0)
    x = np.full((4, 8, 8), 2000.0, np.float32)
    whole = stage.process(x, Batch(np.arange(4)))
    parts = [stage.process(x[i : i + 1], Batch(np.array([i]))) for i in range(4)]
    assert np.array_equal(whole, np.concatenate(parts))
    assert not np.array_equal(whole[0], whole[1])  # new noise for every image


# -- offset ----------------------------------------------------------------------------
@pytest.mark.parametrize("offset_lsb", [-2.0, 0.25, 3.5])
def test_adc_offset_shifts_the_mean_code(offset_lsb):
    # with noise spreading the input over many codes, E[code] = level + B + offset exactly
    stage, info = _stage(bits=12, noise_lsb=1.5, offset_lsb=offset_lsb)
    lsb = _lsb_e(info)
    n_img = 4
    x = np.full((n_img, 64, 64), 300.0 * lsb, np.float32)
    codes = stage.process(x, Batch(np.arange(n_img))).astype(np.float64)
    level = float(x.flat[0]) / lsb + info.attrs["black_level_dn"]
    var = 1.5**2 + 1 / 12
    assert codes.mean() - level == pytest.approx(offset_lsb, abs=5 * np.sqrt(var / codes.size))


def test_offset_without_noise_moves_every_transition():
    # noise-free: code = floor(level + B + 1/2 + offset)
    stage, info = _stage(shape=(1000,), bits=8, offset_lsb=0.3)
    lsb = _lsb_e(info)
    level = np.linspace(-3, 200, 1000)
    codes = stage.process((level * lsb).astype(np.float64)[None], Batch(np.arange(1)))[0]
    black = info.attrs["black_level_dn"]
    expected = np.clip(np.floor(level + black + 0.5 + 0.3), 0, 255)
    # a level within float32 round-off of a transition may go either way
    near_edge = np.abs((level + black + 0.8) - np.round(level + black + 0.8)) < 1e-4
    assert np.array_equal(codes[~near_edge], expected[~near_edge])


# -- differential non-linearity --------------------------------------------------------
def test_transition_levels_are_the_cumulative_widths_rescaled_to_full_scale():
    bits = 3  # 7 transitions, 6 inner codes
    widths = np.array([1.5, 0.5, 1.0, -0.2, 2.0, 1.0])
    t = transition_levels(widths, bits)
    w = np.maximum(widths, 0) * 6 / np.maximum(widths, 0).sum()
    assert t == pytest.approx(np.concatenate([[1.0], 1.0 + np.cumsum(w)]))
    assert t[0] == 1.0 and t[-1] == pytest.approx(7.0)  # full scale kept
    dnl = np.diff(t) - 1
    inl = t - np.arange(1, 8)
    assert inl[1:] == pytest.approx(np.cumsum(dnl))  # INL = cumulative DNL
    assert np.array_equal(transition_levels(None, bits), np.arange(1.0, 8.0))
    assert np.array_equal(transition_levels(np.ones(6), bits), np.arange(1.0, 8.0))
    # ideal transitions reproduce the ideal quantiser code for code, every curve
    v = np.linspace(-0.2, 1.2, 5001)
    for curve in ("linear", "log", "sqrt"):
        ideal = quantize(v, bits, curve=curve, black_level=1)
        assert np.array_equal(
            quantize(v, bits, curve=curve, black_level=1, transitions=np.arange(1.0, 8.0)),
            ideal,
        )


def test_missing_codes_appear_exactly_where_widths_are_not_positive():
    bits = 5
    widths = np.ones(30)
    missing = [3, 11, 12, 20]  # inner code k has widths[k - 1]
    widths[[k - 1 for k in missing]] = [0.0, -0.5, 0.0, -1.0]
    stage, info = _stage(shape=(20_000,), bits=bits, black_level_dn=0, dnl_table=widths.tolist())
    lsb = _lsb_e(info)
    ramp = np.linspace(-1.0, 33.0, 20_000) * lsb
    codes = stage.process(ramp[None], Batch(np.arange(1)))[0]
    assert sorted(set(range(32)) - set(codes.tolist())) == missing


def test_dnl_is_recovered_from_a_ramps_code_histogram():
    # A uniform ramp over the comparators' input: code k's count is n_per_lsb * w_k, a
    # multinomial count, so the estimated width has sd sqrt(w_k / n_per_lsb).
    bits, rms = 8, 0.2
    n = 400_000
    stage, info = _stage(shape=(n,), bits=bits, black_level_dn=0, dnl_rms_lsb=rms)
    lsb = _lsb_e(info)
    top = (1 << bits) - 1
    # a uniform random ramp from 0.5 LSB to top + 0.5: the comparators' input spans [1, top + 1)
    level = np.random.default_rng(7).uniform(0.5, top + 0.5, n)
    codes = stage.process((level * lsb)[None], Batch(np.arange(1)))[0]
    counts = np.bincount(codes, minlength=top + 1)
    n_per_lsb = n / top
    width_est = counts[1:top] / n_per_lsb
    rng = stage.pattern_rng(DNL_PATTERN_KEY)
    drawn = 1.0 + rms * rng.standard_normal(top - 1)
    true = np.diff(transition_levels(drawn, bits))
    sd = np.sqrt(np.maximum(true, 1e-3) / n_per_lsb)
    assert np.all(np.abs(width_est - true) < 5 * sd)
    # the measured DNL's rms: the configured one plus the counts' sampling noise
    # (variance 1 / n_per_lsb); the sd of an sd of m = 253 draws is about rms / sqrt(2m)
    dnl = width_est - 1
    expected = np.sqrt(rms**2 + 1 / n_per_lsb)
    assert dnl.std() == pytest.approx(expected, abs=5 * expected / np.sqrt(2 * (top - 1)))


def test_dnl_is_fixed_per_sensor_seed():
    def codes(sensor_seed):
        stage = ADCStage(ADCStage.Params(bits=6, dnl_rms_lsb=0.4), seed=1, sensor_seed=sensor_seed)
        info = stage.setup(_electrons((5000,)))
        ramp = np.linspace(0, 60, 5000)[None] / info.attrs["system_gain_dn_per_e"]
        return stage.process(ramp, Batch(np.arange(1)))

    assert np.array_equal(codes(5), codes(5))
    assert not np.array_equal(codes(5), codes(6))


def test_defaults_are_an_ideal_adc():
    stage, info = _stage(shape=(1000,), bits=10)
    ramp = np.linspace(-10, 1100, 1000)[None] / info.attrs["system_gain_dn_per_e"]
    out = stage.process(ramp, Batch(np.arange(1)))
    assert np.array_equal(out, quantize(ramp, **info.attrs["adc_transfer"]))


@pytest.mark.parametrize(
    ("params", "key"),
    [
        ({"dnl_table": [1.0, 1.0]}, "dnl_table"),
        ({"bits": 2, "dnl_table": [0.0, -1.0]}, "dnl_table"),
        ({"bits": 2, "dnl_table": [1.0, 1.0], "dnl_rms_lsb": 0.1}, "dnl_table"),
        ({"curve": "table", "thresholds": [0.5], "dnl_table": [1.0, 1.0]}, "dnl_table"),
    ],
)
def test_bad_nonideal_parameters_name_the_key(params, key):
    with pytest.raises(StageError) as err:
        ADCStage(ADCStage.Params(**params)).setup(_electrons((4,)))
    assert err.value.key == key


def test_describe_says_what_each_nonideality_models():
    docs = {row["name"]: row for row in ADCStage.describe()}
    assert "comparator" in docs["noise_lsb"]["doc"] and docs["noise_lsb"]["unit"] == "LSB rms"
    assert "offset" in docs["offset_lsb"]["doc"] and docs["offset_lsb"]["unit"] == "LSB"
    assert "missing codes" in docs["dnl_rms_lsb"]["doc"]
    assert "sensor seed" in docs["dnl_rms_lsb"]["doc"]
    assert all(docs[k]["default"] in (0.0, None) for k in ("noise_lsb", "offset_lsb"))


def test_bad_dnl_table_in_a_config_is_one_line_naming_file_and_key(tmp_path):
    from conftest import ROOT, sensorlab

    config = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    adc = next(s for s in config["sensor"] if s["stage"] == "adc")
    adc["dnl_table"] = [1.0, 1.0]  # a 10-bit ADC has 1022 inner codes
    config["run"] = {**config.get("run", {}), "out": str(tmp_path / "runs")}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    proc = sensorlab("run", path, cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "bad.yaml" in lines[0] and "dnl_table" in lines[0] and "1022 inner codes" in lines[0]
    assert not (tmp_path / "runs").exists() or list((tmp_path / "runs").iterdir()) == []
