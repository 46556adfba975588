"""sensors/: stage modules do not import each other; what they share lives in leaf modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SENSORS = Path(__file__).resolve().parents[2] / "sensors"
STAGE_MODULES = ("scene", "optics", "photodetector", "adc", "raw")


def _sensors_imports(path: Path) -> set[str]:
    """The ``sensors.*`` modules that a file imports, at any depth (lazy imports too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {n for n in names if n.startswith("sensors.")}
    return found


@pytest.mark.parametrize("module", STAGE_MODULES)
def test_a_stage_module_imports_no_other_stage_module(module):
    others = {f"sensors.{m}" for m in STAGE_MODULES if m != module}
    assert _sensors_imports(SENSORS / f"{module}.py") & others == set()


def test_raw_shares_curves_and_colour_through_leaf_modules():
    assert {"sensors.curves", "sensors.colour"} <= _sensors_imports(SENSORS / "raw.py")
