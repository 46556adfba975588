"""``sensorlab calibrate`` through the command line: the folder, the twin running in
``sensorlab run`` as it is, the report in headless Chromium, and every bad input as one
line with exit status 2 and nothing written."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import ROOT
from report.chromium import Browser, chromium_or_skip

from pipeline.cli import main


def test_calibrate_command_writes_the_folder(calibrated_cli) -> None:
    status, text, out, _ = calibrated_cli
    assert status == 0
    assert text.startswith("calibrated RGGB sensor (12 bits)")
    assert "K 0.5" in text
    names = ["dsnu_map.npy", "fit.json", "prnu_map.npy", "report.html", "sensor.yaml"]
    assert sorted(p.name for p in out.iterdir()) == names
    assert [p.name for p in out.parent.iterdir()] == ["twin"]  # no partial folder left


def test_the_twin_runs_in_sensorlab_run_as_it_is(calibrated, tmp_path: Path, monkeypatch) -> None:
    folder, _ = calibrated
    twin = yaml.safe_load((folder / "sensor.yaml").read_text())
    config = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    config["sensor"] = twin["sensor"]  # the list exactly as written
    config["dataset"]["n"] = 16
    config["model"]["path"] = str(ROOT / "data/models/procedural32-default/model.yaml")
    config["run"] = {"batch_size": 16, "out": str(tmp_path / "runs")}
    path = tmp_path / "twin.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(path), "--quiet"]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert (run_dir / "manifest.json").is_file()


def test_report_opens_in_chromium(calibrated, tmp_path: Path) -> None:
    executable = chromium_or_skip()
    browser = Browser(executable, tmp_path / "profile")
    try:
        browser.open((calibrated[0] / "report.html").resolve().as_uri())
        assert browser.errors() == []
        images = browser.evaluate(
            "Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])"
        )
        assert {alt for alt, _, _ in images} == {
            "photon-transfer curve",
            "SNR curve",
            "dark noise histogram",
            "row and column spectra",
        }
        assert all(complete and width > 0 for _, complete, width in images)
    finally:
        browser.close()


# -- bad input -------------------------------------------------------------------------
def _copy(sim_manifest: Path, tmp_path: Path) -> tuple[Path, dict]:
    folder = tmp_path / "frames"
    shutil.copytree(sim_manifest.parent, folder)
    return folder, yaml.safe_load((folder / "manifest.yaml").read_text())


def _mixed_sizes(folder: Path, manifest: dict) -> str:
    np.save(folder / "flat_03.npy", np.load(folder / "flat_03.npy")[:, :32, :])
    return "flat_03.npy: frame size 32x64 differs from 64x64"


def _saturated_darks(folder: Path, manifest: dict) -> str:
    np.save(folder / "dark.npy", np.full((12, 64, 64), 4095, dtype=np.uint16))
    manifest["bits"] = 12
    return "dark.npy: dark frames are saturated"


def _too_few_frames(folder: Path, manifest: dict) -> str:
    np.save(folder / "flat_05.npy", np.load(folder / "flat_05.npy")[:1])
    return "flat_05.npy: the flat level at 0.02 s, 7800 photons has 1 frame(s)"


def _unknown_cfa(folder: Path, manifest: dict) -> str:
    manifest["cfa"] = "RGBG"
    return "manifest.yaml: cfa: unknown CFA 'RGBG'"


def _missing_file(folder: Path, manifest: dict) -> str:
    (folder / "flat_07.npy").unlink()
    return "flat_07.npy: no such frame file"


def _bad_key(folder: Path, manifest: dict) -> str:
    manifest["frames"][2]["exposure"] = manifest["frames"][2].pop("exposure_s")
    return "manifest.yaml: frames[2].exposure: unknown key (did you mean 'exposure_s'?)"


def _bits_too_few(folder: Path, manifest: dict) -> str:
    manifest["bits"] = 10
    return "manifest.yaml: bits: frames hold values up to 3"


def _too_few_levels(folder: Path, manifest: dict) -> str:
    manifest["frames"] = manifest["frames"][:5]
    return "manifest.yaml: frames: 3 flat level(s)"


@pytest.mark.parametrize(
    "damage",
    [
        _mixed_sizes,
        _saturated_darks,
        _too_few_frames,
        _unknown_cfa,
        _missing_file,
        _bad_key,
        _too_few_levels,
        _bits_too_few,
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    damage, sim_manifest: Path, tmp_path: Path, capsys
) -> None:
    folder, manifest = _copy(sim_manifest, tmp_path)
    expected = damage(folder, manifest)
    (folder / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    out = tmp_path / "out"
    status = main(["calibrate", str(folder / "manifest.yaml"), "--out", str(out)])
    err = capsys.readouterr().err
    assert status == 2
    assert len(err.strip().splitlines()) == 1, err
    assert expected in err, err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames"]
