"""Entry-point discovery, `sensorlab stages` / `schema`, and interrupted CLI runs."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from conftest import ROOT, cli_env, sensorlab

from pipeline.errors import UserError
from pipeline.registry import Registry


def test_entry_point_stage_is_found_by_name(plugin_dir, monkeypatch):
    monkeypatch.syspath_prepend(str(plugin_dir))
    registry = Registry()  # reads the sensorlab.stages entry points on sys.path
    assert "slow" in registry.names()
    cls = registry.get("slow")
    assert cls.__module__ == "toyplug" and cls.name == "slow"
    with pytest.raises(UserError, match=r"unknown stage 'slwo' \(did you mean 'slow'\?\)"):
        registry.get("slwo")


def test_builtin_stages_are_declared_as_entry_points():
    import importlib.metadata as md

    names = {ep.name for ep in md.entry_points(group="sensorlab.stages")}
    assert {"scene", "optics", "photodetector", "adc", "raw"} <= names


def test_broken_plugin_is_reported_not_fatal(tmp_path, monkeypatch):
    site = tmp_path / "site"
    info = site / "broken-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[sensorlab.stages]\nbroken = no_such_module:X\n")
    monkeypatch.syspath_prepend(str(site))
    registry = Registry()
    with pytest.raises(UserError, match="stage 'broken' could not be loaded"):
        registry.get("broken")
    assert "broken" not in registry.loadable()


def test_stages_command_lists_parameters_units_defaults(tmp_path, plugin_dir):
    proc = sensorlab("stages", "--json", cwd=tmp_path, plugin=plugin_dir)
    assert proc.returncode == 0, proc.stderr
    rows = {r["name"]: r for r in json.loads(proc.stdout)}
    slow = rows["slow"]
    assert slow["gives"] == "DN"
    (seconds,) = slow["params"]
    assert seconds == {
        "name": "seconds",
        "type": "number",
        "default": 0.2,
        "required": False,
        "unit": "s",
        "doc": "Sleep per batch.",
    }
    text = sensorlab("stages", cwd=tmp_path, plugin=plugin_dir).stdout
    assert "seconds [s]: number, default 0.2 — Sleep per batch." in text


def test_schema_command_prints_json_schema(tmp_path, plugin_dir):
    proc = sensorlab("schema", cwd=tmp_path, plugin=plugin_dir)
    assert proc.returncode == 0, proc.stderr
    schema = json.loads(proc.stdout)
    assert schema["$schema"].endswith("2020-12/schema")
    assert {"seed", "dataset", "sensor", "model", "run"} <= set(schema["properties"])
    text = json.dumps(schema)
    assert '"const": "slow"' in text and "Sleep per batch." in text


def _slow_config(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((400, 4, 4, 3), np.uint8), y=np.zeros(400, int))
    cfg = {
        "dataset": {"kind": "npz", "path": "d.npz"},
        "sensor": [{"stage": "slow", "seconds": 0.05}],
        "run": {"out": "runs", "batch_size": 2, "record": {"images": "all"}},
    }
    path = tmp_path / "slow.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_killed_cli_run_leaves_nothing_complete(tmp_path, plugin_dir, sig):
    path = _slow_config(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", str(path), "--quiet"],
        cwd=tmp_path,
        env=cli_env(plugin_dir),
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    runs = tmp_path / "runs"
    deadline = time.monotonic() + 60
    while not (runs.exists() and any(runs.iterdir())) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # well inside the run (200 batches × 0.05 s)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    leftovers = list(runs.iterdir())
    assert [p for p in leftovers if not p.name.startswith(".")] == []
    assert list(runs.rglob("manifest.json")) == []
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "interrupted" in err
        assert leftovers == []  # a clean interrupt removes its temporary folder


def test_python_m_pipeline_and_console_script_agree(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "--version"], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 0 and proc.stdout.startswith("sensorlab ")
