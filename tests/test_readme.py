"""The README tells a newcomer what they would otherwise find only in ``sensorlab schema``:
every dataset reader and the ``digits`` extra, and what a report looks like and how to
open it."""

from __future__ import annotations

import re

from conftest import ROOT

from pipeline.datasets import dataset_kinds

README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_dataset_kind_has_a_row_with_an_example():
    for kind in dataset_kinds():
        row = next((line for line in README.splitlines() if line.startswith(f"| `{kind}` |")), "")
        assert f"{{kind: {kind}" in row, kind


def test_the_digits_extra_is_named_and_exists():
    assert "pip install '.[digits]'" in README
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r"^digits = \[", pyproject, re.M)


def test_the_report_screenshot_is_shown_and_says_how_to_open_a_report():
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README)
    assert "docs/report-screenshot.png" in images
    png = (ROOT / "docs" / "report-screenshot.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    assert "sensorlab report FOLDER" in README and "xdg-open runs/<run>/report.html" in README
