"""``sensorlab report FOLDER`` and the reports written at the end of each command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pipeline.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_report_command_writes_the_page(characterize_folder: Path, capsys) -> None:
    (characterize_folder / "report.html").unlink(missing_ok=True)
    assert main(["report", str(characterize_folder)]) == 0
    assert (characterize_folder / "report.html").is_file()
    assert capsys.readouterr().out.strip() == f"report: {characterize_folder / 'report.html'}"


def test_report_of_a_plain_folder_is_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "report", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"sensorlab: error: {tmp_path}: not a sensorlab result folder "
        "(none of sweep.json, datasheet.json, history.csv, manifest.json)"
    )
