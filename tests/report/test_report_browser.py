"""The reports in a real browser: headless Chromium opens each from file://.

Each page loads with no console error, every <img> is decoded (naturalWidth > 0), and
a screenshot is kept as a test artefact (its path is printed; run with -s to see it).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.report import write_report
from report.chromium import Browser, chromium_or_skip

KINDS = ("run_folder", "sweep_folder", "train_folder", "characterize_folder")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    executable = chromium_or_skip()
    b = Browser(executable, tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield b
    finally:
        b.close()


@pytest.mark.parametrize("kind", KINDS)
def test_report_opens_in_chromium(
    kind: str, browser: Browser, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    folder = request.getfixturevalue(kind)
    report = write_report(folder)
    browser.open(report.resolve().as_uri())
    assert browser.errors() == []
    images = browser.evaluate(
        "Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])"
    )
    assert images, "the report shows no image"
    undecoded = [alt for alt, complete, width in images if not complete or width <= 0]
    assert undecoded == []
    assert browser.evaluate("document.querySelectorAll('script[src], link[href]').length") == 0
    shot = browser.screenshot(tmp_path / f"{kind}-report.png")
    print(f"screenshot of the {kind} report: {shot}")
    assert shot.stat().st_size > 0


def test_sweep_table_sorts_by_a_clicked_column(sweep_folder: Path, browser: Browser) -> None:
    browser.open(write_report(sweep_folder).resolve().as_uri())
    column = browser.evaluate(
        "Array.from(document.querySelectorAll('#cells th')).findIndex("
        "th => th.textContent === 'sensor.adc.bits')"
    )
    values = (
        f"Array.from(document.querySelectorAll('#cells tbody tr'))"
        f".map(r => Number(r.cells[{column}].textContent))"
    )
    header = f"document.querySelectorAll('#cells th')[{column}]"
    browser.evaluate(f"{header}.click()")
    ascending = browser.evaluate(values)
    browser.evaluate(f"{header}.click()")
    descending = browser.evaluate(values)
    assert ascending == sorted(ascending) and ascending[0] < ascending[-1]
    assert descending == sorted(ascending, reverse=True)
    assert browser.errors() == []
