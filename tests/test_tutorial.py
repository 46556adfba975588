"""docs/tutorial.md is executed: every `>>>` example must print exactly what the page shows."""

from __future__ import annotations

import doctest
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / "docs" / "tutorial.md"

# The page holds 101 examples; fewer than this means it was emptied or cut short.
MIN_EXAMPLES = 95


NUMPY_DEFAULT_PRINT = dict(
    edgeitems=3,
    threshold=1000,
    floatmode="maxprec",
    precision=8,
    suppress=False,
    linewidth=75,
    nanstr="nan",
    infstr="inf",
    sign="-",
    formatter=None,
    legacy=False,
)


def test_tutorial_examples_pass(monkeypatch) -> None:
    monkeypatch.chdir(ROOT)  # the page reads configs/models/rgb32.yaml from the repo root
    # start from NumPy's default print options (another library may have changed them, e.g.
    # sign=" "); the page then sets its own, and they are restored for the other tests
    with np.printoptions(**NUMPY_DEFAULT_PRINT):
        failed, attempted = doctest.testfile(
            str(TUTORIAL),
            module_relative=False,
            optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS,
            encoding="utf-8",
            verbose=False,
        )
    assert failed == 0, f"{failed} of {attempted} tutorial examples failed (see output above)"
    assert attempted >= MIN_EXAMPLES, f"only {attempted} examples in {TUTORIAL.name}"


def test_tutorial_names_the_shipped_weights_and_they_exist() -> None:
    text = " ".join(TUTORIAL.read_text(encoding="utf-8").split())
    assert "No trained weights are shipped" not in text
    assert "not part of this checkout" not in text
    assert "data/models/procedural32-default/" in text
    for name in ("model.yaml", "model.npz"):
        assert (ROOT / "data" / "models" / "procedural32-default" / name).is_file()
