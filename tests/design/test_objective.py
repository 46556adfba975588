"""The back end rebuilt per candidate: a table that copies a fixed curve scores the same."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ROOT

from pipeline.config import load_config
from pipeline.design.front import adc_position, front_images
from pipeline.design.initial import curve_thresholds
from pipeline.design.objective import Backend, Score, fine_tuned_model, score, sensor_images
from pipeline.runner import build_chain, load_config_model, open_config_dataset
from pipeline.stage import Batch
from sensors.curves import quantize


@pytest.fixture(scope="module")
def setup():
    loaded = load_config(
        ROOT / "configs" / "default.yaml",
        {"dataset.n": 40, "sensor.adc.bits": 4, "sensor.scene.mean_photons": 200},
    )
    chain = build_chain(loaded, open_config_dataset(loaded, "val").info())
    backend = Backend(chain, adc_position(chain, loaded.file), loaded.file)
    front = front_images(loaded, chain, "val", 40, 16)
    return loaded, backend, front


def _copy(backend, curve):
    fixed = backend.fixed(curve)
    return fixed, backend.table(curve_thresholds(fixed.infos[1].attrs["adc_transfer"], 10_000.0))


@pytest.mark.parametrize("curve", ["linear", "log", "sqrt"])
def test_a_table_copying_a_fixed_curve_gives_its_codes(setup, curve):
    _, backend, front = setup
    fixed, table = _copy(backend, curve)
    codes_fixed = fixed.apply(front.signal, Batch(front.keys), upto=1)[0]
    codes_table = table.apply(front.signal, Batch(front.keys), upto=1)[0]
    np.testing.assert_array_equal(codes_table, codes_fixed)


def test_a_table_copying_the_linear_curve_gives_its_score(setup):
    # linear code centres are the table's interval midpoints, which the raw stage maps a
    # table's codes to (log and sqrt codes go to the curve's own centres: other images);
    # the same right answers, confidences equal up to float rounding
    _, backend, front = setup
    fixed, table = _copy(backend, "linear")
    a = score(table, front.signal, front.labels, front.keys)
    b = score(fixed, front.signal, front.labels, front.keys)
    assert a.correct == b.correct
    assert a.mean_p_true == pytest.approx(b.mean_p_true, rel=1e-4)


def test_the_table_spans_the_full_well_and_every_code_above_black(setup):
    _, backend, _ = setup
    assert (backend.bits, backend.black_level_dn, backend.n_thresholds) == (4, 1, 14)
    t = np.linspace(0.05, 0.95, backend.n_thresholds)
    adc = backend.table(t).stages[0]
    signal = np.array([0.0, 0.5 * 10_000 * 0.05, 0.95 * 10_000 + 1.0, 10_000.0])
    expected = quantize(signal, 4, 10_000.0, "table", thresholds=t, black_level=1)
    np.testing.assert_array_equal(adc.process(signal[None], Batch(np.arange(1)))[0], expected)
    assert expected.tolist() == [1, 1, 15, 15]


def test_one_more_right_answer_always_beats_more_confidence():
    assert Score(10, 20, 0.0).fitness > Score(9, 20, 1.0).fitness
    assert Score(9, 20, 0.6).fitness > Score(9, 20, 0.5).fitness


def test_fine_tuning_trains_a_copy_and_leaves_the_base_model_alone(setup):
    loaded, backend, front = setup
    back = backend.fixed("log")
    base = load_config_model(loaded)
    before = {k: v.copy() for k, v in base.params.items()}
    tuned = fine_tuned_model(back, front, loaded.config.train, base, epochs=1, lr=1e-3)
    assert any(not np.array_equal(tuned.params[k], before[k]) for k in before)
    fresh = load_config_model(loaded)
    assert all(np.array_equal(fresh.params[k], before[k]) for k in before)
    x = sensor_images(back, front.signal, front.keys)
    assert x.shape == (40, 3, 32, 32) and x.dtype == np.float32


@pytest.mark.parametrize("full_scale_e", [37.0, 500.0])
def test_a_fixed_curve_at_a_chosen_full_scale_codes_by_the_linear_equation(setup, full_scale_e):
    # code = floor(2**N · s / FS + b + 1/2), clipped to [0, 2**N - 1]: the ADC clips at FS
    _, backend, front = setup
    back = backend.fixed("linear", full_scale_e)
    transfer = back.infos[1].attrs["adc_transfer"]
    assert transfer["full_scale"] == pytest.approx(full_scale_e, rel=1e-12)
    codes = back.apply(front.signal, Batch(front.keys), upto=1)[0]
    s = front.signal.astype(np.float64)
    want = np.clip(np.floor(16 * s / full_scale_e + backend.black_level_dn + 0.5), 0, 15)
    np.testing.assert_array_equal(codes, want)
    assert np.count_nonzero(codes == 15) > 0  # some pixels clip at a full scale this low


@pytest.mark.parametrize("curve", ["linear", "log", "sqrt"])
def test_a_table_copying_a_range_matched_curve_gives_its_codes(setup, curve):
    # the search's ranged starts: the curve at full scale 300 e- as thresholds of a table
    # whose full scale is the full well
    _, backend, front = setup
    fixed = backend.fixed(curve, 300.0)
    t = curve_thresholds(fixed.infos[1].attrs["adc_transfer"], backend.full_well_e)
    assert t[-1] < 300.0 / backend.full_well_e
    table = backend.table(t)
    codes_fixed = fixed.apply(front.signal, Batch(front.keys), upto=1)[0]
    np.testing.assert_array_equal(
        table.apply(front.signal, Batch(front.keys), upto=1)[0], codes_fixed
    )
