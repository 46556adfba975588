"""Every bad input through the real CLI: exit 2, one line naming file and key, no run folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import ROOT, cli_env, sensorlab


def _write(tmp_path, cfg, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(cfg if isinstance(cfg, str) else yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture
def base(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "d.npz", x=rng.integers(0, 256, (6, 4, 4, 3), dtype=np.uint8), y=np.arange(6) % 2
    )
    return {
        "dataset": {"kind": "npz", "path": "d.npz"},
        "sensor": [{"stage": "plug_photons"}, {"stage": "slow", "seconds": 0}],
        "run": {"out": "runs", "batch_size": 4},
    }


def _assert_user_error(proc, tmp_path, *fragments):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    runs = tmp_path / "runs"
    assert not runs.exists() or list(runs.iterdir()) == []
    return lines[0]


def test_good_config_runs(tmp_path, base, plugin_dir):
    path = _write(tmp_path, base)
    proc = sensorlab("run", path, "--quiet", cwd=tmp_path, plugin=plugin_dir)
    assert proc.returncode == 0, proc.stderr
    assert "records: runs/" in proc.stdout
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "arrays.zarr",
        "manifest.json",
        "report.html",
        "samples.png",
    ]


def test_yaml_syntax_error_names_the_line(tmp_path, plugin_dir):
    path = _write(tmp_path, "seed: 1\nrun:\n  batch_size: [1, 2\n")
    line = _assert_user_error(
        sensorlab("run", path, cwd=tmp_path, plugin=plugin_dir),
        tmp_path,
        "cfg.yaml: YAML syntax error at line",
    )
    assert "line 4" in line or "line 3" in line


def test_unknown_key_did_you_mean(tmp_path, base, plugin_dir):
    base["run"]["batch_sise"] = 4
    _assert_user_error(
        sensorlab("run", _write(tmp_path, base), cwd=tmp_path, plugin=plugin_dir),
        tmp_path,
        "cfg.yaml: run.batch_sise: unknown key (did you mean 'batch_size'?)",
    )


def test_unknown_stage_parameter_did_you_mean(tmp_path, base, plugin_dir):
    base["sensor"][1] = {"stage": "slow", "second": 1}
    _assert_user_error(
        sensorlab("run", _write(tmp_path, base), cwd=tmp_path, plugin=plugin_dir),
        tmp_path,
        "cfg.yaml: sensor[1].slow.second: unknown key",
        "did you mean 'seconds'",
    )


def test_wrong_type(tmp_path, base, plugin_dir):
    base["run"]["batch_size"] = "many"
    _assert_user_error(
        sensorlab("run", _write(tmp_path, base), cwd=tmp_path, plugin=plugin_dir),
        tmp_path,
        "cfg.yaml: run.batch_size: ",
        "integer",
        "got 'many'",
    )


def test_out_of_range(tmp_path, base, plugin_dir):
    base["run"]["batch_size"] = 0
    _assert_user_error(
        sensorlab("run", _write(tmp_path, base), cwd=tmp_path, plugin=plugin_dir),
        tmp_path,
        "cfg.yaml: run.batch_size: must be between 1 and 1000000, got 0",
    )


def test_out_of_range_stage_parameter_via_set(tmp_path, base, plugin_dir):
    proc = sensorlab(
        "run",
        _write(tmp_path, base),
        "--set",
        "sensor.slow.seconds=-1",
        cwd=tmp_path,
        plugin=plugin_dir,
    )
    _assert_user_error(
        proc,
        tmp_path,
        "cfg.yaml: sensor[1].slow.seconds: must be greater than or equal to 0, got -1",
    )


def test_unknown_stage_did_you_mean(tmp_path, base, plugin_dir):
    base["sensor"][1]["stage"] = "slo"
    _assert_user_error(
        sensorlab("run", _write(tmp_path, base), cwd=tmp_path, plugin=plugin_dir),
        tmp_path,
        "cfg.yaml: sensor[1].stage: unknown stage 'slo' (did you mean 'slow'?)",
    )


def test_units_that_do_not_chain(tmp_path, base, plugin_dir):
    base["sensor"] = [{"stage": "plug_photons"}, {"stage": "plug_counts"}]
    _assert_user_error(
        sensorlab("run", _write(tmp_path, base), cwd=tmp_path, plugin=plugin_dir),
        tmp_path,
        "cfg.yaml: sensor[1].stage: plug_counts takes electrons; plug_photons gives photons",
    )


def test_missing_config_file(tmp_path, plugin_dir):
    _assert_user_error(
        sensorlab("run", "nope.yaml", cwd=tmp_path, plugin=plugin_dir),
        tmp_path,
        "nope.yaml: file not found",
    )


def test_missing_dataset_file(tmp_path, base, plugin_dir):
    base["dataset"]["path"] = "missing.npz"
    _assert_user_error(
        sensorlab("run", _write(tmp_path, base), cwd=tmp_path, plugin=plugin_dir),
        tmp_path,
        "cfg.yaml: dataset.path: ",
        "missing.npz",
    )


def test_nan_in_input(tmp_path, base, plugin_dir):
    x = np.ones((6, 4, 4, 3), np.float32)
    x[4, 0, 0, 2] = np.inf
    np.savez(tmp_path / "d.npz", x=x, y=np.zeros(6, int))
    _assert_user_error(
        sensorlab("run", _write(tmp_path, base), cwd=tmp_path, plugin=plugin_dir),
        tmp_path,
        "cfg.yaml: dataset.path: x contains inf at image 4",
    )


def test_unwritable_output_folder(tmp_path, base, plugin_dir):
    (tmp_path / "afile").write_text("not a folder")
    proc = sensorlab(
        "run", _write(tmp_path, base), "--out", "afile/runs", cwd=tmp_path, plugin=plugin_dir
    )
    _assert_user_error(proc, tmp_path, "cfg.yaml: run.out: cannot write to afile/runs")


def test_bad_override_syntax(tmp_path, base, plugin_dir):
    proc = sensorlab(
        "run", _write(tmp_path, base), "--set", "run.batch_size", cwd=tmp_path, plugin=plugin_dir
    )
    _assert_user_error(proc, tmp_path, "--set expects KEY=VALUE")


def test_override_of_absent_stage(tmp_path, base, plugin_dir):
    proc = sensorlab(
        "run", _write(tmp_path, base), "--set", "sensor.adc.bits=4", cwd=tmp_path, plugin=plugin_dir
    )
    _assert_user_error(proc, tmp_path, "cfg.yaml: sensor.adc.bits: no stage named 'adc'")


def test_top_level_not_a_mapping(tmp_path, plugin_dir):
    path = _write(tmp_path, "- 1\n- 2\n")
    _assert_user_error(
        sensorlab("run", path, cwd=tmp_path, plugin=plugin_dir),
        tmp_path,
        "cfg.yaml: top level must be a mapping, got list",
    )


def test_unknown_command_is_one_line(tmp_path):
    proc = sensorlab("rnu", cwd=tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1


def test_infinite_parameter_is_refused(tmp_path, base, plugin_dir):
    proc = sensorlab(
        "run",
        _write(tmp_path, base),
        "--set",
        "sensor.slow.seconds=.inf",
        cwd=tmp_path,
        plugin=plugin_dir,
    )
    _assert_user_error(proc, tmp_path, "cfg.yaml: sensor[1].slow.seconds: ", "finite")


def test_an_existing_run_folder_says_how_to_go_on(tmp_path, base, plugin_dir):
    path = _write(tmp_path, base)
    (tmp_path / "runs" / "taken").mkdir(parents=True)
    proc = sensorlab("run", path, "--name", "taken", cwd=tmp_path, plugin=plugin_dir)
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith(
        f"run.name: run folder {Path('runs') / 'taken'} already exists; pick another name "
        "(--name, run.name) or folder (--out, run.out), or remove it"
    )


def test_every_command_is_listed():
    from pipeline.cli import COMMANDS, build_parser

    help_text = build_parser().format_help()
    commands = ("run", "report", "schema", "stages", "sweep", "design-adc", "train")
    commands = (*commands, "characterize", "calibrate", "export", "eval")
    for name in (*commands, "import"):
        assert f"    {name} " in help_text or f"    {name}\n" in help_text, name
    assert len(COMMANDS) == 12


def test_a_command_module_that_fails_to_import_is_an_error(tmp_path):
    """A feature that cannot be imported stops the command line; it is not silently left out
    of it (the old CLI skipped a command module whose import raised ModuleNotFoundError)."""
    code = (
        "import sys\n"
        "sys.modules['pipeline.train'] = None  # importing it now raises ModuleNotFoundError\n"
        "from pipeline.cli import main\n"
        "raise SystemExit(main(['--help']))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stdout
    assert "ModuleNotFoundError" in proc.stderr and "pipeline.train" in proc.stderr


def _default_config(tmp_path, **sensor_overrides):
    """configs/default.yaml on a 4-image dataset with no model, written to ``tmp_path``."""
    cfg = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    cfg["dataset"]["n"] = 4
    cfg["model"] = None
    cfg["run"] = {"out": "runs", "batch_size": 4}
    for stage, values in sensor_overrides.items():
        next(row for row in cfg["sensor"] if row["stage"] == stage).update(values)
    return _write(tmp_path, cfg)


def test_exposure_set_on_scene_and_photodetector_differently_is_refused(tmp_path):
    path = _default_config(tmp_path, photodetector={"exposure_s": 0.01})
    proc = sensorlab("run", path, "--set", "sensor.scene.exposure_s=0.033", cwd=tmp_path)
    _assert_user_error(
        proc,
        tmp_path,
        "cfg.yaml: sensor[2].photodetector.exposure_s: 0.01 s disagrees with the scene's "
        "exposure_s 0.033 s; set it once, on the scene",
    )


def test_exposure_set_on_the_scene_reaches_the_photodetector(tmp_path):
    path = _default_config(tmp_path)
    proc = sensorlab("run", path, "--quiet", "--set", "sensor.scene.exposure_s=0.033", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    stages = json.loads((run_dir / "manifest.json").read_text())["stages"]
    pd = next(s for s in stages if s["name"] == "photodetector")
    assert pd["attrs"]["exposure_s"] == 0.033


def test_a_gray_scene_into_a_colour_filter_array_is_refused_in_one_line(tmp_path):
    path = _default_config(tmp_path, scene={"channels": "gray"})
    _assert_user_error(
        sensorlab("run", path, cwd=tmp_path),
        tmp_path,
        "cfg.yaml: sensor[2].photodetector.cfa: one photon plane (a gray scene) has no "
        "colours for cfa RGGB: use cfa: mono",
    )


def test_absurd_psf_size_is_refused_in_one_line(tmp_path):
    proc = sensorlab(
        "run", _default_config(tmp_path), "--set", "sensor.optics.sigma_px=1e6", cwd=tmp_path
    )
    _assert_user_error(
        proc,
        tmp_path,
        "cfg.yaml: sensor[1].optics.sigma_px: the PSF needs a kernel half-width of 4000000 px, "
        "more than 512 px",
    )


def test_lux_mode_names_every_missing_key_at_once(tmp_path):
    """Lux mode needs exposure_s, f_number and pixel_pitch_um: one error lists all that are
    missing (it used to name one per run: three runs to get a config right)."""
    cfg = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    scene = cfg["sensor"][0]
    scene.pop("mean_photons")
    scene.pop("exposure_s")
    scene["illuminance_lux"] = 100.0
    cfg["model"]["path"] = str(ROOT / "data" / "models" / "procedural32-default" / "model.yaml")
    cfg["dataset"]["n"] = 4
    path = _write(tmp_path, cfg)
    proc = sensorlab("run", path, "--quiet", cwd=tmp_path)
    line = _assert_user_error(proc, tmp_path, "cfg.yaml: sensor[0].scene.exposure_s: ")
    assert "illuminance_lux needs exposure_s, f_number, pixel_pitch_um too" in line
