"""report.html: the kind of folder, what each page holds, and self-containment."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import UserError
from pipeline.report import REPORT_HTML, folder_kind, write_report
from pipeline.report.histograms import channel_values
from pipeline.report.render import table_text
from pipeline.report.sweep import snr_table


def _links(html: str) -> list[str]:
    """Every src/href value of the page."""
    return re.findall(r'(?:src|href)="([^"]*)"', html)


@pytest.mark.parametrize(
    ("fixture", "kind"),
    [
        ("run_folder", "run"),
        ("sweep_folder", "sweep"),
        ("train_folder", "train"),
        ("characterize_folder", "characterize"),
    ],
)
def test_each_kind_of_folder_gets_a_self_contained_page(
    fixture: str, kind: str, request: pytest.FixtureRequest
) -> None:
    folder = request.getfixturevalue(fixture)
    assert folder_kind(folder) == kind
    path = write_report(folder)
    assert path == folder / REPORT_HTML
    html = path.read_text(encoding="utf-8")
    links = _links(html)
    assert links and all(link.startswith("data:image/png;base64,") for link in links)
    assert "http://" not in html and "https://" not in html
    assert not list(folder.glob(f".{REPORT_HTML}.tmp-*"))


def test_a_folder_that_is_no_result_is_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a sensorlab result folder") as err:
        folder_kind(tmp_path)
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UserError, match="no such folder"):
        write_report(tmp_path / "missing")


def test_run_page_has_samples_confusion_histograms_and_config(run_folder: Path) -> None:
    html = write_report(run_folder).read_text(encoding="utf-8")
    assert 'alt="samples through every stage"' in html
    assert 'alt="confusion matrix"' in html
    assert 'alt="DN histogram of adc"' in html
    assert "mean_photons: 2000" in html  # the resolved config
    assert "accuracy" in html


def test_sweep_page_has_figures_snr_table_and_every_cell(sweep_folder: Path) -> None:
    html = write_report(sweep_folder).read_text(encoding="utf-8")
    for name in ("accuracy.png", "snr.png", "samples_grid.png"):
        assert f'alt="{name}"' in html
    rows = re.findall(r"<tr><td data-value=\"(c\d{3}-[^\"]+)\"", html)
    assert len(rows) == 8
    assert "SNR of the raw image" in html


def test_train_page_has_curves_and_confusion(train_folder: Path) -> None:
    html = write_report(train_folder).read_text(encoding="utf-8")
    assert 'alt="training curves"' in html and 'alt="confusion matrix"' in html
    assert "0.9925" in html  # the shipped model's validation accuracy


def test_characterize_page_has_ptc_snr_and_headline(characterize_folder: Path) -> None:
    html = write_report(characterize_folder).read_text(encoding="utf-8")
    assert 'alt="photon-transfer curve"' in html and 'alt="SNR curve"' in html
    assert "system gain K [DN/e⁻]" in html


def test_mosaic_values_split_by_filter_colour() -> None:
    x = np.arange(2 * 4 * 4).reshape(2, 4, 4)
    parts = channel_values(x, {"cfa_tile": [["R", "G"], ["G", "B"]]})
    assert sorted(parts) == ["B", "G", "R"]
    np.testing.assert_array_equal(np.sort(parts["R"]), np.sort(x[:, ::2, ::2].ravel()))
    assert parts["G"].size == 2 * parts["R"].size == 2 * parts["B"].size
    planes = channel_values(np.zeros((1, 2, 2, 3)), {})
    assert list(planes) == ["R", "G", "B"]


def test_snr_table_puts_x_across_and_other_axes_down() -> None:
    rows = [
        {"light": "20", "bits": "4", "snr_db": "3.14159"},
        {"light": "20", "bits": "2", "snr_db": "1.5"},
        {"light": "200", "bits": "2", "snr_db": ""},
    ]
    table = snr_table(rows, ["light", "bits"], "bits")
    assert table["xs"] == ["2", "4"]
    assert table["rows"] == [("light=20", ["1.50", "3.14"]), ("light=200", ["", ""])]


def test_table_text_rounds_decimals_only() -> None:
    assert table_text("0.47088818221") == "0.4709"
    assert table_text("12") == "12"
    assert table_text("linear") == "linear"
