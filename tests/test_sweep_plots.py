"""The sweep's figures: a panel per light level, every grid row (or a stated cap)."""

from __future__ import annotations

import itertools

from pipeline.sweep.plots import curve_figure, panel_axis, shown_rows
from pipeline.sweep.spec import PlotOptions

AXES = ["sensor.scene.mean_photons", "sensor.adc.curve", "sensor.adc.bits"]


def _rows() -> list[dict]:
    rows = []
    for photons, curve, bits in itertools.product([2000, 20, 200], ["linear", "log"], [1, 4, 8]):
        acc = bits / 10
        rows.append(
            {
                AXES[0]: photons,
                AXES[1]: curve,
                AXES[2]: bits,
                "accuracy": acc,
                "accuracy_lo": acc - 0.05,
                "accuracy_hi": acc + 0.05,
            }
        )
    return rows


def test_the_light_level_axis_gets_the_panels() -> None:
    assert panel_axis(AXES, "sensor.adc.bits") == "sensor.scene.mean_photons"
    assert panel_axis(["sensor[2].illuminance_lux", "bits"], "bits") == "sensor[2].illuminance_lux"
    assert panel_axis(["sensor.adc.curve", "sensor.adc.bits"], "sensor.adc.bits") is None


def test_accuracy_figure_has_one_panel_per_light_level_with_a_band_per_curve() -> None:
    band = ("accuracy_lo", "accuracy_hi")
    fig = curve_figure(_rows(), AXES, AXES[2], "accuracy", band, "accuracy", "t")
    panels = [ax for ax in fig.axes if ax.lines]
    assert [ax.get_title() for ax in panels] == [
        "mean_photons = 20",
        "mean_photons = 200",
        "mean_photons = 2000",
    ]
    for ax in panels:
        assert [line.get_label() for line in ax.lines] == ["curve=linear", "curve=log"]
        assert len(ax.collections) == 2  # one Wilson band per curve
        assert ax.lines[0].get_xdata().tolist() == [1.0, 4.0, 8.0]


def test_without_a_light_axis_one_panel_holds_every_curve() -> None:
    rows = [r for r in _rows() if r[AXES[0]] == 20]
    for r in rows:
        del r[AXES[0]]
    fig = curve_figure(rows, AXES[1:], AXES[2], "accuracy", None, "accuracy", "t")
    assert len([ax for ax in fig.axes if ax.lines]) == 1


def test_the_sample_grid_keeps_every_row_unless_capped_and_then_says_so() -> None:
    assert PlotOptions().max_rows is None
    groups = [(f"row {i}", []) for i in range(9)]
    assert shown_rows(groups, None) == (groups, "")
    shown, note = shown_rows(groups, 8)
    assert shown == groups[:8] and note == " (first 8 of 9 rows: plot.max_rows)"
