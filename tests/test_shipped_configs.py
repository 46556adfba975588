"""Every YAML file in configs/ validates: run and training configs, sweeps (every cell),
ADC-design files and model graphs. A config that no longer matches the code fails here,
not an hour into a study."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import ROOT

from pipeline.cnn.graph import load_graph
from pipeline.config import load_config
from pipeline.design.spec import load_design
from pipeline.registry import Registry
from pipeline.sweep.check import check_plan, load_cell
from pipeline.sweep.spec import load_plan

CONFIGS = ROOT / "configs"
FILES = sorted(p.relative_to(CONFIGS).as_posix() for p in CONFIGS.rglob("*.yaml"))


def _kind(path: Path) -> str:
    if path.parent.name == "models":
        return "graph"
    raw = yaml.safe_load(path.read_text())
    if "lights" in raw:
        return "design"
    if "base" in raw and ("axes" in raw or "cells" in raw):
        return "sweep"
    return "run"


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry()


@pytest.mark.parametrize("name", FILES)
def test_shipped_config_validates(name, registry, tmp_path):
    path = CONFIGS / name
    kind = _kind(path)
    if kind == "graph":
        load_graph(path)
    elif kind == "design":
        load_design(path, out=tmp_path)
    elif kind == "sweep":
        plan = load_plan(path, out=tmp_path)
        for cell in plan.cells:  # every cell's config, parameters of every stage included
            load_cell(plan.cell_raw(cell), plan.base_file, plan.base_dir, registry)
    else:
        load_config(path, registry=registry)


def test_the_spectral_cfa_study_pairs_each_sensor_with_a_model_that_fits_it(registry, tmp_path):
    """configs/spectral-cfa.yaml: every listed sensor builds with its model (the chain's
    output shape meets the model's input), checked at one grid point."""
    raw = yaml.safe_load((CONFIGS / "spectral-cfa.yaml").read_text())
    raw["axes"] = {key: values[:1] for key, values in raw["axes"].items()}
    plan = load_plan(raw, out=tmp_path, base_dir=CONFIGS)
    checked = check_plan(plan, registry)
    assert len(checked) == len(raw["cells"]) == 7
    assert not list(tmp_path.iterdir())  # checking writes nothing
