"""Starting tables: the fixed curves' own decision levels, and the adc module's fits."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.design.initial import curve_thresholds, fitted_thresholds, initial_tables
from sensors.adc import lloyd_max
from sensors.curves import expand, quantize


@pytest.mark.parametrize("curve", ["linear", "log", "sqrt"])
@pytest.mark.parametrize(("bits", "black"), [(2, 0), (4, 1), (6, 4)])
def test_a_curve_table_quantises_exactly_as_the_curve(curve, bits, black):
    # the adc stage's default gain: the full well sits at the centre of the top code
    full_well = 10_000.0
    top = (1 << bits) - 1
    y_top = (top - black) / (1 << bits)
    full_scale = full_well / (y_top if curve == "linear" else float(expand(y_top, curve)))
    transfer = {
        "bits": bits,
        "full_scale": full_scale,
        "curve": curve,
        "black_level": black,
        "log_compression": 255.0,
    }
    t = curve_thresholds(transfer, full_well)
    assert t.size == top - black
    signal = np.random.default_rng(bits).uniform(-50, full_well * 1.1, 200_000)
    fixed = quantize(signal, bits, full_scale, curve, black_level=black)
    table = quantize(signal, bits, full_well, "table", thresholds=t, black_level=black)
    np.testing.assert_array_equal(table, fixed)


def test_fitted_tables_are_the_adc_modules_fits_of_the_magnitudes():
    x = np.random.default_rng(1).normal(0, 0.1, 50_000)
    t = fitted_thresholds("lloyd_max", x, 4, 14)
    np.testing.assert_array_equal(t, lloyd_max(np.abs(x), 4, n_cells=15)[0])
    q = fitted_thresholds("equal_probability", x, 4, 14)
    np.testing.assert_allclose(q, np.quantile(np.abs(x), np.arange(1, 15) / 15))


def test_a_fit_that_cannot_be_made_is_skipped_with_the_reason():
    tables, skipped = initial_tables(
        ["lloyd_max", "equal_probability"],
        {},
        np.zeros(100),
        bits=3,
        n_thresholds=7,
        full_well_e=1.0,
    )
    assert tables == {}
    assert "distinct" in skipped["lloyd_max"] and "distinct" in skipped["equal_probability"]
