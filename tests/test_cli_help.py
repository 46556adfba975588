"""The command line explains itself: a description per command, one program name per usage
error, a Literal parameter's choices in ``sensorlab stages``, ``--set`` on ``eval``."""

from __future__ import annotations

import json

import pytest
from conftest import ROOT, sensorlab

from pipeline.cli import build_parser, main

SHIPPED_RUN = ROOT / "data" / "models" / "procedural32-default"


def _commands() -> dict:
    return next(a for a in build_parser()._actions if a.dest == "command").choices


@pytest.mark.parametrize("name", sorted(_commands()))
def test_every_command_has_a_help_description(name):
    parser = _commands()[name]
    assert parser.description and len(parser.description) > 40, name


def test_usage_errors_name_the_program_once(tmp_path):
    proc = sensorlab("run", "cfg.yaml", "--bogus", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "sensorlab: error: unrecognized arguments: --bogus"
    proc = sensorlab("eval", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "sensorlab: error: eval: the following arguments are required: RUN_OR_MODEL"
    )


def test_stages_lists_a_literal_parameters_choices(capsys):
    assert main(["stages"]) == 0
    lines = capsys.readouterr().out.splitlines()
    psf = next(line for line in lines if line.startswith("  psf:"))
    assert psf.startswith("  psf: none | gaussian | gaussian_point | airy | defocus | kernel,")
    curve = next(line for line in lines if line.startswith("  curve:"))
    assert curve.startswith("  curve: linear | log | sqrt | table, default 'linear'")


def test_eval_takes_set_overrides(tmp_path):
    proc = sensorlab(
        "eval",
        str(SHIPPED_RUN),
        "--set",
        "dataset.n=10",
        "--set",
        "dataset.split=val",
        "--json",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["images"] == 10


def test_eval_set_with_a_bad_key_names_the_runs_config(tmp_path):
    proc = sensorlab("eval", str(SHIPPED_RUN), "--set", "dataset.bogus=1", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith(
        f"sensorlab: error: {SHIPPED_RUN / 'config.yaml'}: dataset.bogus: unknown key"
    )
